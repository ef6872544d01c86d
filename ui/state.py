"""What the app shares across visitors: its settings (flowerdemo.settings), the training slot, a cache
of loaded models with the operator's default model, and who each browser session is. No gradio here:
this is plain glue between the UI and the core."""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowerdemo.serve.jobs import TrainingJob
from flowerdemo.settings import Settings

log = logging.getLogger(__name__)


IMAGES_FOLDER = "predict-images"  # under the work dir: a request's overlay and heatmap until Gradio copied them
SCRATCH_KEEP_S = 6 * 3600  # extracted uploads and uploads kept for a run's review: a session open longer loses them

class ModelStore:
    """Loaded checkpoints by path (a few kept in memory), and the operator's default model, which every
    visitor gets until they choose, train or upload another (never "the newest run on disk")."""

    def __init__(self, settings: Settings, capacity: int = 3, default: Path | None = None) -> None:
        self.settings = settings
        self.capacity = capacity
        self.default = default  # resolved once at start (serve.runs.default_run): a restart brings it back
        self._cache: OrderedDict[tuple[str, float], object] = OrderedDict()
        self._lock = threading.Lock()  # one load at a time; loads of the same file are not repeated

    def get(self, path: str | Path):
        """The Classifier stored at `path` (CheckpointError/ModelError if it does not load)."""
        from flowerdemo.models.checkpoints import WEIGHTS, load_checkpoint

        path = Path(path)
        weights = path / WEIGHTS if path.is_dir() else path
        key = (str(path.resolve()), weights.stat().st_mtime if weights.exists() else 0.0)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            clf = load_checkpoint(path)
            self._cache[key] = clf
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
            return clf

    def runs(self) -> list[Path]:
        from flowerdemo.models.checkpoints import list_checkpoints

        return list_checkpoints(self.settings.checkpoint_dir)

    def default_model(self):
        """The operator's default model, or None when there is none (or it no longer loads: logged)."""
        if self.default is None:
            return None
        try:
            return self.get(self.default)
        except (ValueError, RuntimeError, OSError) as exc:
            log.warning("the default model %s does not load: %s", self.default, exc)
            return None

    def resolve(self, chosen: str | None):
        """(classifier, note): the visitor's chosen model, else the default; note says why it changed."""
        if chosen:
            if Path(chosen).exists():
                try:
                    return self.get(chosen), ""
                except (ValueError, RuntimeError, OSError) as exc:
                    log.warning("the chosen checkpoint %s does not load: %s", chosen, exc)
                    note = f"The chosen model could not be loaded ({exc}); using the default model instead."
            else:
                note = "The chosen model was removed from the server; using the default model instead."
            return self.default_model(), note
        return self.default_model(), ""

    def in_use(self) -> list[Path]:
        """Models held in memory: not deleted by housekeeping while visitors may be using them."""
        with self._lock:
            return [Path(p) for p, _ in self._cache]


def browser_secret(settings: Settings) -> str:
    """The key browsers' stored tokens are encrypted with, kept beside the checkpoints so that it outlives a
    restart (a read-only folder: a new one per start, and browsers get new tokens)."""
    path = settings.checkpoint_dir / ".browser-secret"
    try:
        text = path.read_text().strip()
        if text:
            return text
    except OSError:
        pass
    secret = secrets.token_urlsafe(24)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret)
    except FileExistsError:  # another start wrote it first: use theirs
        return path.read_text().strip() or secret
    except OSError as exc:
        log.warning("cannot keep the browser secret in %s (%s): visitors' runs are theirs only until a restart",
                    path, exc)
    return secret


_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,64}$")


class SessionMap:
    """A value per browser session, bounded: the sessions least recently set are forgotten first."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._values: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session: str | None) -> Any:
        with self._lock:
            return self._values.get(session) if session else None

    def set(self, session: str | None, value: Any) -> None:
        if not session:
            return
        with self._lock:
            self._values[session] = value
            self._values.move_to_end(session)
            while len(self._values) > self.capacity:
                self._values.popitem(last=False)

    def pop(self, session: str | None) -> None:
        with self._lock:
            self._values.pop(session or "", None)


class Visitors:
    """Who each browser session is. A browser keeps a random token (gr.BrowserState, so it outlives a
    restart) and hands it over when its page loads; until then, or for an API client that never loads the
    page, a session is known by its session hash. Bounded: the oldest sessions are forgotten first."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._tokens = SessionMap(capacity)

    @staticmethod
    def new_token() -> str:
        return secrets.token_urlsafe(24)

    def register(self, session: str | None, token: Any) -> str:
        """Bind `session` to the browser's `token` (a new token if it has none or a malformed one); return it."""
        token = token if isinstance(token, str) and _TOKEN.match(token) else self.new_token()
        self._tokens.set(session, token)
        return token

    def forget(self, session: str | None) -> None:
        self._tokens.pop(session)

    def identity(self, request: Any) -> str:
        """The visitor behind a gr.Request: their browser token, else "session:<hash>" (no request: "anonymous")."""
        session = getattr(request, "session_hash", None)
        token = self._tokens.get(session)
        return token or (f"session:{session}" if session else "anonymous")


@dataclass
class AppContext:
    """Everything the UI handlers share: settings, models, the one training slot, who visitors are."""

    settings: Settings
    models: ModelStore
    job: TrainingJob
    visitors: Visitors = field(default_factory=Visitors)

    @classmethod
    def create(cls, settings: Settings | None = None) -> AppContext:
        """The context of a starting app: clears what a crashed process left, resolves the default model
        (ConfigError when the operator named one that is not there)."""
        from flowerdemo.serve.runs import clean_leftovers, default_run

        settings = settings or Settings.from_env()
        # scratch a crashed process left: extracted uploads, downloads, an upload kept for a run's review (its
        # session is gone); visitors' builder datasets stay (their browser token outlives a restart)
        clean_leftovers(settings.checkpoint_dir, [settings.work_dir / "uploads", settings.work_dir / "downloads",
                                                  settings.work_dir / "review", settings.work_dir / IMAGES_FOLDER])
        default = default_run(settings.checkpoint_dir, settings.default_model)
        if default is None:
            log.info("no default model under %s: visitors train or load one", settings.checkpoint_dir)
        elif settings.default_model is None and default.name != "flowers5-lite2":
            log.info("default model: %s (the oldest run the operator put there; name one with --default-model)",
                     default)
        return cls(settings, ModelStore(settings, default=default), TrainingJob())

    def housekeeping(self, *extra_protect: str | Path) -> None:
        """Bound disk use: drop old unpinned runs beyond keep_runs and the disk budget, and stale scratch files.
        The default model is never dropped."""
        from flowerdemo.serve.runs import prune_files, prune_runs
        from flowerdemo.settings import MB

        protect = [*self.models.in_use(), *extra_protect]
        if self.models.default is not None:
            protect.append(self.models.default)
        if self.job.state.run_dir is not None and self.job.state.running:
            protect.append(self.job.state.run_dir)
        prune_runs(self.settings.checkpoint_dir, self.settings.keep_runs, protect, self.settings.runs_disk_mb * MB)
        prune_files(self.settings.folder("downloads"), 3600)
        prune_files(self.settings.folder("uploads"), SCRATCH_KEEP_S)
        prune_files(self.settings.folder("review"), SCRATCH_KEEP_S)
        prune_files(self.settings.folder(IMAGES_FOLDER), 3600)  # a request's pictures live seconds; crashed ones

    def remembered_run(self, name: Any, identity: str) -> Path | None:
        """The run a browser remembered as its active model (its folder name, kept in the browser's storage
        across reloads), if it is still here and this visitor may still use it; else None (the default)."""
        from flowerdemo.models.checkpoints import WEIGHTS
        from flowerdemo.serve.owners import may_use

        if not isinstance(name, str) or not name or name != Path(name).name or name.startswith("."):
            return None  # a folder name of the checkpoint folder, nothing else
        run = self.settings.checkpoint_dir / name
        if not (run / WEIGHTS).is_file() or not may_use(run, identity, self.settings.share_runs):
            return None
        return run

    def adopt(self, run: str | Path, identity: str, kind: str) -> None:
        """A visitor's new run (`kind`: trained or uploaded) is theirs: record it, then keep their newest
        runs of that kind within the per-visitor limit, and all runs within the global bounds."""
        from flowerdemo.serve.owners import claim, is_owner, limit_owner

        if not is_owner(run, identity):
            claim(run, identity, kind)
        keep = self.settings.runs_per_visitor if kind == "trained" else self.settings.uploads_per_visitor
        limit_owner(self.settings.checkpoint_dir, identity, kind, keep, protect=[run])
        self.housekeeping(run)
