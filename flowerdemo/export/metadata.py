"""What an exported file says about itself, so that it runs without flowerdemo: class names, the exact
preprocessing, the temperature, the unknown-photo thresholds (or that there is no detector in it), where
it came from. Every value is JSON; ONNX keeps them as `metadata_props` (onnxruntime:
`session.get_modelmeta().custom_metadata_map`), TorchScript as the extra file `meta.json`."""

from __future__ import annotations

import json
from typing import Any

from flowerdemo.export.graph import INPUT, LOGITS, PROBABILITIES, UNKNOWN_SCORE
from flowerdemo.models.checkpoints import Classifier
from flowerdemo.models.unknown import DEFAULT_STRICTNESS

FORMAT = "flowerdemo-export"
FORMAT_VERSION = 1
KEYS = ("format", "format_version", "classes", "preprocessing", "temperature", "unknown", "outputs",
        "flowerdemo_version", "source_checkpoint", "architecture", "quantization", "about")


class ExportMetadataError(ValueError):
    """An exported file without (readable) flowerdemo metadata."""


def build_metadata(clf: Classifier, with_unknown: bool, quantization: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metadata of one export of `clf` (values are plain JSON types)."""
    from flowerdemo import __version__

    p = clf.preprocessing
    included = bool(with_unknown and clf.detector is not None)
    preprocessing = {
        "input": INPUT, "dtype": "uint8", "layout": "NHWC", "channels": "RGB",
        "input_size": p.input_size, "resize_size": p.resize_size, "crop_pct": p.crop_pct,
        "mean": list(p.mean), "std": list(p.std), "normalisation": "inside the graph",
        "steps": [
            "decode; apply the EXIF orientation; RGB (transparency onto white); JPEG may decode at a reduced "
            "DCT scale (Pillow draft) whose short side is still >= resize_size",
            "centre square box of side round(short_side * input_size / resize_size)",
            "resize that box to input_size x input_size, bilinear (Pillow: Image.resize(box=..., "
            "reducing_gap=2.0 when the image is at least 4 * input_size wide, else None))",
            "feed uint8 (N, input_size, input_size, 3); the graph divides by 255 and normalises with mean/std",
        ],
    }
    if included:
        det = clf.detector
        unknown: dict[str, Any] = {
            "included": True, "output": UNKNOWN_SCORE, "method": "knn-cosine", "k": det.k,
            "bank_photos": int(det.bank.shape[0]), "thresholds": dict(det.thresholds),
            "default_strictness": DEFAULT_STRICTNESS,
            "rule": "unknown_score <= thresholds[strictness]: looks like the training photos; above it: none "
                    "of the classes (do not answer with one)",
        }
    else:
        reason = ("the checkpoint has no unknown-photo detector" if clf.detector is None
                  else "left out of this export")
        unknown = {"included": False, "reason": reason,
                   "note": "this file cannot say when a photo is none of its classes; every photo gets one"}
    outputs = {PROBABILITIES: f"softmax(logits / {clf.temperature:.6g}), calibrated; sums to 1 over classes",
               LOGITS: "before the temperature"}
    if included:
        outputs[UNKNOWN_SCORE] = "1 - mean cosine similarity to the 10 nearest training photos; higher = less familiar"
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "classes": list(clf.classes),
        "preprocessing": preprocessing, "temperature": float(clf.temperature), "unknown": unknown,
        "outputs": outputs, "flowerdemo_version": __version__,
        "source_checkpoint": {"run": clf.name, "created": clf.meta.get("created"),
                              "metrics": {k: v for k, v in (clf.meta.get("metrics") or {}).items()
                                          if k in ("best_val_acc", "best_epoch", "macro_f1")}},
        "architecture": clf.meta.get("architecture"),
        "quantization": quantization or {"method": "none", "dtype": "float32"},
        "about": "Exported by flowerdemo. Input: the eval crop as uint8 pixels (see preprocessing). "
                 + ("Unknown-photo detection is included (unknown_score output)." if included
                    else "Unknown-photo detection is NOT included."),
    }


def encode(meta: dict[str, Any]) -> dict[str, str]:
    """One JSON string per key (ONNX metadata_props hold strings)."""
    return {key: json.dumps(value) for key, value in meta.items()}


def decode(props: dict[str, str], source: str) -> dict[str, Any]:
    """The inverse of `encode`; raises ExportMetadataError naming `source` for a file that is not ours."""
    if "format" not in props:
        raise ExportMetadataError(f"{source} has no flowerdemo metadata (was it exported by flowerdemo?)")
    try:
        meta = {key: json.loads(value) for key, value in props.items() if key in KEYS}
    except ValueError as exc:
        raise ExportMetadataError(f"{source}: its flowerdemo metadata is not valid JSON ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise ExportMetadataError(f"{source}: unknown export format {meta.get('format')!r}")
    return meta
