"""TorchScript export: the same graph as the ONNX file (uint8 pixels in; probabilities, logits and the
unknown-photo score out), traced, with the metadata as the extra file `meta.json`. Runs with torch alone
(`torch.jit.load`), no flowerdemo. torch marks tracing deprecated in favour of torch.export, but a traced
file is still what plain `torch.jit.load` users (C++ libtorch, older torch) can run."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from flowerdemo.export.graph import ExportGraph, example_pixels
from flowerdemo.export.metadata import build_metadata, decode
from flowerdemo.models.checkpoints import Classifier

log = logging.getLogger(__name__)

META_FILE = "meta.json"


def export_torchscript(clf: Classifier, path: str | Path, with_unknown: bool = True) -> float:
    """Write a traced TorchScript file of `clf`; returns the max |Δprobability| of the saved file against
    the untraced graph on a check batch of another size than the tracing one (the batch axis stays free)."""
    from flowerdemo.export.onnx import require_parity

    path = Path(path)
    graph = ExportGraph(clf, with_unknown).eval()
    example = example_pixels(clf.preprocessing.input_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.* is deprecated": chosen knowingly, above
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # constants (mean/std, sizes): fixed per model
        traced = torch.jit.trace(graph, (example,), check_trace=False)
        meta = build_metadata(clf, graph.with_unknown)
        torch.jit.save(traced, str(path), _extra_files={META_FILE: json.dumps(meta)})
        check = example_pixels(clf.preprocessing.input_size, batch=3, seed=1)
        expected = graph(check)[0]
        got = torch.jit.load(str(path))(check)[0]
    return require_parity(float((got - expected).abs().max()), path, f"the TorchScript file of {clf.name}", clf.name)


def read_torchscript_metadata(path: str | Path) -> dict[str, Any]:
    """The flowerdemo metadata of an exported TorchScript file."""
    extra = {META_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
        torch.jit.load(str(path), _extra_files=extra)
    try:
        props = json.loads(extra[META_FILE] or "{}")
    except ValueError:
        props = {}
    return decode({k: json.dumps(v) for k, v in props.items()}, str(path))
