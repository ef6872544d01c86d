"""Serving forwards on the CPU with onnxruntime: the same network, about twice as fast as torch's eager mode.

Measured on the 2-core development machine (benchmarks/export.py, docs/benchmarks.md §10: the shipped Lite2
and the unknown-photo check for one photo, 2 threads): flowerdemo's torch path 68 ms p50, onnxruntime 28 ms
(it fuses the convolutions with their activations and runs the depthwise ones faster). Answers, heatmaps
and heatmap checks of a server all go through forwards; through the running app (benchmarks/serving.py,
§7) the first label went from 236 to 78-98 ms p50.

`fast_forward(model, size)` gives the model's onnxruntime twin, or None where there is none (yet):
- only in a process that serves (`enable()`: app.py does; a CLI prediction or a training would spend more
  on the export than it saves), only on the CPU (a GPU runs torch), only with onnxruntime installed, and
  not when FLOWERDEMO_RUNTIME=torch (the switch for comparing, or where onnxruntime misbehaves);
- built once per model, in the background: the export takes 2-3 s, so the caller that starts it is served
  by torch meanwhile (`wait=True` builds in the caller's thread: the app's start-up, benchmarks, tests);
- checked against torch when built (logits on random images within PARITY of torch's); a model that
  fails the check, or whose export fails, stays on torch (logged once), never half-served.
`maps_of`: a module of `model` (the CAM's target layer); the twin then also returns that layer's
activations, so a Grad-CAM needs no torch forward (infer/explain.py: only the cheap head is
differentiated in torch).

A training's feature extraction (train/fast.py: the frozen trunk in fp32, on CPUs without native bf16) uses
the same export through `extraction_encoder`, in every process (`extracts_with_onnxruntime` says when).

The export is the TorchScript-based one (torch.onnx.export(dynamo=False)): ~2.5 s for Lite2, where the
dynamo exporter that `flowerdemo export` uses takes several times as long and needs onnxscript; the file
stays in memory. A twin holds its own copy of the weights (~20 MB for Lite2, and one per session: a
session per thread count used) and goes with its model (a WeakKeyDictionary). onnxruntime's sessions are
safe to run from several threads at once.
"""

from __future__ import annotations

import atexit
import copy
import io
import logging
import os
import threading
import warnings
import weakref
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

ENV = "FLOWERDEMO_RUNTIME"  # "auto" (onnxruntime on the CPU when installed) or "torch"
CHOICES = ("auto", "torch")
PARITY = 1e-3  # max |logit difference| to torch's on the check images (measured: ~3e-6 for Lite2)
OPSET = 17


class RuntimeChoiceError(ValueError):
    """FLOWERDEMO_RUNTIME has a value that is not accepted."""


def runtime_choice() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise RuntimeChoiceError(f"{ENV}={value!r} is not accepted; use one of: {', '.join(CHOICES)} "
                                 f"(auto: onnxruntime on the CPU when it is installed)")
    return value


_enabled = False


def enable(on: bool = True) -> None:
    """Serve this process's CPU forwards with onnxruntime twins from now on (`on=False`: no new twins)."""
    global _enabled
    if on:
        runtime_choice()  # a bad FLOWERDEMO_RUNTIME stops the server at start-up, not its first request
    _enabled = on


def available() -> bool:
    """Enabled for this process, onnxruntime installed and not switched off."""
    if not _enabled or runtime_choice() == "torch":
        return False
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OrtForward:
    """A model's onnxruntime twin: (N, 3, S, S) float images -> (logits,) or (logits, maps) as tensors.

    Each forward takes its share of the cores like torch's (device.ComputeShare: fewer threads while other
    forwards, or other processes such as a training, keep cores busy: a 2-thread pool waits at every barrier
    for a thread that has no core); onnxruntime fixes a session's threads when it is opened, so there is one
    session per thread count used, opened on first need (~0.1 s) from the model kept in memory."""

    def __init__(self, model: bytes, size: int, with_maps: bool, threads: int, arena: bool = True) -> None:
        self.model = model
        self.arena = arena  # onnxruntime's memory arena (_open)
        self.size = size  # the only input size it takes (the model's own; another size runs on torch)
        self.with_maps = with_maps
        self.threads = max(1, threads)
        self.runs = 0  # forwards served (tests and benchmarks check that the twin is used)
        self._sessions: dict[int, Any] = {}
        self._lock = threading.Lock()

    def session(self, threads: int):
        threads = min(max(1, threads), self.threads)
        with self._lock:
            if threads not in self._sessions:
                self._sessions[threads] = _open(self.model, threads, self.arena)
            return self._sessions[threads]

    def close(self) -> None:
        with self._lock:
            self._sessions.clear()

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from flowerdemo.device import COMPUTE

        images = x.detach().to("cpu", torch.float32).contiguous().numpy()
        with COMPUTE.share() as threads:
            outputs = self.session(threads).run(None, {"images": images})
        self.runs += 1
        return tuple(torch.from_numpy(np.ascontiguousarray(o)) for o in outputs)


def _open(model: bytes, threads: int, arena: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # threads sleep between runs instead of spinning: a server's cores are shared with other requests and
    # a training, which a spinning pool would slow
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # the memory arena stays on: it keeps each session's largest batch's buffers for good (the warm app ~190 MB
    # larger, still within the memory target), and without it the 20 concurrent 12 MP heatmaps took 3.4 s
    # p95 instead of 2.6 s (buffers allocated per run): docs/benchmarks.md §7, §8. A training's extraction
    # twin (`extraction_encoder`) runs without: it lives for one training, and its batches are large
    options.enable_cpu_mem_arena = arena
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class _WithMaps(nn.Module):
    """model(x) and the output of one of its modules (recorded by a forward hook while tracing)."""

    def __init__(self, model: nn.Module, layer: nn.Module | None) -> None:
        super().__init__()
        self.model = model
        self._maps: list[torch.Tensor] = []
        if layer is not None:
            layer.register_forward_hook(lambda _m, _i, out: self._maps.append(out))
        self.with_maps = layer is not None

    def forward(self, x: torch.Tensor):
        self._maps.clear()
        out = self.model(x)
        return (out, self._maps[-1]) if self.with_maps else out


_twins: weakref.WeakKeyDictionary[nn.Module, OrtForward | None] = weakref.WeakKeyDictionary()
_building: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_lock = threading.Lock()


@atexit.register
def _close() -> None:
    """Drop every twin's sessions while the interpreter is whole: a session still alive for a model kept to
    the end (the reference encoder is) was otherwise destroyed during interpreter teardown, and
    onnxruntime's thread pool then aborted the process ("terminate called without an active exception",
    exit 134 after a passing test suite)."""
    global _enabled
    with _lock:
        _enabled = False
        for twin in list(_twins.values()):
            if twin is not None:
                twin.close()
        _twins.clear()


def fast_forward(model: nn.Module, size: int, maps_of: nn.Module | None = None,
                 wait: bool = False) -> OrtForward | None:
    """The ready twin of `model` (inputs `size` px square), else None: starting its build in the background
    on first call (or building it now with `wait`). One twin per model, for the size and `maps_of` of the first
    call; None for another size."""
    twin = _twin(model, size, maps_of, wait)
    return twin if twin is not None and twin.size == size else None


def _twin(model: nn.Module, size: int, maps_of: nn.Module | None, wait: bool) -> OrtForward | None:
    if _device(model).type != "cpu" or not available():
        return None
    with _lock:
        if model in _twins:
            return _twins[model]
        start = model not in _building
        if start:
            _building.add(model)
    if start:
        if not wait:
            threading.Thread(target=_build_and_store, args=(model, size, maps_of), daemon=False,
                             name="flowerdemo-runtime-build").start()
            return None
        return _build_and_store(model, size, maps_of)
    if not wait:
        return None
    while True:  # another thread builds it: wait for that one
        with _lock:
            if model in _twins:
                return _twins[model]
            if model not in _building:
                return None
        threading.Event().wait(0.05)


def _build_and_store(model: nn.Module, size: int, maps_of: nn.Module | None) -> OrtForward | None:
    try:
        twin = build(model, size, maps_of)
    except Exception as exc:  # any failure keeps the model on torch (and says so once)
        log.warning("onnxruntime twin of %s not built (%s: %s); serving it with torch", type(model).__name__,
                    type(exc).__name__, exc)
        twin = None
    with _lock:
        _twins[model] = twin
        _building.discard(model)
    return twin


def build(model: nn.Module, size: int, maps_of: nn.Module | None = None, threads: int | None = None,
          arena: bool = True) -> OrtForward:
    """Export a copy of `model` to ONNX in memory, open it with onnxruntime, check it against torch.
    Raises ValueError when the twin's logits differ from torch's by more than PARITY."""
    layer_name = None
    if maps_of is not None:
        names = {m: n for n, m in model.named_modules()}
        if maps_of not in names:
            raise ValueError("maps_of is not a module of the model")
        layer_name = names[maps_of]
    twin_model = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)  # never the served one
    layer = dict(twin_model.named_modules())[layer_name] if layer_name is not None else None
    wrapper = _WithMaps(twin_model, layer).eval()
    example = torch.zeros(1, 3, size, size)
    names = ["logits", "maps"] if layer is not None else ["logits"]
    buf = io.BytesIO()
    from flowerdemo.export.onnx import EXPORTING  # one torch ONNX export at a time in the process

    with EXPORTING, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(wrapper, (example,), buf, input_names=["images"], output_names=names,
                          dynamic_axes={n: {0: "batch"} for n in ["images", *names]}, opset_version=OPSET,
                          dynamo=False)
    from flowerdemo.device import COMPUTE

    twin = OrtForward(buf.getvalue(), size, layer is not None, threads or COMPUTE.cores, arena)
    check = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(check.to(_device(model)).contiguous(memory_format=torch.channels_last)).float().cpu()
    got = twin(check)[0]
    diff = float((got - expected).abs().max())
    if not diff <= PARITY:
        raise ValueError(f"its logits differ from torch's by {diff:.2e} (more than {PARITY:.0e})")
    twin.runs = 0
    return twin


# a training's feature extraction (train/fast.py) with fewer images than this stays on torch: the export
# (~2 s) would cost more than onnxruntime saves (~13 ms per 224 px image for Lite0 on the 2-core machine)
MIN_EXTRACTION_IMAGES = 256


def extracts_with_onnxruntime(device: torch.device, images: int) -> bool:
    """Whether a training's frozen-trunk extraction of `images` fp32 images on `device` runs on onnxruntime:
    on the CPU, with onnxruntime installed, FLOWERDEMO_RUNTIME not "torch", and enough images to pay for the
    export. Unlike serving (`enable`), no process opts in: the CLI and the app both gain. Measured on the
    2-core development machine (AMD EPYC, no bf16; Lite0 trunk, BatchNorm folded, 224 px, batches of 64):
    39 vs 80 img/s with 2 threads, 23 vs 50 with 1 (docs/benchmarks.md §1). CPUs with native bf16 extract
    under torch's bf16 autocast instead (the caller decides)."""
    if device.type != "cpu" or images < MIN_EXTRACTION_IMAGES or runtime_choice() == "torch":
        return False
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _TwinModule(nn.Module):
    """An onnxruntime twin where extraction expects a module: eval() and a call giving the first output."""

    def __init__(self, twin: OrtForward) -> None:
        super().__init__()
        self.twin = twin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.twin(x)[0]


def extraction_encoder(encoder: nn.Module, size: int) -> nn.Module | None:
    """The onnxruntime twin of a frozen `encoder` (inputs `size` px) for a training's extraction, with the
    calling thread's torch thread count (a training beside visitors has one core) and no memory arena; None
    when the export or its check against torch fails (logged: the caller extracts with torch)."""
    try:
        return _TwinModule(build(encoder, size, threads=torch.get_num_threads(), arena=False))
    except Exception as exc:
        log.warning("extraction stays on torch: its onnxruntime twin was not built (%s: %s)", type(exc).__name__, exc)
        return None


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
