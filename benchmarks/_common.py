"""Shared helpers for the benchmark scripts: paths, argument parsing, subsets, machine info, output.

Not part of the package or the test suite. Each script puts the repository root on sys.path so
`python benchmarks/<name>.py` works from any directory without installing flowerdemo.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_DATA = (REPO / ".." / "shared" / "datasets" / "flowers5-dev").resolve()
RESULTS = REPO / "benchmarks" / "results"


def cores() -> int:
    """CPU cores this process may use (affinity-aware; what the plain loop's num_workers is set to)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def add_common_args(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help=f"dataset folder (root/<class>/<image>); default {DEFAULT_DATA}")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto = CUDA when present, else CPU")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON results file; default benchmarks/results/{name}-<timestamp>.json")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (torch.set_num_threads); 0 = torch's default (one per core). "
                             "On a CPU shared with other busy processes, 1 avoids OpenMP threads waiting on a "
                             "descheduled sibling (measured 60x slower inference on a busy 2-core machine)")


def apply_threads(threads: int) -> None:
    """Process set-up every benchmark does first: torch's thread count, and the backend flags the app
    and the CLI set at start-up (flowerdemo.device.configure_process), so the figures are theirs."""
    import torch

    from flowerdemo.device import configure_process

    configure_process()
    if threads:
        torch.set_num_threads(threads)


def require_data(path: Path) -> Path:
    if not path.is_dir():
        sys.exit(f"error: dataset folder {path} not found. Pass --data DIR (a folder of class folders, e.g. "
                 f"the flowers5-dev set at {DEFAULT_DATA}).")
    return path


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda was asked for, but torch sees no GPU; use --device cpu or auto")
    return name


def limit_split(split, per_class: int | None, val_fraction: float = 0.2):
    """At most `per_class` images of each class, split as in the full scan: the first
    round(per_class * val_fraction) (at least 1) validation files of the class and the rest from
    its training files. Deterministic (the scan's order), so every variant sees the same files."""
    if not per_class:
        return split
    n_val = max(1, round(per_class * val_fraction))
    n_train = max(1, per_class - n_val)
    train, val = [], []
    for label in range(len(split.classes)):
        train += [s for s in split.train if s.label == label][:n_train]
        val += [s for s in split.val if s.label == label][:n_val]
    return replace(split, train=tuple(train), val=tuple(val))


def keep_temp_files_in(folder: Path) -> None:
    """This process's temp files under `folder` (removed with it): gradio_client leaves an empty folder in the
    temp dir for every file it downloads (it moves the file out, not its folder), thousands per serving run."""
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(folder)


def warm_page_cache(paths: Sequence[Path]) -> float:
    """Read every file once so no variant pays (or is spared) the cold-disk cost alone."""
    t0 = time.perf_counter()
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass
    return time.perf_counter() - t0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict[str, Any]:
    import torch
    import torchvision

    import flowerdemo

    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cores_usable": cores(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": _mem_total_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "flowerdemo": flowerdemo.__version__,
        "git_commit": _git_commit(),
        "cuda_available": torch.cuda.is_available(),
        "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    bf16=torch.cuda.is_bf16_supported(), gpu_count=torch.cuda.device_count())
    return info


def machine_line(info: dict[str, Any]) -> str:
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU"
    return (f"{info['cpu_model']} ({info['cores_usable']} cores usable of {info['cpu_count']}){gpu}; "
            f"torch {info['torch']}, Python {info['python']}")


def peak_rss_mib() -> float:
    """Peak resident memory of this process (resource.getrusage). Children are not included: their
    ru_maxrss is dominated by helpers forked at import time, so DataLoader workers are measured
    separately with `children_pss_mib`."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20  # Linux reports KiB, macOS bytes
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1)


def children_pss_mib() -> float | None:
    """Proportional set size (shared pages split between sharers) of this process's live children,
    e.g. DataLoader workers: what they add on top of the main process. None where /proc lacks it."""
    try:
        pids: list[str] = []
        for task in Path("/proc/self/task").iterdir():
            pids += (task / "children").read_text().split()
        total = 0
        for pid in pids:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        return round(total / 1024, 1)
    except (OSError, ValueError):
        return None


def default_out(name: str) -> Path:
    return RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def write_json(path: Path | None, name: str, payload: dict[str, Any]) -> Path:
    path = Path(path) if path else default_out(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=2, default=str)
    # paths relative to the repository (../shared/... for the data beside it): no machine path in the results
    text = text.replace(str(REPO) + "/", "").replace(str(REPO.parent) + "/", "../")
    path.write_text(text + "\n")
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float | None, spec: str = ".1f", none: str = "n/a") -> str:
    return none if value is None else format(value, spec)


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int) -> dict[str, float]:
    """Wall time of `fn()` over `repeats` calls after `warmup` untimed ones: p50/p95/mean/min/max/stdev in ms."""
    import numpy as np

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    a = np.asarray(times)
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p95_ms": round(float(np.percentile(a, 95)), 2),
            "mean_ms": round(float(a.mean()), 2), "min_ms": round(float(a.min()), 2),
            "max_ms": round(float(a.max()), 2), "stdev_ms": round(statistics.pstdev(times), 2), "n": repeats}
