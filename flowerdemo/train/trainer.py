"""What a training mode is: the `Trainer` interface the engine drives, and the run-wide pieces
(`TrainSetup`) every trainer is built from."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from flowerdemo.config import TrainConfig
from flowerdemo.data.tensorcache import ImageTensors
from flowerdemo.models.registry import FlowerNet, Preprocessing
from flowerdemo.train.distributed import DistInfo
from flowerdemo.train.events import Progress
from flowerdemo.train.step import StopSignal


@dataclass
class TrainSetup:
    """Everything a trainer needs besides its own state: chosen once by the engine per run."""

    cfg: TrainConfig
    model: FlowerNet
    train: ImageTensors  # decoded uint8 training images (on the CPU until a trainer moves them)
    val: ImageTensors
    prep: Preprocessing  # the model's geometry and normalisation at this run's image size
    device: torch.device
    stop: StopSignal | None = None
    dist: DistInfo = DistInfo()


class Trainer(Protocol):
    """A training mode. The engine calls `prepare` once, then per epoch `train_epoch` and `val_logits`;
    all three are generators of Progress events that honour `setup.stop` within one batch/chunk.

    prepare     -> (nothing); when `setup.stop` is set afterwards, nothing was trained
    train_epoch -> EpochStats
    val_logits  -> (N, classes) float32 CPU logits of the validation split, or None when stopped
    """

    setup: TrainSetup
    opt: torch.optim.Optimizer  # for the LR the events report

    def prepare(self) -> Iterator[Progress]: ...

    def train_epoch(self, epoch: int) -> Iterator[Progress]: ...

    def val_logits(self, epoch: int, stoppable: bool = True) -> Iterator[Progress]: ...
