"""The shared optimisation step gives bit-identical weights to the two loops it replaced
(tests/reference_loops.py) for one epoch on a fixed seed, in full mode and in fast mode."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from flowerdemo.config import TrainConfig
from flowerdemo.data.augment import BatchAugment
from flowerdemo.data.tensorcache import ImageTensors
from flowerdemo.models.registry import build_model
from flowerdemo.train.fast import FastTrainer
from flowerdemo.train.full import FullTrainer
from flowerdemo.train.step import batch_slices, drain
from flowerdemo.train.trainer import TrainSetup
from tests import reference_loops

CFG = TrainConfig(model="efficientnet_lite0", pretrained=False, image_size=32, batch_size=8, epochs=2, seed=3,
                  cache_features=False, workers=1,
                  head_dropout=0.0)  # dropout draws are not the step's business: compare the step alone


def _data(n: int, seed: int, size: int = 36) -> ImageTensors:
    g = torch.Generator().manual_seed(seed)
    return ImageTensors(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                        torch.arange(n) % 3, tuple())


def _model(cfg: TrainConfig):
    torch.manual_seed(0)  # test-only: the same random init for both copies
    return build_model(cfg.model, 3, cfg.pretrained, cfg.head, cfg.head_hidden, cfg.head_dropout)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    ref = _model(CFG).state_dict()  # and the epoch really trained something
    changed = sum(not torch.equal(sa[k], ref[k]) for k in sa if sa[k].is_floating_point())
    assert changed >= 4  # at least the head's two layers moved


@pytest.mark.parametrize("freeze", ["none", "stages"])
def test_full_mode_step_matches_the_old_loop(freeze):
    cfg = dataclasses.replace(CFG, mode="full", freeze=freeze, frozen_stages=2)
    train, val = _data(16, 1), _data(6, 2)
    model = _model(cfg)
    prep = model.spec.preprocessing.with_size(cfg.image_size)
    reference = copy.deepcopy(model)

    trainer = FullTrainer(TrainSetup(cfg, model, train, val, prep, torch.device("cpu")))
    list(trainer.prepare())
    stats = drain(trainer.train_epoch(1))

    # the reference gets the same freezing, layout and optimiser from a second trainer it does not run
    ref_trainer = FullTrainer(TrainSetup(cfg, reference, train, val, prep, torch.device("cpu")))
    list(ref_trainer.prepare())
    ref_stats = reference_loops.full_epoch(
        reference, train.images, train.labels, BatchAugment(cfg.augment, prep.input_size, prep.mean, prep.std),
        ref_trainer.opt, ref_trainer.sched, batch_size=cfg.batch_size, autocast=ref_trainer.autocast,
        scaler=ref_trainer.scaler, grad_clip=cfg.grad_clip, label_smoothing=cfg.label_smoothing,
        generator=torch.Generator().manual_seed(cfg.seed), aug_generator=torch.Generator().manual_seed(cfg.seed + 1),
        channels_last=cfg.channels_last, frozen=ref_trainer.frozen)
    _assert_same_weights(model, reference)
    assert stats.loss == pytest.approx(ref_stats["loss"], rel=1e-6)
    assert stats.acc == ref_stats["acc"]


@pytest.mark.parametrize("tune_tail", [True, False])
def test_fast_mode_step_matches_the_old_loop(tune_tail):
    cfg = dataclasses.replace(CFG, mode="fast", fast_views=2, fast_tune_last_stage=tune_tail)
    train, val = _data(16, 1), _data(6, 2)
    model = _model(cfg)
    prep = model.spec.preprocessing.with_size(cfg.image_size)
    reference = copy.deepcopy(model)

    trainer = FastTrainer(TrainSetup(cfg, model, train, val, prep, torch.device("cpu")))
    list(trainer.prepare())
    stats = drain(trainer.train_epoch(1))

    ref_trainer = FastTrainer(TrainSetup(cfg, reference, train, val, prep, torch.device("cpu")))
    list(ref_trainer.prepare())  # the same cached activations (seeded extraction) and optimiser
    assert torch.equal(ref_trainer.train_feats, trainer.train_feats)
    ref_stats = reference_loops.fast_epoch(
        reference.head, ref_trainer.tail if tune_tail else None, ref_trainer.train_feats, train.labels,
        ref_trainer.opt, ref_trainer.sched, batch_size=cfg.batch_size, steps_per_epoch=len(train) // cfg.batch_size,
        autocast=ref_trainer.autocast, scaler=ref_trainer.scaler, grad_clip=cfg.grad_clip,
        label_smoothing=cfg.label_smoothing, generator=torch.Generator().manual_seed(cfg.seed),
        channels_last=cfg.channels_last)
    _assert_same_weights(model, reference)
    assert stats.loss == pytest.approx(ref_stats["loss"], rel=1e-6)
    assert stats.acc == ref_stats["acc"]


def test_one_batch_policy_a_partial_last_batch_of_at_least_half_a_batch_is_a_step():
    assert batch_slices(16, 8) == [(0, 8), (8, 16)]
    assert batch_slices(20, 8) == [(0, 8), (8, 16), (16, 20)]  # half a batch: a step of its own
    assert batch_slices(19, 8) == [(0, 8), (8, 19)]  # less: folded into the batch before
    assert batch_slices(17, 8) == [(0, 8), (8, 17)]
    assert batch_slices(5, 4) == [(0, 5)] and batch_slices(6, 4) == [(0, 4), (4, 6)]
    assert batch_slices(3, 1) == [(0, 1), (1, 3)]  # a last batch of one is folded whatever the batch size
    assert batch_slices(1, 8) == [(0, 1)] and batch_slices(0, 8) == []
    for n in range(1, 40):  # every item exactly once, in order
        assert [i for a, b in batch_slices(n, 8) for i in range(a, b)] == list(range(n))


def test_fast_mode_schedules_over_the_same_batches_it_trains():
    # 20 images, batch 8: three steps an epoch (the last of 4); warm-up + cosine ends at 0 on the last one
    cfg = dataclasses.replace(CFG, mode="fast", fast_views=1, epochs=2, fast_tune_last_stage=False)
    train, val = _data(20, 1), _data(6, 2)
    model = _model(cfg)
    trainer = FastTrainer(TrainSetup(cfg, model, train, val, model.spec.preprocessing.with_size(cfg.image_size),
                                     torch.device("cpu")))
    drain(trainer.prepare())
    steps = [list(trainer.train_epoch(e)) for e in (1, 2)]
    assert [len(s) for s in steps] == [3, 3] and steps[0][-1].total == 3
    assert trainer.sched.last_epoch == 6
    assert trainer.opt.param_groups[0]["lr"] == pytest.approx(0, abs=1e-12)
