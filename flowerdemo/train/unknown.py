"""Fitting the unknown-photo detector at the end of a run (what it is: flowerdemo.models.unknown).

Its features come from the bundled reference encoder, never from the model being trained: computed over
the decoded training and validation photos at their eval crop, one batch at a time (progress stage
"unknown"; a stopped run has none). In fast mode with the reference architecture itself (Lite0 at
224 px, pretrained) the cached trunk activations already are the reference encoder's, so only its last
stage runs over them: seconds instead of a pass over every photo."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch

from flowerdemo.data.augment import eval_batch
from flowerdemo.data.tensorcache import ImageTensors
from flowerdemo.models.registry import Preprocessing
from flowerdemo.models.unknown import (
    REF_MEAN,
    REFERENCE_MODEL,
    REFERENCE_SIZE,
    fit_detector,
    reference_encoder,
    reference_input,
)
from flowerdemo.train.events import Progress
from flowerdemo.train.step import StopSignal, stop_requested
from flowerdemo.train.trainer import Trainer

log = logging.getLogger(__name__)
BATCH = 64


def fit_unknown_detector(trainer: Trainer, seed: int,
                         cached: tuple[torch.Tensor, torch.Tensor] | None = None) -> Iterator[Progress]:
    """Returns the fitted detector of a run, or None when stopped (or when a split is empty). A run that was
    stopped skips it: stopping means "end now with what you have"; its model then says that it cannot
    tell unknown photos (train to the end to get the detector). `cached`: what `cached_reference_features`
    returned, when the caller already has it."""
    setup = trainer.setup
    if len(setup.train) == 0 or len(setup.val) == 0 or stop_requested(setup.stop):
        return None
    shortcut = cached if cached is not None else cached_reference_features(trainer)
    if shortcut is None:
        return (yield from fit_from_images(setup.train, setup.val, setup.prep, setup.device, seed, setup.stop))
    yield Progress("unknown", 1, 1)
    return fit_detector(shortcut[0].cpu(), setup.train.labels.cpu(), shortcut[1].cpu(), torch.Generator().manual_seed(seed))


def fit_from_images(train: ImageTensors, val: ImageTensors, prep: Preprocessing, device: torch.device, seed: int,
                    stop: StopSignal | None = None) -> Iterator[Progress]:
    """The detector from decoded photos (uint8, at `prep.resize_size`), described at their eval crop;
    returns None when stopped."""
    total = sum(-(-len(part) // BATCH) for part in (train, val))
    feats = []
    done = 0
    for part in (train, val):
        out = []
        for start in range(0, len(part), BATCH):
            out.append(_features(part, start, prep, device))
            done += 1
            yield Progress("unknown", done, total)
            if stop_requested(stop) and done < total:
                log.info("stopped while fitting the unknown-photo detector: the model is saved without one")
                return None
        feats.append(torch.cat(out).cpu())
    return fit_detector(feats[0], train.labels.cpu(), feats[1], torch.Generator().manual_seed(seed))


@torch.inference_mode()
def _features(part: ImageTensors, start: int, prep, device: torch.device) -> torch.Tensor:
    x = eval_batch(part.images[start:start + BATCH].to(device), prep.input_size, prep.mean, prep.std)
    return reference_encoder(device)(reference_input(x, prep.mean, prep.std)).float()


@torch.inference_mode()
def cached_reference_features(trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(train, val) reference features from fast mode's cached trunk activations, when those are the
    reference encoder's own (same architecture, pretrained, same size and normalisation); else None.
    The training photos' part is also the label-issue check's starting features (engine.finish runs
    this pass once for both)."""
    train_maps = getattr(trainer, "train_feats", None)
    if getattr(trainer, "cached", None) != "trunk" or train_maps is None:  # full mode, or pooled features
        return None
    setup = trainer.setup
    cfg, prep = setup.cfg, setup.prep
    if (cfg.model != REFERENCE_MODEL
            or not cfg.pretrained or prep.input_size != REFERENCE_SIZE or tuple(prep.mean) != REF_MEAN
            or tuple(prep.std) != REF_MEAN):
        return None
    encoder = reference_encoder(setup.device)
    _, tail = setup.model.spec.split(encoder)

    def run(maps: torch.Tensor) -> torch.Tensor:
        return torch.cat([tail(maps[i:i + 256].float().contiguous(memory_format=torch.channels_last)).float()
                          for i in range(0, len(maps), 256)])

    return run(train_maps[0]), run(trainer.val_feats)

