"""Fast mode (frozen backbone, head trained from cached features), through the public `train()` API
and its events only: the feature extraction internals may change."""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import pytest

from flowerdemo.config import AugmentConfig, TrainConfig
from flowerdemo.engine import train
from flowerdemo.events import EpochEnd, Finished, Progress, RunStarted
from tests.synth import draw_sample, make_dataset

SMALL = TrainConfig(mode="fast", image_size=32, epochs=2, batch_size=8, fast_views=2, workers=1, seed=0)


def test_fast_mode_learns_and_reports_every_epoch(trained_run):
    events, cfg = trained_run.events, trained_run.config
    started = next(e for e in events if isinstance(e, RunStarted))
    assert started.mode == "fast" and started.epochs == cfg.epochs == 12
    epochs = [e for e in events if isinstance(e, EpochEnd)]
    assert [e.epoch for e in epochs] == list(range(1, cfg.epochs + 1))
    assert all(0 <= e.val_acc <= 1 and e.train_loss > 0 and e.images_per_s > 0 for e in epochs)
    assert epochs[-1].train_loss < epochs[0].train_loss  # it learns
    done = events[-1]
    assert isinstance(done, Finished) and not done.stopped and done.epochs_run == cfg.epochs
    assert done.best_val_acc >= 0.9
    assert done.report["accuracy"] == pytest.approx(done.best_val_acc, abs=1e-4)
    assert sum(done.report["per_class"][c]["support"] for c in started.classes) == started.n_val == 12
    # the engine's progress reaches every training batch of every epoch
    steps = [e for e in events if isinstance(e, Progress) and e.stage == "train"]
    assert {e.epoch for e in steps} == set(range(1, cfg.epochs + 1))
    # feature extraction (train views, then validation) is one count that never restarts and ends full
    feats = [e for e in events if isinstance(e, Progress) and e.stage == "features"]
    assert [e.done for e in feats] == list(range(1, len(feats) + 1))
    assert {e.total for e in feats} == {len(feats)}


def _run(cfg: TrainConfig, data: Path, out: Path) -> tuple[int, list[tuple], float]:
    """(number of "features" progress events, per-epoch (train loss, val acc), best val acc)."""
    events = list(train(cfg, data, out_dir=out))
    features = sum(1 for e in events if isinstance(e, Progress) and e.stage == "features")
    curve = [(e.train_loss, e.val_acc) for e in events if isinstance(e, EpochEnd)]
    return features, curve, events[-1].best_val_acc


def test_feature_cache_is_reused_and_keyed_on_what_determines_the_features(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FLOWERDEMO_CACHE", str(cache))
    data = make_dataset(tmp_path / "data", per_class=6, size=40)
    out = tmp_path / "ck"

    first = _run(SMALL, data, out)
    assert first[0] > 0 and any(cache.rglob("*.safetensors"))  # extracted, then written under $FLOWERDEMO_CACHE
    again = _run(SMALL, data, out)
    assert again[0] == 0  # reused: no feature extraction at all
    assert again[1:] == first[1:]  # and trained on the very same numbers

    assert _run(dataclasses.replace(SMALL, lr=3e-3, epochs=3), data, out)[0] == 0  # head settings: same features

    changed = [dataclasses.replace(SMALL, fast_views=3),
               dataclasses.replace(SMALL, augment=dataclasses.replace(AugmentConfig(), rotation=False)),
               dataclasses.replace(SMALL, image_size=48),
               dataclasses.replace(SMALL, pretrained=False)]
    for cfg in changed:
        assert _run(cfg, data, out)[0] > 0, cfg

    # an image replaced in place (same path) must not be served stale features
    victim = sorted((data / "circle").iterdir())[0]
    draw_sample("circle", 40, random.Random(99)).save(victim)
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    assert _run(SMALL, data, out)[0] > 0


def test_cache_disabled_always_extracts_and_writes_nothing(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FLOWERDEMO_CACHE", str(cache))
    data = make_dataset(tmp_path / "data", per_class=4, size=40)
    cfg = dataclasses.replace(SMALL, cache_features=False, epochs=1)
    assert _run(cfg, data, tmp_path / "ck")[0] > 0
    assert _run(cfg, data, tmp_path / "ck")[0] > 0
    assert not any(cache.rglob("*.safetensors"))
