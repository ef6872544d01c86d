"""The app end to end, through its public API only: launched in-process on a free local port and
driven with gradio_client, as a script or another program would use it.

`tiny_model` and `running_app` are shared with tests/test_browser.py.
"""

from __future__ import annotations

import re
import shutil
import socket
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from flowerdemo.config import TrainConfig
from flowerdemo.models.checkpoints import WEIGHTS, load_checkpoint
from tests.synth import draw_sample, make_dataset

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# A model good enough to be "a model": 3 shape classes, 64 px, fast mode, a few seconds on a CPU.
TINY = TrainConfig(mode="fast", image_size=64, epochs=6, batch_size=8, fast_views=2, workers=1,
                   cache_features=False)
CLASSES = ("circle", "square", "triangle")
PREDICTED = "(predicted class)"


# --- shared helpers (also used by test_browser.py) ------------------------------------------------

def tiny_model(base: Path) -> Path:
    """A trained tiny run directory under `base`; trained once per test session, then reused."""
    from flowerdemo.train.engine import train

    done = base / "tiny-model"
    found = sorted(done.glob(f"*/{WEIGHTS}"))
    if found:
        return found[0].parent
    data = make_dataset(base / "tiny-data", per_class=8, size=48, seed=1)
    events = list(train(TINY, data, base / "tiny-staging"))
    run = events[-1].run_dir
    done.mkdir(parents=True, exist_ok=True)
    return Path(shutil.move(str(run), done / run.name))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(root: Path, model: Path | None) -> Iterator[tuple[object, str]]:
    """The app with its settings under `root` (checkpoints, scratch, one allowed data folder), holding a
    copy of `model`; yields (demo, url) and closes the server afterwards."""
    import app
    from ui.state import AppContext, Settings

    settings = Settings(checkpoint_dir=root / "checkpoints", data_dirs=(root / "data",), work_dir=root / "work",
                        cache_dir=root / "cache", keep_runs=0)
    (root / "data").mkdir(parents=True, exist_ok=True)
    if model is not None:
        shutil.copytree(model, settings.checkpoint_dir / model.name)
    demo = app.create_demo(AppContext.create(settings))
    demo.queue(default_concurrency_limit=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLOWERDEMO_CACHE", str(root / "feature-cache"))  # fast mode's feature cache: not in ~
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                                quiet=True, **app.launch_kwargs(settings))
        try:
            yield demo, url
        finally:
            demo.close()


# --- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_run):
    root = tmp_path_factory.mktemp("app")
    with running_app(root, tiny_run) as (demo, url):
        yield demo, url, root


def new_client(url: str, downloads: Path) -> Client:
    """A visitor: its own session (own state, own ownership of a training). Timeouts far above httpx's
    5 s: on a 2-core machine shared with other jobs the server thread can be starved for a while."""
    return Client(url, verbose=False, download_files=str(downloads), analytics_enabled=False,
                  httpx_kwargs={"timeout": httpx.Timeout(120.0, read=300.0)})


@pytest.fixture()
def client(served, tmp_path) -> Client:
    return new_client(served[1], tmp_path / "downloads")


def photo(path: Path, kind: str = "circle", size: int = 96) -> Path:
    import random

    draw_sample(kind, size, random.Random(7)).save(path)
    return path


def classify(client: Client, image: Path, target: str = PREDICTED, strictness: str = "normal") -> tuple[dict, str, str, str]:
    """(label, overlay, heatmap, summary) of /predict."""
    return answer(client, image, target, strictness)[:4]


def answer(client: Client, image: Path, target: str = PREDICTED, strictness: str = "normal") -> tuple:
    """Every /predict output: label, overlay, heatmap, summary, verdict (the headline), details (JSON)."""
    return client.predict(handle_file(str(image)), "gradcam", target, 0.5, strictness, api_name="/predict")


def train_args(source: str = "folder", zip_file=None, folder: str = "", *, mode: str = "fast", epochs: int = 3,
               batch_size: int = 8) -> tuple:
    """The /train inputs in their order: dataset, backbone, mode, epochs, batch, lr, optimiser, schedule,
    warm-up, freezing, frozen stages, image size, augmentations, seed."""
    return (source, zip_file, folder, "efficientnet_lite0", mode, epochs, batch_size, 1e-3, "adamw",
            "warmup_cosine", 0, "none", 2, 64, [], 0)


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def max_epoch(plot) -> int:
    """The last epoch plotted in a LinePlot value sent to the client (0 for an empty or unchanged plot)."""
    if not isinstance(plot, dict) or not plot.get("data"):
        return 0
    return max(int(row[0]) for row in plot["data"])


# --- tests ----------------------------------------------------------------------------------------

def test_cam_names_in_the_ui_match_the_core():
    from flowerdemo.infer.explain import CAM_METHODS
    from flowerdemo.models.unknown import strictness_choices
    from ui import predict_tab

    assert [v for _, v in predict_tab.cam_choices()] == list(CAM_METHODS)  # every method, each with its time
    assert all("?" not in label for label, _ in predict_tab.cam_choices())
    assert [v for _, v in predict_tab.STRICTNESS_CHOICES] == strictness_choices()


def test_the_class_list_says_when_the_strictness_levels_cannot_differ():
    """A model fitted on a handful of validation photos gets one threshold for all three levels: said, since
    Strict / Normal / Lenient otherwise seem to do nothing (a walkthrough)."""
    from types import SimpleNamespace

    from ui.predict_tab import known_classes_text

    same = SimpleNamespace(classes=("a", "b"), detector=SimpleNamespace(thresholds={"strict": 0.3, "normal": 0.3,
                                                                                   "lenient": 0.3}))
    apart = SimpleNamespace(classes=("a", "b"), detector=SimpleNamespace(thresholds={"strict": 0.3, "normal": 0.35,
                                                                                    "lenient": 0.5}))
    assert "strictness levels are the same" in known_classes_text(same)
    assert "strictness levels" not in known_classes_text(apart) and "not one of these" in known_classes_text(apart)


def test_names_a_visitor_typed_reach_other_pages_as_text_not_html(tmp_path):
    """A model renamed `<img src=...>` was drawn as an image on the pages of everyone it was shared with (a
    walkthrough): model and class names are escaped wherever they enter Markdown."""
    import re
    from types import SimpleNamespace

    from flowerdemo.serve import owners
    from tests.test_runs import fake_run
    from ui.models_tab import details
    from ui.predict_tab import known_classes_text, verdict_text

    raw = re.compile(r"(?<!\\)<(img|b)\b")  # a tag not escaped
    evil = '<img src="/x.png"> <b>big</b>'
    clf = SimpleNamespace(classes=(evil, "b"), detector=None)
    pred = SimpleNamespace(top=(evil, 0.9), familiarity=SimpleNamespace(known=False, score=0.9, threshold=0.5,
                                                                        strictness="normal", available=True))
    for text in (known_classes_text(clf), verdict_text(pred, clf.classes),
                 verdict_text(SimpleNamespace(top=(evil, 0.9), familiarity=SimpleNamespace(
                     known=True, score=0.1, threshold=0.5, strictness="normal", available=True)), clf.classes)):
        assert "img" in text and not raw.search(text), text
    run = fake_run(tmp_path, "run")
    owners.claim(run, "alice", "trained", name=evil)
    shown = details(SimpleNamespace(models=SimpleNamespace(resolve=lambda chosen: (SimpleNamespace(
        path=run, meta={"architecture": "x"}, classes=(evil,), preprocessing=SimpleNamespace(input_size=8),
        detector=None, temperature=1.0), ""))), str(run))
    assert "img" in shown and not raw.search(shown), shown


def test_the_runs_table_says_how_many_epochs_a_run_trained_and_whether_it_was_stopped():
    from ui.models_tab import epochs_text

    assert epochs_text({"history": [{}] * 20, "config": {"epochs": 20}}) == "20"
    assert epochs_text({"history": [{}] * 3, "config": {"epochs": 20}}) == "3 of 20 (stopped)"
    assert epochs_text({"config": {"epochs": 20}}) == "" and epochs_text({}) == ""  # an uploaded file without history


def test_an_empty_heatmap_is_explained_in_the_summary():
    import numpy as np

    from flowerdemo.infer.explain import Explanation
    from ui.predict_tab import summary_text

    def ex(heat: float) -> Explanation:
        return Explanation(np.full((4, 4), heat, np.float32), Image.new("RGB", (4, 4)), "square", 1,
                           {"triangle": 0.36, "square": 0.34, "circle": 0.30}, "gradcam")

    blank, shown = summary_text(ex(0.0), 0.05, "cpu", "m"), summary_text(ex(0.7), 0.05, "cpu", "m")
    assert blank.startswith(shown) and shown.startswith("**triangle** (36.0%) · gradcam for *square* · 50 ms on cpu")
    assert "heatmap is empty" in blank and "*square*" in blank.split("\n\n")[1]
    assert "empty" not in shown


def test_api_lists_the_documented_endpoints(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/predict", "/reblend", "/train", "/stop", "/scan_dataset", "/upload_checkpoint", "/hub_load"} <= names


def test_predict_returns_probabilities_and_heatmaps(client, tmp_path):
    image = photo(tmp_path / "shape.png", "square", size=120)
    label, overlay, heatmap, text = classify(client, image)
    confidences = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert set(confidences) == set(CLASSES)
    assert sum(confidences.values()) == pytest.approx(1.0, abs=1e-4)
    assert label["label"] == max(confidences, key=confidences.get)
    with Image.open(overlay) as ov, Image.open(heatmap) as hm:
        assert ov.size == hm.size == (120, 120)  # drawn on the photo itself, not on the model's crop
        colours = hm.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 10  # a real heatmap, not a blank picture
    assert label["label"] in text and "gradcam" in text

    _, _, _, text = classify(client, image, target="triangle")  # explain another class on request
    assert "*triangle*" in text

    # a new opacity re-blends the photo and the heatmap shown, with no model run (core test: test_predict_explain)
    _, overlay, heatmap, _ = classify(client, image)
    lighter = client.predict(handle_file(str(image)), handle_file(heatmap), 0.9, api_name="/reblend")
    with Image.open(overlay) as before, Image.open(lighter) as after:
        assert after.size == before.size
        change = np.abs(np.asarray(after.convert("RGB"), dtype=int) - np.asarray(before.convert("RGB"), dtype=int))
        assert change.mean() > 5  # opacity 0.5 -> 0.9: the heatmap's colours dominate


def test_predict_says_when_a_photo_is_none_of_the_classes(client, tmp_path):
    import numpy as np

    shape = photo(tmp_path / "shape.png", "circle", size=48)  # as the tiny model's training images
    label, _, _, _, verdict, details = answer(client, shape)
    assert details["known"] is True, details and details["label"] == label["label"] == "circle"
    assert details["score"] <= details["threshold"] and details["strictness"] == "normal"
    assert sum(details["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)  # calibrated, all classes
    assert verdict.startswith("## circle")
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)).resize(
        (120, 120), Image.Resampling.BICUBIC).save(noise)
    label, _, _, summary, verdict, details = answer(client, noise)
    assert details["known"] is False and details["label"] is None and details["score"] > details["threshold"]
    assert "Not one of the 3 classes this model knows" in verdict and "circle, square, triangle" in verdict
    assert summary.startswith("closest class *") and "not an answer" in summary.split(" · ")[0]
    assert {c["label"] for c in label["confidences"]} == set(CLASSES)  # still there, below the verdict
    _, _, _, _, verdict, details = answer(client, noise, strictness="off")
    assert details["known"] is None and details["label"] is not None and verdict.startswith("## ")
    with pytest.raises(Exception, match="strictness"):
        answer(client, noise, strictness="paranoid")


def test_training_on_an_upload_streams_epochs_then_predict_uses_the_new_model(served, client, tmp_path):
    demo, url, root = served
    data = make_dataset(tmp_path / "two-shapes", per_class=6, size=48, classes=("circle", "square"), seed=3)
    upload = make_zip(tmp_path / "two-shapes.zip", {str(f.relative_to(tmp_path)): f.read_bytes()
                                                    for f in sorted(data.rglob("*.png"))})
    before = set((root / "checkpoints").iterdir())
    job = client.submit(*train_args("zip", handle_file(str(upload)), epochs=3), api_name="/train")
    updates = [out for out in job]
    assert job.status().success

    epochs_seen = sorted({max_epoch(out[2]) for out in updates} - {0})
    assert epochs_seen == [1, 2, 3]  # the loss curve was redrawn after each epoch, while training
    final = [out for out in updates if isinstance(out[0], str)][-1]  # the last visible change
    assert "Done" in final[0] and "Finished" in final[5]
    # the accuracy with its count and 95 % interval, and a plain warning: a few photos per class
    assert re.search(r"\(\d+/\d+; 95% interval \d+–\d+%\)", final[5]) and "Rough figure" in final[5]
    assert [row[0] for row in final[6]["data"]] == ["circle", "square"]  # per-class table
    assert Path(final[7]).is_file()  # confusion matrix

    assert not any((root / "work" / "uploads").iterdir())  # the extracted upload is gone after the run
    new = set((root / "checkpoints").iterdir()) - before
    assert len(new) == 1
    run = new.pop()
    assert run.name in final[5] and load_checkpoint(run).classes == ("circle", "square")

    # predictions now use it, for this visitor only: a newcomer gets the operator's default model
    label, _, _, text = classify(client, photo(tmp_path / "c.png", "circle"))
    assert {c["label"] for c in label["confidences"]} == {"circle", "square"} and run.name in text
    label, _, _, text = classify(new_client(url, tmp_path / "downloads2"), photo(tmp_path / "c.png", "circle"))
    assert {c["label"] for c in label["confidences"]} == set(CLASSES) and run.name not in text


def test_stop_ends_the_run_keeps_the_best_checkpoint_and_others_get_busy(served, client, tmp_path):
    demo, url, root = served
    data = make_dataset(root / "data" / "stoppable", per_class=20, size=48, seed=4)
    other = new_client(url, tmp_path / "downloads2")
    # full mode on a CPU: slow enough per epoch (a second or so) that a stop lands mid-run
    job = client.submit(*train_args("folder", None, str(data), mode="full", epochs=100, batch_size=4),
                        api_name="/train")
    updates, stopped = [], False
    for out in job:
        updates.append(out)
        if not stopped and max_epoch(out[2]) >= 1:
            with pytest.raises(AppError, match="busy"):
                other.predict(*train_args("folder", None, str(data)), api_name="/train")
            with pytest.raises(AppError, match="another visitor"):
                other.predict(api_name="/stop")
            assert "Stopping" in client.predict(api_name="/stop")
            stopped = True
    assert stopped, "the run never reported an epoch"
    final = updates[-1]
    assert "Stopped" in final[0] and "Stopped" in final[5], final[0]
    last = max(max_epoch(out[2]) for out in updates)
    assert 1 <= last < 100

    run = next(p for p in (root / "checkpoints").iterdir() if p.name in final[5])
    clf = load_checkpoint(run)
    assert clf.classes == CLASSES and clf.meta["metrics"]["stopped"] is True
    assert client.predict(api_name="/stop") == "No training is running."
    # the slot is free again: a new (tiny) training starts and finishes
    tiny = make_dataset(root / "data" / "again", per_class=4, size=48, classes=("circle", "square"), seed=5)
    assert "Done" in client.predict(*train_args("folder", None, str(tiny), epochs=1), api_name="/train")[0]


def forged_huge_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A few hundred bytes claiming to be a width x height PNG (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_bad_images_get_clear_errors_and_the_app_keeps_answering(client, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    good = photo(tmp_path / "good.png", "circle")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # truncated mid-data
    huge = forged_huge_png(tmp_path / "huge.png")

    cases = [(text, "not a recognised image"), (corrupt, "corrupt or truncated"), (huge, "too large")]
    for path, problem in cases:
        with pytest.raises(AppError) as err:
            classify(client, path)
        message = str(err.value)
        assert problem in message and path.name in message and "Accepted" in message, message

    label, _, _, _ = classify(client, good)
    assert set(label["confidences"][0]) == {"label", "confidence"}
    assert "px" not in answer(client, good)[4]  # the headline of a photo of a usable size: no size warning

    # answered, with a warning in the headline that the answer means little, as the dataset check warns of them
    from PIL import Image
    for size in ((1, 1), (2000, 40)):
        Image.new("RGB", size, (200, 40, 40)).save(tmp_path / "small.png")
        out = answer(client, tmp_path / "small.png")
        verdict = out[4]
        assert f"This photo is {size[0]}×{size[1]} px" in verdict and "means little" in verdict, verdict
        with Image.open(out[1]) as overlay, Image.open(out[2]) as heatmap:  # shown at a size one can see
            assert min(max(overlay.size), max(heatmap.size)) >= 256, (overlay.size, heatmap.size)  # 1x1: enlarged
    # a long thin photo: the model sees the square in its middle (the dataset check warns of these too)
    Image.new("RGB", (4000, 100), (200, 40, 40)).save(tmp_path / "strip.png")
    verdict = answer(client, tmp_path / "strip.png")[4]
    assert "40 times wider than tall" in verdict and "2% of it" in verdict, verdict


def test_bad_datasets_get_clear_errors_and_leave_nothing_behind(served, client, tmp_path):
    demo, url, root = served
    png = photo(tmp_path / "x.png").read_bytes()
    loose = make_zip(tmp_path / "loose.zip", {"a.png": png, "b.png": png, "readme.txt": b"hi"})
    escape = make_zip(tmp_path / "escape.zip", {"circle/a.png": png, "../../escaped.png": png})
    not_zip = tmp_path / "fake.zip"
    not_zip.write_bytes(b"PK but not really")
    outside = tmp_path / "elsewhere"
    make_dataset(outside, per_class=2, size=32)
    (root / "data" / "link").symlink_to(outside, target_is_directory=True)

    cases = [
        (("zip", handle_file(str(loose)), ""), "No class folders found in loose.zip;"),  # not a server path
        # the layout in words the browser's toast shows (it reads the text as HTML: <class> vanished as a tag)
        (("zip", handle_file(str(loose)), ""), "expected the layout root/‹class›/‹image›"),
        (("zip", handle_file(str(escape)), ""), "outside the extraction folder"),
        (("zip", handle_file(str(not_zip)), ""), "not a readable .zip"),
        (("zip", None, ""), "Upload a .zip"),
        (("folder", None, str(outside)), "outside the folders this server allows"),
        (("folder", None, str(root / "data" / "link")), "outside the folders this server allows"),
        (("folder", None, str(root / "data" / ".." / "checkpoints")), "'..' is not allowed"),
        (("folder", None, str(root / "data" / "missing")), "not an existing folder"),
    ]
    for (source, zip_file, folder), problem in cases:
        for api in ("/scan_dataset", "/train"):
            args = (source, zip_file, folder) if api == "/scan_dataset" else train_args(source, zip_file, folder)
            with pytest.raises(AppError, match=re.escape(problem)):
                client.predict(*args, api_name=api)

    assert not list(root.rglob("escaped.png")) and not list(tmp_path.parent.rglob("escaped.png"))
    assert not any((root / "work" / "uploads").iterdir())  # failed extractions are cleaned up
    label, _, _, _ = classify(client, photo(tmp_path / "after.png", "square"))
    assert len(label["confidences"]) >= 2


def _handler(demo, api_name: str):
    return next(f.fn for f in demo.fns.values() if f.api_name == api_name)


def test_a_bug_in_a_handler_is_logged_with_its_traceback_and_shown_as_an_error(tmp_path, monkeypatch, caplog):
    import logging

    import gradio as gr

    import app
    from flowerdemo.data.dataset import DatasetError
    from ui import train_data
    from ui.state import AppContext, Settings

    settings = Settings(checkpoint_dir=tmp_path / "checkpoints", work_dir=tmp_path / "work", cache_dir=tmp_path / "c")
    check = _handler(app.create_demo(AppContext.create(settings)), "scan_dataset")
    caplog.set_level(logging.INFO)

    def buggy(*args, **kwargs):
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(train_data, "open_dataset", buggy)
    with pytest.raises(gr.Error) as err:
        list(check("zip", "data.zip", "", None))
    assert "error in the server (TypeError)" in err.value.message and err.value.message.endswith(".")
    bug = next(r for r in caplog.records if r.exc_info)
    assert bug.levelno == logging.ERROR and bug.exc_info[0] is TypeError and "Checking the dataset" in bug.getMessage()
    assert "Traceback" in caplog.text and "unsupported operand type(s)" in caplog.text

    caplog.clear()  # the visitor's mistake: one log line, no traceback, the core's message shown as it is

    def bad_input(*args, **kwargs):
        raise DatasetError("no class folders found in data.zip; expected one sub-folder per class")

    monkeypatch.setattr(train_data, "open_dataset", bad_input)
    shown = []
    with pytest.raises(gr.Error) as err:
        shown.extend(check("zip", "data.zip", "", None))
    assert err.value.message == "No class folders found in data.zip; expected one sub-folder per class."
    # said where the last dataset's findings were, which go (its thumbnails too): not left beside the refusal
    (found, _, thumbs, *_), = shown
    assert found == f"**Not checked.** {err.value.message}" and thumbs == []
    assert [r.levelno for r in caplog.records] == [logging.INFO] and not caplog.records[0].exc_info


def test_the_train_summary_shows_the_interval_the_warning_and_the_calibration():
    from flowerdemo.train.events import Finished
    from ui.train_view import TrainView

    report = {"accuracy": 1.0, "correct": 9, "total": 9, "accuracy_interval": [0.7008, 1.0], "macro_f1": 1.0,
              "warning": "The validation split has only 3 photos of a: the accuracy is rough.",
              "calibration": {"temperature": 0.667, "before": {"ece": 0.0802, "nll": 0.21, "brier": 0.061},
                              "after": {"ece": 0.0165, "nll": 0.12, "brier": 0.052}},
              "per_class": {}, "confusion_matrix": []}
    out = TrainView(3).finished(Finished(Path("run-x"), 1.0, 2, 3, 12.0, False, report, ()))
    assert "100.0% (9/9; 95% interval 70–100%)" in out["summary"]
    assert "Rough figure." in out["summary"] and "only 3 photos of a" in out["summary"]
    assert "temperature 0.667" in out["summary"] and "0.080 → 0.017" in out["summary"]
    assert "NLL) 0.210 → 0.120" in out["summary"] and "Brier score 0.061 → 0.052" in out["summary"]
    # a temperature that could not be fitted: why, not "calibrated ... 0.415 → 0.415"
    note = "no mistake among the 9 validation photos: nothing to calibrate against"
    report["calibration"] = {"temperature": 1.0, "note": note, "before": {"ece": 0.415, "nll": 0.5, "brier": 0.2},
                             "after": {"ece": 0.415, "nll": 0.5, "brier": 0.2}}
    out = TrainView(3).finished(Finished(Path("run-x"), 1.0, 2, 3, 12.0, False, report, ()))
    assert f"Confidence left as the model gives it (temperature 1): {note}." in out["summary"]
    assert "calibrated" not in out["summary"] and "0.415 → 0.415" not in out["summary"]


def test_the_dataset_preview_says_what_it_found_about_near_duplicates_even_when_nothing(tmp_path):
    import dataclasses

    from flowerdemo.data.dataset import scan_dataset
    from tests.synth import make_dataset

    split = scan_dataset(make_dataset(tmp_path / "d", per_class=3, size=32), val_fraction=0.34, seed=0)
    none = dataclasses.replace(split, near_duplicate_groups=0, groups_kept_together=0, groups_left_split=0)
    assert none.duplicates_text() == "No identical or near-identical photos found."
    some = dataclasses.replace(split, near_duplicate_groups=3, groups_kept_together=2, groups_left_split=1)
    text = some.duplicates_text()
    assert text.startswith("3 groups of identical or near-identical photos found; 2 kept on one side")
    assert "1 on both sides" in text and "flowerdemo check" in text


def test_a_checkpoints_time_is_shown_in_plain_words():
    from ui.models_tab import readable_time

    assert readable_time("2026-11-26T15:42:09+00:00") == "2026-11-26 15:42 UTC"
    assert readable_time("2026-11-26T16:42:09+01:00") == "2026-11-26 15:42 UTC"
    assert readable_time("2026-11-26T15:42:09") == "2026-11-26 15:42"
    assert readable_time("yesterday") == "yesterday"


def test_every_error_the_app_raises_has_a_title_not_just_error():
    """Gradio titles a toast "Error" unless told: every gr.Error in the UI says what it is about. And a visitor's
    mistake is not a server failure: none prints a traceback in the operator's log (a share code mistyped did)."""
    import ast

    untitled = []
    for path in [REPO / "app.py", *sorted((REPO / "ui").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "gr.Error":
                told = {k.arg: ast.unparse(k.value) for k in node.keywords}
                if "title" not in told or told.get("print_exception") != "False":
                    untitled.append(f"{path.name}:{node.lineno}")
    assert untitled == []
    from ui.errors import ui_error

    assert ui_error(ValueError("bad zip"), "Checking the dataset").title == "Checking the dataset"
    # a sentence starts with a capital; a message that starts with the visitor's file name keeps it as given
    assert ui_error(ValueError("there is already a class 'rose'"), "Adding a class").message == \
        "There is already a class 'rose'."
    for given in ("notes.jpg: not a recognised image", "readme: empty", "flowers_v2.zip: no class folders"):
        assert ui_error(ValueError(given), "Checking").message == given + "."


def test_an_unreadable_photo_takes_the_last_answer_away(served, tmp_path):
    """'rose · 99%' and its heatmap stayed beside a photo that could not be read (a walkthrough)."""
    import gradio as gr

    demo, _, _ = served
    notimage = tmp_path / "notimage.jpg"
    notimage.write_text("a text file named .jpg")
    outputs = _handler(demo, "predict")(str(notimage))
    probs, overlay, heatmap, summary, head, info, _ = next(outputs)
    assert (probs, overlay, heatmap, head, info) == (None, None, None, "", None)
    assert summary.startswith("**Not classified.**") and "notimage.jpg" in summary
    with pytest.raises(gr.Error, match="notimage.jpg.*Accepted"):
        next(outputs)


def test_the_onnx_download_is_named_as_the_model_is_and_an_empty_share_code_is_asked_for(served, tmp_path,
                                                                                         monkeypatch):
    import gradio as gr

    from flowerdemo.serve import owners
    from ui import models_tab

    demo, _, _ = served
    made = tmp_path / "made" / "20261202-111956-efficientnet_lite0-1.onnx"  # the export, named by the run's folder
    made.parent.mkdir()
    made.write_bytes(b"onnx")
    monkeypatch.setattr(models_tab, "onnx_download", lambda ctx, clf, int8: made)
    monkeypatch.setattr(owners, "display_name", lambda run, record=None: "my garden")
    got = Path(_handler(demo, "download_onnx")(None))
    assert got.name == "my-garden.onnx" and got.read_bytes() == b"onnx" and made.is_file()
    with pytest.raises(gr.Error, match="share code you were given"):
        _handler(demo, "open_shared")("  ")


def test_a_refused_checkpoint_upload_is_said_by_the_upload_box(served, tmp_path):
    import gradio as gr

    demo, _, _ = served
    exported = tmp_path / "my-garden.onnx"
    exported.write_bytes(b"onnx")
    outputs = _handler(demo, "upload_checkpoint")(str(exported))
    active, said = next(outputs)
    assert said.startswith("**Not loaded.**") and "my-garden.onnx is an ONNX export" in said
    with pytest.raises(gr.Error, match="ONNX export"):
        next(outputs)
