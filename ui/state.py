"""What the app shares across visitors: its settings (flowerdemo.settings), the training slot and a cache
of loaded models. No gradio here: this is plain glue between the UI and the core."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from flowerdemo.serve.jobs import TrainingJob
from flowerdemo.settings import Settings

log = logging.getLogger(__name__)


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
                    log.warning("the chosen checkpoint %s does not load: %s", chosen, exc)
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
    def create(cls, settings: Settings | None = None) -> AppContext:
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
