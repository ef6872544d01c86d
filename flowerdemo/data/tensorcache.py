"""Decode each image once into a uint8 tensor cache; every epoch then reads tensors, never JPEGs.

Each image is decoded at reduced scale where the format allows (JPEG draft), its short side resized
to the eval resize size S and centre-cropped to S x S. Random crops are taken from that square.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from flowerdemo.data.dataset import Sample
from flowerdemo.data.images import DEFAULT_MAX_PIXELS, ImageError, load_image

log = logging.getLogger(__name__)


@dataclass
class ImageTensors:
    images: torch.Tensor  # uint8 (N, 3, S, S)
    labels: torch.Tensor  # int64 (N,)
    paths: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> ImageTensors:
        return ImageTensors(self.images.to(device, non_blocking=True), self.labels.to(device, non_blocking=True), self.paths)


def square_image(img: Image.Image, size: int) -> Image.Image:
    """Resize the short side to `size` and centre-crop to size x size (the eval geometry)."""
    return ImageOps.fit(img, (size, size), Image.Resampling.BILINEAR, centering=(0.5, 0.5))


def load_square(source, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode no more pixels than needed (JPEG draft at >= 2x target), then `square_image`."""
    img = load_image(source, max_pixels=max_pixels, draft=(size * 2, size * 2))
    return square_image(img, size)


def to_uint8_chw(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def decode_samples(
    samples: Sequence[Sample],
    size: int,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[ImageTensors, list[tuple[Path, str]]]:
    """Decode `samples` in threads (PIL releases the GIL) into one uint8 tensor.
    Files that fail to decode are skipped and returned as (path, reason). `workers` 0: one per core, or the
    calling thread's budget when it is a training relayed beside a server's visitors (device.thread_budget):
    two decode threads there made 12 MP predictions 1.3-2.2x slower than idle, the rest of the training ~1x."""
    from flowerdemo.device import pause_if_background, thread_budget

    background = thread_budget() is not None  # the pool's threads have no budget of their own: told here
    workers = workers or thread_budget() or (os.cpu_count() or 1)
    out = torch.empty((len(samples), 3, size, size), dtype=torch.uint8)
    ok = np.zeros(len(samples), dtype=bool)
    skipped: list[tuple[Path, str]] = []

    def work(i: int) -> None:
        pause_if_background(background)  # beside a server's visitors: their predictions first (device.py)
        try:
            out[i] = to_uint8_chw(load_square(samples[i].path, size, max_pixels))
            ok[i] = True
        except (ImageError, OSError, ValueError) as exc:
            skipped.append((samples[i].path, str(exc)))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done, _ in enumerate(pool.map(work, range(len(samples))), 1):
            if progress and (done % 64 == 0 or done == len(samples)):
                progress(done, len(samples))
    if skipped:
        log.warning("%d image(s) could not be decoded and were skipped, e.g. %s", len(skipped), skipped[0][0])
    keep = torch.from_numpy(ok)
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)
    paths = tuple(s.path for s, k in zip(samples, ok, strict=True) if k)
    return ImageTensors(out[keep] if not ok.all() else out, labels[keep], paths), skipped
