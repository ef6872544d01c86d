"""Self-describing, pickle-free checkpoints: a run directory holding `model.safetensors`
(weights, with the metadata JSON embedded in the header so weights and description are replaced
together, atomically) and `meta.json` (the same metadata, for people and tools). The calibration
temperature is metadata too (`meta["calibration"]["temperature"]`); checkpoints without it use T = 1.
The unknown-photo detector (flowerdemo.models.unknown) adds `unknown.*` tensors beside the weights and
`meta["unknown"]`; checkpoints without it load with `detector=None`."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from flowerdemo.models.registry import FlowerNet, ModelError, Preprocessing, build_model
from flowerdemo.models.unknown import META_KEY as UNKNOWN_KEY
from flowerdemo.models.unknown import PREFIX as UNKNOWN_PREFIX
from flowerdemo.models.unknown import UnknownDetector, UnknownDetectorError

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
META = "meta.json"
FORMAT = "flowerdemo-checkpoint"
FORMAT_VERSION = 1
META_KEY = "flowerdemo"


class CheckpointError(ValueError):
    """A path that is not a usable flowerdemo checkpoint."""


@dataclass
class Classifier:
    """A loaded checkpoint: the model in eval mode plus what is needed to use it."""

    model: FlowerNet
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    meta: dict[str, Any]
    path: Path
    temperature: float = 1.0  # calibration: logits are divided by it before the softmax (1.0 = uncalibrated)
    detector: UnknownDetector | None = None  # "none of these" (None: saved before detectors existed)

    @property
    def name(self) -> str:
        return self.path.name

    def softmax(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities, softmax(logits / temperature) over dim 1: the one place every
        probability the product returns comes from. T = 1 gives exactly the plain softmax (x / 1.0 == x)."""
        return (logits.float() / self.temperature).softmax(1)


def library_versions() -> dict[str, str]:
    from flowerdemo import __version__

    return {"flowerdemo": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "python": platform.python_version()}


def new_run_dir(root: str | Path, model: str) -> Path:
    """A fresh, uniquely named run directory under `root`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = root / (f"{stamp}-{model}" + (f"-{i}" if i else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise CheckpointError(f"could not create a run directory under {root}")


def save_checkpoint(run_dir: str | Path, model: FlowerNet, meta: dict[str, Any], half: bool = False,
                    detector: UnknownDetector | None = None) -> Path:
    """Write weights (+ the unknown-photo detector) + metadata atomically (temp file, then rename): a
    crash leaves the old pair."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "weights_dtype": "float16" if half else "float32"}
    if detector is not None:
        meta[UNKNOWN_KEY] = detector.to_meta()
    else:  # the detector's metadata never outlives its tensors (e.g. a copy of an older checkpoint's meta)
        meta.pop(UNKNOWN_KEY, None)
    text = json.dumps(meta, indent=2, default=str)
    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().to("cpu")
        if half and value.is_floating_point():
            value = value.half()
        tensors[key] = value.contiguous()
    if detector is not None:
        tensors.update(detector.to_tensors())
    for name, write in ((WEIGHTS, lambda p: save_file(tensors, str(p), metadata={META_KEY: text})),
                        (META, lambda p: p.write_text(text))):
        tmp = run_dir / f".{name}.tmp-{os.getpid()}"
        write(tmp)
        os.replace(tmp, run_dir / name)
    return run_dir


def read_meta(path: str | Path) -> dict[str, Any]:
    """Metadata of a checkpoint (run directory or .safetensors file), from the weights file header."""
    weights = _weights_path(path)
    try:
        with safe_open(str(weights), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"{weights} is not a readable safetensors file: {exc}") from exc
    if META_KEY not in header:
        raise CheckpointError(f"{weights} has no flowerdemo metadata; only checkpoints written by flowerdemo load here")
    try:
        meta = json.loads(header[META_KEY])
    except ValueError as exc:
        raise CheckpointError(f"{weights}: its flowerdemo metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{weights}: its flowerdemo metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{weights}: unknown checkpoint format {meta.get('format')!r}")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{weights} was written by a newer flowerdemo (format {meta['format_version']}); upgrade")
    missing = [k for k in ("architecture", "classes", "head", "preprocessing") if k not in meta]
    if missing:
        raise CheckpointError(f"{weights}: metadata lacks {', '.join(missing)}")
    return meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """Rebuild the model from the file alone: no network, no pickle (safetensors holds only tensors)."""
    weights = _weights_path(path)
    meta = read_meta(weights)
    head = meta["head"]
    try:
        model = build_model(meta["architecture"], len(meta["classes"]), pretrained=False,
                            head=head["kind"], hidden=head["hidden"], dropout=head["dropout"])
    except ModelError as exc:  # e.g. an architecture from a newer flowerdemo
        raise CheckpointError(f"{weights}: {exc}") from exc
    state = load_file(str(weights))
    extra = {k: state.pop(k) for k in [k for k in state if k.startswith(UNKNOWN_PREFIX)]}
    try:
        detector = UnknownDetector.from_checkpoint(extra, meta.get(UNKNOWN_KEY))
    except UnknownDetectorError as exc:
        raise CheckpointError(f"{weights}: {exc}") from exc
    expected = model.state_dict()
    try:
        model.load_state_dict({k: v.to(expected[k].dtype) if k in expected else v for k, v in state.items()})
    except RuntimeError as exc:
        raise CheckpointError(f"{weights}: weights do not fit {meta['architecture']}: {exc}") from exc
    # NHWC: oneDNN's depthwise/1x1 kernels are faster in it (and tensor cores on CUDA); the single-image
    # forward it saves is measured in docs/benchmarks.md §3 (benchmarks/layout.py). save_checkpoint stores
    # contiguous copies.
    model.to(device).eval().to(memory_format=torch.channels_last)
    return Classifier(model, tuple(meta["classes"]), Preprocessing.from_dict(meta["preprocessing"]), meta,
                      weights.parent, _temperature(meta, weights), detector)


def _temperature(meta: dict[str, Any], weights: Path) -> float:
    """The stored calibration temperature; 1.0 for checkpoints written before calibration existed."""
    calibration = meta.get("calibration")
    if calibration is None:
        return 1.0
    t = calibration.get("temperature") if isinstance(calibration, dict) else None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise CheckpointError(f"{weights}: calibration temperature must be a positive number, got {t!r}")
    return float(t)


def list_checkpoints(root: str | Path) -> list[Path]:
    """Run directories under `root` that hold a readable checkpoint, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for weights in root.glob(f"*/{WEIGHTS}"):
        try:
            read_meta(weights)
        except (CheckpointError, ValueError, OSError) as exc:
            log.warning("ignoring %s: %s", weights.parent, exc)
            continue
        found.append(weights.parent)
    return sorted(found, key=lambda p: (p.joinpath(WEIGHTS).stat().st_mtime, p.name), reverse=True)


def _weights_path(path: str | Path) -> Path:
    path = Path(path)
    weights = path / WEIGHTS if path.is_dir() else path
    if not weights.is_file():
        raise CheckpointError(f"no checkpoint at {path}: expected a run directory containing {WEIGHTS} "
                              f"or a .safetensors file")
    return weights


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """A file-system-safe version of `text` (for run names typed by users)."""
    return _SAFE.sub("-", text).strip("-.") or "run"
