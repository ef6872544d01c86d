"""Tests for flowerdemo.dataset: layout detection, stratified seeded split, skipping, errors."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from flowerdemo.data.dataset import DatasetError, DatasetSplit, find_dataset_root, scan_dataset
from tests.synth import make_dataset


@pytest.fixture(scope="module")
def flat(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("flat") / "data", per_class=20, size=32)


def _paths(samples) -> set[Path]:
    return {s.path for s in samples}


def test_stratified_split_counts(flat):
    ds = scan_dataset(flat, val_fraction=0.25, seed=0)
    assert isinstance(ds, DatasetSplit) and not ds.presplit and ds.root == flat
    assert ds.classes == ("circle", "square", "triangle")
    assert ds.counts() == {
        "train": {"circle": 15, "square": 15, "triangle": 15},
        "val": {"circle": 5, "square": 5, "triangle": 5},
    }
    assert not _paths(ds.train) & _paths(ds.val)
    assert len(_paths(ds.train) | _paths(ds.val)) == 60 and ds.skipped == ()
    for s in ds.train + ds.val:  # labels follow the class folder
        assert ds.classes[s.label] == s.path.parent.name
    text = ds.summary()
    assert "3 classes" in text and "45 training" in text and "15 validation" in text and "circle 15/5" in text


def test_split_deterministic_and_seeded(flat):
    a = scan_dataset(flat, seed=1)
    b = scan_dataset(flat, seed=1)
    c = scan_dataset(flat, seed=2)
    assert a == b
    assert _paths(a.val) != _paths(c.val)
    assert a.counts() == c.counts()  # seed changes which files, not how many


def test_split_min_one_each_side(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=2, size=16, classes=("circle", "square"))
    ds = scan_dataset(root, val_fraction=0.01)
    assert ds.counts() == {"train": {"circle": 1, "square": 1}, "val": {"circle": 1, "square": 1}}
    ds = scan_dataset(root, val_fraction=0.99)
    assert ds.counts()["train"] == {"circle": 1, "square": 1}


def test_presplit_layout(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=10, size=16, layout="split")
    ds = scan_dataset(root)
    assert ds.presplit
    assert ds.counts() == {
        "train": {"circle": 8, "square": 8, "triangle": 8},
        "val": {"circle": 2, "square": 2, "triangle": 2},
    }
    assert all(s.path.parts[-3] == "train" for s in ds.train) and all(s.path.parts[-3] == "val" for s in ds.val)


def test_presplit_valid_name_and_missing_val_class(tmp_path, caplog):
    root = make_dataset(tmp_path / "d", per_class=10, size=16, layout="split")
    (root / "val").rename(root / "Validation")
    for f in (root / "Validation" / "square").iterdir():
        f.unlink()
    (root / "Validation" / "square").rmdir()
    with caplog.at_level(logging.WARNING):
        ds = scan_dataset(root)
    assert ds.presplit and ds.counts()["val"] == {"circle": 2, "square": 0, "triangle": 2}
    assert "square" in caplog.text


def test_presplit_unknown_val_class(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=10, size=16, layout="split")
    (root / "val" / "circle").rename(root / "val" / "hexagon")
    with pytest.raises(DatasetError, match=r"\['hexagon'\].*not in train.*subset"):
        scan_dataset(root)


def test_single_wrapping_folder(tmp_path):
    make_dataset(tmp_path / "upload" / "flower_photos", per_class=5, size=16)
    (tmp_path / "upload" / "__MACOSX").mkdir()
    (tmp_path / "upload" / ".DS_Store").write_bytes(b"x")
    (tmp_path / "upload" / "flower_photos" / "LICENSE.txt").write_text("cc-by")
    assert find_dataset_root(tmp_path / "upload") == tmp_path / "upload" / "flower_photos"
    ds = scan_dataset(tmp_path / "upload")
    assert ds.root == tmp_path / "upload" / "flower_photos" and len(ds.classes) == 3
    assert [(p.name, "loose" in why) for p, why in ds.skipped] == [("LICENSE.txt", True)]
    assert find_dataset_root(tmp_path / "upload" / "flower_photos") == tmp_path / "upload" / "flower_photos"


def _big_png_header(path: Path) -> None:
    """A tiny PNG whose IHDR claims 9000x9000 (81 MP)."""
    img = Image.new("L", (1, 1))
    img.save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", 9000, 9000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def test_skipped_files_have_reasons(tmp_path, caplog):
    root = make_dataset(tmp_path / "d", per_class=6, size=16)
    (root / "circle" / "notes.txt").write_text("hello")
    (root / "circle" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _big_png_header(root / "square" / "huge.PNG")
    (root / "square" / "nested" / "deeper").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "square" / "nested" / "deeper" / "extra.JPG")
    (root / "stray.png").write_bytes((root / "circle" / "circle_000.png").read_bytes())
    (root / "triangle" / ".hidden.png").write_bytes(b"junk")
    (root / "triangle" / "Thumbs.db").write_bytes(b"junk")
    (root / "triangle" / "__MACOSX").mkdir()
    (root / "triangle" / "__MACOSX" / "._x.png").write_bytes(b"junk")
    with caplog.at_level(logging.WARNING, logger="flowerdemo.data.dataset"):
        ds = scan_dataset(root)
    reasons = {p.name: why for p, why in ds.skipped}
    assert set(reasons) == {"notes.txt", "broken.jpg", "huge.PNG", "stray.png"}  # hidden/OS junk not counted
    assert "not an image" in reasons["notes.txt"] and ".txt" in reasons["notes.txt"]
    assert "header" in reasons["broken.jpg"] or "recognised" in reasons["broken.jpg"]
    assert "81,000,000" in reasons["huge.PNG"] and "limit" in reasons["huge.PNG"]
    assert "loose" in reasons["stray.png"]
    assert ds.counts()["train"]["square"] + ds.counts()["val"]["square"] == 7  # nested image is used
    assert sum(sum(v.values()) for v in ds.counts().values()) == 19
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Skipped 4 file(s)" in warnings[0].getMessage()
    assert "Skipped 4 file(s)" in ds.summary()


def test_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        scan_dataset(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="is empty"):
        scan_dataset(tmp_path / "empty")
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("RGB", (8, 8)).save(loose / "a.jpg")
    Image.new("RGB", (8, 8)).save(loose / "b.jpg")
    with pytest.raises(DatasetError, match=r"no class folders.*root/<class>/<image>"):
        scan_dataset(loose)
    one = make_dataset(tmp_path / "one", per_class=4, size=16, classes=("circle",))
    with pytest.raises(DatasetError, match=r"only one class folder.*'circle'.*at least 2 classes"):
        scan_dataset(one)  # a lone class folder is not mistaken for a wrapping folder
    (tmp_path / "wrap" / "inner").mkdir(parents=True)
    with pytest.raises(DatasetError, match="inner is empty"):
        scan_dataset(tmp_path / "wrap")


def test_small_class_and_bad_fraction(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=5, size=16, classes=("circle", "square"))
    for f in sorted((root / "square").iterdir())[1:]:
        f.unlink()
    with pytest.raises(DatasetError, match=r"class 'square' has 1 usable image.*at least 2"):
        scan_dataset(root)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(DatasetError, match="between 0 and 1"):
            scan_dataset(root, val_fraction=bad)


def test_empty_class_folder(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=5, size=16, classes=("circle", "square"))
    (root / "tulip").mkdir()
    with pytest.raises(DatasetError, match=r"class 'tulip' has 0 usable"):
        scan_dataset(root)


def test_list_dataset_lists_without_splitting(tmp_path):
    """What `flowerdemo check` reads: a class too small to split is listed (the check reports it), and a given
    val/ folder's files are marked."""
    from flowerdemo.data.dataset import list_dataset

    flat = make_dataset(tmp_path / "flat", per_class=3, size=16, classes=("circle", "square"))
    for p in list((flat / "square").iterdir())[1:]:
        p.unlink()
    listed = list_dataset(flat)
    assert listed.classes == ("circle", "square") and [len(f) for f in listed.files] == [3, 1] and not listed.presplit
    with pytest.raises(DatasetError, match="'square' has 1 usable"):
        scan_dataset(flat)
    pre = list_dataset(make_dataset(tmp_path / "pre", per_class=10, size=16, layout="split"))
    split = scan_dataset(tmp_path / "pre")
    assert pre.presplit and pre.given_val == {s.path for s in split.val}
    assert {p for f in pre.files for p in f} == {s.path for s in split.train + split.val}


def test_a_models_folder_given_as_photos_is_named_as_a_model(tmp_path):
    run = tmp_path / "my-garden" / "20261202-111956-efficientnet_lite0"  # an unzipped model download
    run.mkdir(parents=True)
    for name in ("model.safetensors", "meta.json", "name.txt"):
        (run / name).write_bytes(b"x")
    with pytest.raises(DatasetError, match=r"holds a trained model \(model.safetensors\), not photos.*Models tab"):
        scan_dataset(tmp_path / "my-garden")
