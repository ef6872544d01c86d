"""The CUDA code paths on a GPU: batched augmentation on the device, full mode (device-resident uint8 cache,
bf16 autocast, channels_last, fused AdamW) and fast mode learning, and predictions and Grad-CAM that agree with
the CPU's. Marked `cuda` and skipped without a GPU; scripts/gpu-check.sh runs them on the GPU machine."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from flowerdemo.config import AugmentConfig, TrainConfig
from flowerdemo.data.augment import BatchAugment, eval_batch
from flowerdemo.device import autocast_dtype, autocast_for
from flowerdemo.models.checkpoints import load_checkpoint
from flowerdemo.train.engine import train
from flowerdemo.train.events import EpochEnd, Finished, RunStarted
from tests.conftest import TRAINED_CONFIG
from tests.synth import make_dataset

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# the CPU's full-mode test config (tests/test_engine.py FULL), on the GPU with every augmentation of the report
FULL = TrainConfig(mode="full", image_size=64, epochs=5, batch_size=12, lr=3e-3, freeze="stages", frozen_stages=3,
                   workers=1, seed=0, device="cuda")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("cuda") / "data", per_class=20, size=96)


def test_autocast_on_a_gpu_is_bf16_where_supported_else_fp16_with_a_scaler():
    ctx, scaler = autocast_for(torch.device("cuda"), True)
    if torch.cuda.is_bf16_supported():  # every H100/H200
        assert autocast_dtype(ctx) == "bf16" and not scaler.is_enabled()
    else:
        assert autocast_dtype(ctx) == "fp16" and scaler.is_enabled()
    with ctx():
        y = torch.ones(8, 8, device="cuda") @ torch.ones(8, 8, device="cuda")
    assert y.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[autocast_dtype(ctx)]


def test_batch_augment_runs_on_the_device_and_is_reproducible_from_its_seed():
    x = torch.randint(0, 256, (16, 3, 80, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).cuda()
    aug = BatchAugment(AugmentConfig(), 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    a = aug(x, torch.Generator(device="cuda").manual_seed(1))
    b = aug(x, torch.Generator(device="cuda").manual_seed(1))
    c = aug(x, torch.Generator(device="cuda").manual_seed(2))
    assert a.device.type == "cuda" and a.dtype == torch.float32 and a.shape == (16, 3, 64, 64)
    assert torch.isfinite(a).all() and torch.equal(a, b) and not torch.equal(a, c)
    # the evaluation transform is the same arithmetic on either device
    cpu = eval_batch(x.cpu(), 64, (0.5,) * 3, (0.5,) * 3)
    assert torch.allclose(eval_batch(x, 64, (0.5,) * 3, (0.5,) * 3).cpu(), cpu, atol=1e-5)


def test_full_mode_on_the_gpu_learns_with_bf16_channels_last_and_a_device_cache(data, tmp_path):
    events = list(train(FULL, data, out_dir=tmp_path))
    started, done = next(e for e in events if isinstance(e, RunStarted)), events[-1]
    assert started.device.startswith("cuda") and started.mode == "full"
    epochs = [e for e in events if isinstance(e, EpochEnd)]
    assert all(np.isfinite(e.train_loss) and e.images_per_s > 0 for e in epochs)
    assert epochs[-1].train_loss < epochs[0].train_loss
    assert isinstance(done, Finished) and not done.stopped and done.best_val_acc >= 0.8  # chance: 0.33
    clf = load_checkpoint(done.run_dir, device="cuda")
    assert clf.meta["device"].startswith("cuda") and clf.detector is not None
    assert all(torch.isfinite(p).all() for p in clf.model.parameters())


def test_full_mode_without_augmentation_or_autocast_learns_too(data, tmp_path):
    """fp32 on the GPU (amp off) and the report's baseline input: the other branch of every device choice."""
    cfg = dataclasses.replace(FULL, amp=False, channels_last=False, augment=AugmentConfig.none(), epochs=3)
    done = list(train(cfg, data, out_dir=tmp_path))[-1]
    assert isinstance(done, Finished) and done.best_val_acc >= 0.8


def test_fast_mode_on_the_gpu_learns(data, tmp_path):
    events = list(train(dataclasses.replace(TRAINED_CONFIG, device="cuda"), data, out_dir=tmp_path))
    started, done = next(e for e in events if isinstance(e, RunStarted)), events[-1]
    assert started.device.startswith("cuda") and started.mode == "fast"
    assert isinstance(done, Finished) and done.best_val_acc >= 0.8


def test_predictions_on_the_gpu_match_the_cpu(trained_run):
    from flowerdemo.infer.predict import classify

    photos = sorted(trained_run.data.rglob("*.png"))[::7]
    on_cpu, on_gpu = load_checkpoint(trained_run.run_dir), load_checkpoint(trained_run.run_dir, device="cuda")
    assert next(on_gpu.model.parameters()).device.type == "cuda"
    for photo in photos:
        a, b = classify(on_cpu, photo), classify(on_gpu, photo)  # probabilities + the unknown-photo decision
        assert a.top[0] == b.top[0], photo.name
        for name, p in a.probabilities.items():
            assert b.probabilities[name] == pytest.approx(p, abs=5e-3), (photo.name, name)
        assert a.familiarity.known == b.familiarity.known


def test_gradcam_on_the_gpu_matches_the_cpu(trained_run):
    pytest.importorskip("pytorch_grad_cam")
    from flowerdemo.infer.explain import explain

    photo = sorted(trained_run.data.rglob("*.png"))[0]
    a = explain(load_checkpoint(trained_run.run_dir), photo, method="gradcam")
    b = explain(load_checkpoint(trained_run.run_dir, device="cuda"), photo, method="gradcam")
    assert a.class_name == b.class_name and a.heatmap.shape == b.heatmap.shape
    assert float(np.abs(a.heatmap - b.heatmap).max()) < 0.05
