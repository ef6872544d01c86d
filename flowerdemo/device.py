"""Device and precision, chosen once per run: which device (`resolve_device`), which autocast it gets.

CUDA: bf16 where supported, else fp16 with a loss scaler. CPU: bf16 only when asked for and the CPU
has native bf16 matrix units (AMX or AVX512-BF16); oneDNN then runs convolutions in bf16, faster and
with features close to fp32 (measured: docs/benchmarks.md §1, "Scratch measurements"). Without those
units bf16 is emulated and slower than fp32, so plain fp32 is kept there.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from functools import partial

import torch


def cpu_has_fast_bf16() -> bool:
    """True when this CPU computes bf16 natively (Intel AMX-BF16 or AVX512-BF16)."""
    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # older torch: no capability query, assume no
        return False
    return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


def autocast_for(device: torch.device, enabled: bool, cpu_bf16: bool = False) -> tuple[Callable, torch.amp.GradScaler]:
    """(autocast context factory, grad scaler) for `device`. `cpu_bf16` opts a CPU caller into bf16
    (only taken where `cpu_has_fast_bf16()`); otherwise the CPU runs plain fp32."""
    no_scaler = torch.amp.GradScaler("cuda", enabled=False)
    if not enabled:
        return nullcontext, no_scaler
    if device.type == "cpu":
        if cpu_bf16 and cpu_has_fast_bf16():
            return partial(torch.autocast, "cpu", dtype=torch.bfloat16), no_scaler
        return nullcontext, no_scaler
    if device.type != "cuda":
        return nullcontext, no_scaler
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return partial(torch.autocast, "cuda", dtype=dtype), torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)


def autocast_dtype(autocast: Callable) -> str:
    """'bf16', 'fp16' or 'fp32': what an `autocast_for` factory computes in (for logs and cache keys)."""
    if isinstance(autocast, partial):
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast.keywords["dtype"]]
    return "fp32"


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} asked for CUDA, but no GPU is available; use 'auto' or 'cpu'")
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def configure_process() -> None:
    """Backend flags, set once when a process starts (the CLI, the app), never per run: a server's
    runs and predictions share them. cuDNN autotuning picks the fastest convolution kernels for the
    fixed input sizes of training and serving."""
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
