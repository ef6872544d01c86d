"""Export round trips on a tiny synthetic model: ONNX and TorchScript match flowerdemo's torch path within 1e-4,
the metadata reads back, int8 keeps the unknown-photo detector in float32, the CLI, the app's cached download,
and examples/onnx_predict.py (onnxruntime + numpy + Pillow only) as a user would run it."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from flowerdemo.export import ExportError, export, export_model, read_metadata
from flowerdemo.export.graph import pixels_from_tensor
from flowerdemo.infer.predict import classify, familiarity
from flowerdemo.models import registry, unknown
from flowerdemo.models.checkpoints import load_checkpoint, save_checkpoint
from flowerdemo.models.registry import ModelSpec, Preprocessing, build_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # TorchScript, chosen knowingly

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["circle", "square", "triangle"]
SIZE = 240  # above the reference encoder's 224: the graph must downsample with antialiasing, as for Lite2
TOL = 1e-4
FEATURES = 16


def _tiny_backbone(pretrained: bool) -> tuple[nn.Module, int]:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, FEATURES, 3, stride=4, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    return net, FEATURES


TINY = ModelSpec("tiny_export_test", "a tiny CNN for the export tests", True,
                 Preprocessing(SIZE, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), 0.9), _tiny_backbone,
                 lambda m: [m[:3], m[3:]], lambda m: m[3], lambda m: (m[:3], m[3:]))


def _tiny_encoder() -> nn.Module:
    """Stands in for the bundled Lite0 reference encoder: same role (224 px in, features out), milliseconds."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, FEATURES, 5, stride=8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)).eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A checkpoint of the tiny model (random weights and BatchNorm statistics, temperature 1.7, an unknown-photo
    detector over the tiny encoder's features), loaded, and its ONNX export: made once, the exporter is slow."""
    root = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(registry.MODELS, TINY.name, TINY)
        mp.setitem(unknown._encoders, "cpu", _tiny_encoder())
        torch.manual_seed(0)
        model = build_model(TINY.name, len(CLASSES), pretrained=False, hidden=16)
        bn = model.backbone[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        g = torch.Generator().manual_seed(0)
        detector = unknown.fit_detector(torch.randn(40, FEATURES, generator=g), torch.arange(40) % 3,
                                        torch.randn(12, FEATURES, generator=g), k=5)
        meta = {"architecture": TINY.name, "classes": CLASSES, "head": {"kind": "mlp", "hidden": 16, "dropout": 0.2},
                "preprocessing": TINY.preprocessing.to_dict(), "calibration": {"temperature": 1.7}}
        run = save_checkpoint(root / "tiny-run", model.eval(), meta, detector=detector)
        clf = load_checkpoint(run)
        onnx_file = export(clf, "onnx", root / "out")
        yield SimpleNamespace(run=run, clf=clf, onnx=onnx_file, root=root)


def _crops(clf, n: int = 3) -> torch.Tensor:
    """n normalised crops as predict prepares them (from random photos of another size than the crop)."""
    from flowerdemo.infer.preprocess import prepare_image

    rng = np.random.default_rng(0)
    return torch.cat([prepare_image(rng.integers(0, 256, (300 + 20 * i, 260, 3), dtype=np.uint8), clf.preprocessing).tensor
                      for i in range(n)])


def _torch_outputs(clf, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """flowerdemo's own answer: calibrated probabilities and unknown-photo scores."""
    with torch.inference_mode():
        probs = clf.softmax(clf.model(x.contiguous(memory_format=torch.channels_last))).numpy()
    return probs, np.array([f.score for f in familiarity(clf, x, "off")])


def test_onnx_matches_torch_with_any_batch_and_carries_its_metadata(tiny):
    from flowerdemo.export.onnx import session

    res = tiny.onnx
    assert res.path.name == "tiny-run.onnx" and res.int8 is None and res.unknown_included and res.max_abs_diff <= TOL
    x = _crops(tiny.clf)  # a batch of 3: the graph was traced with 2, so the batch axis must be free
    probs, scores = _torch_outputs(tiny.clf, x)
    sess = session(res.path)
    assert [o.name for o in sess.get_outputs()] == ["probabilities", "logits", "unknown_score"]
    got = sess.run(None, {"pixels": pixels_from_tensor(x, TINY.preprocessing.mean, TINY.preprocessing.std).numpy()})
    assert np.abs(got[0] - probs).max() <= TOL
    assert np.abs(got[2] - scores).max() <= TOL
    # the temperature is applied once: probabilities = softmax(logits / 1.7), not the plain softmax
    plain = torch.from_numpy(got[1]).softmax(1).numpy()
    assert np.abs(got[0] - plain).max() > 1e-3
    meta = read_metadata(res.path)
    assert meta["classes"] == CLASSES and meta["temperature"] == pytest.approx(1.7)
    assert meta["preprocessing"]["input_size"] == SIZE and meta["preprocessing"]["resize_size"] == round(SIZE / 0.9)
    assert meta["preprocessing"]["mean"] == list(TINY.preprocessing.mean)
    assert meta["unknown"]["included"] and meta["unknown"]["thresholds"] == tiny.clf.detector.thresholds
    assert meta["source_checkpoint"]["run"] == "tiny-run" and meta["quantization"]["method"] == "none"


def test_exports_in_one_process_take_turns(tiny, tmp_path, monkeypatch):
    """Two visitors pressing Download as ONNX at once: torch's exporters are not thread-safe (two at once failed in
    the app with "Failed to decompose the FX graph"), so the second waits for the first and both succeed."""
    import threading
    import time

    import flowerdemo.export as export_module

    real, running, most = export_module.export_onnx, [0], [0]

    def watched(*args, **kwargs):
        running[0] += 1
        most[0] = max(most[0], running[0])
        time.sleep(0.2)  # long enough for the other thread to arrive
        try:
            return real(*args, **kwargs)
        finally:
            running[0] -= 1

    monkeypatch.setattr(export_module, "export_onnx", watched)
    results: list = []
    threads = [threading.Thread(target=lambda i=i: results.append(export(tiny.clf, "onnx", tmp_path / f"out{i}")))
               for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1 and len(results) == 2 and all(r.path.is_file() for r in results)


def test_a_librarys_long_coloured_error_reaches_the_visitor_as_one_readable_paragraph():
    from ui.errors import MAX_MESSAGE, ui_error

    exc = RuntimeError("Failed to export the model with torch.export. \x1b[96mThis is step 1/3\x1b[0m of exporting."
                       "\n\nPlease submit a PR to PyTorch ... " + "x" * 5000)
    text = ui_error(exc, "Exporting the active model to ONNX").message
    assert "\x1b" not in text and "submit a PR" not in text and len(text) < MAX_MESSAGE + 100
    assert text == "Exporting the active model to ONNX failed: Failed to export the model with torch.export. " \
                   "This is step 1/3 of exporting."


def test_torchscript_matches_torch_and_carries_its_metadata(tiny):
    res = export(tiny.clf, "torchscript", tiny.root / "ts")
    x = _crops(tiny.clf, 4)
    probs, scores = _torch_outputs(tiny.clf, x)
    out = torch.jit.load(str(res.path))(pixels_from_tensor(x, TINY.preprocessing.mean, TINY.preprocessing.std))
    assert np.abs(out[0].numpy() - probs).max() <= TOL
    assert np.abs(out[2].numpy() - scores).max() <= TOL
    meta = read_metadata(res.path)
    assert meta["classes"] == CLASSES and meta["unknown"]["included"] and meta["temperature"] == pytest.approx(1.7)


def test_int8_quantises_the_classifier_and_leaves_the_detector_in_float32(tiny):
    from flowerdemo.export.onnx import float32_nodes, quantize_int8, sensitive_nodes, session

    kept = float32_nodes(tiny.onnx.path)
    graph = _graph(tiny.onnx.path)
    assert {n.op_type for n in graph.node if n.name in kept} >= {"Resize", "Conv", "MatMul", "TopK", "Softmax"}
    assert {n.op_type for n in graph.node if n.name not in kept} >= {"Conv", "Gemm"}  # the classifier
    dst = tiny.root / "int8.onnx"
    quantize_int8(tiny.onnx.path, dst, "dynamic")
    pixels = pixels_from_tensor(_crops(tiny.clf), TINY.preprocessing.mean, TINY.preprocessing.std).numpy()
    fp32 = session(tiny.onnx.path).run(None, {"pixels": pixels})
    int8 = session(dst).run(None, {"pixels": pixels})
    meta = read_metadata(dst)
    assert meta["quantization"]["method"] == "dynamic" and meta["classes"] == CLASSES
    assert any(n.op_type in ("ConvInteger", "MatMulInteger", "DynamicQuantizeLinear") for n in _graph(dst).node)
    # the classifier's stem convolution and linear head stay float32 (the layers int8 hurt most)
    ends = sensitive_nodes(tiny.onnx.path, kept)
    assert len(ends) >= 2 and graph.node[[n.name for n in graph.node].index(ends[0])].op_type == "Conv"
    quantised = {n.op_type for n in _graph(dst).node if any(n.name.startswith(end) for end in ends)}
    assert "ConvInteger" not in quantised and "MatMulInteger" not in quantised  # (a Gemm becomes MatMul + Add)
    assert meta["quantization"]["float32_layers"] == "the first convolution and the linear head"
    assert np.abs(int8[2] - fp32[2]).max() <= 1e-5  # the detector's scores: its thresholds were set in float32
    assert np.abs(int8[0] - fp32[0]).max() < 0.2 and int8[0].sum(1) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ExportError, match="calibration photos"):
        quantize_int8(tiny.onnx.path, dst, "static")


def _graph(path: Path):
    import onnx

    return onnx.load(str(path)).graph


def test_options_and_missing_packages_are_explained(tiny, monkeypatch, tmp_path):
    with pytest.raises(ExportError, match="unknown export format 'tflite'; choose one of: onnx, torchscript"):
        export_model(tiny.run, "tflite", tmp_path)
    with pytest.raises(ExportError, match="int8 is only available for ONNX"):
        export_model(tiny.run, "torchscript", tmp_path, int8=True)
    with pytest.raises(ExportError, match="calibration folder .*nowhere not found"):
        export_model(tiny.run, "onnx", tmp_path, int8=True, calibration=tmp_path / "nowhere")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ExportError, match=r'onnxruntime, which are not installed: run `pip install "flowerdemo\[onnx\]"'):
        export(tiny.clf, "onnx", tmp_path)
    assert not list(tmp_path.glob("*.onnx"))


def test_cli_exports_without_the_detector_when_asked(tiny, tmp_path, capsys):
    from flowerdemo.cli import export as cli

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", "--checkpoint", str(tiny.run), "--format", "torchscript", "--no-unknown",
                              "--out", str(tmp_path), "--json"])
    assert cli.run(args) == 0
    record = json.loads(capsys.readouterr().out)
    path = Path(record["file"])
    assert path.parent == tmp_path and path.stat().st_size == record["bytes"] and record["unknown_included"] is False
    meta = read_metadata(path)
    assert meta["unknown"]["included"] is False and "NOT included" in meta["about"]
    assert len(torch.jit.load(str(path))(torch.zeros(1, SIZE, SIZE, 3, dtype=torch.uint8))) == 2  # no score
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--format", "tflite"])


def test_example_script_classifies_a_photo_without_torch(tiny, tmp_path):
    """A big, rotated, non-square JPEG: the example's draft decode, EXIF turn and crop must be flowerdemo's."""
    rng = np.random.default_rng(1)
    photo = tmp_path / "photo.jpg"
    img = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).resize((1600, 1200), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    img.save(photo, "JPEG", quality=90, exif=exif)
    script = REPO / "examples" / "onnx_predict.py"
    guard = ("import sys, runpy; sys.modules['torch'] = None; sys.modules['flowerdemo'] = None; "  # no torch, no us
             f"sys.argv = {[str(script), str(tiny.onnx.path), str(photo), '--top-k', '3', '--json']!r}; "
             f"runpy.run_path({str(script)!r}, run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", guard], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(unknown._encoders, "cpu", _tiny_encoder())
        want = classify(tiny.clf, photo, strictness="normal")
    assert list(got["probabilities"]) == list(want.probabilities)  # same order: same top class
    assert max(abs(got["probabilities"][k] - v) for k, v in want.probabilities.items()) <= TOL
    assert got["unknown"]["score"] == pytest.approx(want.familiarity.score, abs=TOL)
    assert got["unknown"]["known"] == want.familiarity.known and got["unknown"]["strictness"] == "normal"


def test_app_download_is_made_once_per_checkpoint_file(tiny, tmp_path, monkeypatch):
    import flowerdemo.export as export_module
    from ui import models_tab

    calls = []

    def fake_export(clf, fmt, out_dir, *, int8=False, calibration=None, with_unknown=True):
        calls.append((fmt, int8, calibration))
        path = Path(out_dir) / ("tiny-run" + (".int8.onnx" if int8 else ".onnx"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"onnx")
        return path

    monkeypatch.setattr(export_module, "export", fake_export)
    ctx = SimpleNamespace(settings=SimpleNamespace(folder=lambda name: tmp_path / name))
    first = models_tab.onnx_download(ctx, tiny.clf, int8=False)
    assert models_tab.onnx_download(ctx, tiny.clf, int8=False) == first and len(calls) == 1  # cached
    quantised = models_tab.onnx_download(ctx, tiny.clf, int8=True)
    assert quantised.name == "tiny-run.int8.onnx" and len(calls) == 2
    assert calls[1][2] and all(Path(p).is_file() for p in calls[1][2])  # calibrated on pictures that exist
