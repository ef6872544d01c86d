"""The dataset builder's core: class names, photos in and out, bounds, the zip the CLI reads, loading."""

from __future__ import annotations

import os
import random
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowerdemo.data.builder import BuilderError, DatasetDraft, Limits, prune_areas
from flowerdemo.data.dataset import scan_dataset
from tests.synth import draw_sample, make_dataset


def shape(path: Path, kind: str = "circle", size: int = 64, seed: int = 0) -> Path:
    draw_sample(kind, size, random.Random(seed)).save(path)
    return path


def photos(folder: Path, kind: str, n: int, size: int = 64) -> list[tuple[Path, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    return [(shape(folder / f"{kind}{i}.png", kind, size, i), f"{kind}{i}.png") for i in range(n)]


@pytest.fixture()
def draft(tmp_path) -> DatasetDraft:
    return DatasetDraft(tmp_path / "area")


def test_class_names_are_checked_and_unique_regardless_of_case(draft):
    assert draft.add_class("  Rose  bud ") == "Rose bud"  # spaces tidied as typed
    for bad, why in [("", "Type a class name"), ("a/b", "no / or"), ("..", "not starting with a dot"),
                     ("x" * 41, "1 to 40"), ("Train", "reserved|layout reserves"), ("rose BUD", "already a class 'Rose bud'")]:
        with pytest.raises(BuilderError, match=why):
            draft.add_class(bad)
    assert [c.name for c in draft.classes()] == ["Rose bud"]
    assert draft.rename_class("Rose bud", "ROSE BUD") == "ROSE BUD"  # a change of case of itself is allowed
    draft.add_class("tulip")
    with pytest.raises(BuilderError, match="already a class 'tulip'"):
        draft.rename_class("ROSE BUD", "Tulip")
    with pytest.raises(BuilderError, match="no class 'lily'.*ROSE BUD, tulip"):
        draft.delete_class("lily")


def test_photos_are_checked_stored_upright_and_small_and_non_images_refused_by_name(draft, tmp_path):
    draft.add_class("rose")
    big = tmp_path / "IMG 0001.JPG"
    Image.new("RGB", (3000, 1000), (200, 30, 30)).save(big, exif=_rotated_exif())  # EXIF: rotate 90°
    junk = tmp_path / "notes.jpg"
    junk.write_text("not a photo")
    cam = np.full((48, 64, 3), 90, np.uint8)  # a webcam frame arrives as an array
    done = draft.add_photos("rose", [(big, "IMG 0001.JPG"), (junk, "notes.jpg"), (cam, "webcam")])
    assert len(done.added) == 2 and len(done.refused) == 1
    assert done.refused[0].startswith("notes.jpg: ") and str(tmp_path) not in done.refused[0]
    stored = {p.name: p for p in draft.classes()[0].photos}
    assert set(stored) == set(done.added) and all(n.endswith(".jpg") and "/" not in n for n in stored)
    upright = Image.open(stored[next(n for n in stored if n.startswith("IMG-0001"))])
    assert upright.height == 1024 and 340 <= upright.width <= 342  # turned by its EXIF tag, longest side bounded
    assert not upright.getexif()  # no metadata kept (a phone photo's location)


def test_readiness_names_the_class_and_the_missing_count(draft, tmp_path):
    assert not draft.readiness().ready and "Add a first class" in draft.readiness().todo[0]
    draft.add_class("rose")
    draft.add_photos("rose", photos(tmp_path / "r", "circle", 1))
    r = draft.readiness()
    assert not r.ready and r.todo == ("Add a second class: a model learns to tell at least 2 classes apart.",
                                      "Add at least 1 more photo to *rose*.")
    draft.add_class("tu_lip")
    assert "Add at least 2 more photos to *tu\\_lip*." in draft.readiness().todo  # Markdown-safe name
    draft.add_photos("rose", photos(tmp_path / "r2", "circle", 11))
    draft.add_photos("tu_lip", photos(tmp_path / "t", "square", 3))
    r = draft.readiness()
    assert r.ready and not r.todo and len(r.advice) == 1 and "*tu\\_lip* (3)" in r.advice[0] and "rose" not in r.advice[0]


def test_remove_rename_delete(draft, tmp_path):
    draft.add_class("rose")
    added = draft.add_photos("rose", photos(tmp_path / "r", "circle", 3)).added
    draft.remove_photo("rose", added[0])
    assert sorted(p.name for p in draft.classes()[0].photos) == sorted(added[1:])
    for bad in ("../rose", added[0], ".tmp-x"):
        with pytest.raises(BuilderError, match="has no photo"):
            draft.remove_photo("rose", bad)
    draft.rename_class("rose", "roses")
    assert [(c.name, c.count) for c in draft.classes()] == [("roses", 2)]
    assert draft.delete_class("roses") == 2 and draft.classes() == []


def test_bounds_refuse_the_photos_beyond_them_and_keep_the_rest(tmp_path):
    draft = DatasetDraft(tmp_path / "area", limits=Limits(max_photos=3, max_classes=2))
    draft.add_class("a")
    draft.add_class("b")
    with pytest.raises(BuilderError, match="at most 2 classes"):
        draft.add_class("c")
    done = draft.add_photos("a", photos(tmp_path / "p", "circle", 5))
    assert len(done.added) == 3 and [r.split(":")[0] for r in done.refused] == ["circle3.png", "circle4.png"]
    assert "full (3 photos at most)" in done.refused[0] and draft.usage()[0] == 3
    tiny = DatasetDraft(tmp_path / "small", limits=Limits(max_mb=0))
    tiny.add_class("a")
    assert tiny.add_photos("a", photos(tmp_path / "q", "circle", 1)).refused[0].endswith("(0 MB at most)")
    assert tiny.usage() == (0, 0)


def test_the_zip_is_what_the_cli_reads_and_loads_back(draft, tmp_path):
    for kind, n in (("circle", 3), ("square", 4)):
        draft.add_class(kind)
        draft.add_photos(kind, photos(tmp_path / kind, kind, n))
    draft.add_class("empty")
    z = draft.to_zip(tmp_path / "out")
    with zipfile.ZipFile(z) as zf:
        names = zf.namelist()
    assert z.name == "my-photos.zip" and all(n.startswith("my-photos/") for n in names) and "my-photos/empty/" in names
    from flowerdemo.data.dataset import resolve_data

    draft.delete_class("empty")
    split = scan_dataset(resolve_data(draft.to_zip(tmp_path / "out2"), str(tmp_path / "x")))
    assert split.classes == ("circle", "square") and len(split.train) + len(split.val) == 7

    other = DatasetDraft(tmp_path / "other")
    done = other.load(z, max_bytes=2**30, shown="mine.zip")
    assert done.classes == ("circle", "empty", "square") and len(done.added) == 7 and not done.refused
    assert [(c.name, c.count) for c in other.classes()] == [("circle", 3), ("empty", 0), ("square", 4)]
    assert not [p for p in other.area.iterdir() if p.name.startswith(".load-")]  # staging removed


def test_load_merges_a_presplit_folder_replaces_the_draft_and_a_bad_source_keeps_it(draft, tmp_path):
    data = make_dataset(tmp_path / "split", per_class=5, size=48, classes=("circle", "square"), layout="split")
    (data / "train" / "circle" / "readme.txt").write_text("hello")
    draft.add_class("old")
    done = draft.load(data, max_bytes=2**30)
    assert [(c.name, c.count) for c in draft.classes()] == [("circle", 5), ("square", 5)]  # train/ + val/ merged
    assert done.refused == ("circle/readme.txt: not a recognised image (unknown or corrupt data)",)
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK nonsense")
    with pytest.raises(ValueError, match="bad.zip is not a readable .zip"):
        draft.load(bad, max_bytes=2**30)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BuilderError, match="holds no class folders"):
        draft.load(empty, max_bytes=2**30)
    assert [c.count for c in draft.classes()] == [5, 5]  # untouched by the failed loads


def test_snapshot_is_frozen_while_the_draft_changes(draft, tmp_path):
    draft.add_class("a")
    draft.add_photos("a", photos(tmp_path / "p", "circle", 2))
    snap = draft.snapshot(tmp_path / "snap")
    draft.remove_photo("a", draft.classes()[0].photos[0].name)
    draft.add_photos("a", photos(tmp_path / "q", "square", 3))
    assert len(list((snap / "a").iterdir())) == 2 and draft.classes()[0].count == 4


def test_prune_removes_old_areas_then_the_least_recently_used_beyond_the_bound(tmp_path):
    root = tmp_path / "datasets"
    areas = []
    for i, age in enumerate((10 * 3600, 300, 200, 100)):
        d = DatasetDraft(root / f"v{i}")
        d.add_class("a")
        d.add_photos("a", photos(tmp_path / f"p{i}", "circle", 1, size=200))
        os.utime(d.area, (time.time() - age,) * 2)
        areas.append(d.area)
    one = sum(f.stat().st_size for f in areas[1].rglob("*") if f.is_file())
    gone = prune_areas(root, 6 * 3600, max_bytes=int(2.5 * one), keep=[areas[1]])
    assert gone == [areas[0], areas[2]]  # too old; then the oldest not kept until within the bound
    assert sorted(p.name for p in root.iterdir()) == ["v1", "v3"]


def _rotated_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    return exif


def test_move_a_photo_to_another_class(draft, tmp_path):
    draft.add_class("a")
    draft.add_class("b")
    (name,) = draft.add_photos("a", photos(tmp_path / "p", "circle", 1)).added
    draft.move_photo("a", name, "b")
    assert [(c.name, c.count) for c in draft.classes()] == [("a", 0), ("b", 1)]
    assert draft.classes()[1].photos[0].name.startswith("circle0-")
    with pytest.raises(BuilderError, match="no class 'c'"):
        draft.move_photo("b", draft.classes()[1].photos[0].name, "c")
