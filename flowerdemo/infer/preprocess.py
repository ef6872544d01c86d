"""Image preparation for inference: decode no more pixels than needed, then the eval crop of training."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from flowerdemo.data.augment import normalize
from flowerdemo.data.images import DEFAULT_MAX_PIXELS, load_image
from flowerdemo.models.registry import Preprocessing


@dataclass
class PreparedImage:
    original: Image.Image  # RGB, EXIF-rotated; decoded at reduced scale when `max_side` allowed it
    tensor: torch.Tensor  # (1, 3, S, S) normalised model input
    box: tuple[int, int, int, int]  # the centre crop the model sees, in `original` coordinates
    # as decoded, before the `max_side` cap: a small photo's own size (a JPEG's reduced scale keeps the short side
    # at least the eval resize), what photo_note needs
    decoded_size: tuple[int, int] = (0, 0)


def crop_box(width: int, height: int, prep: Preprocessing) -> tuple[int, int, int, int]:
    """Resize-short-side-then-centre-crop, expressed as one box on the original image."""
    side = max(1, round(min(width, height) * prep.input_size / prep.resize_size))
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def prepare_image(image, prep: Preprocessing, max_side: int | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None) -> PreparedImage:
    """Decode no more pixels than needed, crop, normalise. JPEGs decode at the coarsest DCT scale
    (1/2, 1/4, 1/8) whose short side is still >= max(eval resize, `min_side`): a 12 MP photo at 1/8
    is 500x375, more than the 270 px eval resize of a 240 px model. `max_side` caps the kept image
    (what an overlay is drawn on)."""
    want = max(prep.resize_size, min_side or 0)
    img = load_image(image, max_pixels=max_pixels, draft=(want, want))
    decoded_size = img.size
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    box = crop_box(*img.size, prep)
    crop = img.resize((prep.input_size, prep.input_size), Image.Resampling.BILINEAR, box=box,
                      reducing_gap=None if img.width < 4 * prep.input_size else 2.0)
    x = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
    return PreparedImage(img, normalize(x, prep.mean, prep.std), box, decoded_size)


def photo_note(width: int, height: int, input_size: int) -> str | None:
    """A plain warning for a photo the answer means little for, else None: too small (the dataset check's
    TINY_SIDE), or so long and thin that the square the model sees is a small part of it (its EXTREME_ASPECT)."""
    from flowerdemo.data.check import EXTREME_ASPECT, TINY_SIDE

    short, long = min(width, height), max(width, height)
    if short < TINY_SIDE:
        return (f"This photo is {width}×{height} px: the model looks at {input_size}×{input_size} px, so from a side "
                f"of {short} px it sees mostly blur and the answer means little. Use a photo at least "
                f"{TINY_SIDE} px on each side.")
    if long >= EXTREME_ASPECT * short:
        # no pixel counts: a large JPEG's size here is its reduced decode's (prepare_image)
        return (f"This photo is {long / short:.0f} times {'wider' if width > height else 'taller'} than "
                f"{'tall' if width > height else 'wide'}: the model sees only the square in its middle, "
                f"{short / long:.0%} of it. Crop it to what it should classify.")
    return None
