"""The engine's phases (prepare -> fit -> finish): a stop is honoured within one chunk in every phase and
never leaves a run directory without a checkpoint; a run changes no process-wide state; fast mode and
freeze="stages"."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from flowerdemo.models.checkpoints import load_checkpoint
from flowerdemo.models.registry import build_model
from flowerdemo.train import engine
from flowerdemo.train import fast as fastmode
from flowerdemo.train.engine import train
from flowerdemo.train.events import EpochEnd, Finished, Progress, RunStarted, Stopped
from tests.synth import make_dataset

SMALL = dict(mode="fast", image_size=32, epochs=3, batch_size=8, fast_views=2, workers=1, seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("phases") / "data", per_class=8, size=40)


def _config(**over):
    from flowerdemo.config import TrainConfig

    return TrainConfig(**{**SMALL, **over})


def _stop_at(events, stop, when) -> list:
    """Consume `events`, setting `stop` right after the first event for which `when(event)` is true."""
    seen = []
    for ev in events:
        seen.append(ev)
        if when(ev) and not stop.is_set():
            stop.set()
    return seen


def _after(seen: list, first) -> list:
    return seen[seen.index(first) + 1:]


def _no_run_dirs(out) -> bool:
    return not out.exists() or not any(p.is_dir() for p in out.iterdir())


def test_stop_while_decoding_ends_within_one_chunk_and_writes_nothing(data, tmp_path, monkeypatch):
    import threading

    monkeypatch.setattr(engine, "DECODE_CHUNK", 4)
    stop, out = threading.Event(), tmp_path / "ck"
    seen = _stop_at(train(_config(), data, out, stop), stop, lambda e: isinstance(e, Progress) and e.stage == "decode")
    first = next(e for e in seen if isinstance(e, Progress))
    assert first.total == 24 and first.done == 4
    rest = _after(seen, first)
    assert [type(e) for e in rest] == [Stopped, Finished]  # not one more chunk, no RunStarted
    assert rest[0].epoch == 0 and rest[1].run_dir is None and rest[1].stopped
    assert _no_run_dirs(out)


def test_stop_during_feature_extraction_ends_within_one_batch_and_leaves_no_run_dir(data, tmp_path, monkeypatch):
    import threading

    monkeypatch.setattr(fastmode, "FEATURE_BATCH", 4)
    cache = tmp_path / "cache"
    monkeypatch.setenv("FLOWERDEMO_CACHE", str(cache))
    stop, out = threading.Event(), tmp_path / "ck"
    seen = _stop_at(train(_config(), data, out, stop), stop,
                    lambda e: isinstance(e, Progress) and e.stage == "features")
    started = next(e for e in seen if isinstance(e, RunStarted))
    first = next(e for e in seen if isinstance(e, Progress) and e.stage == "features")
    assert first.done == 1 and first.total > 2
    rest = _after(seen, first)
    assert [type(e) for e in rest] == [Stopped, Finished] and rest[1].run_dir is None
    assert not started.run_dir.exists() and _no_run_dirs(out)  # the run dir announced at start is gone
    assert not any(cache.rglob("*.safetensors"))  # half-extracted features are not cached


def test_closing_the_stream_during_preparation_leaves_no_run_dir(data, tmp_path):
    out = tmp_path / "ck"
    events = train(_config(cache_features=False), data, out)
    for ev in events:
        if isinstance(ev, Progress) and ev.stage == "features":
            break
    assert any(out.iterdir())  # the run dir exists while the run does
    events.close()
    assert _no_run_dirs(out)


def test_stop_while_scoring_a_later_epoch_keeps_the_best_checkpoint(data, tmp_path, monkeypatch):
    import threading

    monkeypatch.setattr(fastmode, "EVAL_BATCH", 2)  # 6 validation items: 3 chunks per scoring
    stop, out = threading.Event(), tmp_path / "ck"
    seen = _stop_at(train(_config(epochs=5, cache_features=False), data, out, stop), stop,
                    lambda e: isinstance(e, Progress) and e.stage == "val" and e.epoch == 2)
    first = next(e for e in seen if isinstance(e, Progress) and e.stage == "val" and e.epoch == 2)
    assert first.done == 1 and first.total == 3
    rest = _after(seen, first)
    assert [type(e) for e in rest] == [Stopped, Finished]
    done = rest[1]
    assert done.stopped and done.epochs_run == 1 and done.best_epoch == 1
    assert load_checkpoint(done.run_dir).meta["metrics"]["epochs_run"] == 1


# Lite0: bundled weights, dropout in the head; EfficientNet-B0 (random init, no download): stochastic depth
@pytest.mark.parametrize("model, pretrained", [("efficientnet_lite0", True), ("efficientnet_b0", False)])
def test_a_run_changes_no_process_wide_state_and_its_seed_alone_fixes_the_result(data, tmp_path, model, pretrained):
    torch.manual_seed(1234)
    benchmark = torch.backends.cudnn.benchmark
    # full mode: dropout, stochastic depth, augmentation and initialisation all draw
    cfg = _config(mode="full", epochs=2, cache_features=False, model=model, pretrained=pretrained)
    first = list(train(cfg, data, tmp_path / "a"))
    assert torch.initial_seed() == 1234 and torch.backends.cudnn.benchmark == benchmark
    torch.rand(1000)  # whatever else the process draws in between
    again = list(train(cfg, data, tmp_path / "b"))
    curve = lambda events: [(e.train_loss, e.val_loss, e.val_acc) for e in events if isinstance(e, EpochEnd)]  # noqa: E731
    assert curve(first) == curve(again) and len(curve(first)) == 2
    a, b = load_checkpoint(first[-1].run_dir).model, load_checkpoint(again[-1].run_dir).model
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    other = list(train(dataclasses.replace(cfg, seed=1), data, tmp_path / "c"))
    assert curve(other) != curve(first)


@pytest.mark.parametrize("frozen_stages, tail_trained", [(2, True), (99, False)])
def test_fast_mode_honours_freeze_stages(data, tmp_path, frozen_stages, tail_trained):
    probe = build_model("efficientnet_lite0", 3, pretrained=False)
    n_stages = len(probe.stages())
    tail = {id(p) for p in probe.split()[1].parameters()}
    in_tail = [any(id(p) in tail for p in stage.parameters()) for stage in probe.stages()]
    frozen = min(frozen_stages, n_stages)
    cfg = _config(freeze="stages", frozen_stages=frozen, cache_features=False)
    done = list(train(cfg, data, tmp_path / "ck"))[-1]
    tuned = load_checkpoint(done.run_dir).model
    fresh = build_model("efficientnet_lite0", 3, pretrained=True)
    for i, (a, b) in enumerate(zip(tuned.stages(), fresh.stages(), strict=True)):
        same = all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
        assert same == (not in_tail[i] or not tail_trained), f"stage {i}"
