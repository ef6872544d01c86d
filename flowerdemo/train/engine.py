"""The training engine: `train(config, data)` is a generator of typed events.

Device and precision are chosen once. Both modes (full fine-tuning, fast mode on cached activations)
share one driver: per epoch it trains, scores the validation split, keeps the best weights and
writes them atomically. Stopping = setting `stop` (honoured within one batch) or closing the
generator; either way the best checkpoint on disk stays loadable.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Generator

import torch

from flowerdemo.data.augment import BatchAugment
from flowerdemo.models.checkpoints import library_versions, new_run_dir, save_checkpoint
from flowerdemo.config import TrainConfig
from flowerdemo.data.dataset import DatasetSplit, scan_dataset
from flowerdemo.train.distributed import DistInfo, device_for, init_from_env
from flowerdemo.train.events import CheckpointSaved, EpochEnd, Event, Finished, Progress, RunStarted, Stopped
from flowerdemo.train.fast import FastTrainer
from flowerdemo.train.step import batch_starts, loss_and_accuracy, predict_tensors, train_one_epoch
from flowerdemo.train.metrics import classification_report
from flowerdemo.models.registry import FlowerNet, Preprocessing, build_model, freeze, frozen_modules
from flowerdemo.train.optim import head_lr, make_optimizer, make_scheduler
from flowerdemo.device import autocast_for, describe_device, resolve_device
from flowerdemo.data.tensorcache import ImageTensors, decode_samples

log = logging.getLogger(__name__)
DECODE_CHUNK = 256


def resolve_mode(cfg: TrainConfig, device: torch.device) -> str:
    """auto: full fine-tuning on a GPU, fast mode (cached activations, last stage + head trained) on a CPU."""
    return cfg.mode if cfg.mode != "auto" else ("full" if device.type == "cuda" else "fast")


class FullTrainer:
    """Fine-tunes the whole network (minus frozen stages) on augmented batches from the cache."""

    def __init__(self, model: FlowerNet, cfg: TrainConfig, train: ImageTensors, val: ImageTensors,
                 prep: Preprocessing, device: torch.device, stop: threading.Event | None,
                 dist_info: DistInfo = DistInfo()) -> None:
        self.model, self.cfg, self.train, self.val, self.prep, self.device, self.stop = model, cfg, train, val, prep, device, stop
        self.dist = dist_info
        freeze(model, cfg.freeze, cfg.frozen_stages)
        self.frozen = frozen_modules(model)
        # NHWC pays on CPUs too (oneDNN's depthwise/1x1 kernels): benchmarks/speed.py, Lite0 224 px, one
        # epoch on the 2-core dev machine, 9.2 -> 16.2 img/s; benchmarks/layout.py train step 1.2-1.6x
        self.channels_last = cfg.channels_last
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.forward_model = torch.compile(model) if cfg.compile else model
        if dist_info.enabled:  # gradients averaged across processes after each backward
            from torch.nn.parallel import DistributedDataParallel

            self.forward_model = DistributedDataParallel(
                self.forward_model, device_ids=[device.index] if device.type == "cuda" else None)
        self.autocast, self.scaler = autocast_for(device, cfg.amp)
        self.augment = BatchAugment(cfg.augment, prep.input_size, prep.mean, prep.std)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.aug_generator = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        # the batches train_one_epoch will run: a partial last batch is a step too
        self.steps_per_epoch = max(1, len(batch_starts(len(train) // dist_info.world, cfg.batch_size)))
        self.opt = make_optimizer(model, cfg, device)
        self.sched = make_scheduler(self.opt, cfg, self.steps_per_epoch)

    def prepare(self) -> Generator[Progress, None, None]:
        if self.device.type == "cuda":  # the whole uint8 cache lives on the GPU: no loader, no copies
            self.train, self.val = self.train.to(self.device), self.val.to(self.device)
            torch.backends.cudnn.benchmark = True
        return
        yield  # a generator like the fast trainer's

    def epoch(self, epoch: int) -> Generator[Progress, None, dict[str, float]]:
        return (yield from train_one_epoch(
            self.forward_model, self.train, self.augment, self.opt, self.sched, epoch=epoch,
            batch_size=self.cfg.batch_size, device=self.device, autocast=self.autocast, scaler=self.scaler,
            grad_clip=self.cfg.grad_clip, label_smoothing=self.cfg.label_smoothing, generator=self.generator,
            aug_generator=self.aug_generator, channels_last=self.channels_last, frozen=self.frozen, stop=self.stop,
            shard=(self.dist.rank, self.dist.world), reduce=self.dist.reduce_sum))

    def val_logits(self) -> torch.Tensor:
        # every process scores the whole (small) val split with rank 0's buffers: all agree on the best epoch
        self.dist.sync_buffers(self.model)
        return predict_tensors(self.model, self.val, size=self.prep.input_size, mean=self.prep.mean,
                               std=self.prep.std, device=self.device, autocast=self.autocast,
                               batch_size=max(128, self.cfg.batch_size * 4), channels_last=self.channels_last)


def _decode(split: DatasetSplit, size: int, workers: int) -> Generator[Progress, None, tuple[ImageTensors, ImageTensors, list]]:
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

    def cat(items: list[ImageTensors]) -> ImageTensors:
        return ImageTensors(torch.cat([t.images for t in items]), torch.cat([t.labels for t in items]),
                            tuple(p for t in items for p in t.paths))

    return cat(parts["train"]), cat(parts["val"]), skipped


def train(cfg: TrainConfig, data: str | Path | DatasetSplit, out_dir: str | Path = "checkpoints",
          stop: threading.Event | None = None) -> Generator[Event, None, None]:
    """Fine-tune `cfg.model` on `data` (a folder, or an already scanned split), yielding events."""
    t_start = time.perf_counter()
    split = data if isinstance(data, DatasetSplit) else scan_dataset(data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    dist_info = init_from_env()
    device = device_for(dist_info, resolve_device(cfg.device))
    mode = resolve_mode(cfg, device)
    if dist_info.enabled and mode == "fast":
        log.warning("fast mode trains from one process's activation cache; under torchrun it runs as full fine-tuning instead")
        mode = "full"
    model = build_model(cfg.model, len(split.classes), cfg.pretrained, cfg.head, cfg.head_hidden, cfg.head_dropout).to(device)
    prep = model.spec.preprocessing.with_size(cfg.image_size)
    train_data, val_data, bad = yield from _decode(split, prep.resize_size, cfg.workers)
    if len(train_data) < 2 or len(val_data) < 1:
        raise ValueError(f"only {len(train_data)} training and {len(val_data)} validation images could be decoded; "
                         "need at least 2 and 1")
    run_dir = new_run_dir(out_dir, cfg.model) if dist_info.is_main else Path(out_dir) / "(rank 0 writes)"
    yield RunStarted(run_dir, describe_device(device), mode, cfg.model, split.classes, len(train_data), len(val_data),
                     cfg.epochs, len(split.skipped) + len(bad))
    if mode == "fast":
        trainer = FastTrainer(model, cfg, train_data, val_data, prep, device, stop)
    else:
        trainer = FullTrainer(model, cfg, train_data, val_data, prep, device, stop, dist_info)
    yield from trainer.prepare()

    meta = {"architecture": cfg.model, "classes": list(split.classes),
            "head": {"kind": cfg.head, "hidden": cfg.head_hidden, "dropout": cfg.head_dropout},
            "preprocessing": prep.to_dict(), "config": cfg.to_dict(), "mode": mode, "device": describe_device(device),
            "data": {"root": str(split.root), "counts": split.counts(), "presplit": split.presplit,
                     "skipped": len(split.skipped) + len(bad)},
            "world_size": dist_info.world,
            "versions": library_versions()}
    history: list[dict[str, float]] = []
    best_acc, best_epoch, best_state, saved = -1.0, 0, None, False
    stopped_at = 0
    for epoch in range(1, cfg.epochs + 1):
        stats = yield from trainer.epoch(epoch)
        if stats["stopped"] and saved:
            stopped_at = epoch
            break
        epoch_logits = trainer.val_logits()
        val_loss, val_acc = loss_and_accuracy(epoch_logits, val_data.labels)
        is_best = val_acc > best_acc
        if is_best:
            best_acc, best_epoch = val_acc, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best_logits = epoch_logits  # the final report needs no second validation pass
        elapsed = time.perf_counter() - t_start
        row = EpochEnd(epoch, cfg.epochs, stats["loss"], stats["acc"], val_loss, val_acc, head_lr(trainer.opt),
                       stats["seconds"], elapsed, stats["images"] / max(stats["seconds"], 1e-9), best_acc, is_best)
        history.append(row.as_row())
        yield row
        if is_best:
            if dist_info.is_main:
                save_checkpoint(run_dir, model, {**meta, "created": _now(), "history": history,
                                                 "metrics": {"best_val_acc": best_acc, "best_epoch": best_epoch}})
                yield CheckpointSaved(run_dir, epoch, val_acc)
            saved = True
        if stats["stopped"]:
            stopped_at = epoch
            break
    if stopped_at:
        yield Stopped(stopped_at, "stop requested")

    model.load_state_dict(best_state)
    logits = best_logits
    report = classification_report(val_data.labels, logits.argmax(1), split.classes)
    mistakes = _mistakes(logits, val_data, split.classes)
    seconds = time.perf_counter() - t_start
    metrics = {"best_val_acc": best_acc, "best_epoch": best_epoch, "epochs_run": len(history),
               "seconds": round(seconds, 2), "stopped": bool(stopped_at), **report}
    if dist_info.is_main:
        save_checkpoint(run_dir, model, {**meta, "created": _now(), "history": history, "metrics": metrics,
                                         "mistakes": list(mistakes)})
    yield Finished(run_dir, best_acc, best_epoch, len(history), seconds, bool(stopped_at), report, mistakes)


def _mistakes(logits: torch.Tensor, data: ImageTensors, classes: tuple[str, ...], limit: int = 12) -> tuple[dict, ...]:
    """The most confidently wrong validation predictions (for the app's gallery)."""
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    wrong = (pred != data.labels).nonzero().flatten().tolist()
    wrong.sort(key=lambda i: -float(conf[i]))
    return tuple({"path": str(data.paths[i]), "true": classes[int(data.labels[i])], "pred": classes[int(pred[i])],
                  "confidence": round(float(conf[i]), 4)} for i in wrong[:limit])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
