"""Scoring a model on the decoded uint8 image cache: logits for every image (eval transform), and
loss/accuracy from logits. Used by the engine after every epoch and by `flowerdemo evaluate`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import nn

from flowerdemo.data.augment import eval_batch
from flowerdemo.data.tensorcache import ImageTensors
from flowerdemo.train.events import Progress
from flowerdemo.train.step import StopSignal, drain, stop_requested


@torch.no_grad()
def iter_logits(model: nn.Module, data: ImageTensors, *, size: int, mean, std, device: torch.device,
                autocast: Callable[[], AbstractContextManager], batch_size: int = 128, channels_last: bool = False,
                stop: StopSignal | None = None, epoch: int = 0) -> Iterator[Progress]:
    """Logits (float32, on CPU) for every cached image, centre crop; a generator that yields a
    Progress("val") per chunk and returns the logits, or None when `stop` was set."""
    model.eval()
    out = []
    chunks = (len(data) + batch_size - 1) // batch_size
    for i, start in enumerate(range(0, len(data), batch_size)):
        x = eval_batch(data.images[start:start + batch_size].to(device, non_blocking=True), size, mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            out.append(model(x).float())
        yield Progress("val", i + 1, chunks, epoch)
        if stop_requested(stop) and i + 1 < chunks:
            return None
    return torch.cat(out).cpu() if out else torch.empty(0)


def predict_tensors(model: nn.Module, data: ImageTensors, **kwargs) -> torch.Tensor:
    """`iter_logits` run to the end, no stop: the logits alone."""
    return drain(iter_logits(model, data, **kwargs))


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    if len(labels) == 0:
        return 0.0, 0.0
    labels = labels.to(logits.device)
    return float(F.cross_entropy(logits, labels)), float((logits.argmax(1) == labels).float().mean())
