"""Fingerprints of image files (content hash, perceptual hashes, size) and near-duplicate groups.

A fingerprint is cheap: JPEGs decode at a reduced DCT scale (`Image.draft`) straight to greyscale,
and fingerprints are cached per file (key: path, size, mtime) under <cache root>/hashes, so a
training start on an unchanged folder only stats its files. Near-duplicates are photos whose 64-bit
pHashes differ in at most NEAR_BITS bits, comparing the whole photo and its centre crops (CROPS) both
ways, so that a cropped copy meets its original's matching crop. Method and threshold were chosen by
measurement (benchmarks/dataset_check.py --compare; docs/benchmarks.md, "Dataset check"): a plain
pHash misses most 80-90 % crops, the bundled backbone's embeddings miss half-size copies and take
~40x longer per photo.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from scipy.fft import dct

from flowerdemo.data.images import PIL_FORMATS

logger = logging.getLogger(__name__)

# At most this many of 64 pHash bits differ between a photo and its re-encoded, resized or centre-cropped
# copy (all such copies matched at 6); at 8, distinct flowers of two classes begin to match
# (measured on flowers5-dev: docs/benchmarks.md, "Dataset check")
NEAR_BITS = 6
CROPS = (1.0, 0.9, 0.8)  # centre crops hashed (share of each side): a copy cropped to 80-90 % meets one
HASH_SIDE = 32  # pHash: DCT of a 32x32 greyscale thumbnail, its 8x8 lowest frequencies
CACHE_VERSION = 2  # bump when a fingerprint of the same file changes
CACHE_FILES = 64  # folders remembered, least recently used dropped: every extracted upload is a new folder

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Fingerprint:
    """One file: `sha` of its bytes, `phashes` (64 bits each, of the CROPS), its `width` x `height` as
    oriented; `error` says why it could not be decoded (then the other fields are empty)."""

    sha: str
    phashes: tuple[int, ...]
    width: int
    height: int
    error: str = ""


def fingerprint_bytes(data: bytes) -> Fingerprint:
    """The fingerprint of an encoded image; never raises for bad data (see `error`)."""
    sha = hashlib.sha256(data).hexdigest()[:32]
    try:
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as img:
            size = img.size
            if img.format in ("JPEG", "MPO"):
                img.draft("L", (2 * HASH_SIDE, 2 * HASH_SIDE))  # 1/2..1/8 DCT scale, never below 64 px
            if getattr(img, "is_animated", False):
                img.seek(0)
            img.load()
            orientation = img.getexif().get(0x0112, 1)
            grey = ImageOps.exif_transpose(img).convert("L")
    except Exception as exc:  # PIL raises many types for bad data; the reason is reported, not raised
        return Fingerprint(sha, (), 0, 0, error=f"cannot be decoded ({type(exc).__name__}: {exc})")
    if orientation in (5, 6, 7, 8):  # rotated a quarter turn by its EXIF tag
        size = size[::-1]
    w, h = grey.size
    crops = [grey.crop((round(w * (1 - c) / 2), round(h * (1 - c) / 2), round(w * (1 + c) / 2), round(h * (1 + c) / 2)))
             for c in CROPS]
    return Fingerprint(sha, tuple(phash(c) for c in crops), int(size[0]), int(size[1]))


def phash(grey: Image.Image) -> int:
    """imagehash's pHash as an int: the 8x8 lowest DCT frequencies of a 32x32 thumbnail vs their median."""
    pixels = np.asarray(grey.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS), dtype=np.float64)
    low = dct(dct(pixels, axis=0), axis=1)[:8, :8]
    bits = (low > np.median(low)).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def default_hash_cache() -> Path:
    """<cache root>/hashes: the cache root is the app's and the CLI's cache_dir setting ($FLOWERDEMO_CACHE)."""
    from flowerdemo.settings import Settings

    return Settings.one_from_env("cache_dir") / "hashes"


def _cache_file(cache_dir: Path, paths: Sequence[Path]) -> Path:
    """One JSON per folder: the common parent of the files names it."""
    parent = os.path.commonpath([str(p.resolve().parent) for p in paths]) if paths else ""
    return cache_dir / f"{hashlib.sha256(parent.encode()).hexdigest()[:24]}.json"


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile by another process
        return 0.0


def _load(file: Path) -> dict[str, list]:
    try:
        raw = json.loads(file.read_text())
        return raw["files"] if raw.get("version") == CACHE_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _save(file: Path, entries: dict[str, list]) -> None:
    tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "files": entries}))
        os.replace(tmp, file)
        for old in sorted(file.parent.glob("*.json"), key=_mtime, reverse=True)[CACHE_FILES:]:
            old.unlink(missing_ok=True)
    except OSError as exc:  # a read-only home or a full disk must not stop a check or a training
        logger.warning("could not write the fingerprint cache %s: %s", file, exc)
    finally:
        tmp.unlink(missing_ok=True)


def fingerprints(paths: Sequence[Path], cache_dir: Path | None = None, progress: Progress | None = None) -> list[Fingerprint]:
    """Fingerprints of `paths` (in order), from the cache where a file's size and mtime are unchanged."""
    from flowerdemo.device import pause_if_background

    paths = [Path(p) for p in paths]
    cache_dir = default_hash_cache() if cache_dir is None else Path(cache_dir)
    file = _cache_file(cache_dir, paths)
    cached = _load(file)
    out: list[Fingerprint] = []
    fresh: dict[str, list] = {}
    computed = 0
    for i, path in enumerate(paths):
        name = str(path.resolve())
        try:
            key = _stat_key(path)
        except OSError as exc:
            out.append(Fingerprint("", (), 0, 0, error=f"cannot be read ({exc.strerror or exc})"))
            continue
        entry = cached.get(name)
        if entry is not None and entry[0] == key:
            fp = Fingerprint(entry[1], tuple(entry[2]), *entry[3:])
        else:
            pause_if_background()  # beside a server's visitors: their predictions first (device.py)
            try:
                fp = fingerprint_bytes(path.read_bytes())
            except OSError as exc:
                fp = Fingerprint("", (), 0, 0, error=f"cannot be read ({exc.strerror or exc})")
            computed += 1
        fresh[name] = [key, *asdict(fp).values()]
        out.append(fp)
        if progress is not None:
            progress(i + 1, len(paths))
    if computed or set(fresh) != set(cached):
        _save(file, {**cached, **fresh} if len(cached) < 4 * len(fresh) + 1000 else fresh)
    else:
        with contextlib.suppress(OSError):  # recently used: the last to be dropped (a read-only cache: never mind)
            os.utime(file)
    logger.debug("fingerprints: %d computed, %d from the cache %s", computed, len(paths) - computed, file)
    return out


def near_pairs(hashes: Sequence[Sequence[int]], max_bits: int = NEAR_BITS) -> list[tuple[int, int]]:
    """Index pairs (i < j) of which some hash of i and some hash of j differ in at most `max_bits` bits
    (every pair and every combination of their hashes, in row blocks)."""
    if len(hashes) == 0:  # nothing decodable: no pairs (the scan's caller says what is wrong)
        return []
    h = np.array(hashes, dtype=np.uint64).reshape(len(hashes), -1)  # (N, crops)
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(h), 256):
        block = h[start:start + 256]
        dist = np.full((len(block), len(h)), 64, dtype=np.uint8)
        for a in range(h.shape[1]):
            for b in range(h.shape[1]):
                np.minimum(dist, np.bitwise_count(block[:, a, None] ^ h[None, :, b]), out=dist)
        rows, cols = np.nonzero(dist <= max_bits)
        keep = cols > rows + start
        pairs += zip((rows[keep] + start).tolist(), cols[keep].tolist(), strict=True)
    return pairs


def union_groups(n: int, pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Connected components with more than one member, each sorted, ordered by their first index."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(find(i), []).append(i)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])


def exact_pairs(shas: Sequence[str]) -> list[tuple[int, int]]:
    """Pairs linking each file to the first file with the same content hash."""
    first: dict[str, int] = {}
    pairs = []
    for i, sha in enumerate(shas):
        if not sha:
            continue
        if sha in first:
            pairs.append((first[sha], i))
        else:
            first[sha] = i
    return pairs


def similar_groups(fps: Sequence[Fingerprint], max_bits: int = NEAR_BITS) -> list[list[int]]:
    """Groups of indices of identical or near-identical files (undecodable ones never join a group)."""
    ok = [i for i, fp in enumerate(fps) if not fp.error]
    pairs = exact_pairs([fps[i].sha for i in ok]) + near_pairs([fps[i].phashes for i in ok], max_bits)
    return [[ok[i] for i in g] for g in union_groups(len(ok), pairs)]
