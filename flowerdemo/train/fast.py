"""Fast mode for machines without a GPU: everything before the backbone's last stage is frozen, so
its activations are computed once per augmented view (view 0 = the clean eval crop) and cached; each
epoch then trains the last stage (the model's "tail": last block stage + 1x1 conv + pooling) and the
head from that cache, drawing one view per image. With `fast_tune_last_stage=False` (or when the
cached activations would not fit in memory) the whole backbone is frozen and only pooled features
are cached, as in a plain linear probe.

Measured on flowers5-dev, Lite0 224 px, 20 epochs, 3 splits, 2-core CPU (docs/benchmarks.md §1):
head only 93.4 % best / 92.8 % last epoch (mean); last stage + head 95.4 % / 95.0 %, 143-168 s in all.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Generator

import torch
import torch.nn.functional as F
from torch import nn

from flowerdemo.data.augment import BatchAugment, eval_batch
from flowerdemo.config import TrainConfig
from flowerdemo.train.events import Progress
from flowerdemo.train.featurecache import default_cache_dir, feature_key, load_features, save_features
from flowerdemo.models.fold import folded_or_original
from flowerdemo.models.registry import FlowerNet, Preprocessing
from flowerdemo.train.optim import make_optimizer, make_scheduler
from flowerdemo.device import autocast_dtype, autocast_for
from flowerdemo.data.tensorcache import ImageTensors

log = logging.getLogger(__name__)
FEATURE_BATCH = 64  # images per backbone forward during extraction
EVAL_BATCH = 256  # cached items per tail forward when scoring the validation split
# cached last-stage inputs above this size fall back to pooled features (head-only training):
# EfficientNet-Lite0 at 224 px needs 19 KB per image and view, ResNet-50 400 KB
MAP_BUDGET_BYTES = 3 * 2**30


def _batches(n: int, batch_size: int = FEATURE_BATCH) -> int:
    return (n + batch_size - 1) // batch_size


@torch.no_grad()
def extract_features(
    encoder: nn.Module, data: ImageTensors, prep: Preprocessing, views: int, augment: BatchAugment | None,
    generator: torch.Generator, device: torch.device, batch_size: int = FEATURE_BATCH, channels_last: bool = True,
    progress: tuple[int, int] | None = None, autocast: Callable = None,
) -> Generator[Progress, None, torch.Tensor]:
    """(views, N, ...) fp16 outputs of `encoder` (the backbone trunk, or the whole backbone); view 0 is
    the eval crop, the rest augmented. channels_last pays on CPUs too: oneDNN's depthwise
    convolutions are faster in NHWC (benchmarks/layout.py). `progress=(done, total)` continues a count started by an
    earlier call (train then val: one bar, not two that restart)."""
    encoder.eval()
    done, total = progress if progress is not None else (0, views * _batches(len(data), batch_size))
    out = None  # (views, N, ...) fp16, allocated once the first output's shape is known: no copies
    for v in range(views):
        for start in range(0, len(data), batch_size):
            x = data.images[start:start + batch_size].to(device)
            x = eval_batch(x, prep.input_size, prep.mean, prep.std) if v == 0 or augment is None else augment(x, generator)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast() if autocast is not None else torch.autocast(device.type, enabled=False):
                y = encoder(x)
            if out is None:
                out = torch.empty((views, len(data), *y.shape[1:]), dtype=torch.float16, device=device)
            out[v, start:start + len(y)] = y  # NCHW fp16: the cache's layout on disk and in memory
            done += 1
            yield Progress("features", done, total)
    return out


def cached_item_shape(encoder: nn.Module, prep: Preprocessing, device: torch.device) -> tuple[int, ...]:
    """Shape of one image's `encoder` output at the model's input size (one dummy forward)."""
    encoder.eval()
    with torch.no_grad():
        return tuple(encoder(torch.zeros(1, 3, prep.input_size, prep.input_size, device=device)).shape[1:])


class FastTrainer:
    """Trains `model.head` (and the backbone's tail) from cached activations; same interface as the
    full-mode trainer."""

    def __init__(self, model: FlowerNet, cfg: TrainConfig, train: ImageTensors, val: ImageTensors,
                 prep: Preprocessing, device: torch.device, stop: threading.Event | None) -> None:
        self.model, self.cfg, self.train, self.val, self.prep = model, cfg, train, val, prep
        self.device, self.stop = device, stop
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        if cfg.channels_last:
            model.backbone.to(memory_format=torch.channels_last)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        # bf16 on CPUs with native bf16 units: extraction 1.7x faster, same accuracy (docs/benchmarks.md §1)
        self.autocast, self.scaler = autocast_for(device, cfg.amp, cpu_bf16=True)
        self.trunk, self.tail = model.split()
        # freeze="backbone" asks for a frozen backbone: the head alone trains, as in a linear probe
        self.tune_tail = cfg.fast_tune_last_stage and cfg.freeze != "backbone" and self._maps_fit()
        if self.tune_tail:
            for p in self.tail.parameters():
                p.requires_grad_(True)
            self.tail.eval()  # BatchNorm keeps its ImageNet statistics: batches of 32 would make them noisy
        self.encoder = self.trunk if self.tune_tail else model.backbone

    def _maps_fit(self) -> bool:
        shape = cached_item_shape(self.trunk, self.prep, self.device)
        items = self.cfg.fast_views * len(self.train) + len(self.val)  # validation: the clean view only
        size = 2 * items * torch.Size(shape).numel()  # fp16
        if size > MAP_BUDGET_BYTES:
            log.warning("fast mode: the last stage's inputs (%s per image) would need %.1f GiB for %d view(s); "
                        "training the head only, on pooled features", "x".join(map(str, shape)), size / 2**30,
                        self.cfg.fast_views)
            return False
        return True

    @property
    def cached(self) -> str:
        """What the cache holds: 'trunk' activations (tail fine-tuned) or 'pooled' features (head only)."""
        return "trunk" if self.tune_tail else "pooled"

    def prepare(self) -> Generator[Progress, None, None]:
        # the encoder is frozen: extract with BatchNorm folded into the convolutions (one memory pass
        # less per layer; Lite0 extraction ~1.5x faster), a copy checked against the original first
        example = torch.randn(2, 3, self.prep.input_size, self.prep.input_size,  # own generator: the run's
                              generator=torch.Generator().manual_seed(0)).to(self.device)  # draws stay as they were
        encoder = folded_or_original(self.encoder, example)
        precision = autocast_dtype(self.autocast) + ("-folded" if encoder is not self.encoder else "")
        key = feature_key(self.cfg, self.prep, self.train.paths, self.val.paths, cached=self.cached, precision=precision,
                          device=self.device.type)
        cached = load_features(default_cache_dir(), key) if self.cfg.cache_features else None
        if cached is not None and (cached[0].shape[:2] != (self.cfg.fast_views, len(self.train))
                                   or cached[1].shape[0] != len(self.val)):
            log.warning("fast mode: cached features %s do not fit this run's data; extracting again", key)
            cached = None
        if cached is not None:
            self.train_feats, self.val_feats = (t.to(self.device) for t in cached)
            log.info("fast mode: reusing cached %s features %s", self.cached, key)
        else:
            augment = BatchAugment(self.cfg.augment, self.prep.input_size, self.prep.mean, self.prep.std)
            aug_generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed + 1)  # augment draws on the device
            n_train = self.cfg.fast_views * _batches(len(self.train))
            total = n_train + _batches(len(self.val))
            common = dict(device=self.device, channels_last=self.cfg.channels_last, autocast=self.autocast)
            self.train_feats = yield from extract_features(encoder, self.train, self.prep, self.cfg.fast_views,
                                                           augment, aug_generator, progress=(0, total), **common)
            self.val_feats = (yield from extract_features(encoder, self.val, self.prep, 1, None, aug_generator,
                                                          progress=(n_train, total), **common))[0]
            if self.cfg.cache_features:
                save_features(default_cache_dir(), key, self.train_feats.cpu(), self.val_feats.cpu())
        self.steps_per_epoch = max(1, len(self.train) // self.cfg.batch_size)
        self.opt = make_optimizer(self.model, self.cfg, self.device, backbone_lr_scale=self.cfg.fast_tail_lr_scale)
        self.sched = make_scheduler(self.opt, self.cfg, self.steps_per_epoch)

    def _logits(self, cached: torch.Tensor) -> torch.Tensor:
        """Head (after the tail, when it is trained) applied to a batch of fp16 cache items."""
        x = cached.float()
        if self.tune_tail:
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                x = self.tail(x)
            x = x.float()
        return self.model.head(x)

    def epoch(self, epoch: int) -> Generator[Progress, None, dict[str, float]]:
        head, cfg = self.model.head, self.cfg
        head.train()
        t0 = time.perf_counter()
        n = len(self.train)
        order = torch.randperm(n, generator=self.generator)
        view = torch.randint(0, self.train_feats.shape[0], (n,), generator=self.generator)
        params = [p for group in self.opt.param_groups for p in group["params"]]
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen, stopped = 0, False
        for i in range(self.steps_per_epoch):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size if i + 1 < self.steps_per_epoch else n]
            y = self.train.labels[idx].to(self.device)
            logits = self._logits(self.train_feats[view[idx].to(self.device), idx.to(self.device)])
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()  # a no-op scaler except fp16 on GPUs without bf16
            if cfg.grad_clip > 0:
                self.scaler.unscale_(self.opt)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            self.scaler.step(self.opt)
            self.scaler.update()
            self.sched.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            yield Progress("train", i + 1, self.steps_per_epoch, epoch)
            if self.stop is not None and self.stop.is_set():
                stopped = True
                break
        return {"loss": float(loss_sum) / max(1, seen), "acc": int(correct) / max(1, seen), "images": seen,
                "seconds": time.perf_counter() - t0, "stopped": stopped}

    @torch.no_grad()
    def val_logits(self) -> torch.Tensor:
        self.model.head.eval()
        return torch.cat([self._logits(self.val_feats[s:s + EVAL_BATCH]).float().cpu()
                          for s in range(0, len(self.val_feats), EVAL_BATCH)])
