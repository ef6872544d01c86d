"""Typed events yielded by `flowerdemo.train.engine.train`. The CLI prints them; the app plots them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunStarted:
    run_dir: Path | None  # None in the processes of a torchrun other than rank 0 (which writes)
    device: str  # e.g. "cpu", "cuda:0 (NVIDIA H100)"
    mode: str  # "full" or "fast"
    model: str
    classes: tuple[str, ...]
    n_train: int
    n_val: int
    epochs: int
    skipped: int  # files in the dataset folder that could not be used


@dataclass(frozen=True)
class Progress:
    stage: str  # "decode" | "features" | "train" | "val" (scoring the validation split)
    done: int
    total: int
    epoch: int = 0  # 1-based; 0 before training starts


@dataclass(frozen=True)
class EpochEnd:
    epoch: int  # 1-based
    epochs: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float  # learning rate of the head at the end of the epoch
    seconds: float  # this epoch's wall time
    elapsed: float  # since the run started, data preparation included
    images_per_s: float  # training images per second in this epoch
    best_val_acc: float
    is_best: bool

    def as_row(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")}


@dataclass(frozen=True)
class CheckpointSaved:
    path: Path  # the run directory
    epoch: int
    val_acc: float


@dataclass(frozen=True)
class Stopped:
    epoch: int
    reason: str


@dataclass(frozen=True)
class Finished:
    run_dir: Path | None  # None when stopped before anything could be saved
    best_val_acc: float  # the kept epoch's: the best one's, or the last one's with keep="last" (see `kept`)
    best_epoch: int
    epochs_run: int
    seconds: float
    stopped: bool
    report: dict[str, Any] = field(default_factory=dict)  # accuracy, per-class P/R/F1, confusion matrix
    mistakes: tuple[dict[str, Any], ...] = ()  # worst validation errors: path, true, pred, confidence
    # likely mislabelled photos, most suspect first (at most 50; the count is report["label_issues"]["total"]):
    # path, given, suggested, confidence, quality, split (train/label_issues.py); () for a stopped run
    label_issues: tuple[dict[str, Any], ...] = ()
    val_predictions: tuple[dict[str, Any], ...] = ()  # each validation photo (up to 5,000): path, true, pred, confidence
    data_root: str = ""  # the dataset folder the paths of label_issues and val_predictions are relative to
    kept: str = "best"  # TrainConfig.keep: which epoch's weights were kept ("best" or "last")


Event = RunStarted | Progress | EpochEnd | CheckpointSaved | Stopped | Finished
