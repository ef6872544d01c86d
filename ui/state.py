"""What the app shares across visitors: its settings, the training slot and a cache of loaded models.
No gradio here: this is plain glue between the UI and the core."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from flowerdemo.serve.jobs import TrainingJob

log = logging.getLogger(__name__)

MB = 1024**2


@dataclass
class Settings:
    """Operator choices, from CLI flags or FLOWERDEMO_* environment variables (see app.py)."""

    checkpoint_dir: Path = Path("checkpoints")
    data_dirs: tuple[Path, ...] = ()  # folders a visitor may type paths under; none = folder paths refused
    keep_runs: int = 20  # unpinned runs kept on disk, oldest deleted first; 0 = keep all
    max_upload_mb: int = 1024  # per uploaded file (Gradio's max_file_size)
    max_extract_mb: int = 4096  # uncompressed size of an uploaded .zip
    cache_dir: Path = Path.home() / ".cache" / "flowerdemo"  # the flowers download
    work_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "flowerdemo-app")

    @classmethod
    def from_env(cls) -> "Settings":
        env = os.environ.get
        dirs = tuple(Path(p) for p in env("FLOWERDEMO_DATA_DIRS", "").split(os.pathsep) if p)
        return cls(checkpoint_dir=Path(env("FLOWERDEMO_CHECKPOINT_DIR", "checkpoints")), data_dirs=dirs,
                   keep_runs=int(env("FLOWERDEMO_KEEP_RUNS", "20")),
                   max_upload_mb=int(env("FLOWERDEMO_MAX_UPLOAD_MB", "1024")))

    def folder(self, name: str) -> Path:
        """A private scratch folder of the app (uploads, downloads), created on demand."""
        path = self.work_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


class ModelStore:
    """Loaded checkpoints by path (a few kept in memory), and which one a visitor gets by default."""

    def __init__(self, settings: Settings, capacity: int = 3) -> None:
        self.settings = settings
        self.capacity = capacity
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

    def newest(self):
        """The newest checkpoint that loads, or None: a broken run is skipped, not fatal."""
        for run in self.runs():
            try:
                return self.get(run)
            except (ValueError, RuntimeError, OSError) as exc:
                log.warning("skipping checkpoint %s: %s", run, exc)
        return None

    def resolve(self, chosen: str | None):
        """(classifier, note): the visitor's chosen model, else the newest; note says why it changed."""
        if chosen:
            if Path(chosen).exists():
                try:
                    return self.get(chosen), ""
                except (ValueError, RuntimeError, OSError) as exc:
                    note = f"The chosen model could not be loaded ({exc}); using the newest one instead."
            else:
                note = "The chosen model was removed from the server; using the newest one instead."
            return self.newest(), note
        return self.newest(), ""

    def in_use(self) -> list[Path]:
        """Models held in memory: not deleted by housekeeping while visitors may be using them."""
        with self._lock:
            return [Path(p) for p, _ in self._cache]


@dataclass
class AppContext:
    """Everything the UI handlers share: settings, models and the one training slot."""

    settings: Settings
    models: ModelStore
    job: TrainingJob

    @classmethod
    def create(cls, settings: Settings | None = None) -> "AppContext":
        settings = settings or Settings.from_env()
        return cls(settings, ModelStore(settings), TrainingJob())

    def housekeeping(self, *extra_protect: str | Path) -> None:
        """Bound disk use: drop old unpinned runs beyond keep_runs, and stale scratch files."""
        from flowerdemo.serve.runs import prune_files, prune_runs

        protect = [*self.models.in_use(), *extra_protect]
        if self.job.state.run_dir is not None and self.job.state.running:
            protect.append(self.job.state.run_dir)
        prune_runs(self.settings.checkpoint_dir, self.settings.keep_runs, protect)
        prune_files(self.settings.folder("downloads"), 3600)
        prune_files(self.settings.folder("uploads"), 6 * 3600)
