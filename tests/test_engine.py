"""The training engine in full (fine-tuning) mode: learning, the event stream, stopping, config checks.
Fast mode is in test_fastmode.py; the TrainingJob slot (stop between epochs) in test_jobs.py."""

from __future__ import annotations

import dataclasses
import math
import threading

import pytest
import torch

from flowerdemo.config import FREEZE, HEADS, KEEPS, MODES, OPTIMIZERS, SCHEDULES, AugmentConfig, ConfigError, TrainConfig
from flowerdemo.models.checkpoints import load_checkpoint, read_meta
from flowerdemo.models.registry import build_model
from flowerdemo.train.engine import train
from flowerdemo.train.events import CheckpointSaved, EpochEnd, Finished, Progress, RunStarted, Stopped
from tests.synth import make_dataset

FLIP_ONLY = dataclasses.replace(AugmentConfig.none(), hflip=True)
# the first 3 stages stay frozen: with 30 images, re-estimating every BatchNorm makes validation erratic
# 5 epochs: seeds 0-4 all reach 6/6 by the last epoch (at 3 the outcome depended on the seed)
FULL = TrainConfig(mode="full", image_size=64, epochs=5, batch_size=12, lr=3e-3, freeze="stages", frozen_stages=3,
                   workers=1, seed=0, augment=FLIP_ONLY)
TINY = TrainConfig(mode="full", image_size=32, epochs=3, batch_size=4, workers=1, seed=0, augment=FLIP_ONLY)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One short full fine-tuning run of EfficientNet-Lite0 (bundled weights) on 36 synthetic images."""
    root = tmp_path_factory.mktemp("full")
    data = make_dataset(root / "data", per_class=12, size=64)
    return data, list(train(FULL, data, out_dir=root / "ck"))


def test_full_mode_fine_tunes_to_high_accuracy(full_run):
    _, events = full_run
    started, done = events[[isinstance(e, RunStarted) for e in events].index(True)], events[-1]
    assert started.mode == "full" and started.model == "efficientnet_lite0"
    assert started.classes == ("circle", "square", "triangle") and (started.n_train, started.n_val) == (30, 6)
    assert isinstance(done, Finished) and not done.stopped
    assert done.best_val_acc >= 0.9
    # the final report is computed with the best epoch's weights restored
    assert done.report["accuracy"] == pytest.approx(done.best_val_acc, abs=1e-4)
    clf = load_checkpoint(done.run_dir)
    assert clf.meta["mode"] == "full" and clf.meta["metrics"]["best_val_acc"] == done.best_val_acc
    # the backbone was fine-tuned after the frozen stages, and not at all (BatchNorm statistics included) in them
    fresh = build_model("efficientnet_lite0", 3, pretrained=True)
    for i, (tuned, pretrained) in enumerate(zip(clf.model.stages(), fresh.stages(), strict=True)):
        same = all(torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), pretrained.state_dict().values(), strict=True))
        assert same == (i < 3), f"stage {i}"


def test_full_mode_event_sequence(full_run):
    _, events = full_run
    kinds = [type(e).__name__ for e in events]
    first_start = kinds.index("RunStarted")
    assert all(isinstance(e, Progress) and e.stage == "decode" for e in events[:first_start])
    decode = [e for e in events if isinstance(e, Progress) and e.stage == "decode"]
    assert decode and decode[-1].done == decode[-1].total == 36
    assert kinds.count("RunStarted") == 1 and kinds[-1] == "Finished" and kinds.count("Finished") == 1
    assert "Stopped" not in kinds

    epochs = [e for e in events if isinstance(e, EpochEnd)]
    assert [e.epoch for e in epochs] == [1, 2, 3, 4, 5] and all(e.epochs == 5 for e in epochs)
    best = -1.0
    for prev, e in zip([None] + epochs, epochs, strict=False):
        for value in (e.train_loss, e.val_loss, e.seconds, e.elapsed, e.images_per_s):
            assert math.isfinite(value) and value > 0
        assert 0 <= e.train_acc <= 1 and 0 <= e.val_acc <= 1
        assert e.is_best == (e.val_acc > best)
        best = max(best, e.val_acc)
        assert e.best_val_acc == best
        if prev is not None:
            assert e.elapsed > prev.elapsed
    # warm-up + cosine: the LR reaches 0 at the end of the last epoch, not before (the schedule counts
    # the partial last batch of each epoch as a step too)
    assert epochs[0].lr > epochs[1].lr > 0 and epochs[-1].lr == pytest.approx(0, abs=1e-9)

    for e in epochs:  # per epoch: train progress 1..n, then its EpochEnd, then a save if it was the best
        i = events.index(e)
        steps = [p for p in events[first_start:i] if isinstance(p, Progress) and p.stage == "train" and p.epoch == e.epoch]
        assert [p.done for p in steps] == list(range(1, steps[0].total + 1)) and steps[0].total == 3  # 12+12+6
        if e.is_best:
            saved = events[i + 1]
            assert isinstance(saved, CheckpointSaved) and saved.epoch == e.epoch and saved.val_acc == e.val_acc
        else:
            assert not isinstance(events[i + 1], CheckpointSaved)

    done = events[-1]
    best_epoch = max(epochs, key=lambda e: (e.val_acc, -e.epoch))
    assert (done.best_val_acc, done.best_epoch, done.epochs_run) == (best_epoch.val_acc, best_epoch.epoch, 5)
    meta = read_meta(done.run_dir)
    assert [row["epoch"] for row in meta["history"]] == [1, 2, 3, 4, 5]
    assert meta["history"][-1]["val_acc"] == epochs[-1].val_acc and meta["metrics"]["epochs_run"] == 5


def _stop_when(events, stop: threading.Event, epoch: int, batch: int) -> list:
    """Consume the event stream, setting `stop` right after train batch `batch` of `epoch`."""
    seen = []
    for ev in events:
        seen.append(ev)
        if isinstance(ev, Progress) and ev.stage == "train" and (ev.epoch, ev.done) == (epoch, batch):
            stop.set()
    return seen


def _train_steps_after_stop(seen: list, epoch: int, batch: int) -> list:
    i = next(i for i, e in enumerate(seen) if isinstance(e, Progress) and e.stage == "train"
             and (e.epoch, e.done) == (epoch, batch))
    return [e for e in seen[i + 1:] if isinstance(e, Progress) and e.stage == "train"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny") / "data", per_class=6, size=40)


def test_stop_mid_epoch_ends_within_one_batch_and_keeps_the_best_checkpoint(tiny_data, tmp_path):
    stop = threading.Event()
    seen = _stop_when(train(dataclasses.replace(TINY, epochs=50), tiny_data, tmp_path, stop=stop), stop, 2, 1)
    assert _train_steps_after_stop(seen, 2, 1) == []  # no further batch once the flag is set
    assert [e.epoch for e in seen if isinstance(e, EpochEnd)] == [1]  # the partial epoch is not scored
    stopped, done = seen[-2], seen[-1]
    assert isinstance(stopped, Stopped) and stopped.epoch == 2
    assert isinstance(done, Finished) and done.stopped and done.epochs_run == 1 and done.best_epoch == 1
    clf = load_checkpoint(done.run_dir)
    assert clf.classes == ("circle", "square", "triangle")
    assert clf.meta["metrics"]["stopped"] is True and len(clf.meta["history"]) == 1


def test_stop_in_the_first_epoch_still_leaves_a_checkpoint(tiny_data, tmp_path):
    stop = threading.Event()
    seen = _stop_when(train(dataclasses.replace(TINY, epochs=50), tiny_data, tmp_path, stop=stop), stop, 1, 1)
    assert _train_steps_after_stop(seen, 1, 1) == []
    assert [type(e).__name__ for e in seen[-4:]] == ["EpochEnd", "CheckpointSaved", "Stopped", "Finished"]
    assert seen[-1].stopped and load_checkpoint(seen[-1].run_dir).meta["metrics"]["epochs_run"] == 1


def test_closing_the_generator_mid_epoch_keeps_the_saved_checkpoint(tiny_data, tmp_path):
    events = train(dataclasses.replace(TINY, epochs=50), tiny_data, tmp_path)
    saved = next(e for e in events if isinstance(e, CheckpointSaved))
    next(e for e in events if isinstance(e, Progress) and e.stage == "train")  # into epoch 2
    events.close()
    clf = load_checkpoint(saved.path)
    assert clf.meta["metrics"]["best_epoch"] == 1
    assert sorted(p.name for p in saved.path.iterdir()) == ["meta.json", "model.safetensors"]


def test_keep_last_keeps_and_reports_the_last_epochs_weights(tiny_data, tmp_path):
    """keep="last": the checkpoint holds the last epoch's weights whatever the validation accuracy did (nothing
    chosen on the validation photos), saved at every epoch; the events still say which epoch scored best."""
    # a learning rate too small to change any answer: the validation accuracy never rises after epoch 1, so "best"
    # would keep epoch 1 and save once (checked below), where "last" keeps and saves every epoch
    still = dataclasses.replace(TINY, epochs=3, lr=1e-12)
    best_run = list(train(still, tiny_data, tmp_path / "best"))
    assert [e.epoch for e in best_run if isinstance(e, CheckpointSaved)] == [1] and best_run[-1].best_epoch == 1
    events = list(train(dataclasses.replace(still, keep="last"), tiny_data, tmp_path / "last"))
    ends = [e for e in events if isinstance(e, EpochEnd)]
    assert [e.epoch for e in events if isinstance(e, CheckpointSaved)] == [1, 2, 3]
    done = events[-1]
    assert isinstance(done, Finished) and done.kept == "last" and done.best_epoch == 3
    assert done.best_val_acc == ends[-1].val_acc and ends[-1].best_val_acc == max(e.val_acc for e in ends)
    clf = load_checkpoint(done.run_dir)
    assert clf.meta["metrics"]["kept"] == "last" and clf.meta["metrics"]["best_epoch"] == 3
    assert clf.meta["config"]["keep"] == "last"


def test_train_with_a_frozen_backbone_in_full_mode_leaves_it_unchanged(tiny_data, tmp_path):
    cfg = dataclasses.replace(TINY, epochs=1, freeze="backbone", pretrained=True)
    done = list(train(cfg, tiny_data, tmp_path))[-1]
    trained = load_checkpoint(done.run_dir).model.backbone.state_dict()
    fresh = build_model("efficientnet_lite0", 3, pretrained=True).backbone.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in fresh.items())  # BN statistics included


BAD_VALUES = [
    ("mode", "fastest"), ("optimizer", "adam"), ("schedule", "cosine"), ("freeze", "all"), ("head", "mlp3"),
    ("epochs", 0), ("batch_size", 0), ("lr", 0.0), ("lr", -1e-3), ("val_fraction", 0.0), ("val_fraction", 1.0),
    ("image_size", 16), ("image_size", 4096), ("fast_views", 0), ("label_smoothing", 1.0), ("warmup_epochs", -1.0),
    ("head_dropout", 1.5), ("head_hidden", 0), ("frozen_stages", -1), ("workers", -2), ("weight_decay", -0.1),
    ("grad_clip", -1.0), ("step_epochs", 0), ("backbone_lr_scale", -0.1), ("keep", "final"),
]


@pytest.mark.parametrize("field, value", BAD_VALUES)
def test_bad_config_values_raise_a_config_error_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value})
    with pytest.raises(ConfigError, match=field):  # overrides are validated too
        dataclasses.replace(TrainConfig(), **{field: value})


def test_choice_errors_list_what_is_accepted():
    for field, choices in (("mode", MODES), ("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("freeze", FREEZE),
                           ("head", HEADS), ("keep", KEEPS)):
        with pytest.raises(ConfigError) as err:
            TrainConfig(**{field: "nonsense"})
        assert "nonsense" in str(err.value) and all(c in str(err.value) for c in choices)
    with pytest.raises(ConfigError, match="crop_scale_min"):
        AugmentConfig(crop_scale_min=0.0)
    with pytest.raises(ConfigError, match="crop_scale_min"):
        AugmentConfig(crop_scale_min=1.5)


def test_config_round_trips_through_a_dict():
    cfg = TrainConfig(lr=0.02, epochs=7, augment=dataclasses.replace(AugmentConfig(), rotation=False))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    newer = {**cfg.to_dict(), "setting_from_the_future": 1}
    newer["augment"] = {**newer["augment"], "mixup": True}
    assert TrainConfig.from_dict(newer) == cfg  # unknown keys from newer versions are ignored


def _truncate(path) -> None:
    """Keep the header (the scan accepts the file), lose the pixels (decoding fails)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_undecodable_images_are_skipped_and_counted(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=4, size=40)
    _truncate(sorted(data.rglob("*.png"))[0])
    events = list(train(dataclasses.replace(TINY, epochs=1), data, tmp_path / "ck"))
    started = next(e for e in events if isinstance(e, RunStarted))
    assert started.skipped == 1 and started.n_train + started.n_val == 11
    assert isinstance(events[-1], Finished) and read_meta(events[-1].run_dir)["data"]["skipped"] == 1


def test_nothing_decodable_is_an_error_before_any_run_directory(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=3, size=40)
    for png in data.rglob("*.png"):
        _truncate(png)
    with pytest.raises(ValueError, match="could be decoded"):
        list(train(TINY, data, tmp_path / "ck"))
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())
