"""Micro-batching of concurrent forwards: many visitors' images through the model in one call.

On a CPU a forward of 8 images costs about half as much per image as 8 forwards of one (the shipped
Lite2: ~54 vs ~104 ms per image on the loaded 2-core machine; depthwise and 1x1 convolutions of a single
image leave the cores idle much of the time), and on a GPU far less. So concurrent requests for the same
computation (calibrated probabilities, reference features) are stacked and run once.

No thread of its own and no timer (flat combining): a caller puts its rows in the queue; if no batch of
this batcher is running, it takes everything queued (up to `max_rows`), runs it and hands each caller its
rows; the others wait meanwhile and are served by it, or the next one takes the lead. A lone request thus
runs at once in its own thread, with no hand-over and no waiting window; under load the requests that
arrive during one forward form the next batch. Nothing here outlives its callers (no worker thread holds a
model), and the function run is the leader's own: every caller of one batcher computes the same thing.

Rows of a batch are computed independently (eval mode: BatchNorm uses its running statistics), so a
caller gets what it would get alone, up to the last float bits that batched kernels may round differently
(tests/test_serving.py: within 1e-5).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

Batch = Callable[[torch.Tensor], Any]  # rows (N, ...) -> a tensor or tuple of tensors with N rows each


class _Request:
    __slots__ = ("x", "result", "error", "done")

    def __init__(self, x: torch.Tensor) -> None:
        self.x, self.result, self.error, self.done = x, None, None, False


class MicroBatcher:
    """Stacks the rows of concurrent `__call__`s (same trailing shape) into one call of `fn`."""

    def __init__(self, max_rows: int = 8) -> None:
        # bounds a batch's memory and the wait of the last caller in it. 8: on the 2-core machine the shipped
        # Lite2 + reference encoder cost ~41 ms per image in batches of 2-8, 49 at 16, 64 at 24, 42+17 at 50
        # (larger batches leave the caches); and a batch of 8 hands its answers out after ~0.3 s, not 3 s
        self.max_rows = max_rows
        self._queue: list[_Request] = []
        self._running = False
        self._cond = threading.Condition()
        self.batches = 0  # how many batches ran, and how many rows: for tests and benchmarks
        self.rows = 0

    def __call__(self, fn: Batch, x: torch.Tensor) -> Any:
        """`fn(x)`, computed together with other threads' concurrent calls."""
        request = _Request(x)
        with self._cond:
            self._queue.append(request)
            while True:
                if request.done:
                    break
                if not self._running:  # lead: run what is queued (ours among it while it fits)
                    self._running = True
                    batch, size = [], 0
                    while self._queue and (not batch or size + len(self._queue[0].x) <= self.max_rows):
                        size += len(self._queue[0].x)
                        batch.append(self._queue.pop(0))
                    self._cond.release()
                    try:
                        _run(fn, batch)
                    finally:
                        self._cond.acquire()
                        self._running = False
                        self.batches += 1
                        self.rows += size
                        self._cond.notify_all()
                    continue
                self._cond.wait()
        if request.error is not None:
            raise request.error
        return request.result


def _run(fn: Batch, batch: list[_Request]) -> None:
    """Run `fn` on the batch's rows and give each request its slice (or the error, to all of them)."""
    try:
        xs = [r.x for r in batch]
        out = fn(xs[0] if len(xs) == 1 else torch.cat(xs))
        start = 0
        for r in batch:
            end = start + len(r.x)
            r.result = tuple(o[start:end] for o in out) if isinstance(out, tuple) else out[start:end]
            start = end
    except BaseException as exc:  # every caller of this batch gets the error, raised in its own thread
        for r in batch:
            r.error = exc
    finally:
        for r in batch:
            r.done = True


_BATCHERS: weakref.WeakKeyDictionary[object, dict[str, MicroBatcher]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def batcher_for(owner: object, what: str) -> MicroBatcher:
    """The batcher of `what` ('probabilities', 'reference', ...) for `owner` (a model): it goes with the model."""
    with _LOCK:
        per_owner = _BATCHERS.setdefault(owner, {})
        if what not in per_owner:
            per_owner[what] = MicroBatcher()
        return per_owner[what]


class Stages:
    """Work in flight per stage of a request: the answer (probabilities + verdict), the heatmap, the heatmap's
    check. A visitor waits for the answer first, then the heatmap; the check is streamed last. So in a burst
    of requests each stage lets the earlier stages of every request pass (`turn`, around its compute): all
    answers go out before CAMs take the cores, all heatmaps before the checks. And the heavy stages (heatmap,
    check) run at most `slots` at a time, each with its share of the cores (device.ComputeShare): 50 CAMs
    started together would split the cores 50 ways and every answer arriving meanwhile would queue behind
    them (measured, 50 concurrent small-photo clients on 2 cores: answers took 8 s in `classify` alone while
    up to 4 CAMs and the checks ran beside them). `timeout` bounds the wait for earlier stages under a steady
    stream of new requests; the slot is always waited for."""

    ANSWER, HEATMAP, CHECK = 0, 1, 2

    def __init__(self, slots: int | None = None) -> None:
        self.in_flight = [0, 0, 0]
        self.slots = slots  # None: no cap (the library's default); the app sets its own (app.main)
        self.busy = 0  # heavy computations running now (<= slots)
        self._cond = threading.Condition()

    @contextmanager
    def running(self, stage: int) -> Iterator[None]:
        """Count the block as `stage` work in flight (waiting for its turn included)."""
        with self._cond:
            self.in_flight[stage] += 1
        try:
            yield
        finally:
            with self._cond:
                self.in_flight[stage] -= 1
                self._cond.notify_all()

    @contextmanager
    def turn(self, stage: int, timeout: float = 10.0) -> Iterator[None]:
        """Count the block as `stage` work in flight; run it once no earlier-stage work is in flight (or
        `timeout` s have passed) and one of the `slots` is free."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self.in_flight[stage] += 1
            while True:
                left = deadline - time.monotonic()
                if (self.slots is None or self.busy < self.slots) and (left <= 0 or not any(self.in_flight[:stage])):
                    break
                self._cond.wait(left if left > 0 else None)
            self.busy += 1
        try:
            yield
        finally:
            with self._cond:
                self.busy -= 1
                self.in_flight[stage] -= 1
                self._cond.notify_all()


STAGES = Stages()
