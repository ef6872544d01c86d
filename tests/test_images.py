"""Tests for flowerdemo.images: input kinds, mode conversion, EXIF, size guards, draft decoding."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowerdemo.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageError,
    check_image_header,
    is_image_file,
    load_image,
)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _close(a, b, tol: int = 3) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b, strict=True))


def _png_with_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR is patched to declare width x height (CRC fixed)."""
    data = bytearray(_encode(Image.new("1", (1, 1)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_extensions_case_insensitive():
    assert IMAGE_EXTENSIONS == {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
    for name in ("a.JPG", "b.Jpeg", "c.png", "d.WEBP", "e.BmP", "f.GIF", Path("x/y.jpg")):
        assert is_image_file(name), name
    for name in ("a.txt", "a.jpg.txt", "jpg", "a.tiff", "Thumbs.db"):
        assert not is_image_file(name), name


@pytest.mark.parametrize(
    ("img", "expected"),
    [
        (Image.new("L", (8, 8), 100), (100, 100, 100)),
        (Image.new("1", (8, 8), 1), (255, 255, 255)),
        (Image.new("LA", (8, 8), (50, 0)), (255, 255, 255)),  # fully transparent -> white
        (Image.new("LA", (8, 8), (50, 255)), (50, 50, 50)),
        (Image.new("RGBA", (8, 8), (200, 10, 10, 0)), (255, 255, 255)),
        (Image.new("RGBA", (8, 8), (255, 0, 0, 128)), (255, 127, 127)),  # half red over white
        (Image.new("CMYK", (8, 8), (0, 255, 255, 0)), (255, 0, 0)),
        (Image.new("I;16", (8, 8), 32768), (128, 128, 128)),  # 16-bit mid-grey stays mid-grey
        (Image.new("I;16", (8, 8), 65535), (255, 255, 255)),
        (Image.new("I", (8, 8), 40000), (156, 156, 156)),  # 16-bit range in a 32-bit image
        (Image.new("I", (8, 8), 200), (200, 200, 200)),  # 8-bit range kept
        (Image.new("F", (8, 8), 0.5), (128, 128, 128)),
    ],
    ids=lambda v: getattr(v, "mode", None) or str(v),
)
def test_modes_to_rgb(img, expected):
    out = load_image(img)
    assert out.mode == "RGB" and out.size == img.size
    assert _close(out.getpixel((3, 3)), expected), (img.mode, out.getpixel((3, 3)))


def test_16bit_png_file_scaled_not_clipped():
    ramp = np.tile(np.linspace(0, 65535, 256), (4, 1)).astype(np.uint16)
    raw = _encode(Image.frombytes("I;16", (256, 4), ramp.astype("<u2").tobytes()), "PNG")
    out = np.asarray(load_image(raw))
    assert out.shape == (4, 256, 3)
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255 and 120 <= out[0, 128, 0] <= 136
    assert (out[:, :, 0] == 255).mean() < 0.05  # clipping would make most of the ramp white


def test_palette_transparency_png():
    pal = Image.new("P", (4, 2), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((3, 1), 1)
    out = load_image(_encode(pal, "PNG", transparency=0))
    assert out.getpixel((0, 0)) == (255, 255, 255)  # transparent index -> white, not black
    assert out.getpixel((3, 1)) == (255, 0, 0)


def test_exif_orientation_6_rotates(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = img.getexif()
    exif[0x0112] = 6
    path = tmp_path / "rot.JPG"
    img.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    out = load_image(path)
    assert out.size == (20, 40)  # rotated 90 degrees clockwise
    assert _close(out.getpixel((10, 5)), (255, 0, 0), 30)  # left half is now on top
    assert _close(out.getpixel((10, 35)), (0, 0, 255), 30)


def test_input_kinds_agree(tmp_path):
    src = Image.new("RGB", (16, 12), (10, 120, 230))
    raw = _encode(src, "PNG")
    path = tmp_path / "photo.PNG"
    path.write_bytes(raw)
    fh = io.BytesIO(raw)
    outs = [load_image(path), load_image(str(path)), load_image(raw), load_image(bytearray(raw)), load_image(fh),
            load_image(src), load_image(np.asarray(src))]
    assert not fh.closed  # the caller's file object is left open
    for out in outs:
        assert out.mode == "RGB" and out.size == (16, 12) and out.getpixel((5, 5)) == (10, 120, 230)
    grey = load_image(np.full((5, 7), 77, dtype=np.uint8))
    assert grey.size == (7, 5) and grey.getpixel((0, 0)) == (77, 77, 77)
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    load_image(rgba)
    assert rgba.mode == "RGBA"  # input image is not modified


@pytest.mark.parametrize("arr", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 2), np.uint8), np.zeros(5, np.uint8)])
def test_bad_arrays_rejected(arr):
    with pytest.raises(ImageError, match="accepted"):
        load_image(arr)


@pytest.mark.parametrize("data", [b"this is not an image at all", b"", b"\x89PNG\r\n\x1a\n garbage"])
def test_non_image_bytes(data):
    with pytest.raises(ImageError, match="Accepted"):
        load_image(data)


def test_bad_type_and_missing_file(tmp_path):
    with pytest.raises(ImageError, match="accepted inputs"):
        load_image(12345)  # type: ignore[arg-type]
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match="nope.jpg: file not found"):
        load_image(missing)
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path)


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    raw = _encode(Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)), "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(raw[: len(raw) // 2])
    assert check_image_header(path) == (200, 200)  # header alone still looks fine
    with pytest.raises(ImageError, match="cut.jpg: .*(corrupt|truncated)"):
        load_image(path)


def test_decompression_bomb_refused_before_decode():
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match="40,000,000 pixels"):
        load_image(_png_with_size(20000, 20000))
    with pytest.raises(ImageError, match=r"7000x7000 = 49,000,000 pixels exceeds the limit of 40,000,000"):
        load_image(_png_with_size(7000, 7000))  # below PIL's own limit: our check must catch it
    with pytest.raises(ImageError, match="exceeds the limit of 5,000 pixels"):
        check_image_header(_encode(Image.new("RGB", (100, 100)), "PNG"), max_pixels=5_000)
    assert Image.MAX_IMAGE_PIXELS == before  # global PIL limit untouched
    assert DEFAULT_MAX_PIXELS == 40_000_000


def test_draft_decodes_large_jpeg_smaller(tmp_path):
    big = Image.new("RGB", (2400, 1600), (30, 140, 60))
    path = tmp_path / "big.jpg"
    big.save(path, "JPEG", quality=85)
    assert load_image(path).size == (2400, 1600)
    small = load_image(path, draft=(224, 224))
    assert small.size[0] < 2400 and min(small.size) >= 224
    assert _close(small.getpixel((10, 10)), (30, 140, 60), 6)
    # Non-square request on an EXIF-rotated photo: still >= requested in both dimensions.
    exif = big.getexif()
    exif[0x0112] = 6
    big.save(path, "JPEG", exif=exif.tobytes())
    rot = load_image(path, draft=(500, 300))
    assert rot.size[0] < rot.size[1] and rot.size[0] >= 500 and rot.size[1] >= 300
    png = tmp_path / "big.png"
    Image.new("RGB", (600, 400)).save(png)
    assert load_image(png, draft=(100, 100)).size == (600, 400)  # draft only affects JPEG


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    raw = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = load_image(raw)
    assert out.mode == "RGB" and _close(out.getpixel((5, 5)), (255, 0, 0), 8)
