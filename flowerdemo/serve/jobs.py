"""One training at a time per process, whoever asks: `TrainingJob.start` hands out the engine's event
stream or raises `Busy`; `stop` asks the run to end; `state` lets anyone see what is running.
A caller that must prepare the data first claims the slot before writing anything, so a request
refused as busy has nothing to clean up:

    with job.claim(cfg, owner) as slot:      # Busy here: nothing was written
        data = prepare()                     # an error here frees the slot
        run = slot.start(data, out_dir)      # the Run now holds the slot

On a Hugging Face ZeroGPU Space (the `spaces` package is importable) the engine runs inside
`@spaces.GPU`, in another process: events come back pickled, stopping goes through a file, and the
trained weights come back as the checkpoint on disk (the caller reloads it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from flowerdemo.config import TrainConfig
from flowerdemo.device import release_freed_memory
from flowerdemo.train.events import EpochEnd, Event, RunStarted

log = logging.getLogger(__name__)

_LOCK = threading.Lock()  # process-wide: however many apps or visitors, one training at a time
GPU_SECONDS = int(os.environ.get("FLOWERDEMO_GPU_SECONDS", "600"))  # ZeroGPU time asked for per training


class Busy(RuntimeError):
    """Another training is running (message says what it is doing)."""


class StopFlag:
    """A stop request the engine polls with `is_set()`; a file makes it visible to another process."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()

    def is_set(self) -> bool:
        return self._event.is_set() or (self.path is not None and self.path.exists())

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def __getstate__(self) -> dict[str, Any]:  # threading.Event cannot be pickled
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])


@dataclass(frozen=True)
class JobState:
    """What the current (or last) training is doing, for any visitor to read."""

    running: bool = False
    owner: str | None = None
    started: float = 0.0  # time.time()
    model: str = ""
    device: str = ""
    run_dir: Path | None = None
    epoch: int = 0
    epochs: int = 0
    best_val_acc: float = 0.0
    last_event: Event | None = None
    stopping: bool = False  # a stop was requested and is being honoured
    error: str = ""

    def describe(self) -> str:
        """One line for people: what runs, how far, for how long."""
        if not self.running:
            return "No training is running."
        minutes = (time.time() - self.started) / 60
        where = f"epoch {self.epoch}/{self.epochs}" if self.epoch else "preparing the data"
        return f"A training of {self.model or 'a model'} is running ({where}, started {minutes:.0f} min ago)."


def _engine(cfg: TrainConfig, data: Any, out_dir: Path, stop: StopFlag) -> Iterator[Event]:
    """The engine's events. Outside ZeroGPU the run goes to a thread of its own at a lower priority
    (`device.in_background`), with one intra-op thread when it trains on the CPU, so that visitors'
    predictions keep (nearly) their idle latency while it trains (docs/benchmarks.md, serving)."""
    import torch

    from flowerdemo.device import in_background
    from flowerdemo.train.engine import train

    events = train(cfg, data, out_dir, stop)
    if on_zero_gpu():  # the GPU exists only inside this call: keep the run in it
        yield from events
        return
    yield from in_background(events, threads=None if torch.cuda.is_available() else 1)


def _gpu(fn: Callable[..., Iterator[Event]]) -> Callable[..., Iterator[Event]]:
    """Wrap with `spaces.GPU` when running on a Hugging Face Space; otherwise leave as is."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return fn
    return spaces.GPU(duration=GPU_SECONDS)(fn)


def on_zero_gpu() -> bool:
    """True on a ZeroGPU Space, where a GPU exists only inside `@spaces.GPU` calls."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")


gpu_train = _gpu(_engine)


class TrainingJob:
    """The single training slot of this process."""

    def __init__(self, train_fn: Callable[..., Iterator[Event]] | None = None) -> None:
        self._train_fn = train_fn or gpu_train
        self._guard = threading.Lock()  # protects _state / _stop; never held while training
        self._state = JobState()
        self._stop: StopFlag | None = None

    @property
    def state(self) -> JobState:
        with self._guard:
            return self._state

    def claim(self, cfg: TrainConfig, owner: str | None = None) -> Slot:
        """Take the slot now (state: preparing the data) or raise Busy; `Slot.start` runs it."""
        if not _LOCK.acquire(blocking=False):
            raise Busy(f"The server is busy: {self.state.describe()} Only one training runs at a time; "
                       "predictions keep working meanwhile. Try again when it has finished.")
        with self._guard:
            self._stop = None
            self._state = JobState(running=True, owner=owner, started=time.time(), model=cfg.model,
                                   epochs=cfg.epochs)
        return Slot(self, cfg)

    def start(self, cfg: TrainConfig, data: Any, out_dir: str | Path, owner: str | None = None) -> Run:
        """Claim the slot and return the run's event iterator; raise Busy if a training is running."""
        return self.claim(cfg, owner).start(data, out_dir)

    def _launch(self, cfg: TrainConfig, data: Any, out_dir: str | Path) -> Run:
        out_dir = Path(out_dir)
        stop = StopFlag(out_dir / f".stop-{uuid.uuid4().hex}")
        with self._guard:
            self._stop = stop
            if self._state.stopping:  # asked while its data was being prepared: it stops at its first check
                stop.set()
        try:
            events = self._train_fn(cfg, data, out_dir, stop)
        except BaseException as exc:
            self._release(exc)
            raise
        return Run(self, events, stop)

    def stop(self, owner: str | None = None) -> bool:
        """Ask the running training to stop after the current batch; False if none (or not `owner`'s)."""
        with self._guard:
            if not self._state.running:
                return False
            if owner is not None and self._state.owner not in (None, owner):
                return False
            if self._stop is not None:
                self._stop.set()
            # else its data is still being prepared (the slot claimed, no run yet): `_launch` sets the flag
            self._state = replace(self._state, stopping=True)
            return True

    def _record(self, event: Event) -> None:
        with self._guard:
            s = self._state
            if isinstance(event, RunStarted):
                s = replace(s, run_dir=event.run_dir, device=event.device, model=event.model, epochs=event.epochs)
            elif isinstance(event, EpochEnd):
                s = replace(s, epoch=event.epoch, best_val_acc=event.best_val_acc)
            self._state = replace(s, last_event=event)

    def _release(self, error: BaseException | None) -> None:
        with self._guard:
            if self._stop is not None:
                self._stop.discard()
            self._stop = None
            self._state = replace(self._state, running=False, error=str(error) if error else "")
        if _LOCK.locked():
            _LOCK.release()
        release_freed_memory()  # the training's freed buffers back to the system: the server's size stays bounded


class Slot:
    """The claimed slot while the caller prepares the data: `start` hands it to a Run; leaving the
    `with` block (or `release`) without starting frees it, so a failed preparation never holds it."""

    def __init__(self, job: TrainingJob, cfg: TrainConfig) -> None:
        self._job, self._cfg = job, cfg
        self._held = True

    def start(self, data: Any, out_dir: str | Path) -> Run:
        if not self._held:
            raise RuntimeError("this training slot was already started or released")
        self._held = False
        return self._job._launch(self._cfg, data, out_dir)

    def release(self, error: BaseException | None = None) -> None:
        if self._held:
            self._held = False
            self._job._release(error)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, kind, error, tb) -> None:
        self.release(error)

    def __del__(self) -> None:  # a claim dropped without `with` must not hold the slot forever
        try:
            self.release()
        except Exception:
            pass


class Run(Iterator[Event]):
    """The event stream of one claimed training; the slot is released when it ends or is closed.
    Stopping is the engine's business (honoured in every phase); this only relays and records."""

    def __init__(self, job: TrainingJob, events: Iterator[Event], stop: StopFlag) -> None:
        self._job, self._events, self._stop = job, events, stop
        self._done = False

    def __iter__(self) -> Run:
        return self

    def __next__(self) -> Event:
        if self._done:
            raise StopIteration
        try:
            event = next(self._events)
        except StopIteration:
            self._finish(None)
            raise
        except BaseException as exc:
            self._finish(exc)
            raise
        self._job._record(event)
        return event

    def close(self) -> None:
        """End the run now (e.g. the visitor went away): the engine keeps its best checkpoint, if any.
        The stop flag is set too: on ZeroGPU the engine runs in another process, which sees its file."""
        if not self._done:
            self._stop.set()
            close = getattr(self._events, "close", None)
            if close is not None:
                close()
            self._finish(None)

    def _finish(self, error: BaseException | None) -> None:
        self._done = True
        self._job._release(error)

    def __del__(self) -> None:  # an abandoned stream must not hold the slot forever
        try:
            self.close()
        except Exception:  # interpreter shutdown, engine already gone
            pass
