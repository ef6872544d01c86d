"""The dataset builder through the app's public API (gradio_client): classes and photos in, a check, a
training on exactly those photos, the .zip out and back in, and one visitor's photos never another's."""

from __future__ import annotations

import json
import random
import zipfile
from pathlib import Path

import pytest

from flowerdemo.models.checkpoints import META
from tests.synth import draw_sample
from tests.test_app import new_client, running_app, train_args

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import handle_file  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("builder-app")
    with running_app(root, None) as (demo, url):
        yield url, root


def value(out):
    """A component's value in an endpoint's output (an update sends it with the new settings)."""
    return out.get("value") if isinstance(out, dict) and out.get("__type__") == "update" else out


def shapes(folder: Path, kind: str, n: int, seed: int, size: int = 48) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        draw_sample(kind, size, rng).save(folder / f"{kind}-{i}.png")
        out.append(folder / f"{kind}-{i}.png")
    return out


def test_build_check_train_on_exactly_those_photos(served, tmp_path):
    url, root = served
    me, other = new_client(url, tmp_path / "d1"), new_client(url, tmp_path / "d2")
    classes, _, text, _, name_box = me.predict("circle", api_name="/builder_add_class")
    assert value(classes) == "circle" and name_box == "" and "Add at least 2 more photos to *circle*" in text

    junk = tmp_path / "notes.png"
    junk.write_text("not a photo")
    files = [handle_file(str(p)) for p in shapes(tmp_path / "c", "circle", 5, 1)] + [handle_file(str(junk))]
    _, gallery, text, *_ = me.predict("circle", files, api_name="/builder_add_photos")
    assert len(value(gallery)) == 5 and "Added 5 photos to *circle*" in text and "**Not added:** notes.png:" in text
    assert "Add a second class" in text

    me.predict("square", api_name="/builder_add_class")
    me.predict("square", [handle_file(str(p)) for p in shapes(tmp_path / "s", "square", 4, 2)],
               api_name="/builder_add_photos")
    listed = me.predict(api_name="/builder_list")
    gone = listed["classes"]["square"][0]
    _, gallery, text, *_, selected = me.predict("square", gone, api_name="/builder_remove_photo")
    listed = me.predict(api_name="/builder_list")
    # the gallery's frame stays where it was, on the next photo now: that one is selected (was "": a frame shown,
    # and Remove said to click a photo first)
    assert selected == listed["classes"]["square"][0]
    assert {c: len(p) for c, p in listed["classes"].items()} == {"circle": 5, "square": 3} and len(value(gallery)) == 3
    assert gone not in listed["classes"]["square"] and listed["ready"] and "**Ready to train** on 8 photos" in text

    # another visitor has no photos here, and cannot train on mine
    assert other.predict(api_name="/builder_list")["classes"] == {}
    with pytest.raises(Exception, match="not ready for training yet. Add a first class"):
        other.predict(*train_args("builder"), api_name="/train")

    checked = me.predict("builder", None, "", api_name="/scan_dataset")
    assert "Found 2 classes, 8 images" in checked[0]
    assert "Checked: **8 photos in 2 classes**" in checked[-1]  # the Progress box says what comes next

    before = set((root / "checkpoints").iterdir()) if (root / "checkpoints").exists() else set()
    job = me.submit(*train_args("builder", epochs=1), api_name="/train")
    me.predict("circle", [handle_file(str(p)) for p in shapes(tmp_path / "late", "circle", 2, 3)],
               api_name="/builder_add_photos")  # while the run starts: not in it
    final = [out for out in job if isinstance(out[0], str)][-1]  # the last visible change
    assert job.status().success and "Done" in final[0]
    (run,) = set((root / "checkpoints").iterdir()) - before
    counts = json.loads((run / META).read_text())["data"]["counts"]
    assert {c: counts["train"][c] + counts["val"][c] for c in counts["train"]} == {"circle": 5, "square": 3}
    assert not any((root / "work" / "uploads").iterdir())  # the frozen copy went with the run
    assert len(me.predict(api_name="/builder_list")["classes"]["circle"]) == 7  # the late photos stay in the builder


def test_rename_delete_download_and_load_back(served, tmp_path):
    url, _ = served
    me, other = new_client(url, tmp_path / "d1"), new_client(url, tmp_path / "d2")
    for kind, n in (("circle", 2), ("square", 3)):
        me.predict(kind, api_name="/builder_add_class")
        me.predict(kind, [handle_file(str(p)) for p in shapes(tmp_path / kind, kind, n, 4)],
                   api_name="/builder_add_photos")
    with pytest.raises(Exception, match="already a class 'square'"):
        me.predict("circle", "SQUARE", api_name="/builder_rename_class")
    me.predict("circle", "round", api_name="/builder_rename_class")
    me.predict("spare", api_name="/builder_add_class")
    _, _, text, *_ = me.predict("spare", api_name="/builder_delete_class")
    assert "Deleted *spare* and its 0 photos" in text

    zipped = value(me.predict(api_name="/builder_download"))
    with zipfile.ZipFile(zipped) as zf:
        files = sorted(n for n in zf.namelist() if not n.endswith("/"))
    assert [n.split("/")[:2] for n in files] == [["my-photos", "round"]] * 2 + [["my-photos", "square"]] * 3

    classes, _, text, *_ = other.predict(handle_file(zipped), "", api_name="/builder_load")
    assert "Loaded 5 photos in 2 classes" in text and value(classes) == "round"
    assert {c: len(p) for c, p in other.predict(api_name="/builder_list")["classes"].items()} == {"round": 2,
                                                                                                   "square": 3}


def test_the_check_names_a_photo_in_two_classes_and_one_click_fixes_it(served, tmp_path):
    url, _ = served
    me = new_client(url, tmp_path / "d1")
    circles, squares = shapes(tmp_path / "c", "circle", 3, 5, 96), shapes(tmp_path / "s", "square", 3, 6, 96)
    for kind, files in (("circle", circles), ("square", [*squares, circles[0]])):  # a circle filed as a square too
        me.predict(kind, api_name="/builder_add_class")
        me.predict(kind, [handle_file(str(p)) for p in files], api_name="/builder_add_photos")
    text, pics, _, move_to = me.predict("builder", api_name="/builder_check")
    assert "**Fix:**" in text and "filed under different classes (circle, square)" in text
    named = sorted(p["caption"] for p in pics)
    assert [n.split("/")[0] for n in named] == ["circle", "square"] and value(move_to) is None
    out = me.predict(named[1], "circle", api_name="/builder_move_checked")  # the square copy back to circle
    text = out[4]  # after the builder's own outputs: the check's report and photos
    assert "filed under different classes" not in text and "identical files in class 'circle'" in text
    copy = next(p["caption"] for p in out[5] if p["caption"].startswith("circle/"))
    out = me.predict(copy, api_name="/builder_remove_checked")
    assert "identical" not in out[4]
    assert {c: len(p) for c, p in me.predict(api_name="/builder_list")["classes"].items()} == {"circle": 3,
                                                                                               "square": 3}
