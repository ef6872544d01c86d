"""Device and precision, chosen once per run: which device (`resolve_device`), which autocast it gets.

CUDA: bf16 where supported, else fp16 with a loss scaler. CPU: bf16 only when asked for and the CPU
has native bf16 matrix units (AMX or AVX512-BF16); oneDNN then runs convolutions in bf16, faster and
with features close to fp32 (measured: docs/benchmarks.md §1, "Scratch measurements"). Without those
units bf16 is emulated and slower than fp32, so plain fp32 is kept there.
"""

from __future__ import annotations

import ctypes
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Any, TypeVar

import torch

T = TypeVar("T")

# torch's default intra-op thread count (one per core, or OMP_NUM_THREADS), read once at import: the cores
# the forwards of this process share (ComputeShare below)
DEFAULT_THREADS = torch.get_num_threads()


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
    n = torch.get_num_threads()
    return f"cpu ({n} thread{'' if n == 1 else 's'})"


def configure_process() -> None:
    """Backend flags, set once when a process starts (the CLI, the app), never per run: a server's
    runs and predictions share them. cuDNN autotuning picks the fastest convolution kernels for the
    fixed input sizes of training and serving; malloc arenas are capped (`limit_malloc_arenas`)."""
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
    limit_malloc_arenas()


M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (unless the operator set MALLOC_ARENA_MAX). glibc gives threads that allocate
    at once their own arena, up to 8 per core, and keeps memory freed there for reuse by that arena: a server
    whose worker threads each run forwards holds the activations of many of them. Measured on the 2-core
    machine, five concurrent explanations of a small photo in three rounds: 2,869 MiB resident, 1,817 MiB with
    2 arenas, at the same speed. Affects arenas created afterwards, so call it before threads start work.
    True when set."""
    if sys.platform != "linux" or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to cap
        return False


def release_freed_memory() -> bool:
    """Hand the memory glibc keeps after large frees back to the system (malloc_trim): a training decodes,
    extracts and frees hundreds of MB, and glibc keeps much of it mapped, so a server's resident size grew
    with each training (docs/benchmarks.md §8). True when called (glibc only), whether or not it found memory to
    hand back."""
    if sys.platform != "linux":
        return False
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        return False
    return True


@contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run the block with `n` intra-op threads in the calling thread, then restore its count.

    torch.set_num_threads is per thread with the OpenMP backend (each thread's OpenMP setting, read by the
    forwards it starts), but it also sets the count that threads starting their first torch op later pick
    up; restoring on exit puts that back too. Changing it costs microseconds."""
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _system_busy_seconds() -> float | None:
    """CPU seconds all processes of the machine have spent busy since boot (Linux /proc/stat), else None."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


VISITOR_LINGER = 0.05  # s after a visitor's forward during which background work stays paused (pause_for_visitors)
MAX_PAUSE = 2.0  # s background work waits at most per piece: a steady stream of requests slows it, never stops it


class ComputeShare:
    """The forwards (and backwards) running at once in this process share its cores: each one entering
    gets `cores // running` intra-op threads (at least 1). Why: OpenMP threads of several forwards on the
    same cores wait for each other's descheduled threads at every barrier; on the 2-core machine a
    single-image forward took 92 ms with 2 threads while another process used a core, 40 ms with 1.
    One forward alone keeps every core.

    `watch_others`: also leave out the cores that other processes kept busy over the last `every` seconds
    (Linux: the machine's busy time from /proc/stat less this process's own). Measured on the 2-core machine
    with another process spinning on one core: a batch of 8 answers 758 ms with 2 threads, 635 with 1; one
    answer 264 vs 69 ms; a Grad-CAM 100 vs 63; a heatmap check 532 vs 247 (idle: 2 threads are faster)."""

    def __init__(self, cores: int, watch_others: bool = False, every: float = 0.25) -> None:
        self.cores = max(1, cores)
        self.running = 0
        self.others = 0.0  # cores other processes used lately (watch_others)
        self.reserved = 0  # cores this process's background work holds (reserve)
        self.visitors = 0  # of `running`, those not from background work (visitors_busy)
        self.last_forward = float("-inf")  # monotonic time a visitor's forward last entered or left
        self.watch_others, self.every = watch_others, every
        self._mark: tuple[float, float, float] | None = None  # (monotonic, machine busy s, own CPU s)
        self._lock = threading.Lock()

    @contextmanager
    def reserve(self, cores: int) -> Iterator[None]:
        """Count `cores` as busy with this process's own background work for the block (a training relayed by
        `in_background`): /proc shows other processes' load, not another thread of this one, so without it
        a prediction beside a training took every core and waited for the one the training held."""
        with self._lock:
            self.reserved += cores
        try:
            yield
        finally:
            with self._lock:
                self.reserved -= cores

    def _free_cores(self) -> int:
        """`cores` less what other processes kept busy lately (called under the lock; reads /proc at most
        every `every` s)."""
        if not self.watch_others:
            return max(1, self.cores - self.reserved)
        now = time.monotonic()
        if self._mark is None or now - self._mark[0] >= self.every:
            busy, own = _system_busy_seconds(), time.process_time()
            if busy is None:
                self.watch_others = False
                return max(1, self.cores - self.reserved)
            if self._mark is not None:
                wall = now - self._mark[0]
                self.others = max(0.0, (busy - self._mark[1]) - (own - self._mark[2])) / wall
            self._mark = (now, busy, own)
        # a core counts as taken when >= 75% busy
        return max(1, self.cores - self.reserved - int(self.others + 0.25))

    @contextmanager
    def share(self) -> Iterator[int]:
        """Count this block as a running forward; yields its thread count."""
        visitor = thread_budget() is None  # not background work's own forward (pause_for_visitors)
        with self._lock:
            self.running += 1
            self.visitors += visitor
            if visitor:
                self.last_forward = time.monotonic()
            n = max(1, self._free_cores() // self.running)
        try:
            with intra_op_threads(n):
                yield n
        finally:
            with self._lock:
                self.running -= 1
                self.visitors -= visitor
                if visitor:
                    self.last_forward = time.monotonic()

    def visitors_busy(self, linger: float = VISITOR_LINGER) -> bool:
        """A forward (a visitor's request) is running, or one ended less than `linger` s ago: its request's
        next stage (heatmap, check) is probably about to start."""
        return self.visitors > 0 or time.monotonic() - self.last_forward < linger

    def pause_for_visitors(self, most: float = MAX_PAUSE) -> float:
        """Background work (`in_background`, `call_in_background`) calls this between small pieces of its work
        (a photo hashed or decoded): it waits while visitors' forwards run, at most `most` s per piece, so that a
        prediction does not share the cores, caches and the interpreter's lock with it. Under a steady stream
        of requests a training thus crawls (visitors first) but goes on. Measured through the app (12 MP label
        + heatmap during a training, docs/benchmarks.md §7): 1.3-2.4x idle while the training scanned and
        decoded photos, ~1x while it extracted features (one niced thread); with the pauses 0.9-1.6x. Returns
        the seconds waited."""
        start = time.monotonic()
        while self.visitors_busy() and time.monotonic() - start < most:
            time.sleep(0.01)
        return time.monotonic() - start


COMPUTE = ComputeShare(DEFAULT_THREADS, watch_others=True)


_BUDGET = threading.local()


def pause_if_background(background: bool | None = None) -> None:
    """`COMPUTE.pause_for_visitors()` when the calling thread is background work (`thread_budget` is set), or
    when `background` says so (a worker thread started by background work, which has no budget of its own)."""
    if background is None:
        background = thread_budget() is not None
    if background:
        COMPUTE.pause_for_visitors()


def thread_budget() -> int | None:
    """The cores the calling thread's work may use when it is background work (`in_background`,
    `call_in_background`: their `threads`), else None (no budget: a CLI run or a benchmark takes every core).
    Image decoding reads it for its worker threads, which a budget given to intra-op threads does not cover."""
    return getattr(_BUDGET, "threads", None)


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()


@contextmanager
def _as_background(threads: int | None, nice: int) -> Iterator[None]:
    """Make the calling thread background work: niced (Linux: this thread only, inherited by the threads and
    processes it starts), `threads` intra-op threads and the same budget for its decode threads
    (`thread_budget`), those cores reserved in COMPUTE so that visitors' forwards take the others."""
    if nice and hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError:
            pass
    _BUDGET.threads = threads
    with intra_op_threads(threads or torch.get_num_threads()), COMPUTE.reserve(threads or COMPUTE.cores):
        yield


def call_in_background(fn: Callable[..., T], *args: Any, threads: int | None = 1, nice: int = 10, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` run as `in_background` runs a training (a thread of its own, niced, `threads`
    cores), waited for; its result is returned and its exception raised here. For a request's heavy
    preparation beside other visitors' predictions: scanning a dataset before a training decodes and hashes
    every photo (~8 s for 2,482), and at the visitors' priority it made their predictions ~2x slower."""
    import contextvars

    out: dict[str, Any] = {}
    context = contextvars.copy_context()  # the caller's (a web framework's request context, e.g. for progress)

    def run() -> None:
        try:
            with _as_background(threads, nice):
                out["value"] = context.run(fn, *args, **kwargs)
        except BaseException as exc:  # raised in the caller's thread
            out["error"] = exc

    thread = threading.Thread(target=run, name="flowerdemo-background-call", daemon=True)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def in_background(events: Iterator, threads: int | None = 1, nice: int = 10) -> Iterator:
    """Run a generator (a training's events) in a thread of its own, at a lower CPU priority (`nice`, Linux: the
    thread's own, inherited by the threads and processes it starts: image decoding, DataLoader workers) and with
    `threads` intra-op threads (None: torch's default), and relay its items.

    A training in the app runs in the server's process. Iterated from the server's worker threads it took
    every core at the visitors' priority, so predictions took twice their idle time and more; in a thread
    of its own, niced, it uses what predictions leave (they run at normal priority and win the cores). Closing
    the relay asks the thread to stop after its current item and waits for it (the engine also polls its stop
    flag, which the caller sets first), so a closed training is over when close() returns. The generator's
    exception is raised here."""
    items: queue.Queue = queue.Queue(maxsize=16)  # runs ahead of its reader by a few items at most
    closing = threading.Event()

    def put(item) -> bool:
        while not closing.is_set():  # the reader is gone once closing: nothing to deliver, never block on it
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            with _as_background(threads, nice):
                for item in events:
                    if not put(item):
                        break
        except BaseException as exc:  # raised in the relay's caller
            put(_Failed(exc))
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()
            put(_DONE)

    thread = threading.Thread(target=pump, name="flowerdemo-background", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        closing.set()
        thread.join()
