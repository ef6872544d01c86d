"""Exporting a checkpoint to run without flowerdemo: ONNX (float32, or int8 quantised with onnxruntime's
tools) or TorchScript. The file takes the eval crop as uint8 pixels and returns calibrated probabilities
(+ the unknown-photo score when the checkpoint has a detector), and carries its class names, preprocessing,
temperature and thresholds as metadata (export/metadata.py). `examples/onnx_predict.py` runs one with
onnxruntime, numpy and Pillow only."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowerdemo.export.onnx import EXPORTING, ExportError, export_onnx, quantize_int8, read_onnx_metadata
from flowerdemo.export.torchscript import export_torchscript, read_torchscript_metadata
from flowerdemo.models.checkpoints import Classifier, load_checkpoint, safe_name

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
SUFFIXES = {("onnx", False): ".onnx", ("onnx", True): ".int8.onnx", ("torchscript", False): ".torchscript.pt"}
CALIBRATION_PHOTOS = 64  # static int8: photos whose activation ranges set the scales (more changes little)

__all__ = ["FORMATS", "ExportError", "ExportResult", "export", "export_model", "read_metadata"]


@dataclass(frozen=True)
class ExportResult:
    path: Path
    fmt: str  # onnx | torchscript
    int8: str | None  # None (float32), "dynamic" or "static"
    size_bytes: int
    max_abs_diff: float  # float32 file vs torch, max |Δprobability| on the check batch
    unknown_included: bool


def export_model(checkpoint: str | Path, fmt: str, out_dir: str | Path, *, int8: bool = False,
                 calibration: str | Path | Sequence[Path] | None = None, with_unknown: bool = True) -> Path:
    """Export the checkpoint (run folder or .safetensors) to `out_dir`; returns the file written.
    int8 (ONNX only): static quantisation with photos from the folder `calibration` when given, else
    dynamic."""
    check_options(fmt, int8, calibration)
    return export(load_checkpoint(checkpoint), fmt, out_dir, int8=int8, calibration=calibration,
                  with_unknown=with_unknown).path


def check_options(fmt: str, int8: bool, calibration: str | Path | Sequence[Path] | None = None) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if int8 and fmt != "onnx":
        raise ExportError("int8 is only available for ONNX (onnxruntime's quantisation tools); "
                          "export --format onnx --int8, or TorchScript in float32")
    if calibration is not None and not int8:
        raise ExportError("calibration photos are only used by int8 quantisation: add --int8 or leave them out")
    if isinstance(calibration, (str, Path)) and not Path(calibration).is_dir():
        raise ExportError(f"calibration folder {calibration} not found: give a folder of photos (class "
                          "sub-folders allowed), e.g. some of the training photos")


def export(clf: Classifier, fmt: str, out_dir: str | Path, *, int8: bool = False,
           calibration: str | Path | Sequence[Path] | None = None, with_unknown: bool = True) -> ExportResult:
    """Export a loaded classifier (the app passes the one it serves; it is copied, not changed). Exports in one
    process take turns (`onnx.EXPORTING`): a second one waits for the first."""
    check_options(fmt, int8, calibration)
    with EXPORTING:
        return _export(clf, fmt, out_dir, int8, calibration, with_unknown)


def _export(clf: Classifier, fmt: str, out_dir: str | Path, int8: bool,
            calibration: str | Path | Sequence[Path] | None, with_unknown: bool) -> ExportResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / (safe_name(clf.name) + SUFFIXES[fmt, int8])
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as work:
        tmp = Path(work) / ("model.pt" if fmt == "torchscript" else "model.onnx")
        if fmt == "torchscript":
            diff = export_torchscript(clf, tmp, with_unknown)
        else:
            diff = export_onnx(clf, tmp, with_unknown)
        method = None
        if int8:
            method = "static" if calibration is not None else "dynamic"
            if method == "dynamic":
                log.warning("int8 without calibration photos: dynamic quantisation, which loses accuracy on this kind "
                            "of CNN and runs slower than float32 on a CPU (docs/benchmarks.md); pass calibration photos "
                            "for static quantisation")
            quantized = Path(work) / "model.int8.onnx"
            batches = list(calibration_batches(clf, calibration)) if calibration is not None else None
            quantize_int8(tmp, quantized, method, batches)
            tmp = quantized
        os.replace(tmp, target)  # whole files only: a concurrent download never sees a half-written one
    meta = read_metadata(target)
    return ExportResult(target, fmt, method, target.stat().st_size, diff, bool(meta["unknown"]["included"]))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The flowerdemo metadata of an exported file (.onnx or TorchScript)."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"no exported model at {path}")
    return read_onnx_metadata(path) if path.suffix == ".onnx" else read_torchscript_metadata(path)


def calibration_batches(clf: Classifier, photos: str | Path | Sequence[Path], limit: int = CALIBRATION_PHOTOS,
                        batch: int = 8) -> Iterator[Any]:
    """uint8 pixel batches (N, S, S, 3) of up to `limit` photos (a folder, spread over its sub-folders, or
    a list of files), prepared exactly as for prediction."""
    import torch

    from flowerdemo.data.images import is_image_file
    from flowerdemo.export.graph import pixels_from_tensor
    from flowerdemo.infer.preprocess import prepare_image

    if isinstance(photos, (str, Path)):
        files = sorted(f for f in Path(photos).rglob("*") if f.is_file() and is_image_file(f))
    else:
        files = [Path(f) for f in photos]
    if not files:
        raise ExportError(f"no photos in {photos} (accepted: .jpg .jpeg .png .webp .bmp .gif)")
    step = max(1, len(files) // limit)
    chosen = files[::step][:limit]  # every n-th file: sorted by folder, so every class is represented
    p = clf.preprocessing
    for i in range(0, len(chosen), batch):
        x = torch.cat([prepare_image(f, p).tensor for f in chosen[i:i + batch]])
        yield pixels_from_tensor(x, p.mean, p.std).numpy()
