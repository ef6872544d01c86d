"""Safe image loading: any common input/mode -> fully loaded RGB PIL image, with size guards."""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import (  # noqa: F401  (importing registers exactly the decoders listed in PIL_FORMATS)
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
DEFAULT_MAX_PIXELS: int = 40_000_000
# Decoders we allow Image.open to pick (no EPS/Ghostscript, PSD, ... for untrusted uploads).
# The JPEG decoder also opens MPO (how Pillow reports many phone photos).
PIL_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
ACCEPTED = "a JPEG, PNG, WebP, BMP or GIF image (" + " ".join(sorted(IMAGE_EXTENSIONS)) + ")"
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray


class ImageError(ValueError):
    """An input that cannot be used as an image (names the file, the problem and what is accepted).

    `problem` holds just the short problem description (without the file name and accepted list).
    """

    def __init__(self, message: str, problem: str | None = None) -> None:
        super().__init__(message)
        self.problem = problem or message


def is_image_file(path: str | os.PathLike) -> bool:
    """True if `path` has an accepted image extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return getattr(source, "name", None) or f"<{type(source).__name__}>"


def _error(name: str, problem: str) -> ImageError:
    return ImageError(f"{name}: {problem}. Accepted: {ACCEPTED}.", problem)


def _check_pixels(name: str, size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise _error(name, f"image has an invalid size {w}x{h}")
    if w * h > max_pixels:
        raise _error(
            name,
            f"image is too large: {w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} pixels"
            " (decompression-bomb guard); resize it first",
        )


def _open(source: Any, name: str, max_pixels: int) -> Image.Image:
    """Open (header only) a path/bytes/file-like with a size check; the caller loads and closes it."""
    owned = _owns_fp(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise _error(name, "the data is empty")
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise _error(name, "file not found")
        if not path.is_file():
            raise _error(name, "not a regular file")
    elif not hasattr(source, "read"):
        raise ImageError(
            f"cannot load an image from a {type(source).__name__}; accepted inputs: a file path, bytes, "
            "a binary file object, a PIL.Image.Image or a HxW / HxWx3 uint8 numpy array"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source, formats=PIL_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _error(name, f"image is too large ({exc}); the limit is {max_pixels:,} pixels") from exc
    except UnidentifiedImageError as exc:
        raise _error(name, "not a recognised image (unknown or corrupt data)") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise _error(name, f"cannot read the image header ({exc})") from exc
    try:
        _check_pixels(name, img.size, max_pixels)
    except ImageError:
        if owned:
            img.close()
        raise
    return img


def _owns_fp(source: Any) -> bool:
    """True when load_image/check_image_header opened the file itself (path or bytes input)."""
    return isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview))


def check_image_header(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Cheaply validate an image (header only, no decode) and return its (width, height)."""
    name = _describe(source)
    if isinstance(source, Image.Image):
        _check_pixels(name, source.size, max_pixels)
        return source.size
    img = _open(source, name, max_pixels)
    try:
        return img.size
    finally:
        if _owns_fp(source):
            img.close()


def _int_to_uint8(arr: np.ndarray, bits16: bool) -> np.ndarray:
    """Scale integer/float single-channel data to 0..255 (16-bit -> /257, floats in [0,1] -> *255)."""
    arr = arr.astype(np.float64)
    finite = arr[np.isfinite(arr)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if bits16:
        out = arr / 257.0
    elif lo >= 0.0 and hi <= 1.0 and arr.dtype.kind == "f":
        out = arr * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        out = arr
    elif lo >= 0.0 and hi <= 65535.0:
        out = arr / 257.0
    else:  # arbitrary range: stretch min..max
        out = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return np.clip(np.nan_to_num(np.rint(out), nan=0.0), 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a loaded image of any mode to RGB (alpha onto white, 16-bit/float scaled to 8-bit).

    Returns `img` itself when it is already RGB.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img)
        return Image.fromarray(_int_to_uint8(arr, mode.startswith("I;16")), "L").convert("RGB")
    return img.convert("RGB")


def _from_array(arr: np.ndarray, max_pixels: int) -> Image.Image:
    name = "<numpy array>"
    accepted = "a HxW, HxWx3 or HxWx4 uint8 numpy array"
    if arr.dtype != np.uint8:
        raise ImageError(f"{name}: dtype {arr.dtype} is not supported; accepted: {accepted}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ImageError(f"{name}: shape {arr.shape} is not supported; accepted: {accepted}")
    _check_pixels(name, (arr.shape[1], arr.shape[0]), max_pixels)
    mode = "L" if arr.ndim == 2 else ("RGB" if arr.shape[2] == 3 else "RGBA")
    return to_rgb(Image.fromarray(np.array(arr, copy=True, order="C"), mode))


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: tuple[int, int] | None = None,
) -> Image.Image:
    """Load `source` (path, bytes, file object, PIL image or uint8 array) as a fully decoded RGB image.

    EXIF orientation is applied. `draft=(w, h)` lets JPEGs decode at a reduced DCT scale that is never
    smaller than max(w, h) on either side (square request, so EXIF rotation cannot undercut it).
    Raises ImageError for anything unreadable, corrupt, truncated or larger than `max_pixels`
    (PIL's own Image.MAX_IMAGE_PIXELS, left unchanged, remains an upper ceiling).
    """
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels)
    name = _describe(source)
    if isinstance(source, Image.Image):
        img = source
        _check_pixels(name, img.size, max_pixels)
    else:
        img = _open(source, name, max_pixels)
    try:
        if draft is not None and img.format in ("JPEG", "MPO") and img is not source:
            side = max(int(draft[0]), int(draft[1]))
            if side > 0:
                img.draft("RGB", (side, side))
        if getattr(img, "is_animated", False):
            img.seek(0)  # animated GIF/WebP: first frame
        img.load()
        try:
            oriented = ImageOps.exif_transpose(img)
        except Exception as exc:  # malformed EXIF must not make a good image unusable
            logger.warning("%s: ignoring unreadable EXIF orientation (%s)", name, exc)
            oriented = img
        rgb = to_rgb(oriented)
        return rgb.copy() if rgb is source or rgb is img else rgb  # img is closed below
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _error(name, f"image is too large ({exc}); the limit is {max_pixels:,} pixels") from exc
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise _error(name, f"the image data is corrupt or truncated ({exc})") from exc
    finally:
        if _owns_fp(source):  # Image.close() would also close a caller's file object
            img.close()
