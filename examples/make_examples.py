"""Draws the app's example images: stylised flowers, one per class of the built-in flowers dataset.

Drawings, not photos: they show the app working without shipping anyone's pictures.
Run `python examples/make_examples.py` to regenerate them (deterministic).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SIZE = 320
HERE = Path(__file__).resolve().parent


def background(rng: random.Random, top: tuple, bottom: tuple) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE))
    d = ImageDraw.Draw(img)
    for y in range(SIZE):
        t = y / (SIZE - 1)
        d.line([(0, y), (SIZE, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))
    for _ in range(60):  # blurred foliage specks
        x, y, r = rng.randrange(SIZE), rng.randrange(SIZE // 2, SIZE), rng.randint(6, 22)
        g = rng.randint(90, 160)
        d.ellipse([x - r, y - r, x + r, y + r], fill=(40, g, 50))
    return img.filter(ImageFilter.GaussianBlur(6))


def stem(d: ImageDraw.ImageDraw, x: int, y: int) -> None:
    d.line([(x, y), (x + 6, SIZE)], fill=(46, 120, 40), width=9)
    d.ellipse([x - 46, y + 90, x + 4, y + 112], fill=(60, 140, 50))
    d.ellipse([x + 8, y + 130, x + 58, y + 152], fill=(60, 140, 50))


def petals(d, cx, cy, n, length, width, colour, rng, offset=0.0, outline=None):
    for i in range(n):
        a = offset + 2 * math.pi * i / n + rng.uniform(-0.05, 0.05)
        px, py = cx + math.cos(a) * length * 0.55, cy + math.sin(a) * length * 0.55
        pts = []
        for k in range(24):  # an ellipse rotated to point away from the centre
            t = 2 * math.pi * k / 24
            ex, ey = math.cos(t) * length / 2, math.sin(t) * width / 2
            pts.append((px + ex * math.cos(a) - ey * math.sin(a), py + ex * math.sin(a) + ey * math.cos(a)))
        d.polygon(pts, fill=colour, outline=outline)


def daisy(rng):
    img = background(rng, (150, 200, 240), (70, 140, 70))
    d = ImageDraw.Draw(img)
    stem(d, 160, 170)
    petals(d, 160, 150, 20, 110, 26, (250, 250, 245), rng, outline=(215, 215, 215))
    d.ellipse([132, 122, 188, 178], fill=(240, 190, 30), outline=(200, 150, 20))
    return img


def sunflower(rng):
    img = background(rng, (110, 170, 235), (90, 150, 60))
    d = ImageDraw.Draw(img)
    stem(d, 160, 180)
    petals(d, 160, 150, 22, 120, 30, (250, 200, 20), rng, outline=(220, 160, 10))
    petals(d, 160, 150, 22, 95, 24, (245, 180, 10), rng, offset=0.14)
    d.ellipse([115, 105, 205, 195], fill=(90, 55, 25))
    for _ in range(140):
        a, r = rng.uniform(0, 2 * math.pi), 42 * math.sqrt(rng.random())
        x, y = 160 + r * math.cos(a), 150 + r * math.sin(a)
        d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(60, 35, 15))
    return img


def rose(rng):
    img = background(rng, (60, 90, 60), (30, 70, 35))
    d = ImageDraw.Draw(img)
    stem(d, 160, 190)
    for i, r in enumerate(range(86, 10, -11)):  # nested petals, alternating shades: a spiral look
        shade = (200 - i * 8, 20 + i * 3, 45 + i * 2) if i % 2 == 0 else (160 - i * 6, 15, 35)
        dx = (i % 3 - 1) * 4
        d.ellipse([160 - r + dx, 150 - r * 0.85, 160 + r + dx, 150 + r * 0.85], fill=shade)
    d.arc([130, 125, 190, 175], 200, 340, fill=(110, 10, 30), width=4)
    return img


def tulip(rng):
    img = background(rng, (170, 210, 245), (80, 160, 70))
    d = ImageDraw.Draw(img)
    stem(d, 160, 200)
    d.polygon([(110, 110), (130, 215), (190, 215), (210, 110), (185, 150), (160, 95), (135, 150)],
              fill=(235, 60, 110), outline=(190, 30, 80))
    d.polygon([(135, 150), (160, 95), (185, 150), (175, 215), (145, 215)], fill=(250, 95, 140))
    d.chord([110, 160, 210, 240], 0, 180, fill=(235, 60, 110))
    return img


def dandelion(rng):
    img = background(rng, (140, 195, 240), (70, 150, 55))
    d = ImageDraw.Draw(img)
    stem(d, 160, 175)
    for _ in range(260):  # a seed head: thin rays with bright tips
        a, r = rng.uniform(0, 2 * math.pi), rng.uniform(55, 85)
        x, y = 160 + r * math.cos(a), 140 + r * math.sin(a)
        d.line([(160, 140), (x, y)], fill=(235, 235, 230), width=1)
        d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(255, 255, 255))
    d.ellipse([150, 130, 170, 150], fill=(170, 150, 90))
    return img


FLOWERS = {"daisy": daisy, "dandelion": dandelion, "roses": rose, "sunflowers": sunflower, "tulips": tulip}


def variant(name: str, seed: int, size: int = 128) -> Image.Image:
    """Another drawing of class `name` (the flowers dataset's class names): new background, moved,
    turned and rescaled, so that a small drawn dataset can be learnt (used by the tests)."""
    rng = random.Random(f"{name}/{seed}")
    img = FLOWERS[name](rng).rotate(rng.uniform(-25, 25), resample=Image.Resampling.BILINEAR,
                                    fillcolor=(90, 150, 70))
    scale = rng.uniform(0.6, 0.95)
    side = int(SIZE * scale)
    left, top = rng.randint(0, SIZE - side), rng.randint(0, SIZE - side)
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR)


def make_dataset(root: Path, per_class: int = 10, size: int = 128) -> Path:
    """root/<class>/<n>.jpg drawings for every flower class."""
    for name in FLOWERS:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            variant(name, i, size).save(root / name / f"{name}_{i:03d}.jpg", quality=90)
    return root


def main() -> None:
    for i, (name, draw) in enumerate([("daisy", daisy), ("dandelion", dandelion), ("rose", rose),
                                      ("sunflower", sunflower), ("tulip", tulip)]):
        img = draw(random.Random(i))
        img.save(HERE / f"{name}.jpg", quality=85, optimize=True)


if __name__ == "__main__":
    main()
