"""Run-directory housekeeping for a shared server: which folders a visitor may name, the default model,
how many runs and how much disk are kept, pinning, what a crash left behind, zipping a run for download
and importing an uploaded one. Who owns a run: `owners.py`. No UI code here."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from flowerdemo.config import ConfigError
from flowerdemo.models.checkpoints import META, WEIGHTS, CheckpointError, list_checkpoints, read_meta, safe_name

log = logging.getLogger(__name__)

PIN_MARKER = "PINNED"  # an empty file in a run directory: never deleted by prune_runs
NAME_FILE = "name.txt"  # in a downloaded .zip: the name its owner gave the run (owners.rename)
DEFAULT_RUN = "flowers5-lite2"  # the model shipped with the app: never deleted
STALE_SECONDS = 3600  # a run folder without weights this old is an abandoned (crashed) run


class PathNotAllowed(ValueError):
    """A folder path that lies outside the folders the operator allowed (or is malformed)."""


def allowed_path(text: str, roots: Sequence[str | Path]) -> Path:
    """The existing folder `text` names, if it lies under one of `roots` once symlinks are resolved."""
    if not roots:
        raise PathNotAllowed("this server does not accept folder paths; upload a .zip of class folders instead "
                             "(the operator can allow folders with --data-dir)")
    text = (text or "").strip()
    if not text or "\x00" in text:
        raise PathNotAllowed("type the path of a folder of class sub-folders")
    path = Path(text).expanduser()
    if ".." in path.parts:
        raise PathNotAllowed(f"'..' is not allowed in a folder path ({text})")
    bases = [Path(r).expanduser().resolve() for r in roots]
    if not path.is_absolute():
        path = bases[0] / path
    resolved = path.resolve()  # follows symlinks: a link pointing outside is caught below
    if not any(resolved.is_relative_to(base) for base in bases):
        raise PathNotAllowed(f"{text} is outside the folders this server allows: {', '.join(map(str, bases))}")
    if not resolved.is_dir():
        raise PathNotAllowed(f"{text} is not an existing folder under {', '.join(map(str, bases))}")
    return resolved


def is_pinned(run: Path) -> bool:
    return (run / PIN_MARKER).exists() or run.name == DEFAULT_RUN


def pin(run: str | Path, pinned: bool = True) -> None:
    """Mark (or unmark) a run so that `prune_runs` never deletes it."""
    marker = Path(run) / PIN_MARKER
    if pinned:
        marker.touch()
    else:
        marker.unlink(missing_ok=True)


def run_dirs(root: str | Path) -> list[Path]:
    """Visible sub-folders of `root`, oldest first (by modification time)."""
    root = Path(root)
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(dirs, key=lambda p: (_mtime(p), p.name))


def default_run(root: str | Path, named: str | None = None) -> Path | None:
    """The run every new visitor gets: `named` (a folder under `root`, or a run directory's path), else the
    bundled DEFAULT_RUN, else the oldest run the operator put under `root` (one without an owner record:
    never a visitor's, never merely the newest). None when there is none. ConfigError for a bad `named`."""
    from flowerdemo.serve.owners import read_owner

    root = Path(root)
    given = f"default model (--default-model, FLOWERDEMO_DEFAULT_MODEL) {named!r} is not accepted"
    if named:
        for candidate in (root / named, Path(named).expanduser()):
            if (candidate / WEIGHTS).is_file():
                try:
                    read_meta(candidate)
                except CheckpointError as exc:
                    raise ConfigError(f"{given}: {exc}") from None
                return candidate.resolve()
        there = ", ".join(p.name for p in list_checkpoints(root)) or "none"
        raise ConfigError(f"{given}: no {WEIGHTS} in {root / named} nor in {named}; "
                          f"expected the name of a run folder under {root} (there: {there}) or the path of a run "
                          f"directory holding {WEIGHTS}")
    if (root / DEFAULT_RUN / WEIGHTS).is_file():
        return (root / DEFAULT_RUN).resolve()
    operators = [run for run in list_checkpoints(root) if read_owner(run) is None]
    return min(operators, key=lambda p: (not is_pinned(p), _mtime(p), p.name)).resolve() if operators else None


def prune_runs(root: str | Path, keep: int, protect: Iterable[str | Path] = (), max_bytes: int = 0) -> list[Path]:
    """Delete the oldest unpinned runs beyond `keep` (0 = keep all), then beyond `max_bytes` of disk for all
    runs together (0 = no limit), and abandoned runs; return what went.

    Pinned runs, the shipped default model and `protect` (e.g. the default model, models in use, the run in
    progress) stay and do not count towards `keep`; their size counts towards `max_bytes`.
    """
    keep_safe = {Path(p).resolve() for p in protect}
    removable = [r for r in run_dirs(root) if not is_pinned(r) and r.resolve() not in keep_safe]
    now = time.time()
    complete = [r for r in removable if (r / WEIGHTS).is_file()]
    doomed = [r for r in removable if not (r / WEIGHTS).is_file() and now - _mtime(r) > STALE_SECONDS]
    if keep > 0 and len(complete) > keep:
        doomed += complete[: len(complete) - keep]
    for run in doomed:
        log.info("removing run %s (keep-runs=%d)", run, keep)
        shutil.rmtree(run, ignore_errors=True)
    if max_bytes > 0:
        total = sum(_size(r) for r in run_dirs(root))
        for run in [r for r in complete if r not in doomed]:  # oldest first
            if total <= max_bytes:
                break
            size = _size(run)
            log.info("removing run %s (%.0f MB): runs use %.0f MB, the budget is %.0f MB", run, size / 2**20,
                     total / 2**20, max_bytes / 2**20)
            shutil.rmtree(run, ignore_errors=True)
            doomed.append(run)
            total -= size
    return doomed


def _is_temp(name: str) -> bool:
    """A temp file of an atomic write (`.model.safetensors.tmp-<pid>`, `.owner.json.tmp-<pid>`) or a
    tempfile-made `.tmp*`: a finished write leaves none."""
    return name.startswith(".tmp") or (name.startswith(".") and ".tmp-" in name)


def clean_leftovers(root: str | Path, scratch: Iterable[str | Path] = ()) -> list[Path]:
    """Remove what a crashed process left, and nothing else; return (and log) what went:

    - in `root`: temp files beside checkpoints, `.import-*` staging folders, `.stop-*` flags, then run
      folders left empty (nothing but an owner record);
    - each `scratch` folder's entries (extracted uploads, downloads): no visitor session outlives the process.

    Call at start, before serving: a temp file named after this process may be a write in progress, so it stays.
    """
    from flowerdemo.serve.owners import OWNER_FILE

    root, mine, removed = Path(root), f"-{os.getpid()}", []

    def drop(path: Path, why: str) -> None:
        log.info("start-up cleanup: removing %s (%s)", path, why)
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() and not path.is_symlink() else path.unlink(
            missing_ok=True)
        removed.append(path)

    if root.is_dir():
        for entry in sorted(root.iterdir()):
            if entry.name.startswith(".import-") and entry.is_dir():
                drop(entry, "an unfinished checkpoint import")
            elif entry.name.startswith(".stop-") and entry.is_file():
                drop(entry, "a stop flag of a run that ended")
            elif entry.is_dir() and not entry.is_symlink() and not entry.name.startswith("."):
                for f in sorted(entry.iterdir()):
                    if f.is_file() and _is_temp(f.name) and not f.name.endswith(mine):
                        drop(f, "a temp file of an interrupted write")
                if all(f.name == OWNER_FILE for f in entry.iterdir()):
                    drop(entry, "an empty run folder")
    for folder in scratch:
        folder = Path(folder)
        if folder.is_dir():
            for entry in sorted(folder.iterdir()):
                drop(entry, "scratch space of an earlier process")
    return removed


def remove_tree(path: str | Path | None, within: str | Path) -> None:
    """Delete `path` only if it lies inside `within` (guards against deleting a user's folder)."""
    if not path:
        return
    path, within = Path(path).resolve(), Path(within).resolve()
    if path != within and path.is_relative_to(within):
        shutil.rmtree(path, ignore_errors=True)


def prune_files(folder: str | Path, max_age_s: float) -> None:
    """Delete entries of `folder` older than `max_age_s` (temporary downloads, stale uploads)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    now = time.time()
    for entry in folder.iterdir():
        if now - _mtime(entry) > max_age_s:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


def download_stem(name: str | None, fallback: str) -> str:
    """A download's file name (no suffix) from a visitor's name for a run: made safe, at most 80 characters;
    `fallback` (the run folder's name) when nothing of the name is left ("../..", "★★★")."""
    stem = safe_name(name) if name else ""
    return stem[:80] if stem and (stem != "run" or name.strip() == "run") else fallback


def zip_run(run: str | Path, dest_dir: str | Path, name: str | None = None) -> Path:
    """`dest_dir/<name or run name>.zip` holding the run directory's files under `<run name>/`. `name` (a
    visitor's name for the run) is made a safe file name, and travels inside as `<run name>/name.txt`, which
    `import_run` reads back; two downloads of one name need their own `dest_dir`."""
    run, dest_dir = Path(run), Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    stem = download_stem(name, run.name)
    target = dest_dir / f"{stem}.zip"
    fd, tmp = tempfile.mkstemp(suffix=".zip.part", dir=dest_dir)
    os.close(fd)
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(run.rglob("*")):
            if f.is_file() and not f.name.startswith(".") and f.name not in (PIN_MARKER, NAME_FILE):
                zf.write(f, Path(run.name) / f.relative_to(run))
        if name and name.strip():
            zf.writestr(str(Path(run.name) / NAME_FILE), name.strip())
    os.replace(tmp, target)
    return target


def import_run(upload: str | Path, root: str | Path, max_bytes: int = 2 * 1024**3, owner: str | None = None) -> Path:
    """Install an uploaded checkpoint (a run-dir .zip or a .safetensors file) as a new run under `root`,
    `owner`'s (see owners.py) from the moment it appears there.

    Raises CheckpointError (and leaves nothing behind) when it is not a flowerdemo checkpoint.
    """
    from flowerdemo.data.archive import ArchiveError, extract_zip

    upload, root = Path(upload), Path(root)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=root))
    try:
        if upload.suffix.lower() == ".onnx":
            raise CheckpointError(f"{upload.name} is an ONNX export, for running the model elsewhere with onnxruntime "
                                  f"(flowerdemo's examples/onnx_predict.py shows how); it cannot be loaded back here. "
                                  f"Upload the .zip a download gives, or its {WEIGHTS}")
        if upload.suffix.lower() == ".safetensors":
            (staging / "run").mkdir()
            shutil.copyfile(upload, staging / "run" / WEIGHTS)
        elif upload.suffix.lower() == ".zip":
            try:
                extract_zip(upload, staging / "run", max_bytes=max_bytes)
            except ArchiveError as exc:
                raise CheckpointError(str(exc)) from exc
        else:
            raise CheckpointError(f"{upload.name}: upload a .zip of a run directory or a {WEIGHTS} file")
        found = sorted((staging / "run").rglob(WEIGHTS), key=lambda p: len(p.parts))
        if not found:
            raise CheckpointError(f"{upload.name} holds no {WEIGHTS}; download a checkpoint from this app to "
                                  "see the expected layout")
        meta = read_meta(found[0])
        run = _unique(root, safe_name(found[0].parent.name if found[0].parent != staging / "run"
                                      else f"upload-{meta['architecture']}"))
        from flowerdemo.serve.owners import OWNER_FILE, claim, unused_name

        (found[0].parent / OWNER_FILE).unlink(missing_ok=True)  # a record inside an upload proves nothing
        name = read_name(found[0].parent / NAME_FILE)  # the name it was downloaded under (zip_run)
        (found[0].parent / NAME_FILE).unlink(missing_ok=True)  # the owner record holds it from now on
        if owner is not None:  # before the move: the run is never the operator's, not even for a moment
            claim(found[0].parent, owner, "uploaded", name=unused_name(root, owner, name) if name else "")
        shutil.move(str(found[0].parent), run)
        if not (run / META).exists():
            import json

            (run / META).write_text(json.dumps(meta, indent=2))
        return run
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_name(path: Path) -> str:
    """The display name a downloaded run carries (`name.txt`), made a valid one (printable, at most
    owners.MAX_NAME characters); "" when there is none or it is not text."""
    from flowerdemo.serve.owners import MAX_NAME

    try:
        with open(path, "rb") as f:
            text = f.read(16 * MAX_NAME).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
    return " ".join("".join(c for c in text if c.isprintable() or c.isspace()).split())[:MAX_NAME].strip()


def _unique(root: Path, name: str) -> Path:
    candidate, i = root / name, 1
    while candidate.exists():
        candidate, i = root / f"{name}-{i}", i + 1
    return candidate


def _size(run: Path) -> int:
    return sum(f.stat().st_size for f in run.rglob("*") if f.is_file() and not f.is_symlink())


def _mtime(path: Path) -> float:
    try:
        weights = path / WEIGHTS
        return (weights if weights.exists() else path).stat().st_mtime
    except OSError:
        return 0.0
