"""Synthetic, learnable image folders for tests (drawn with PIL, no network, no real photos)."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

# Each class is a shape in a colour: easy to learn, but only from the image content.
CLASS_STYLES = {
    "circle": ((220, 40, 40), "ellipse"),
    "square": ((40, 200, 60), "rectangle"),
    "triangle": ((50, 80, 230), "polygon"),
}


def draw_sample(kind: str, size: int, rng: random.Random, quadrant: int | None = None) -> Image.Image:
    """One image of class `kind` on a noisy background; `quadrant` (0..3, row-major) pins the object."""
    colour, shape = CLASS_STYLES[kind]
    bg = tuple(rng.randint(90, 170) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    for _ in range(8):  # clutter, so the model must look at the object
        x, y = rng.randrange(size), rng.randrange(size)
        draw.point((x, y), fill=tuple(rng.randint(0, 255) for _ in range(3)))
    r = rng.randint(size // 8, size // 5)
    if quadrant is None:
        cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    else:
        half = size // 2
        cx = (quadrant % 2) * half + half // 2
        cy = (quadrant // 2) * half + half // 2
    jitter = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in colour)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "ellipse":
        draw.ellipse(box, fill=jitter)
    elif shape == "rectangle":
        draw.rectangle(box, fill=jitter)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=jitter)
    return img


def make_dataset(
    root: Path,
    per_class: int = 20,
    size: int = 64,
    classes: tuple[str, ...] = tuple(CLASS_STYLES),
    seed: int = 0,
    layout: str = "flat",
    ext: str = ".png",
) -> Path:
    """Write an ImageFolder tree under `root` ("flat": root/class/x, "split": root/{train,val}/class/x)."""
    rng = random.Random(seed)
    root = Path(root)
    for kind in classes:
        for i in range(per_class):
            sub = root / kind if layout == "flat" else root / ("val" if i % 5 == 0 else "train") / kind
            sub.mkdir(parents=True, exist_ok=True)
            draw_sample(kind, size, rng).save(sub / f"{kind}_{i:03d}{ext}")
    return root
