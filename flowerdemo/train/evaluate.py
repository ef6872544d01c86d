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
def chunked_logits(forward: Callable[[torch.Tensor], torch.Tensor], items: torch.Tensor, chunk: int, *,
                   stop: StopSignal | None = None, epoch: int = 0) -> Iterator[Progress]:
    """`forward` over `items` chunk by chunk: a generator that yields a Progress("val") per chunk and
    returns the float32 CPU logits, or None when `stop` was set before the last chunk."""
    out = []
    chunks = (len(items) + chunk - 1) // chunk
    for i, start in enumerate(range(0, len(items), chunk)):
        out.append(forward(items[start:start + chunk]).float().cpu())
        yield Progress("val", i + 1, chunks, epoch)
        if stop_requested(stop) and i + 1 < chunks:
            return None
    return torch.cat(out) if out else torch.empty(0)


def iter_logits(model: nn.Module, data: ImageTensors, *, size: int, mean, std, device: torch.device,
                autocast: Callable[[], AbstractContextManager], batch_size: int = 128, channels_last: bool = False,
                stop: StopSignal | None = None, epoch: int = 0) -> Iterator[Progress]:
    """`chunked_logits` of `model` over the cached uint8 images, eval transform (centre crop)."""
    model.eval()

    def forward(images: torch.Tensor) -> torch.Tensor:
        x = eval_batch(images.to(device, non_blocking=True), size, mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            return model(x)

    return (yield from chunked_logits(forward, data.images, batch_size, stop=stop, epoch=epoch))


def predict_tensors(model: nn.Module, data: ImageTensors, **kwargs) -> torch.Tensor:
    """`iter_logits` run to the end, no stop: the logits alone."""
    return drain(iter_logits(model, data, **kwargs))


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    if len(labels) == 0:
        return 0.0, 0.0
    labels = labels.to(logits.device)
    return float(F.cross_entropy(logits, labels)), float((logits.argmax(1) == labels).float().mean())
