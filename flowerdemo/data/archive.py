"""Safe extraction of user-supplied .zip and .tar(.gz) archives (no path escapes, links or bombs).

Every archive is checked from its directory (names, kinds, declared sizes, entry count, free disk)
before a byte is written, then extracted with its real bytes counted, so entries that lie about
their size are stopped too. The app and the CLI share these functions and, unless a caller says
otherwise, one limit: the operator's `max_extract_mb` setting (FLOWERDEMO_MAX_EXTRACT_MB).
"""

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

DEFAULT_MAX_FILES = 100_000
_KB, _MB, _GB = 1024, 1024**2, 1024**3  # binary, like the settings' "MB"
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


def default_max_bytes() -> int:
    """The operator's limit on an archive's uncompressed size (settings: max_extract_mb), in bytes."""
    from flowerdemo.settings import MB, Settings

    return Settings.one_from_env("max_extract_mb") * MB


def sizes(*values: int) -> list[str]:
    """Byte counts for people, in the unit of the smallest, with as many decimals as it takes for
    different values to read differently ("2.1 GB" vs "2.0 GB"; never "2,048.0 MiB vs 2,048.0 MiB")."""
    unit, scale = next(((u, s) for u, s in (("GB", _GB), ("MB", _MB), ("KB", _KB)) if min(values) >= s),
                       ("bytes", 1))
    if scale > 1:
        for digits in (1, 2, 3):
            out = [f"{v / scale:,.{digits}f} {unit}" for v in values]
            if len(set(out)) == len(set(values)):
                return out
    return [f"{v:,} bytes" for v in values]


def safe_relpath(name: str, archive: str | os.PathLike) -> PurePosixPath | None:
    """Validate an entry name and return it as a relative path (None for entries to skip silently);
    `archive` names the archive in messages (a path: its file name)."""
    label = Path(archive).name
    norm = name.replace("\\", "/")
    if "\x00" in norm:
        raise ArchiveError(f"{label}: entry {name!r} has a NUL byte in its name; refusing the archive")
    if norm.startswith("/") or _DRIVE.match(norm):
        raise ArchiveError(
            f"{label}: entry {name!r} has an absolute path; only relative paths inside the archive are allowed"
        )
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(
            f"{label}: entry {name!r} points outside the extraction folder ('..'); "
            "only paths inside the archive are allowed"
        )
    if not parts or parts[0] in _SKIP_TOP:
        return None
    return PurePosixPath(*parts)


def _check_totals(name: str, entries: list[_Entry], max_bytes: int, max_files: int, dest: Path) -> None:
    """Refuse, from the directory alone, an archive over the limits or bigger than the free disk."""
    if len(entries) > max_files:
        raise ArchiveError(f"{name} has {len(entries):,} entries; the limit is {max_files:,}")
    total = sum(e.size for e in entries)
    if total > max_bytes:
        declared, limit = sizes(total, max_bytes)
        raise ArchiveError(f"{name} declares {declared} of files; the limit is {limit} uncompressed. "
                           "Upload fewer or smaller images")
    free = _free_bytes(dest)
    if free is not None and total > free:
        needed, left = sizes(total, free)
        logger.warning("Refusing %s: %s uncompressed, %s free under %s", name, needed, left, dest)
        raise ArchiveError(f"{name} needs {needed} uncompressed, but this server has only {left} of disk free; "
                           "try a smaller archive or ask the operator to free some space")


def _free_bytes(dest: Path) -> int | None:
    """Free bytes on the disk that will hold `dest` (its nearest existing ancestor); None if unknown."""
    for folder in (dest, *dest.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def _prepare_dest(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ArchiveError(f"destination {dest} already exists and is not an empty folder; choose a new folder")
    dest.parent.mkdir(parents=True, exist_ok=True)


def _write_all(name: str, entries: list[_Entry], dest: Path, max_bytes: int) -> Path:
    """Stream entries into a staging folder next to `dest`, counting real bytes, then rename into place."""
    _prepare_dest(dest)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    base = staging.resolve()
    written = 0
    try:
        for entry in entries:
            target = staging.joinpath(*entry.rel.parts)
            if not target.resolve().is_relative_to(base):  # belt and braces; names were validated
                raise ArchiveError(f"{name}: entry {entry.rel} resolves outside the destination")
            if entry.is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with entry.open() as src, open(target, "xb") as out:
                while chunk := src.read(_CHUNK):
                    written += len(chunk)
                    if written > max_bytes:  # the entries lied about their sizes
                        raise ArchiveError(
                            f"{name} holds more than its headers declare: extraction stopped at "
                            f"{sizes(max_bytes)[0]}, the limit; re-create the archive with an ordinary zip tool"
                        )
                    out.write(chunk)
        if dest.exists():
            dest.rmdir()  # checked empty above
        os.replace(staging, dest)
    except FileExistsError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        dup = Path(exc.filename).relative_to(staging) if exc.filename else "an entry"
        raise ArchiveError(f"{name}: entry {dup} appears twice; refusing the archive") from exc
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, NotImplementedError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ArchiveError(
            f"{name} is corrupt, truncated or uses an unsupported compression ({exc}); "
            "re-create it as a plain .zip (deflate) or .tar.gz"
        ) from exc
    except OSError as exc:  # disk full, permissions: the operator's log gets the server path, not the visitor
        shutil.rmtree(staging, ignore_errors=True)
        logger.warning("Could not extract %s into %s: %s", name, dest, exc)
        raise ArchiveError(f"could not extract {name} on this server: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("Extracted %d entries (%s) from %s into %s", len(entries), sizes(written)[0], name, dest)
    return dest


def _tar_member(tf: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    fh = tf.extractfile(member)
    if fh is None:
        raise ArchiveError(f"entry {member.name!r} has no data; only files and folders are allowed")
    return fh


def _zip_entries(zf: zipfile.ZipFile, name: str) -> list[_Entry]:
    """The entries of a zip's central directory, each checked (name, kind, encryption); nothing read yet."""
    entries: list[_Entry] = []
    for info in zf.infolist():
        rel = safe_relpath(info.filename, name)
        kind = stat.S_IFMT(info.external_attr >> 16)  # Unix file type; 0 when not recorded
        if kind == stat.S_IFLNK:
            raise ArchiveError(f"{name}: entry {info.filename!r} is a symbolic link; links are not allowed")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ArchiveError(f"{name}: entry {info.filename!r} is a special file; only files and folders are allowed")
        if info.flag_bits & 0x1:
            raise ArchiveError(f"{name}: entry {info.filename!r} is encrypted; use an unencrypted .zip")
        if rel is not None:
            entries.append(_Entry(rel, info.is_dir(), info.file_size, partial(zf.open, info)))
    return entries


def extract_zip(
    zip_path: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    max_bytes: int | None = None,
    max_files: int = DEFAULT_MAX_FILES,
    name: str | None = None,
) -> Path:
    """Check a .zip from its directory, then extract it into `dest` (must be new or empty); returns dest.

    Nothing is written (not even `dest`'s parent) unless every entry passes and the declared sizes fit
    `max_bytes` (default: the operator's max_extract_mb) and the free disk. `name` is what messages call
    the archive: the visitor's file name (default: the file name of `zip_path`), never a server path.
    """
    archive, dest = Path(zip_path), Path(dest)
    name = name or archive.name
    max_bytes = default_max_bytes() if max_bytes is None else max_bytes
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ArchiveError(f"{name} is not a readable .zip file ({why}); upload a .zip of class folders") from exc
    with zf:
        entries = _zip_entries(zf, name)
        _check_totals(name, entries, max_bytes, max_files, dest)
        return _write_all(name, entries, dest, max_bytes)


def extract_tar(
    tar_path: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    max_bytes: int | None = None,
    max_files: int = DEFAULT_MAX_FILES,
    name: str | None = None,
) -> Path:
    """Check every member of a .tar/.tar.gz/.tgz, then extract it into `dest` (new or empty); returns dest.
    Limits and `name` as for `extract_zip` (a tar has no directory: its headers are read, its data is not)."""
    archive, dest = Path(tar_path), Path(dest)
    name = name or archive.name
    max_bytes = default_max_bytes() if max_bytes is None else max_bytes
    try:
        tf = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ArchiveError(f"{name} is not a readable .tar/.tgz file ({why})") from exc
    with tf:
        entries: list[_Entry] = []
        try:
            for n, member in enumerate(tf, start=1):
                if n > max_files:  # stop before reading an unbounded member list
                    raise ArchiveError(f"{name} has more than {max_files:,} entries; the limit is {max_files:,}")
                rel = safe_relpath(member.name, name)
                if member.issym() or member.islnk():
                    raise ArchiveError(f"{name}: entry {member.name!r} is a link; links are not allowed")
                if not (member.isreg() or member.isdir()):
                    raise ArchiveError(
                        f"{name}: entry {member.name!r} is a special file (device/fifo); "
                        "only files and folders are allowed"
                    )
                if rel is not None:
                    entries.append(_Entry(rel, member.isdir(), member.size, partial(_tar_member, tf, member)))
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise ArchiveError(f"{name} is corrupt or truncated ({exc})") from exc
        _check_totals(name, entries, max_bytes, max_files, dest)
        return _write_all(name, entries, dest, max_bytes)
