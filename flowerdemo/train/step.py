"""One epoch of training and one evaluation pass over the uint8 tensor cache.

Metrics are accumulated on the device and read once per epoch (one host sync, not one per step).
`train_one_epoch` is a generator: it yields a Progress event per batch and returns its metrics,
so the caller writes `stats = yield from train_one_epoch(...)`.
"""

from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager
from typing import Callable, Generator

import torch
import torch.nn.functional as F
from torch import nn

from flowerdemo.data.augment import BatchAugment, eval_batch
from flowerdemo.train.events import Progress
from flowerdemo.data.tensorcache import ImageTensors

Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums a tensor across processes (identity on one)


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def batch_starts(n: int, batch_size: int) -> list[int]:
    """Start index of each training batch; the LR schedule counts these (len) as steps per epoch."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] < 2:  # a last batch of one breaks BatchNorm in train mode:
        starts.pop()  # fold it into the previous batch
    return starts


def train_one_epoch(
    model: nn.Module,
    data: ImageTensors,
    augment: BatchAugment,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    *,
    epoch: int,
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
    scaler: torch.amp.GradScaler,
    grad_clip: float,
    label_smoothing: float,
    generator: torch.Generator,
    aug_generator: torch.Generator,
    channels_last: bool = False,
    frozen: list[nn.Module] = (),
    stop: threading.Event | None = None,
    shard: tuple[int, int] = (0, 1),
    reduce: Reduce = _identity,
) -> Generator[Progress, None, dict[str, float]]:
    """Train for one epoch; returns {"loss", "acc", "images", "seconds", "stopped"}."""
    model.train()
    for m in frozen:  # frozen BatchNorm keeps its ImageNet statistics
        m.eval()
    rank, world = shard
    order = torch.randperm(len(data), generator=generator)  # same permutation in every process
    order = order[: len(order) // world * world][rank::world]  # equal shards: DDP needs equal step counts
    n = len(order)
    starts = batch_starts(n, batch_size)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    t0 = time.perf_counter()
    stopped = False
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else n
        idx = order[start:end]
        x = augment(data.images[idx.to(data.images.device)].to(device, non_blocking=True), aug_generator)
        y = data.labels[idx.to(data.labels.device)].to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(opt)
        scaler.update()
        sched.step()
        loss_sum += loss.detach().float() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        yield Progress("train", i + 1, len(starts), epoch)
        if stop is not None and stop.is_set():
            stopped = True
            break
    totals = reduce(torch.stack([loss_sum, correct.to(loss_sum.dtype), torch.tensor(float(seen), device=device)]))
    loss_total, correct_total, seen_total = totals.tolist()  # the one host sync of the epoch
    return {"loss": loss_total / max(1.0, seen_total), "acc": correct_total / max(1.0, seen_total),
            "images": seen_total, "seconds": time.perf_counter() - t0, "stopped": stopped}


@torch.no_grad()
def predict_tensors(
    model: nn.Module,
    data: ImageTensors,
    *,
    size: int,
    mean,
    std,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
    batch_size: int = 128,
    channels_last: bool = False,
) -> torch.Tensor:
    """Logits (float32, on CPU) for every cached image, eval transform (centre crop)."""
    model.eval()
    out = []
    for start in range(0, len(data), batch_size):
        x = eval_batch(data.images[start:start + batch_size].to(device, non_blocking=True), size, mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            out.append(model(x).float())
    return torch.cat(out).cpu() if out else torch.empty(0)


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    if len(labels) == 0:
        return 0.0, 0.0
    labels = labels.to(logits.device)
    return float(F.cross_entropy(logits, labels)), float((logits.argmax(1) == labels).float().mean())
