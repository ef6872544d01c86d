"""The training engine: `train(config, data)` is a generator of typed events.

One run is three phases around a `Run` context:
- prepare: scan the data, choose the device and the mode once, build the model, decode every image
  once into a uint8 cache, let the trainer prepare (fast mode: extract activations);
- fit: per epoch the trainer trains, the validation split is scored, the best weights are kept and
  written atomically;
- finish: the best weights' report (per-class metrics, worst mistakes), their calibration
  temperature, fitted on the validation logits, and the unknown-photo detector ("none of these",
  fitted on reference features of the training photos, thresholds from the validation photos), every
  validation photo's prediction (a confusion matrix's cells) and the likely label errors are added to
  the checkpoint.

Stopping = setting `stop` or closing the generator; it is honoured within one batch or chunk in every
phase. Stopped before anything was trained, the run leaves nothing on disk; stopped later, the best
checkpoint so far stays loadable. A run dir without a checkpoint is never left behind.

Nothing process-wide is changed: no global seed (the run's generators are its own), no backend flags
(`flowerdemo.device.configure_process` sets those once at start-up).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from flowerdemo.config import TrainConfig
from flowerdemo.data.dataset import DatasetSplit, scan_dataset
from flowerdemo.data.tensorcache import ImageTensors, decode_samples
from flowerdemo.device import describe_device, resolve_device
from flowerdemo.models.checkpoints import WEIGHTS, library_versions, new_run_dir, save_checkpoint
from flowerdemo.models.registry import build_model
from flowerdemo.train.calibration import calibration_summary, fit_temperature, unfit_reason
from flowerdemo.train.distributed import device_for, init_from_env
from flowerdemo.train.evaluate import loss_and_accuracy
from flowerdemo.train.events import CheckpointSaved, EpochEnd, Event, Finished, Progress, RunStarted, Stopped
from flowerdemo.train.fast import FastTrainer
from flowerdemo.train.full import FullTrainer
from flowerdemo.train.label_issues import MAX_STORED_ISSUES, LabelIssue, run_label_issues, val_predictions
from flowerdemo.train.metrics import classification_report
from flowerdemo.train.optim import head_lr
from flowerdemo.train.seeding import init_, seed_randomness_
from flowerdemo.train.step import StopSignal, stop_requested
from flowerdemo.train.trainer import Trainer, TrainSetup
from flowerdemo.train.unknown import cached_reference_features, fit_unknown_detector

log = logging.getLogger(__name__)
DECODE_CHUNK = 256  # images decoded between two progress events (and stop checks)
INIT_SEED_OFFSET = 2  # seed + 0 orders the data, seed + 1 draws augmentations
STOPPED_PREPARING = "stopped while preparing the data; nothing was trained"


def resolve_mode(cfg: TrainConfig, device: torch.device) -> str:
    """auto: full fine-tuning on a GPU, fast mode (cached activations, last stage + head trained) on a CPU."""
    return cfg.mode if cfg.mode != "auto" else ("full" if device.type == "cuda" else "fast")


@dataclass
class Run:
    """One training run's context, filled in by the phases."""

    cfg: TrainConfig
    stop: StopSignal | None
    out_dir: Path
    t_start: float = field(default_factory=time.perf_counter)
    run_dir: Path | None = None  # None on non-zero ranks (rank 0 writes) and until the run has started
    trainer: Trainer | None = None
    classes: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)  # what every checkpoint of this run says about it
    history: list[dict[str, float]] = field(default_factory=list)
    best: tuple[float, int, dict[str, torch.Tensor] | None, torch.Tensor | None] = (-1.0, 0, None, None)
    saved: bool = False

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t_start

    def discard_if_unsaved(self) -> None:
        """A run dir with no checkpoint in it is removed (stopped, failed or closed before the first save)."""
        if self.run_dir is not None and not (self.run_dir / WEIGHTS).exists():
            shutil.rmtree(self.run_dir, ignore_errors=True)


def train(cfg: TrainConfig, data: str | Path | DatasetSplit, out_dir: str | Path = "checkpoints",
          stop: StopSignal | None = None) -> Iterator[Event]:
    """Fine-tune `cfg.model` on `data` (a folder, or an already scanned split), yielding events."""
    run = Run(cfg, stop, Path(out_dir))
    try:
        if not (yield from prepare(run, data)):
            yield Stopped(0, STOPPED_PREPARING)
            yield Finished(None, 0.0, 0, 0, run.seconds, True)
            return
        yield from fit(run)
        yield from finish(run)
    finally:  # also when the consumer closes the generator, or an error ends the run
        run.discard_if_unsaved()


def _decode(split: DatasetSplit, size: int, workers: int,
            stop: StopSignal | None) -> Iterator[Progress]:
    """Decode both splits chunk by chunk; returns (train, val, skipped), or None when stopped."""
    parts: dict[str, list[ImageTensors]] = {"train": [], "val": []}
    skipped: list = []
    total = len(split.train) + len(split.val)
    done = 0
    for name, samples in (("train", split.train), ("val", split.val)):
        for start in range(0, len(samples), DECODE_CHUNK):
            tensors, bad = decode_samples(samples[start:start + DECODE_CHUNK], size, workers)
            parts[name].append(tensors)
            skipped += bad
            done += len(samples[start:start + DECODE_CHUNK])
            yield Progress("decode", done, total)
            if stop_requested(stop) and done < total:
                return None

    def cat(items: list[ImageTensors]) -> ImageTensors:
        return ImageTensors(torch.cat([t.images for t in items]), torch.cat([t.labels for t in items]),
                            tuple(p for t in items for p in t.paths))

    return cat(parts["train"]), cat(parts["val"]), skipped


def prepare(run: Run, data: str | Path | DatasetSplit) -> Iterator[Event]:
    """Data, device, mode, model, decoded images, the trainer ready; returns False when stopped."""
    cfg = run.cfg
    split = data if isinstance(data, DatasetSplit) else scan_dataset(data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    dist_info = init_from_env()
    device = device_for(dist_info, resolve_device(cfg.device))
    mode = resolve_mode(cfg, device)
    if dist_info.enabled and mode == "fast":
        log.warning("fast mode trains from one process's activation cache; under torchrun it runs as full fine-tuning instead")
        mode = "full"
    model = build_model(cfg.model, len(split.classes), cfg.pretrained, cfg.head, cfg.head_hidden, cfg.head_dropout)
    # the run's own generator for what layers draw by themselves (same in every process); offset from
    # the seed of the data order so that the two streams differ
    generator = torch.Generator().manual_seed(cfg.seed + INIT_SEED_OFFSET)
    init_(model.head, generator)
    if not cfg.pretrained:
        init_(model.backbone, generator)
    seed_randomness_(model, generator)
    model.to(device)
    prep = model.spec.preprocessing.with_size(cfg.image_size)
    decoded = yield from _decode(split, prep.resize_size, cfg.workers, run.stop)
    if decoded is None:
        return False
    train_data, val_data, bad = decoded
    if len(train_data) < 2 or len(val_data) < 1:
        raise ValueError(f"only {len(train_data)} training and {len(val_data)} validation images could be decoded; "
                         "need at least 2 and 1")
    if dist_info.is_main:
        run.run_dir = new_run_dir(run.out_dir, cfg.model)
    run.classes = split.classes
    yield RunStarted(run.run_dir, describe_device(device), mode, cfg.model, split.classes, len(train_data),
                     len(val_data), cfg.epochs, len(split.skipped) + len(bad))
    setup = TrainSetup(cfg, model, train_data, val_data, prep, device, run.stop, dist_info)
    run.trainer = FastTrainer(setup) if mode == "fast" else FullTrainer(setup)
    yield from run.trainer.prepare()
    if stop_requested(run.stop):
        return False
    run.meta = {"architecture": cfg.model, "classes": list(split.classes),
                "head": {"kind": cfg.head, "hidden": cfg.head_hidden, "dropout": cfg.head_dropout},
                "preprocessing": prep.to_dict(), "config": cfg.to_dict(), "mode": mode,
                "device": describe_device(device),
                # keep_groups: how evaluate/ship_model make this split again (data.dataset.checkpoint_split);
                # a split with no near-duplicate groups is the same with or without keeping them together
                "data": {"root": str(split.root), "counts": split.counts(), "presplit": split.presplit,
                         "keep_groups": split.near_duplicate_groups > 0,
                         "near_duplicate_groups": split.near_duplicate_groups,
                         "groups_kept_together": split.groups_kept_together,
                         "skipped": len(split.skipped) + len(bad)},
                "world_size": dist_info.world, "versions": library_versions()}
    return True


def fit(run: Run) -> Iterator[Event]:
    """Train epoch by epoch, keeping (and writing) the best weights; ends early on a stop request.

    The first epoch is always scored and saved, even when a stop arrives during it: a run that has
    trained anything leaves a checkpoint. Later, a stop also ends the scoring of the epoch at once."""
    cfg, trainer = run.cfg, run.trainer
    setup = trainer.setup
    stopped_at = 0
    for epoch in range(1, cfg.epochs + 1):
        stats = yield from trainer.train_epoch(epoch)
        if stats.stopped and run.saved:
            stopped_at = epoch
            break
        logits = yield from trainer.val_logits(epoch, stoppable=run.saved)
        if logits is None:  # stopped while scoring: the best checkpoint so far stands
            stopped_at = epoch
            break
        val_loss, val_acc = loss_and_accuracy(logits, setup.val.labels)
        best_acc = max((h["val_acc"] for h in run.history), default=-1.0)
        is_best = val_acc > best_acc
        best_acc = max(best_acc, val_acc)
        kept = is_best or cfg.keep == "last"  # keep="last": every epoch replaces the kept weights
        if kept:
            run.best = (val_acc, epoch, {k: v.detach().clone() for k, v in setup.model.state_dict().items()}, logits)
        row = EpochEnd(epoch, cfg.epochs, stats.loss, stats.acc, val_loss, val_acc, head_lr(trainer.opt),
                       stats.seconds, run.seconds, stats.images / max(stats.seconds, 1e-9), best_acc, is_best)
        run.history.append(row.as_row())
        yield row
        if kept:
            if run.run_dir is not None:
                save_checkpoint(run.run_dir, setup.model, {**run.meta, "created": _now(), "history": run.history,
                                                           "metrics": {"best_val_acc": val_acc, "best_epoch": epoch,
                                                                       "kept": cfg.keep}})
                yield CheckpointSaved(run.run_dir, epoch, val_acc)
            run.saved = True
        if stats.stopped:
            stopped_at = epoch
            break
    if stopped_at:
        yield Stopped(stopped_at, "stop requested")
    run.meta["stopped"] = bool(stopped_at)


def finish(run: Run) -> Iterator[Event]:
    """The kept epoch's (TrainConfig.keep: the best or the last) report, calibration, worst mistakes, per-photo
    validation predictions and likely label errors (train/label_issues.py), written into its checkpoint."""
    setup = run.trainer.setup
    best_acc, best_epoch, best_state, logits = run.best
    setup.model.load_state_dict(best_state)
    stopped = run.meta.pop("stopped")
    labels = setup.val.labels.cpu()
    # Temperature scaling on the kept epoch's validation logits. With keep="best" the same split chose the epoch,
    # and with either the "after" figures are a little optimistic (T is fitted and scored on one set of photos);
    # only photos the run never saw check it (`flowerdemo evaluate` on another folder).
    temperature = fit_temperature(logits, labels)
    calibration = calibration_summary(logits, labels, temperature, fitted_on=f"validation split ({len(labels)} photos)",
                                      note=unfit_reason(logits, labels))
    report = {**classification_report(labels, logits.argmax(1), run.classes), "calibration": calibration}
    mistakes = _mistakes(logits / temperature, setup.val, run.classes)  # confidences as the app will show them
    root = run.meta.get("data", {}).get("root")  # None: paths stay as they are
    probs = (logits / temperature).softmax(1)
    predictions = val_predictions(probs, labels, run.classes, setup.val.paths, root)  # the confusion matrix's photos
    issues: tuple[LabelIssue, ...] = ()
    # fast mode with the reference model (the default): one pass of its last stage over the cached maps
    # gives both the detector's features and the label check's starting features
    reference = cached_reference_features(run.trainer) if run.run_dir is not None and not stopped else None
    if not stopped and run.run_dir is not None:  # like the detector: a stopped run ends with what it has
        issues, report["label_issues"] = run_label_issues(
            run.trainer, probs, run.classes, root, run.cfg.seed,
            features=None if reference is None else reference[0].float().cpu().numpy())
    detector = ((yield from fit_unknown_detector(run.trainer, run.cfg.seed, cached=reference))
                if run.run_dir is not None else None)
    if detector is not None:
        report["unknown"] = detector.to_meta()
    seconds = run.seconds
    shown = tuple(issue.to_dict() for issue in issues[:MAX_STORED_ISSUES])
    metrics = {"best_val_acc": best_acc, "best_epoch": best_epoch, "kept": run.cfg.keep, "epochs_run": len(run.history),
               "seconds": round(seconds, 2), "stopped": stopped,  # stored once, in their own keys:
               **{k: v for k, v in report.items() if k not in ("calibration", "unknown", "label_issues")}}
    if run.run_dir is not None:
        extra = {"label_issues": {**report["label_issues"], "issues": list(shown)}} if "label_issues" in report else {}
        save_checkpoint(run.run_dir, setup.model, {**run.meta, "created": _now(), "history": run.history,
                                                   "metrics": metrics, "calibration": calibration,
                                                   "mistakes": list(mistakes), "val_predictions": list(predictions),
                                                   **extra}, detector=detector)
    yield Finished(run.run_dir, best_acc, best_epoch, len(run.history), seconds, stopped, report, mistakes,
                   shown, predictions, root, run.cfg.keep)


def _mistakes(logits: torch.Tensor, data: ImageTensors, classes: tuple[str, ...], limit: int = 12) -> tuple[dict, ...]:
    """The most confidently wrong validation predictions (for the app's gallery); `logits` already
    divided by the temperature."""
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    wrong = (pred != data.labels.cpu()).nonzero().flatten().tolist()
    wrong.sort(key=lambda i: -float(conf[i]))
    return tuple({"path": str(data.paths[i]), "true": classes[int(data.labels[i])], "pred": classes[int(pred[i])],
                  "confidence": round(float(conf[i]), 4)} for i in wrong[:limit])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
