"""The cached uint8 pipeline and batched tensor augmentations vs. the PIL/torchvision reference."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from flowerdemo.config import AugmentConfig
from flowerdemo.data.augment import BatchAugment, eval_batch
from flowerdemo.data.dataset import Sample
from flowerdemo.data.tensorcache import decode_samples
from flowerdemo.infer.preprocess import prepare_image
from flowerdemo.models.registry import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from tests.synth import CLASS_STYLES, draw_sample

LITE = Preprocessing(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET = Preprocessing(96, IMAGENET_MEAN, IMAGENET_STD)
SWITCHES = [f.name for f in dataclasses.fields(AugmentConfig) if f.type in (bool, "bool")]


def _files(tmp_path: Path) -> list[Path]:
    """Non-square and square synthetic photos (landscape, portrait, larger than the model input)."""
    rng = random.Random(0)
    paths = []
    for i, (w, h) in enumerate([(120, 90), (90, 120), (100, 100), (300, 200)]):
        kind = list(CLASS_STYLES)[i % 3]
        path = tmp_path / f"{i}_{w}x{h}.png"
        draw_sample(kind, max(w, h), rng).resize((w, h), Image.Resampling.BILINEAR).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("prep", [LITE, IMAGENET], ids=["lite-64", "imagenet-96"])
def test_cached_eval_pipeline_matches_torchvision(tmp_path, prep):
    paths = _files(tmp_path)
    cache, skipped = decode_samples([Sample(p, 0) for p in paths], prep.resize_size, workers=1)
    assert not skipped and cache.images.dtype == torch.uint8
    assert cache.images.shape == (len(paths), 3, prep.resize_size, prep.resize_size)
    ours = eval_batch(cache.images, prep.input_size, prep.mean, prep.std)
    reference = T.Compose([T.Resize(prep.resize_size), T.CenterCrop(prep.input_size), T.ToTensor(),
                           T.Normalize(prep.mean, prep.std)])
    for path, x in zip(paths, ours, strict=True):
        ref = reference(Image.open(path).convert("RGB"))
        assert x.shape == ref.shape and x.dtype == ref.dtype == torch.float32
        std = torch.tensor(prep.std).view(3, 1, 1)
        diff = (x - ref).abs() * std  # in [0, 1] pixel units
        assert diff.mean() < 0.005 and (diff > 0.05).float().mean() < 0.01, path.name  # only resampling noise
        assert x.min() >= ref.min() - 0.1 and x.max() <= ref.max() + 0.1
        # and prediction prepares single images the same way as training does
        single = prepare_image(path, prep).tensor[0]
        assert single.shape == x.shape and ((single - x).abs() * std).mean() < 0.005, path.name


def _batch(tmp_path: Path, prep: Preprocessing = LITE) -> torch.Tensor:
    rng = random.Random(3)
    paths = []
    for i in range(8):
        path = tmp_path / f"b{i}.png"
        draw_sample(list(CLASS_STYLES)[i % 3], 80, rng).save(path)
        paths.append(path)
    return decode_samples([Sample(p, 0) for p in paths], prep.resize_size, workers=1)[0].images


def _augment(cfg: AugmentConfig, x: torch.Tensor, seed: int = 0, prep: Preprocessing = LITE) -> torch.Tensor:
    return BatchAugment(cfg, prep.input_size, prep.mean, prep.std)(x, torch.Generator().manual_seed(seed))


def _bounds(prep: Preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = torch.tensor(prep.mean).view(1, 3, 1, 1), torch.tensor(prep.std).view(1, 3, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def test_all_off_is_exactly_the_eval_transform(tmp_path):
    x = _batch(tmp_path)
    assert torch.equal(_augment(AugmentConfig.none(), x), eval_batch(x, LITE.input_size, LITE.mean, LITE.std))


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_augmentation_changes_the_image_only_when_on(tmp_path, switch):
    x = _batch(tmp_path)
    clean = eval_batch(x, LITE.input_size, LITE.mean, LITE.std)
    off = dataclasses.replace(AugmentConfig(), **{switch: False})
    on_alone = dataclasses.replace(AugmentConfig.none(), **{switch: True})
    out = _augment(on_alone, x)
    assert out.shape == clean.shape and out.dtype == torch.float32
    lo, hi = _bounds(LITE)
    assert (out >= lo - 1e-5).all() and (out <= hi + 1e-5).all()  # still a normalised image
    changed = [(o - c).abs().mean().item() > 1e-3 for o, c in zip(out, clean, strict=True)]
    if switch in ("hflip", "random_erasing"):  # applied with p = 0.5: some images, not all
        assert 1 <= sum(changed) <= 7
    else:
        assert all(changed)
    # turning the switch off in the full recipe changes what comes out (it was doing something)
    assert not torch.equal(_augment(off, x), _augment(AugmentConfig(), x))
    assert torch.equal(_augment(on_alone, x, seed=0), out)  # same generator seed, same augmentation
    assert not torch.equal(_augment(on_alone, x, seed=1), out) or switch in ("hflip", "random_erasing")


def test_hflip_mirrors_or_keeps_each_image(tmp_path):
    x = _batch(tmp_path)
    size = LITE.input_size
    # with the cache at the model size (no crop offset) the geometry path reproduces pixels exactly
    square = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear").round().to(torch.uint8)
    out = _augment(dataclasses.replace(AugmentConfig.none(), hflip=True), square, seed=2)
    clean = eval_batch(square, size, LITE.mean, LITE.std)
    flipped = [bool(torch.allclose(o, c.flip(-1), atol=1e-4)) for o, c in zip(out, clean, strict=True)]
    kept = [bool(torch.allclose(o, c, atol=1e-4)) for o, c in zip(out, clean, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))  # every image is one or the other
    assert 1 <= sum(flipped) <= 7


def test_random_erasing_blanks_one_rectangle_to_the_mean_colour(tmp_path):
    x = _batch(tmp_path)
    clean = eval_batch(x, LITE.input_size, LITE.mean, LITE.std)
    out = _augment(dataclasses.replace(AugmentConfig.none(), random_erasing=True), x, seed=4)
    erased = 0
    for o, c in zip(out, clean, strict=True):
        mask = (o != c).any(0)
        if not mask.any():
            continue
        erased += 1
        assert (o[:, mask] == 0).all()  # 0 after normalisation = the mean colour
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        box = (o[:, rows.min():rows.max() + 1, cols.min():cols.max() + 1] == 0).all(0)
        assert box.all()  # one filled rectangle
    assert erased >= 1


def test_colour_jitter_is_a_per_pixel_colour_map(tmp_path):
    """Brightness/contrast/saturation/hue change colours, never where things are: within one image,
    pixels of the same colour stay the same colour."""
    x = _batch(tmp_path)
    clean = eval_batch(x, LITE.input_size, LITE.mean, LITE.std)
    out = _augment(dataclasses.replace(AugmentConfig.none(), color_jitter=True), x, seed=5)
    for o, c in zip(out, clean, strict=True):
        colours, group = torch.unique(c.flatten(1).T, dim=0, return_inverse=True)
        assert len(colours) > 1
        pixels = o.flatten(1).T
        for k in range(len(colours)):
            same = pixels[group == k]
            assert (same.max(0).values - same.min(0).values).max() < 1e-4


def test_augmentations_work_for_imagenet_normalisation_and_upsampling(tmp_path):
    x = _batch(tmp_path, IMAGENET)
    lo, hi = _bounds(IMAGENET)
    for cfg in (AugmentConfig(), AugmentConfig.none()):
        out = _augment(cfg, x, prep=IMAGENET)
        assert out.shape == (8, 3, 96, 96) and out.dtype == torch.float32
        assert (out >= lo - 1e-5).all() and (out <= hi + 1e-5).all()
    small = x[:, :, :64, :64].contiguous()  # cache smaller than the model input: upsampled, not cropped
    assert eval_batch(small, 96, IMAGENET.mean, IMAGENET.std).shape == (8, 3, 96, 96)
    assert _augment(AugmentConfig(), small, prep=IMAGENET).shape == (8, 3, 96, 96)
