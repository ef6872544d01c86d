"""Download, verify and safely extract the TensorFlow flower_photos dataset (cached, offline-friendly)."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from flowerdemo.data.archive import ArchiveError, extract_tar
from flowerdemo.data.dataset import find_dataset_root

logger = logging.getLogger(__name__)

FLOWERS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
# Published by TensorFlow Datasets: tensorflow_datasets/url_checksums/tf_flowers.txt (size 228813984 bytes).
FLOWERS_SHA256: str | None = "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c"
FLOWERS_SIZE = 228_813_984
DEFAULT_MAX_DOWNLOAD_BYTES = 1024**3
EXTRACT_DIRNAME = "flower_photos"
_CHUNK = 1024 * 1024

ProgressFn = Callable[[int, int | None], None]


class DownloadError(RuntimeError):
    """The dataset could not be downloaded or verified (message says why and what to do instead)."""


def _instructions(url: str) -> str:
    return (
        f"Instead, download flower_photos.tgz from {url} on a machine with a network and pass the "
        "folder with --data, or upload a .zip of class folders."
    )


def _failed(url: str, reason: str) -> DownloadError:
    return DownloadError(f"Downloading the flowers dataset from {url} failed: {reason}. {_instructions(url)}")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP error {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"cannot reach the server ({exc.reason})"
    if isinstance(exc, TimeoutError):
        return f"the connection timed out ({exc})"
    return f"{type(exc).__name__}: {exc}"


def _fetch(url: str, target: Path, sha256: str | None, timeout: float, progress: ProgressFn | None,
           max_bytes: int) -> None:
    """Stream `url` to a temp file next to `target`, verify size and sha256, then rename atomically."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    done = 0
    request = urllib.request.Request(url, headers={"User-Agent": "flowerdemo"})
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > max_bytes:
                raise _failed(url, f"the server offers {total:,} bytes, more than the {max_bytes:,}-byte limit")
            logger.info("Downloading %s (%s bytes) to %s", url, f"{total:,}" if total else "unknown", target)
            while chunk := resp.read(_CHUNK):
                done += len(chunk)
                if done > max_bytes:
                    raise _failed(url, f"the download exceeded the {max_bytes:,}-byte limit")
                digest.update(chunk)
                out.write(chunk)
                if progress is not None:
                    progress(done, total)
        if total is not None and done != total:
            raise _failed(url, f"the connection closed after {done:,} of {total:,} bytes")
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256.lower():
            raise DownloadError(
                f"Checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {actual}; the downloaded "
                f"file was deleted (corrupt download or the file changed upstream). {_instructions(url)}"
            )
        if sha256 is None:
            logger.warning("No sha256 given for %s; only the size was checked (sha256 %s)", url, actual)
        os.replace(tmp, target)
    except DownloadError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise _failed(url, _reason(exc)) from exc
    finally:
        tmp.unlink(missing_ok=True)


def download_flowers(
    cache_dir: str | os.PathLike,
    *,
    url: str = FLOWERS_URL,
    sha256: str | None = FLOWERS_SHA256,
    timeout: float = 30.0,
    progress: ProgressFn | None = None,
    max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
) -> Path:
    """Return the flower_photos class-folder root under `cache_dir`, downloading/extracting it if needed.

    A finished extraction (cache_dir/flower_photos) is reused without touching the network; an already
    downloaded archive is re-verified before extraction. `progress(bytes_done, bytes_total_or_None)`.
    """
    cache = Path(cache_dir).expanduser()
    extract_dir = cache / EXTRACT_DIRNAME
    if extract_dir.is_dir() and any(extract_dir.iterdir()):
        logger.info("Using the cached flowers dataset in %s", extract_dir)
        return find_dataset_root(extract_dir)
    if urlsplit(url).scheme not in ("http", "https"):
        raise DownloadError(f"url must start with http:// or https://, got {url!r}. {_instructions(url)}")
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the cache folder {cache}: {exc}; pass a writable cache folder") from exc
    archive = cache / (PurePosixPath(urlsplit(url).path).name or "flower_photos.tgz")
    if archive.is_file() and sha256 is not None and sha256_file(archive) != sha256.lower():
        logger.warning("Cached %s does not match the expected sha256; downloading it again", archive)
        archive.unlink()
    if not archive.is_file():
        _fetch(url, archive, sha256, timeout, progress, max_bytes)
    try:
        extract_tar(archive, extract_dir)
    except ArchiveError as exc:
        if sha256 is None:  # unverified archive: do not keep a possibly corrupt file around
            archive.unlink(missing_ok=True)
        raise DownloadError(f"The downloaded archive {archive} could not be extracted: {exc}. "
                            f"{_instructions(url)}") from exc
    return find_dataset_root(extract_dir)
