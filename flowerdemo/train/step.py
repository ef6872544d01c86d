"""The one optimisation step and the one epoch loop that both training modes run.

A trainer (full or fast mode) only says *what* a batch is and how its logits are computed; this
module does the rest, once: loss, zero_grad, (scaled) backward, unscale + clip, optimiser step,
scaler update, LR schedule, on-device metrics, progress and stop. Metrics are accumulated on the
device and read once per epoch (one host sync, not one per step).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from flowerdemo.train.events import Progress

Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums a tensor across processes (identity on one)


class StopSignal(Protocol):
    """What the engine polls: a threading.Event, or the app's cross-process StopFlag."""

    def is_set(self) -> bool: ...


def stop_requested(stop: StopSignal | None) -> bool:
    return stop is not None and stop.is_set()


def batch_slices(n: int, batch_size: int) -> list[tuple[int, int]]:
    """The batches of an epoch over `n` items, as (start, end): the one batch policy of both modes.

    A partial last batch is a step of its own when it holds at least half a batch; a smaller remainder
    is folded into the batch before, so every step sees between half and one and a half batches (a
    step on 2 images at the learning rate chosen for 32 is mostly noise; a batch of one also breaks
    BatchNorm in train mode). The LR schedule counts `len(batch_slices(...))` as the steps of an epoch."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] < max(2, (batch_size + 1) // 2):
        starts.pop()
    return [(s, starts[i + 1] if i + 1 < len(starts) else n) for i, s in enumerate(starts)]


@dataclass(frozen=True)
class EpochStats:
    loss: float  # mean training loss over the images seen this epoch
    acc: float  # training accuracy (on augmented inputs)
    images: float  # images seen (summed over processes)
    seconds: float
    stopped: bool  # the epoch ended early because a stop was requested


class OptimStep:
    """One optimisation step: forward (the trainer's, under its own autocast), loss, backward,
    clip, step, schedule. Holds the pieces a step needs and nothing else."""

    def __init__(self, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                 scaler: torch.amp.GradScaler, clip_params: Iterable[torch.nn.Parameter], grad_clip: float,
                 label_smoothing: float) -> None:
        self.opt, self.sched, self.scaler = opt, sched, scaler
        # clipping sums per-tensor norms in this order: kept as the trainer gives it, so a run is reproducible
        self.clip_params = list(clip_params)
        self.grad_clip, self.label_smoothing = grad_clip, label_smoothing

    def __call__(self, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on one batch; returns (logits, loss), both detached."""
        logits = forward(x)
        # fp32 loss whatever the autocast dtype of the forward (what autocast itself does for cross_entropy)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # a no-op scaler except fp16 on GPUs without bf16
        if self.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.clip_params, self.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        return logits.detach(), loss.detach()


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def run_epoch(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], n_batches: int,
              forward: Callable[[torch.Tensor], torch.Tensor], step: OptimStep, *, epoch: int,
              device: torch.device, stop: StopSignal | None = None,
              reduce: Reduce = _identity) -> Iterator[Progress]:
    """Train over `batches` (the trainer's (x, y) pairs, `n_batches` of them); a generator that yields
    a Progress per batch and returns EpochStats (`stats = yield from run_epoch(...)`). A stop request
    ends the epoch after the current batch."""
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    t0 = time.perf_counter()
    stopped = False
    for i, (x, y) in enumerate(batches):
        logits, loss = step(forward, x, y)
        loss_sum += loss.float() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        yield Progress("train", i + 1, n_batches, epoch)
        if stop_requested(stop):
            stopped = True
            break
    totals = reduce(torch.stack([loss_sum, correct.to(loss_sum.dtype), torch.tensor(float(seen), device=device)]))
    loss_total, correct_total, seen_total = totals.tolist()  # the one host sync of the epoch
    return EpochStats(loss_total / max(1.0, seen_total), correct_total / max(1.0, seen_total), seen_total,
                      time.perf_counter() - t0, stopped)


def drain(gen: Iterator[Progress]):
    """Run a Progress generator to its end and return its value (for callers that show no progress)."""
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value
