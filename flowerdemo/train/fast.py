"""Fast mode for machines without a GPU: everything before the backbone's last stage is frozen, so
its activations are computed once per augmented view (view 0 = the clean eval crop) and cached; each
epoch then trains the last stage (the model's "tail": last block stage + 1x1 conv + pooling) and the
head from that cache, drawing one view per image. With `fast_tune_last_stage=False` (or when the
cached activations would not fit in memory) the whole backbone is frozen and only pooled features
are cached, as in a plain linear probe.

Fast mode honours `freeze`: "backbone" trains the head alone; "stages" freezes at least the stages
asked for (the trunk is frozen anyway), and the head alone when they include the last stage.
Accuracy and time of both variants: docs/benchmarks.md §1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterator

import torch
from torch import nn

from flowerdemo.data.augment import BatchAugment, eval_batch
from flowerdemo.data.tensorcache import ImageTensors
from flowerdemo.device import autocast_dtype, autocast_for
from flowerdemo.infer.runtime import extraction_encoder, extracts_with_onnxruntime
from flowerdemo.models.fold import folded_or_original
from flowerdemo.models.registry import Preprocessing
from flowerdemo.train.evaluate import chunked_logits
from flowerdemo.train.events import Progress
from flowerdemo.train.featurecache import default_cache_dir, feature_key, load_features, save_features
from flowerdemo.train.optim import make_optimizer, make_scheduler
from flowerdemo.train.step import OptimStep, StopSignal, batch_slices, run_epoch, stop_requested
from flowerdemo.train.trainer import TrainSetup

log = logging.getLogger(__name__)
FEATURE_BATCH = 64  # images per backbone forward during extraction
EVAL_BATCH = 256  # cached items per tail forward when scoring the validation split
# cached last-stage inputs above this size fall back to pooled features (head-only training); per
# image and view a Lite0 at 224 px needs ~20 KB, a ResNet-50 ~20x that
MAP_BUDGET_BYTES = 3 * 2**30


def _n_chunks(n: int, batch_size: int = FEATURE_BATCH) -> int:
    return (n + batch_size - 1) // batch_size


@torch.no_grad()
def extract_features(
    encoder: nn.Module, data: ImageTensors, prep: Preprocessing, views: int, augment: BatchAugment | None,
    generator: torch.Generator, device: torch.device, batch_size: int = FEATURE_BATCH, channels_last: bool = True,
    progress: tuple[int, int] | None = None, autocast: Callable = None, stop: StopSignal | None = None,
) -> Generator[Progress, None, torch.Tensor | None]:
    """(views, N, ...) fp16 outputs of `encoder` (the backbone trunk, or the whole backbone); view 0 is
    the eval crop, the rest augmented. Extraction runs channels_last, the layout oneDNN's depthwise
    convolutions are fastest in. `progress=(done, total)` continues a count started by an earlier
    call (train then val: one bar, not two that restart). Returns None when `stop` is set
    (checked after every batch)."""
    encoder.eval()
    done, total = progress if progress is not None else (0, views * _n_chunks(len(data), batch_size))
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
            if stop_requested(stop) and done < total:  # the last batch done: the phase is complete
                return None
    return out


def cached_item_shape(encoder: nn.Module, prep: Preprocessing, device: torch.device) -> tuple[int, ...]:
    """Shape of one image's `encoder` output at the model's input size (one dummy forward)."""
    encoder.eval()
    with torch.no_grad():
        return tuple(encoder(torch.zeros(1, 3, prep.input_size, prep.input_size, device=device)).shape[1:])


class FastTrainer:
    """The `Trainer` of fast mode (see flowerdemo.train.trainer): trains `model.head`, and the
    backbone's tail unless asked not to, from cached activations."""

    def __init__(self, setup: TrainSetup) -> None:
        self.setup = setup
        cfg, model = setup.cfg, setup.model
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        if cfg.channels_last:
            model.backbone.to(memory_format=torch.channels_last)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        # bf16 on CPUs with native bf16 units: extraction faster at the same accuracy (docs/benchmarks.md §1)
        self.autocast, self.scaler = autocast_for(setup.device, cfg.amp, cpu_bf16=True)
        self.trunk, self.tail = model.split()
        self.tune_tail = cfg.fast_tune_last_stage and not self._tail_frozen_by_config() and self._maps_fit()
        if self.tune_tail:
            for p in self.tail.parameters():
                p.requires_grad_(True)
            self.tail.eval()  # BatchNorm keeps its ImageNet statistics: batches of 32 would make them noisy
        # the last stage's weights before training (a few MB): label issues (train/label_issues.py) score the
        # training photos on features the run has not fitted to their labels
        self.tail_start = {k: v.detach().clone() for k, v in self.tail.state_dict().items()} if self.tune_tail else None
        self.encoder = self.trunk if self.tune_tail else model.backbone
        self.slices = batch_slices(len(setup.train), cfg.batch_size)

    def _tail_frozen_by_config(self) -> bool:
        """freeze="backbone", or freeze="stages" reaching into the tail: the head alone trains."""
        cfg = self.setup.cfg
        if cfg.freeze == "backbone":
            return True
        if cfg.freeze == "stages":
            tail = {id(p) for p in self.tail.parameters()}
            frozen = self.setup.model.stages()[:cfg.frozen_stages]
            if any(id(p) in tail for stage in frozen for p in stage.parameters()):
                log.info("fast mode: the %d frozen stages include the last one; only the head trains", cfg.frozen_stages)
                return True
            log.info("fast mode: the first %d stages stay frozen, as does everything before the last stage", cfg.frozen_stages)
        return False

    def _maps_fit(self) -> bool:
        setup = self.setup
        shape = cached_item_shape(self.trunk, setup.prep, setup.device)
        items = setup.cfg.fast_views * len(setup.train) + len(setup.val)  # validation: the clean view only
        size = 2 * items * torch.Size(shape).numel()  # fp16
        if size > MAP_BUDGET_BYTES:
            log.warning("fast mode: the last stage's inputs (%s per image) would need %.1f GiB for %d view(s); "
                        "training the head only, on pooled features", "x".join(map(str, shape)), size / 2**30,
                        setup.cfg.fast_views)
            return False
        return True

    @property
    def cached(self) -> str:
        """What the cache holds: 'trunk' activations (tail fine-tuned) or 'pooled' features (head only)."""
        return "trunk" if self.tune_tail else "pooled"

    def prepare(self) -> Iterator[Progress]:
        """Extract (or load from the feature cache) the activations, then build the optimiser. Ends
        within one batch when a stop is requested, without writing the cache."""
        setup, cfg = self.setup, self.setup.cfg
        train, val, prep, device = setup.train, setup.val, setup.prep, setup.device
        # the encoder is frozen: extract with BatchNorm folded into the convolutions (one memory pass
        # less per layer), a copy checked against the original first
        example = torch.randn(2, 3, prep.input_size, prep.input_size,  # own generator: the run's
                              generator=torch.Generator().manual_seed(0)).to(device)  # draws stay as they were
        encoder = folded_or_original(self.encoder, example)
        precision = autocast_dtype(self.autocast) + ("-folded" if encoder is not self.encoder else "")
        # fp32 on the CPU (no native bf16): onnxruntime extracts about twice as fast as torch (infer/runtime.py)
        images = cfg.fast_views * len(train) + len(val)
        ort = precision.startswith("fp32") and extracts_with_onnxruntime(device, images)

        def key_for(ort: bool) -> str:
            return feature_key(cfg, prep, train.paths, val.paths, cached=self.cached,
                               precision=precision + ("-onnxruntime" if ort else ""), device=device.type)

        key = key_for(ort)
        cached = load_features(default_cache_dir(), key) if cfg.cache_features else None
        if cached is not None and (cached[0].shape[:2] != (cfg.fast_views, len(train)) or cached[1].shape[0] != len(val)):
            log.warning("fast mode: cached features %s do not fit this run's data; extracting again", key)
            cached = None
        if cached is not None:
            self.train_feats, self.val_feats = (t.to(device) for t in cached)
            log.info("fast mode: reusing cached %s features %s", self.cached, key)
        else:
            twin = extraction_encoder(encoder, prep.input_size) if ort else None
            if twin is not None:
                encoder = twin
                log.info("fast mode: extracting %d images with onnxruntime", images)
            elif ort:  # the twin failed: torch extracts, and the cache entry says so
                key = key_for(False)
            augment = BatchAugment(cfg.augment, prep.input_size, prep.mean, prep.std)
            aug_generator = torch.Generator(device=device).manual_seed(cfg.seed + 1)  # augment draws on the device
            n_train = cfg.fast_views * _n_chunks(len(train))
            total = n_train + _n_chunks(len(val))
            # onnxruntime takes NCHW arrays (its twin made a channels_last batch contiguous again)
            common = dict(device=device, channels_last=cfg.channels_last and twin is None, autocast=self.autocast,
                          stop=setup.stop)
            self.train_feats = yield from extract_features(encoder, train, prep, cfg.fast_views, augment, aug_generator,
                                                           progress=(0, total), **common)
            if self.train_feats is None:
                return
            val_feats = yield from extract_features(encoder, val, prep, 1, None, aug_generator,
                                                    progress=(n_train, total), **common)
            if val_feats is None:
                return
            self.val_feats = val_feats[0]
            if cfg.cache_features:
                save_features(default_cache_dir(), key, self.train_feats.cpu(), self.val_feats.cpu())
        self.opt = make_optimizer(setup.model, cfg, device, backbone_lr_scale=cfg.fast_tail_lr_scale)
        self.sched = make_scheduler(self.opt, cfg, max(1, len(self.slices)))
        self.step = OptimStep(self.opt, self.sched, self.scaler,
                              [p for group in self.opt.param_groups for p in group["params"]],
                              cfg.grad_clip, cfg.label_smoothing)

    def _forward(self, cached: torch.Tensor) -> torch.Tensor:
        """Head (after the tail, when it is trained) applied to a batch of fp16 cache items."""
        x = cached.float()
        if self.tune_tail:
            if self.setup.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                x = self.tail(x)
            x = x.float()
        return self.setup.model.head(x)

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device, n = self.setup.device, len(self.setup.train)
        order = torch.randperm(n, generator=self.generator)
        view = torch.randint(0, self.train_feats.shape[0], (n,), generator=self.generator)  # one cached view each
        for start, end in self.slices:
            idx = order[start:end]
            yield self.train_feats[view[idx].to(device), idx.to(device)], self.setup.train.labels[idx].to(device)

    def train_epoch(self, epoch: int) -> Iterator[Progress]:
        self.setup.model.head.train()  # the tail stays in eval mode: its BatchNorm statistics are fixed
        return (yield from run_epoch(self._batches(), len(self.slices), self._forward, self.step, epoch=epoch,
                                     device=self.setup.device, stop=self.setup.stop))

    def val_logits(self, epoch: int, stoppable: bool = True) -> Iterator[Progress]:
        self.setup.model.head.eval()
        return (yield from chunked_logits(self._forward, self.val_feats, EVAL_BATCH,
                                          stop=self.setup.stop if stoppable else None, epoch=epoch))
