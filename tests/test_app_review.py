"""A finished run's review through the app's public API (gradio_client): the photos that may be labelled wrong
and a one-click fix in the builder, a confusion-matrix cell's validation photos and a heatmap, and what another
visitor cannot do (stop the run, act on the photos). One tiny builder training for the whole file."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from flowerdemo.models.checkpoints import META
from flowerdemo.train.label_issues import cell
from tests.test_app import new_client, running_app, train_args
from tests.test_app_builder import shapes

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import handle_file  # noqa: E402

ISSUE_HEADERS = ["photo", "filed as", "looks like", "confidence", "split"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A builder dataset of circles and squares with two circles filed as squares, trained once (fast mode)."""
    root = tmp_path_factory.mktemp("review-app")
    photos = root / "photos"
    with running_app(root, None) as (demo, url):
        me, other = new_client(url, root / "d1"), new_client(url, root / "d2")
        token = demo.ctx.visitors.register(me.session_hash, None)  # what /init does for a browser's page
        circles = shapes(photos / "c", "circle", 10, 11, 64)
        squares = shapes(photos / "s", "square", 10, 12, 64)
        for kind, files in (("circle", circles[:8]), ("square", [*squares, *circles[8:]])):
            me.predict(kind, api_name="/builder_add_class")
            me.predict(kind, [handle_file(str(p)) for p in files], api_name="/builder_add_photos")
        job = me.submit(*train_args("builder", epochs=2), api_name="/train")
        refused = None
        for _ in job:  # the run is on: another visitor's Stop is refused (it is not theirs)
            if refused is None and demo.ctx.job.state.running:
                with pytest.raises(Exception) as refused:
                    other.predict(api_name="/stop")
        final = [out for out in job.outputs() if isinstance(out[0], str)][-1]  # the last visible change
        assert job.status().success and "Done" in final[0]
        yield demo, root, me, other, final, refused, token


def issue_table(outputs) -> dict:
    return next(o for o in outputs if isinstance(o, dict) and o.get("headers") == ISSUE_HEADERS)


def test_stop_belongs_to_the_visitors_identity(trained):
    demo, _, me, _, _, refused, token = trained
    assert refused is not None and "started by another visitor" in str(refused.value)
    assert not demo.ctx.job.state.stopping  # the refused Stop did not stop it
    assert demo.ctx.job.state.owner == token  # the browser's identity, not the session hash
    reloaded = SimpleNamespace(session_hash="a-reloaded-page")  # the same browser, a new session: same owner
    demo.ctx.visitors.register(reloaded.session_hash, token)
    assert demo.ctx.visitors.identity(reloaded) == demo.ctx.job.state.owner != f"session:{me.session_hash}"


def test_a_cell_lists_exactly_its_validation_photos_and_explains_one(trained, tmp_path):
    _, root, me, other, *_ = trained
    (run,) = [p for p in (root / "checkpoints").iterdir() if (p / META).is_file()]
    meta = json.loads((run / META).read_text())
    classes = meta["classes"]
    for true in classes:
        for pred in classes:
            line, pics, *_ = me.predict(true, pred, api_name="/review_cell")
            want = cell(meta["val_predictions"], true, pred)
            assert sorted(p["caption"].split(" · ")[0] for p in pics) == sorted(p["path"].split("/")[-1] for p in want)
            if want:
                assert f"**{len(want)}** validation photo" in line and "Click one" in line
            else:  # an empty cell: nothing to click
                assert line == f"No validation photo of *{true}* was called *{pred}*." and not pics
    with pytest.raises(Exception, match=r"triangle is not in the list of choices: \['circle', 'square'\]"):
        me.predict("circle", "triangle", api_name="/review_cell")
    with pytest.raises(Exception, match=r"circle is not in the list of choices: \[\]"):  # another visitor: no run
        other.predict("circle", "square", api_name="/review_cell")

    photo = meta["val_predictions"][0]
    overlay, probs, text = me.predict(photo["path"], api_name="/review_explain")
    assert overlay and {c["label"] for c in probs["confidences"]} == set(classes) and photo["path"] in text
    with pytest.raises(Exception, match="not one of this run's photos"):
        me.predict("../../../app.py", api_name="/review_explain")


def test_issues_come_with_their_photos_and_one_click_moves_one_in_the_builder(trained):
    _, _, me, other, final, *_ = trained
    table = issue_table(final)
    rows = [dict(zip(ISSUE_HEADERS, r, strict=True)) for r in table["data"]]
    assert "may be labelled wrong" in " ".join(str(o) for o in final if isinstance(o, str))
    if not rows:
        pytest.skip("the tiny model flagged no photo this time: nothing to fix")
    listed = me.predict(api_name="/builder_list")["classes"]
    for r in rows:  # every issue names a photo of the builder, filed as it says
        cls, name = r["photo"].split("/")
        assert cls == r["filed as"] and name in listed[cls] and r["looks like"] in listed

    first = rows[0]
    with pytest.raises(Exception, match="no finished run"):  # another visitor cannot act on my photos
        other.predict(first["photo"], api_name="/review_fix")
    assert me.predict(api_name="/builder_list")["classes"] == listed
    note, *_ = me.predict(first["photo"], api_name="/review_fix")
    assert f"to *{first['looks like']}*" in note
    after = me.predict(api_name="/builder_list")["classes"]
    cls, name = first["photo"].split("/")
    assert name not in after[cls] and len(after[cls]) == len(listed[cls]) - 1
    assert len(after[first["looks like"]]) == len(listed[first["looks like"]]) + 1
    with pytest.raises(Exception, match="Click one of the photos"):  # fixed already: no longer an issue
        me.predict(first["photo"], api_name="/review_remove")


def test_the_confusion_picture_maps_pixels_to_cells():
    from ui.plots import confusion_cell_at, confusion_image

    report = {"classes": ["a", "b", "c"], "confusion_matrix": [[3, 1, 0], [0, 2, 2], [1, 0, 4]]}
    img = confusion_image(report)
    hits = {confusion_cell_at(report, x, y) for x in range(0, img.width, 4) for y in range(0, img.height, 4)}
    assert hits - {None} == {(i, j) for i in range(3) for j in range(3)}
    assert confusion_cell_at(report, 2, 2) is None


def test_short_runs_plot_one_category_per_epoch_and_long_ones_a_number_axis_over_the_run():
    """Vega put ticks at 1.5, 2.5 on a number axis of up to 6 epochs (checked in Chromium): short runs get one
    category per epoch (as text, in order), longer ones numbers over the whole run from the start."""
    from ui.plots import EPOCHS_AS_CATEGORIES, curves, x_lim_for

    rows = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e, "train_acc": 0.5, "val_acc": 0.5, "lr": 0.1}
            for e in (1, 2, 3)]
    loss, acc, lr = curves(rows, 3)
    assert list(loss["epoch"]) == ["1", "1", "2", "2", "3", "3"] and list(lr["epoch"]) == ["1", "2", "3"]
    assert x_lim_for(3) is None and x_lim_for(EPOCHS_AS_CATEGORIES) is None
    loss, _, _ = curves(rows, 20)
    assert loss["epoch"].dtype == "int64" and list(loss["epoch"])[:2] == [1, 1]
    assert x_lim_for(20) == [1, 20] and x_lim_for(EPOCHS_AS_CATEGORIES + 1) == [1, EPOCHS_AS_CATEGORIES + 1]


def test_an_uploads_photos_are_kept_for_the_review_until_released(tmp_path):
    from ui import train_data
    from ui.state import Settings

    ctx = SimpleNamespace(settings=Settings(checkpoint_dir=tmp_path / "c", work_dir=tmp_path / "w", cache_dir=tmp_path))
    workdir = ctx.settings.folder("uploads") / "abc"
    shapes(workdir / "data" / "set" / "circle", "circle", 1, 0)
    held = {"key": "x.zip", "path": str(workdir / "data" / "set"), "owned": str(workdir)}
    kept, root = train_data.keep(ctx, held, str(workdir / "data" / "set"))
    assert not workdir.exists() and (tmp_path / "w" / train_data.KEPT / "abc").is_dir()
    assert (Path(root) / "circle" / "circle-0.png").is_file() and kept["path"] == root
    assert train_data.keep(ctx, kept, root) == (kept, root)  # kept already: stays where it is
    builder = {"key": "builder", "path": "p", "owned": "o"}
    assert train_data.keep(ctx, builder, "r") == (builder, "r")  # a builder snapshot is not kept
    train_data.release(ctx, kept)
    assert not any((tmp_path / "w" / train_data.KEPT).iterdir())


def test_an_uploads_issues_are_shown_without_the_fix_and_a_gone_photo_is_counted(tmp_path):
    from flowerdemo.train.events import Finished
    from ui.train_review import issues_view, largest_confusion, review_state

    shapes(tmp_path / "circle", "circle", 2, 0)
    issues = tuple({"path": f"circle/circle-{i}.png", "given": "circle", "suggested": "square", "confidence": 0.83,
                    "quality": 0.1, "split": "train"} for i in range(3))  # circle-2.png is not there
    report = {"classes": ["circle", "square"], "confusion_matrix": [[5, 1], [3, 4]], "label_issues": {"total": 7}}
    ev = Finished(tmp_path / "run", 0.7, 1, 1, 1.0, False, report, label_issues=issues)
    text, pics, shown, table = issues_view(review_state(ev, "zip", tmp_path))
    assert "**7 photos may be labelled wrong** (the 3 most suspect shown)" in text and "fix them there" in text
    assert "1 of them are no longer there" in text and shown == ["circle/circle-0.png", "circle/circle-1.png"]
    assert [c for _, c in pics] == ["filed as circle · looks like square (83%)"] * 2 and len(table) == 3
    assert largest_confusion(report) == ("square", "circle")
    assert review_state(Finished(None, 0, 0, 0, 0.0, True), "zip", tmp_path) is None
