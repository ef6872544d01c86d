"""Safe extraction of user-supplied .zip and .tar(.gz) archives (no path escapes, links or bombs)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 2 * 1024**3
DEFAULT_MAX_FILES = 100_000
_CHUNK = 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")
_SKIP_TOP = frozenset({"__MACOSX"})


class ArchiveError(ValueError):
    """An archive that is unreadable or unsafe to extract (message says what and the limit)."""


@dataclass(frozen=True)
class _Entry:
    rel: PurePosixPath
    is_dir: bool
    size: int
    open: Callable[[], IO[bytes]]


def _fmt(n: int) -> str:
    return f"{n / 1024**2:,.1f} MiB" if n >= 1024**2 else f"{n:,} bytes"


def safe_relpath(name: str, archive: Path) -> PurePosixPath | None:
    """Validate an entry name and return it as a relative path (None for entries to skip silently)."""
    norm = name.replace("\\", "/")
    if "\x00" in norm:
        raise ArchiveError(f"{archive.name}: entry {name!r} has a NUL byte in its name; refusing the archive")
    if norm.startswith("/") or _DRIVE.match(norm):
        raise ArchiveError(
            f"{archive.name}: entry {name!r} has an absolute path; only relative paths inside the archive are allowed"
        )
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(
            f"{archive.name}: entry {name!r} points outside the extraction folder ('..'); "
            "only paths inside the archive are allowed"
        )
    if not parts or parts[0] in _SKIP_TOP:
        return None
    return PurePosixPath(*parts)


def _check_totals(archive: Path, entries: list[_Entry], max_bytes: int, max_files: int) -> None:
    if len(entries) > max_files:
        raise ArchiveError(f"{archive.name} has {len(entries):,} entries; the limit is {max_files:,} files")
    total = sum(e.size for e in entries)
    if total > max_bytes:
        raise ArchiveError(
            f"{archive.name} would expand to {_fmt(total)}; the limit is {_fmt(max_bytes)} uncompressed"
        )


def _prepare_dest(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ArchiveError(f"destination {dest} already exists and is not an empty folder; choose a new folder")
    dest.parent.mkdir(parents=True, exist_ok=True)


def _write_all(archive: Path, entries: list[_Entry], dest: Path, max_bytes: int) -> Path:
    """Stream entries into a staging folder next to `dest`, counting real bytes, then rename into place."""
    _prepare_dest(dest)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    base = staging.resolve()
    written = 0
    try:
        for entry in entries:
            target = staging.joinpath(*entry.rel.parts)
            if not target.resolve().is_relative_to(base):  # belt and braces; names were validated
                raise ArchiveError(f"{archive.name}: entry {entry.rel} resolves outside the destination")
            if entry.is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with entry.open() as src, open(target, "xb") as out:
                while chunk := src.read(_CHUNK):
                    written += len(chunk)
                    if written > max_bytes:
                        raise ArchiveError(
                            f"{archive.name} expands to more than {_fmt(max_bytes)} (more than its headers "
                            f"declare); the limit is {_fmt(max_bytes)} uncompressed"
                        )
                    out.write(chunk)
        if dest.exists():
            dest.rmdir()  # checked empty above
        os.replace(staging, dest)
    except FileExistsError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ArchiveError(f"{archive.name}: entry {exc.filename} appears twice; refusing the archive") from exc
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, NotImplementedError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ArchiveError(
            f"{archive.name} is corrupt, truncated or uses an unsupported compression ({exc}); "
            "re-create it as a plain .zip (deflate) or .tar.gz"
        ) from exc
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ArchiveError(f"could not extract {archive.name} into {dest}: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("Extracted %d entries (%s) from %s into %s", len(entries), _fmt(written), archive.name, dest)
    return dest


def _tar_member(tf: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    fh = tf.extractfile(member)
    if fh is None:
        raise ArchiveError(f"entry {member.name!r} has no data; only files and folders are allowed")
    return fh


def extract_zip(
    zip_path: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
) -> Path:
    """Validate every entry of a .zip, then extract it into `dest` (must be new or empty); returns dest."""
    archive, dest = Path(zip_path), Path(dest)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ArchiveError(
            f"{archive.name} is not a readable .zip file ({exc}); upload a .zip of class folders"
        ) from exc
    with zf:
        entries: list[_Entry] = []
        for info in zf.infolist():
            rel = safe_relpath(info.filename, archive)
            kind = stat.S_IFMT(info.external_attr >> 16)  # Unix file type; 0 when not recorded
            if kind == stat.S_IFLNK:
                raise ArchiveError(f"{archive.name}: entry {info.filename!r} is a symbolic link; links are not allowed")
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise ArchiveError(
                    f"{archive.name}: entry {info.filename!r} is a special file; only files and folders are allowed"
                )
            if info.flag_bits & 0x1:
                raise ArchiveError(f"{archive.name}: entry {info.filename!r} is encrypted; use an unencrypted .zip")
            if rel is not None:
                entries.append(_Entry(rel, info.is_dir(), info.file_size, partial(zf.open, info)))
        _check_totals(archive, entries, max_bytes, max_files)
        return _write_all(archive, entries, dest, max_bytes)


def extract_tar(
    tar_path: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
) -> Path:
    """Validate every member of a .tar/.tar.gz/.tgz, then extract it into `dest` (new or empty); returns dest."""
    archive, dest = Path(tar_path), Path(dest)
    try:
        tf = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"{archive.name} is not a readable .tar/.tgz file ({exc})") from exc
    with tf:
        entries: list[_Entry] = []
        try:
            for n, member in enumerate(tf, start=1):
                if n > max_files:  # stop before reading an unbounded member list
                    raise ArchiveError(f"{archive.name} has more than {max_files:,} entries; that is the limit")
                rel = safe_relpath(member.name, archive)
                if member.issym() or member.islnk():
                    raise ArchiveError(f"{archive.name}: entry {member.name!r} is a link; links are not allowed")
                if not (member.isreg() or member.isdir()):
                    raise ArchiveError(
                        f"{archive.name}: entry {member.name!r} is a special file (device/fifo); "
                        "only files and folders are allowed"
                    )
                if rel is not None:
                    entries.append(_Entry(rel, member.isdir(), member.size, partial(_tar_member, tf, member)))
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise ArchiveError(f"{archive.name} is corrupt or truncated ({exc})") from exc
        _check_totals(archive, entries, max_bytes, max_files)
        return _write_all(archive, entries, dest, max_bytes)
