"""Who a run belongs to on a shared server: a small JSON record beside the checkpoint (never inside the
weights file), written when a visitor's training starts or their upload is installed.

A run without a record is the operator's (the bundled model, runs copied in or trained with the CLI):
every visitor sees it. A visitor's run is listed only for them, unless the operator shares all runs
(`share_runs`) or the visitor hands out its share code. The record stores a hash of the visitor's
identity (their browser's random token), never the token itself, so reading the file does not let
anyone act as its owner. No UI code here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from flowerdemo.models.checkpoints import list_checkpoints

log = logging.getLogger(__name__)

OWNER_FILE = ".owner.json"  # hidden: zip_run leaves it out of downloads
KINDS = ("trained", "uploaded")  # counted separately against runs_per_visitor / uploads_per_visitor
MAX_NAME = 60
_CODE = re.compile(r"^[A-Za-z0-9_-]{8,32}$")


class NotYours(ValueError):
    """The run belongs to someone else (or to the operator): only its owner may do that."""


@dataclass(frozen=True)
class Owner:
    """A run's record: the owner's hashed identity, what made it, its display name, its share code."""

    owner: str
    kind: str = "trained"
    name: str = ""
    share: str | None = None
    created: float = 0.0


def owner_key(identity: str) -> str:
    """The stored form of a visitor's identity: knowing it does not let anyone pose as them."""
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def read_owner(run: str | Path) -> Owner | None:
    """The run's record, or None for an operator's run. An unreadable record keeps the run private to
    nobody rather than making it everyone's."""
    path = Path(run) / OWNER_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        return Owner(**{k: data[k] for k in ("owner", "kind", "name", "share", "created") if k in data})
    except (OSError, ValueError, TypeError) as exc:
        log.warning("unreadable owner record %s (%s): the run is hidden from every visitor", path, exc)
        return Owner(owner="?")


def _write(run: Path, record: Owner) -> None:
    tmp = run / f"{OWNER_FILE}.tmp-{os.getpid()}"  # the name start-up cleanup removes after a crash
    tmp.write_text(json.dumps(asdict(record), indent=2))
    os.replace(tmp, run / OWNER_FILE)


def claim(run: str | Path, identity: str, kind: str = "trained", name: str = "") -> Owner:
    """Record `identity` as the owner of the new run `run`."""
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}; expected one of {', '.join(KINDS)}")
    record = Owner(owner_key(identity), kind, clean_name(name) if name else "", None, time.time())
    _write(Path(run), record)
    return record


def is_owner(run: str | Path, identity: str) -> bool:
    record = read_owner(run)
    return record is not None and record.owner == owner_key(identity)


def _own(run: Path, identity: str, doing: str) -> Owner:
    record = read_owner(run)
    if record is None or record.owner != owner_key(identity):
        whose = "the server's" if record is None else "another visitor's"
        raise NotYours(f"{display_name(run)} is {whose} model; only the visitor who made it can {doing} it")
    return record


def clean_name(text: str) -> str:
    """A display name as typed, checked: 1 to 60 printable characters."""
    text = " ".join((text or "").split())
    if not text:
        raise ValueError("Type a name for the model (1 to 60 characters).")
    if len(text) > MAX_NAME or not text.isprintable():
        raise ValueError(f"a model name is 1 to {MAX_NAME} printable characters; got {len(text)}")
    return text


def rename(run: str | Path, identity: str, name: str) -> str:
    """Give the visitor's own run a display name (the folder keeps its name: sessions refer to it)."""
    run = Path(run)
    record = _own(run, identity, "rename")
    _write(run, replace(record, name=clean_name(name)))
    return clean_name(name)


def delete(run: str | Path, identity: str, root: str | Path) -> None:
    """Delete the visitor's own run folder (a run elsewhere than `root` is never deleted)."""
    from flowerdemo.serve.runs import remove_tree

    run = Path(run)
    _own(run, identity, "delete")
    log.info("removing %s at its owner's request", run)
    remove_tree(run, root)


def share_code(run: str | Path, identity: str) -> str:
    """The run's share code, made on first use: whoever has it can use (not download) the model."""
    run = Path(run)
    record = _own(run, identity, "share")
    if record.share:
        return record.share
    code = secrets.token_urlsafe(9)
    _write(run, replace(record, share=code))
    return code


def find_shared(root: str | Path, code: str) -> Path | None:
    """The run under `root` whose share code is `code`, or None."""
    code = (code or "").strip()
    if not _CODE.match(code):
        return None
    for run in list_checkpoints(root):
        record = read_owner(run)
        if record is not None and record.share and secrets.compare_digest(record.share, code):
            return run
    return None


def display_name(run: str | Path, record: Owner | None = None) -> str:
    run = Path(run)
    record = record if record is not None else read_owner(run)
    return (record.name if record is not None and record.name else run.name)


def may_download(run: str | Path, identity: str) -> bool:
    """Downloading (and pushing) a visitor's run is its owner's; the operator's runs are everyone's."""
    record = read_owner(run)
    return record is None or record.owner == owner_key(identity)


def may_use(run: str | Path, identity: str, share_all: bool) -> bool:
    """Whether `identity` may predict with `run`: the operator's runs, their own, everyone's when the operator
    shares all runs, and a run its owner handed out a share code for (whoever was given the code)."""
    record = read_owner(run)
    return (record is None or share_all or record.owner == owner_key(identity)
            or (bool(record.share) and record.owner != "?"))


def visible_runs(root: str | Path, identity: str, share_all: bool) -> list[tuple[Path, Owner | None]]:
    """Runs `identity` may list, newest first, with their records (None: the operator's)."""
    out = []
    for run in list_checkpoints(root):
        record = read_owner(run)
        if record is None or share_all or record.owner == owner_key(identity):
            out.append((run, record))
    return out


def unused_name(root: str | Path, identity: str, name: str) -> str:
    """`name`, or "name (2)", "name (3)"… when the visitor already has a model of that name (a .zip uploaded twice
    gave three identical entries in every list, and Delete asked about "my garden" without saying which)."""
    taken = {display_name(run).casefold() for run in owned_runs(root, identity)}
    candidate, n = name, 2
    while candidate.casefold() in taken:
        suffix = f" ({n})"
        candidate, n = name[:MAX_NAME - len(suffix)].rstrip() + suffix, n + 1
    return candidate


def owned_runs(root: str | Path, identity: str, kind: str | None = None) -> list[Path]:
    """The visitor's runs (of `kind`), oldest first; run folders without weights count too (a training)."""
    key, out = owner_key(identity), []
    root = Path(root)
    if not root.is_dir():
        return []
    for run in root.iterdir():
        record = read_owner(run) if run.is_dir() and not run.name.startswith(".") else None
        if record is not None and record.owner == key and (kind is None or record.kind == kind):
            out.append((record.created, run.name, run))
    return [run for _, _, run in sorted(out)]


def limit_owner(root: str | Path, identity: str, kind: str, keep: int, protect: Iterable[str | Path] = ()) -> list[Path]:
    """Delete the visitor's oldest runs of `kind` beyond `keep` (never those in `protect`); return them."""
    from flowerdemo.serve.runs import remove_tree

    safe = {Path(p).resolve() for p in protect}
    runs = owned_runs(root, identity, kind)
    doomed = [r for r in runs if r.resolve() not in safe][: max(0, len(runs) - keep)]
    for run in doomed:
        log.info("removing %s: the visitor's %s runs are limited to %d", run, kind, keep)
        remove_tree(run, root)
    return doomed
