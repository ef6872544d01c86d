"""ONNX export (torch.export-based exporter), its metadata, its parity check, and int8 quantisation with
onnxruntime's tools.

Why the torch.export-based ("dynamo") exporter, torch's default: it is the maintained one (the TorchScript
exporter warns that it will be removed), it exports the antialiased resize the unknown-photo detector
uses (the old one refuses `_upsample_bilinear2d_aa`), and its graph matches torch to ~1e-6 in probability
(docs/benchmarks.md). It is slow: about a minute for an EfficientNet-Lite on a busy 2-core machine,
once per export.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowerdemo.export.graph import INPUT, ExportGraph, example_pixels
from flowerdemo.export.metadata import build_metadata, decode, encode
from flowerdemo.models.checkpoints import Classifier

log = logging.getLogger(__name__)

OPSET = 18  # the first with Resize(antialias=1); onnxruntime runs it from 1.14 on
PACKAGES = ("onnx", "onnxruntime", "onnxscript")  # onnxscript: the torch.export-based exporter needs it
INSTALL = 'pip install "flowerdemo[onnx]"  (or: pip install onnx onnxruntime onnxscript)'
PARITY_TOL = 1e-4  # max |Δprobability| fp32 ONNX vs torch on the check batch; measured ~1e-6
QUANT_METHODS = ("dynamic", "static")
MAX_BATCH = 4096


# One export at a time in a process: torch's ONNX exporters keep global state (two dynamo exports at once failed
# with "Failed to decompose the FX graph" in the app), and redirect_stdout below is process-wide
EXPORTING = threading.Lock()


class ExportError(ValueError):
    """An export that cannot be made: a missing package, a bad option, a graph that does not match torch."""


def require_packages(packages: Iterable[str] = PACKAGES) -> None:
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"ONNX export needs the package(s) {', '.join(missing)}, which are not installed: "
                          f"run `{INSTALL}`")


def session(path: str | Path, threads: int = 0):
    """An onnxruntime CPU session (`threads` intra-op threads; 0 = onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_onnx(clf: Classifier, path: str | Path, with_unknown: bool = True) -> float:
    """Write `clf` as a float32 ONNX file with a dynamic batch axis and its metadata; returns the max
    |Δprobability| against torch on a fixed check batch (raises ExportError beyond PARITY_TOL)."""
    require_packages()
    path = Path(path)
    graph = ExportGraph(clf, with_unknown).eval()
    example = example_pixels(clf.preprocessing.input_size)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    noise = io.StringIO()  # the exporter prints its progress; keep it for the debug log
    with contextlib.redirect_stdout(noise):
        torch.onnx.export(graph, (example,), str(path), input_names=[INPUT], output_names=graph.output_names,
                          dynamic_shapes={"pixels": {0: batch}}, opset_version=OPSET, dynamo=True,
                          external_data=False)
    log.debug("torch.onnx.export: %s", noise.getvalue().strip())
    write_metadata(path, build_metadata(clf, graph.with_unknown))
    with torch.no_grad():
        expected = graph(example)[0].numpy()
    got = session(path).run(["probabilities"], {INPUT: example.numpy()})[0]
    return require_parity(float(np.abs(got - expected).max()), path, f"the ONNX graph of {clf.name}", clf.name)


def require_parity(diff: float, path: Path, what: str, name: str) -> float:
    """`diff` (max |Δprobability| of the written file vs torch) when within PARITY_TOL; else the file is
    deleted and ExportError says by how much it missed. One rule for every format."""
    if not diff <= PARITY_TOL:
        path.unlink(missing_ok=True)
        raise ExportError(f"{what} does not match torch: max |Δprobability| {diff:.2e} > {PARITY_TOL:.0e}; "
                          "nothing was written")
    log.info("exported %s -> %s (max |Δprobability| vs torch %.1e)", name, path, diff)
    return diff


def write_metadata(path: str | Path, meta: dict[str, Any]) -> None:
    """Replace the file's metadata_props with `meta` (one JSON string per key)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, encode(meta))
    model.producer_name = "flowerdemo"
    onnx.save(model, str(path))


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The flowerdemo metadata of an exported .onnx file (read with onnxruntime, as a user would)."""
    return decode(dict(session(path).get_modelmeta().custom_metadata_map), str(path))


def quantize_int8(src: str | Path, dst: str | Path, method: str = "dynamic",
                  calibration: Iterable[np.ndarray] | None = None) -> None:
    """int8 copy of the float32 file `src` with its metadata (and how it was quantised).

    dynamic: int8 weights, activations quantised per call (no data needed). static: int8 weights and
    activations (QDQ, per channel), activation ranges from `calibration` (uint8 pixel batches like the
    graph's input, a few dozen training photos)."""
    require_packages(("onnx", "onnxruntime"))
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if method not in QUANT_METHODS:
        raise ExportError(f"unknown int8 method {method!r}; choose one of: {', '.join(QUANT_METHODS)}")
    src, dst = Path(src), Path(dst)
    meta = read_onnx_metadata(src)
    # only the classifier is quantised; the unknown-photo detector stays float32: its thresholds were set on
    # float32 scores, and quantising its encoder moves the scores enough to change verdicts (docs/benchmarks.md)
    keep = float32_nodes(src)
    # and the classifier's first convolution and its linear head: the layers most sensitive to int8 (the
    # stem sees raw pixel ranges; the head's few weights decide the classes). Chosen on training photos
    # (mean max |Δprobability| vs float32 0.0053 -> 0.0019) before the validation photos were scored:
    # docs/benchmarks.md §10
    keep += sensitive_nodes(src, keep)
    if method == "dynamic":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QUInt8, nodes_to_exclude=keep)
        how = {"method": "dynamic", "weights": "uint8 per tensor", "activations": "quantised per call",
               "float32_layers": "the first convolution and the linear head",
               "tool": "onnxruntime.quantization.quantize_dynamic"}
    else:
        batches = [np.asarray(b, dtype=np.uint8) for b in (calibration or [])]
        if not batches:
            raise ExportError("static int8 quantisation needs calibration photos (uint8 pixel batches)")
        quantize_static(str(src), str(dst), _Reader(batches), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=keep)
        how = {"method": "static", "weights": "int8 per channel", "activations": "uint8, ranges from "
               f"{sum(len(b) for b in batches)} calibration photos", "tool": "onnxruntime.quantization.quantize_static",
               "float32_layers": "the first convolution and the linear head"}
    how["float32"] = "the unknown-photo detector, the input normalisation and the softmax"
    write_metadata(dst, {**meta, "quantization": how})


def sensitive_nodes(path: str | Path, outside: Iterable[str] = ()) -> list[str]:
    """The first Conv and every Gemm/MatMul of the graph (by their names before and after quantize_dynamic
    rewrites a Gemm), leaving out the nodes named in `outside`."""
    import onnx

    skip = set(outside)
    nodes = [n for n in onnx.load(str(path)).graph.node if n.name not in skip]
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    linear = [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
    # quantize_dynamic first turns each Gemm into a MatMul named "<name>_MatMul" (+ an Add), then excludes by name
    return convs[:1] + linear + [f"{name}_MatMul" for name in linear]


def float32_nodes(path: str | Path) -> list[str]:
    """Names of the nodes outside the classifier (ExportGraph.model): the detector (its encoder, the bank,
    the k-NN) and the glue, found by the module scope the exporter records on each node."""
    import onnx

    nodes = []
    for node in onnx.load(str(path)).graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")
        if not scopes.startswith("['', 'model'"):
            nodes.append(node.name)
    return nodes


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of batches."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {INPUT: batch}
