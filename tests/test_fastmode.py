"""Fast mode (backbone trunk frozen and its activations cached; last stage + head trained from the
cache), through the public `train()` API, its events and the checkpoints it writes."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from pathlib import Path

import pytest
import torch

from flowerdemo import device as precision
from flowerdemo.config import AugmentConfig, TrainConfig
from flowerdemo.models.checkpoints import load_checkpoint
from flowerdemo.models.registry import build_model
from flowerdemo.train import fast as fastmode
from flowerdemo.train.engine import train
from flowerdemo.train.events import EpochEnd, Finished, Progress, RunStarted
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

    # training settings do not change what is cached
    assert _run(dataclasses.replace(SMALL, lr=3e-3, epochs=3, fast_tail_lr_scale=0.5), data, out)[0] == 0

    changed = [dataclasses.replace(SMALL, fast_views=3),
               dataclasses.replace(SMALL, augment=dataclasses.replace(AugmentConfig(), rotation=False)),
               dataclasses.replace(SMALL, image_size=48),
               dataclasses.replace(SMALL, pretrained=False),
               dataclasses.replace(SMALL, fast_tune_last_stage=False)]  # pooled features, not trunk maps
    for cfg in changed:
        assert _run(cfg, data, out)[0] > 0, cfg
    # computed in another precision (bf16 on CPUs that have it natively, else fp32): not the same numbers
    native = precision.cpu_has_fast_bf16()
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: not native)
    assert _run(SMALL, data, out)[0] > 0
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: native)

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


def _backbone_changes(run_dir: Path, n_classes: int) -> tuple[set[str], set[str]]:
    """(names of backbone tensors that differ from the pretrained ones, names of the tail's tensors)."""
    trained = load_checkpoint(run_dir).model
    fresh = build_model("efficientnet_lite0", n_classes, pretrained=True)
    _, tail = fresh.split()
    tail_ids = {id(t) for t in [*tail.parameters(), *tail.buffers()]}
    tail_names = {k for k, t in [*fresh.backbone.named_parameters(), *fresh.backbone.named_buffers()] if id(t) in tail_ids}
    new = trained.backbone.state_dict()
    changed = {k for k, v in fresh.backbone.state_dict().items() if not torch.equal(new[k], v)}
    return changed, tail_names


def test_fast_mode_fine_tunes_the_last_stage_and_leaves_the_trunk_as_pretrained(trained_run):
    started = next(e for e in trained_run.events if isinstance(e, RunStarted))
    changed, tail = _backbone_changes(trained_run.run_dir, len(started.classes))
    assert changed, "the last stage was not trained"
    assert changed <= tail  # the trunk (cached) is bit-for-bit the pretrained one
    assert not any("running_" in k for k in changed)  # BatchNorm keeps its ImageNet statistics


@pytest.mark.parametrize("how", ["option off", "freeze backbone", "over the memory budget"])
def test_head_only_fast_mode_leaves_the_whole_backbone_unchanged(how, tmp_path, monkeypatch, caplog):
    data = make_dataset(tmp_path / "data", per_class=6, size=40)
    cfg = dataclasses.replace(SMALL, epochs=3, pretrained=True)
    if how == "option off":
        cfg = dataclasses.replace(cfg, fast_tune_last_stage=False)
    elif how == "freeze backbone":
        cfg = dataclasses.replace(cfg, freeze="backbone")
    else:
        monkeypatch.setattr(fastmode, "MAP_BUDGET_BYTES", 1000)
    with caplog.at_level(logging.WARNING, logger="flowerdemo.train.fast"):
        done = list(train(cfg, data, out_dir=tmp_path / "ck"))[-1]
    assert isinstance(done, Finished) and done.epochs_run == 3
    assert _backbone_changes(done.run_dir, 3)[0] == set()
    # falling back is said, with the size that did not fit; the option switched off is not a warning
    warned = [r.getMessage() for r in caplog.records if "training the head only" in r.getMessage()]
    assert (len(warned) == 1 and "GiB" in warned[0]) if how == "over the memory budget" else not warned


@pytest.mark.parametrize("bf16", [False, True])
def test_fast_mode_learns_in_fp32_and_in_cpu_bf16(bf16, tmp_path, monkeypatch):
    """The CPU picks bf16 only with native bf16 units; both paths must train (forced here either way)."""
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: bf16)
    data = make_dataset(tmp_path / "data", per_class=10, size=48)
    cfg = dataclasses.replace(SMALL, image_size=48, epochs=6, pretrained=True, lr=3e-3, device="cpu")
    events = list(train(cfg, data, out_dir=tmp_path / "ck"))
    curve = [e for e in events if isinstance(e, EpochEnd)]
    assert curve[-1].train_loss < curve[0].train_loss
    assert events[-1].best_val_acc >= 0.8


def test_fp32_extraction_on_the_cpu_runs_on_onnxruntime_with_torchs_numbers(tmp_path, monkeypatch):
    """Without native bf16 the frozen trunk's extraction runs on its onnxruntime twin (about twice torch's
    speed on the 2-core machine) once there are enough images to pay for the export (here: any), giving the
    features torch gives; FLOWERDEMO_RUNTIME=torch keeps it on torch."""
    from flowerdemo.infer import runtime

    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(runtime, "MIN_EXTRACTION_IMAGES", 0)
    feats, twins = [], []
    real_extract, real_twin = fastmode.extract_features, fastmode.extraction_encoder

    def extract(*args, **kwargs):
        out = yield from real_extract(*args, **kwargs)
        feats.append(out)
        return out

    def twin(*args, **kwargs):
        twins.append(real_twin(*args, **kwargs))
        return twins[-1]

    monkeypatch.setattr(fastmode, "extract_features", extract)
    monkeypatch.setattr(fastmode, "extraction_encoder", twin)
    data = make_dataset(tmp_path / "data", per_class=4, size=40)
    cfg = dataclasses.replace(SMALL, cache_features=False, epochs=1, device="cpu")
    list(train(cfg, data, out_dir=tmp_path / "ck"))
    assert len(twins) == 1 and twins[0] is not None and twins[0].twin.runs > 0
    onnx_feats = feats[:]
    feats.clear()
    monkeypatch.setenv("FLOWERDEMO_RUNTIME", "torch")
    list(train(cfg, data, out_dir=tmp_path / "ck"))
    assert len(twins) == 1  # not asked for a twin at all
    for a, b in zip(onnx_feats, feats, strict=True):  # train views, then validation; stored in fp16
        assert a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=1e-2, atol=1e-2)
    assert not runtime.extracts_with_onnxruntime(torch.device("cuda"), 10**6)


def test_feature_cache_prunes_least_recently_used_files_and_keeps_the_new_one(tmp_path):
    from flowerdemo.train import featurecache

    t = torch.zeros(4, 8)
    for i, key in enumerate(["old", "used", "mid"]):
        featurecache.save_features(tmp_path, key, t, t)
        os.utime(tmp_path / f"{key}.safetensors", (1000 + i, 1000 + i))
    size = (tmp_path / "old.safetensors").stat().st_size
    assert featurecache.load_features(tmp_path, "used") is not None  # reading marks it recently used
    deleted = featurecache.prune(tmp_path, keep="new", max_bytes=2 * size)
    assert [p.name for p in deleted] == ["old.safetensors"]
    assert featurecache.prune(tmp_path, keep="mid", max_bytes=0) == [tmp_path / "used.safetensors"]
    assert [p.name for p in tmp_path.glob("*.safetensors")] == ["mid.safetensors"]  # kept though over the limit


def test_a_cache_that_cannot_be_written_is_skipped_and_leaves_no_temp_file(tmp_path, monkeypatch, caplog):
    from safetensors import SafetensorError

    from flowerdemo.train import featurecache

    def failing_save(tensors, path):
        Path(path).write_bytes(b"partial")
        raise SafetensorError("No space left on device")

    monkeypatch.setattr(featurecache, "save_file", failing_save)
    t = torch.zeros(2, 3)
    with caplog.at_level(logging.WARNING, logger="flowerdemo.train.featurecache"):
        featurecache.save_features(tmp_path, "k", t, t)  # no exception: training goes on
    assert "could not write the feature cache" in caplog.text
    assert list(tmp_path.iterdir()) == []
