"""The training slot (flowerdemo.jobs) and run housekeeping (flowerdemo.runs), without a UI."""

from __future__ import annotations

import dataclasses
import gc
import os
import pickle
import time
import zipfile
from pathlib import Path

import pytest

from flowerdemo.config import TrainConfig
from flowerdemo.models.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from flowerdemo.models.registry import build_model
from flowerdemo.serve.jobs import Busy, StopFlag, TrainingJob
from flowerdemo.serve.runs import DEFAULT_RUN, PathNotAllowed, allowed_path, import_run, pin, prune_runs, zip_run
from flowerdemo.train.events import EpochEnd, Finished, Progress, RunStarted, Stopped
from tests.synth import make_dataset

CFG = TrainConfig(mode="fast", image_size=64, epochs=3, batch_size=8, fast_views=2, workers=1)


def fake_engine(epochs: int = 3, prepare_steps: int = 2):
    """A stand-in for engine.train that honours `stop` like the real one (in preparation, and between
    batches once training)."""

    def train(cfg, data, out_dir, stop):
        for i in range(prepare_steps):
            yield Progress("decode", i + 1, prepare_steps)
            if stop.is_set():
                yield Stopped(0, "stopped while preparing the data; nothing was trained")
                yield Finished(None, 0.0, 0, 0, 0.1, True)
                return
        run_dir = Path(out_dir) / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        yield RunStarted(run_dir, "cpu", "fast", cfg.model, ("a", "b"), 8, 2, epochs, 0)
        for epoch in range(1, epochs + 1):
            yield Progress("train", 1, 1, epoch)
            yield EpochEnd(epoch, epochs, 1.0, 0.5, 1.0, 0.5, 1e-3, 0.1, 0.1 * epoch, 80.0, 0.5, epoch == 1)
            (run_dir / "model.safetensors").write_bytes(b"x")
            if stop.is_set():
                yield Stopped(epoch, "stop requested")
                break
        yield Finished(run_dir, 0.5, 1, epoch, 0.3, stop.is_set())

    return train


def test_one_training_at_a_time_and_slot_is_released(tmp_path):
    job, other = TrainingJob(fake_engine()), TrainingJob(fake_engine())
    run = job.start(CFG, tmp_path, tmp_path, owner="alice")
    next(run)
    assert job.state.running and job.state.owner == "alice"
    with pytest.raises(Busy, match="busy"):
        other.start(CFG, tmp_path, tmp_path)  # the lock is process-wide, not per TrainingJob
    events = list(run)
    assert isinstance(events[-1], Finished)
    assert not job.state.running and job.state.epoch == 3
    list(other.start(CFG, tmp_path, tmp_path))  # free again


def test_a_claim_holds_the_slot_while_the_data_is_prepared(tmp_path):
    """Claim first, prepare second: a second request is refused before it writes anything; a failed
    preparation frees the slot; a started claim hands the slot to its Run."""
    job, other = TrainingJob(fake_engine()), TrainingJob(fake_engine())
    with job.claim(CFG, owner="alice") as slot:
        assert job.state.running and job.state.owner == "alice"
        assert "preparing the data" in job.state.describe()
        with pytest.raises(Busy, match="busy"):
            other.claim(CFG)
        run = slot.start(tmp_path, tmp_path)
    assert job.state.running  # leaving the block after start: the Run holds the slot, not the claim
    with pytest.raises(RuntimeError, match="already started"):
        slot.start(tmp_path, tmp_path)
    assert isinstance(list(run)[-1], Finished) and not job.state.running

    with pytest.raises(ValueError, match="no images"), job.claim(CFG) as slot:
        raise ValueError("no images")  # e.g. the upload held no dataset
    assert not job.state.running
    other.claim(CFG).release()  # free again, for anyone
    assert not other.state.running


def test_a_claim_dropped_without_with_does_not_hold_the_slot(tmp_path):
    job = TrainingJob(fake_engine())
    job.claim(CFG)  # never started, never released: collected at once in CPython
    list(job.start(CFG, tmp_path, tmp_path))


def test_an_engine_that_cannot_start_frees_the_slot(tmp_path):
    def refuses(cfg, data, out_dir, stop):
        raise OSError("no GPU quota")

    job = TrainingJob(refuses)
    with pytest.raises(OSError, match="quota"):
        job.start(CFG, tmp_path, tmp_path)
    assert not job.state.running
    list(TrainingJob(fake_engine()).start(CFG, tmp_path, tmp_path))


def test_abandoned_stream_frees_the_slot(tmp_path):
    job = TrainingJob(fake_engine())
    run = job.start(CFG, tmp_path, tmp_path)
    next(run)
    del run
    gc.collect()
    assert not job.state.running
    list(job.start(CFG, tmp_path, tmp_path))


def test_stop_is_owner_only_and_ends_after_the_current_epoch(tmp_path):
    job = TrainingJob(fake_engine(epochs=10))
    run = job.start(CFG, tmp_path, tmp_path, owner="alice")
    for ev in run:
        if isinstance(ev, EpochEnd):
            break
    assert not job.stop(owner="mallory")
    assert job.stop(owner="alice") and job.state.stopping
    rest = list(run)
    assert any(isinstance(e, Stopped) for e in rest)
    assert rest[-1].stopped and rest[-1].epochs_run <= 2
    assert not job.stop()  # nothing running any more


def test_a_stop_while_preparing_reaches_the_engine_and_the_slot_is_freed(tmp_path):
    # the engine ends the run (tests/test_engine_phases.py checks the real one); the job relays it
    job = TrainingJob(fake_engine(prepare_steps=1000))
    run = job.start(CFG, tmp_path, tmp_path)
    next(run)
    job.stop()
    events = list(run)
    assert [type(e) for e in events] == [Stopped, Finished] and events[-1].run_dir is None
    assert not job.state.running and isinstance(job.state.last_event, Finished)


def test_a_stop_before_the_run_starts_is_kept_for_it(tmp_path):
    """Stop pressed while the request still scans the dataset (the slot claimed, no run yet): the owner's
    stop is accepted, not refused as another visitor's, and the run stops at its first check."""
    job = TrainingJob(fake_engine(prepare_steps=1000))
    with job.claim(CFG, owner="alice") as slot:
        assert not job.stop(owner="mallory") and not job.state.stopping
        assert job.stop(owner="alice") and job.state.stopping
        run = slot.start(tmp_path, tmp_path)
    events = list(run)
    assert [type(e) for e in events][-2:] == [Stopped, Finished] and len(events) <= 3
    assert not job.state.running


def test_closing_a_run_also_sets_its_stop_flag(tmp_path):
    # on ZeroGPU the engine runs in another process: closing the local stream alone would not reach it
    seen = {}

    def engine(cfg, data, out_dir, stop):
        seen["stop"] = stop
        yield Progress("decode", 1, 2)
        yield Progress("decode", 2, 2)

    job = TrainingJob(engine)
    run = job.start(CFG, tmp_path, tmp_path)
    next(run)
    run.close()
    assert seen["stop"].is_set() and not job.state.running


def test_the_memory_a_training_freed_is_handed_back_when_it_ends(tmp_path, monkeypatch):
    import flowerdemo.serve.jobs as jobs
    from flowerdemo.device import release_freed_memory

    trims = []
    monkeypatch.setattr(jobs, "release_freed_memory", lambda: trims.append(1))
    run = TrainingJob(fake_engine()).start(CFG, tmp_path, tmp_path)
    next(run)
    assert trims == []  # not while it runs
    list(run)
    assert trims == [1]  # once, when it has ended (stopped and failed runs end through the same release)
    assert release_freed_memory() == (os.uname().sysname == "Linux")  # glibc's malloc_trim, called for real


def test_engine_error_frees_the_slot_and_is_recorded(tmp_path):
    def broken(cfg, data, out_dir, stop):
        yield Progress("decode", 1, 2)
        raise ValueError("no images")

    job = TrainingJob(broken)
    with pytest.raises(ValueError, match="no images"):
        list(job.start(CFG, tmp_path, tmp_path))
    assert not job.state.running and job.state.error == "no images"


def test_stop_flag_crosses_a_process_boundary_through_its_file(tmp_path):
    flag = StopFlag(tmp_path / ".stop")
    copy = pickle.loads(pickle.dumps(flag))  # what @spaces.GPU would hand to its worker
    assert not copy.is_set()
    flag.set()
    assert copy.is_set()
    flag.discard()
    assert not copy.is_set()


def test_real_engine_stop_keeps_the_best_checkpoint(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=8, size=48)
    job = TrainingJob()
    run = job.start(dataclasses.replace(CFG, epochs=200), data, tmp_path / "ck")
    seen = []
    for ev in run:
        seen.append(ev)
        if isinstance(ev, EpochEnd) and ev.epoch == 2:
            job.stop()
    done = seen[-1]
    assert isinstance(done, Finished) and done.stopped and done.epochs_run < 200
    clf = load_checkpoint(done.run_dir)
    assert clf.classes == ("circle", "square", "triangle")


# --- runs.py --------------------------------------------------------------------------------------

def test_allowed_path_only_under_the_operator_folders(tmp_path):
    root, outside = tmp_path / "allowed", tmp_path / "secret"
    (root / "flowers").mkdir(parents=True)
    outside.mkdir()
    (root / "link").symlink_to(outside)
    assert allowed_path(str(root / "flowers"), [root]) == (root / "flowers").resolve()
    assert allowed_path("flowers", [root]) == (root / "flowers").resolve()  # relative to the first root
    for bad in (str(outside), str(root / "link"), str(root / ".." / "secret"), "/", "", str(root / "nope")):
        with pytest.raises(PathNotAllowed):
            allowed_path(bad, [root])
    with pytest.raises(PathNotAllowed, match="--data-dir"):
        allowed_path(str(root / "flowers"), [])


def _run(root: Path, name: str, age: float, weights: bool = True) -> Path:
    run = root / name
    run.mkdir(parents=True)
    if weights:
        (run / "model.safetensors").write_bytes(b"x")
    t = time.time() - age
    for p in (run, run / "model.safetensors"):
        if p.exists():
            os.utime(p, (t, t))
    return run


def test_prune_runs_keeps_newest_pinned_default_and_protected(tmp_path):
    runs = [_run(tmp_path, f"r{i}", age=100 - i) for i in range(6)]  # r0 oldest
    default = _run(tmp_path, DEFAULT_RUN, age=1000)
    pin(runs[0])
    crashed = _run(tmp_path, "crashed", age=7200, weights=False)
    fresh_partial = _run(tmp_path, "in-progress", age=5, weights=False)
    removed = prune_runs(tmp_path, keep=2, protect=[runs[1]])
    assert set(removed) == {runs[2], runs[3], crashed}
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"r0", "r1", "r4", "r5", default.name, fresh_partial.name}
    assert prune_runs(tmp_path, keep=0) == []  # 0 keeps everything complete


def _checkpoint(run: Path) -> Path:
    model = build_model("efficientnet_lite0", 2, pretrained=False)
    meta = {"architecture": "efficientnet_lite0", "classes": ["a", "b"],
            "head": {"kind": "mlp", "hidden": 256, "dropout": 0.2},
            "preprocessing": model.spec.preprocessing.to_dict()}
    return save_checkpoint(run, model, meta)


def test_zip_and_import_round_trip_and_bad_uploads_leave_nothing(tmp_path):
    run = _checkpoint(tmp_path / "src" / "my-run")
    pin(run)
    archive = zip_run(run, tmp_path / "dl")
    assert "my-run/PINNED" not in zipfile.ZipFile(archive).namelist()
    imported = import_run(archive, tmp_path / "ck")
    assert imported.name == "my-run" and load_checkpoint(imported).classes == ("a", "b")
    assert import_run(archive, tmp_path / "ck").name == "my-run-1"  # never overwrites

    junk = tmp_path / "junk.zip"
    with zipfile.ZipFile(junk, "w") as zf:
        zf.writestr("run/model.safetensors", b"not a safetensors file")
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../model.safetensors", b"x")
    for bad in (junk, evil, tmp_path / "src" / "my-run" / "meta.json"):
        with pytest.raises(CheckpointError):
            import_run(bad, tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["my-run", "my-run-1"]
