"""Full mode: fine-tunes the whole network (minus frozen stages) on augmented batches drawn from the
decoded uint8 image cache. The default on a GPU, where the whole cache lives on the device."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from flowerdemo.data.augment import BatchAugment
from flowerdemo.device import autocast_for
from flowerdemo.models.registry import freeze, frozen_modules
from flowerdemo.train.evaluate import iter_logits
from flowerdemo.train.events import Progress
from flowerdemo.train.optim import make_optimizer, make_scheduler
from flowerdemo.train.step import OptimStep, batch_slices, run_epoch
from flowerdemo.train.trainer import TrainSetup


class FullTrainer:
    """The `Trainer` of full fine-tuning (see flowerdemo.train.trainer)."""

    def __init__(self, setup: TrainSetup) -> None:
        self.setup = setup
        cfg, model, device = setup.cfg, setup.model, setup.device
        freeze(model, cfg.freeze, cfg.frozen_stages)
        self.frozen = frozen_modules(model)
        if cfg.channels_last:  # NHWC: tensor cores on CUDA, oneDNN's faster kernels on CPU (docs/benchmarks.md)
            model.to(memory_format=torch.channels_last)
        self.forward_model = torch.compile(model) if cfg.compile else model
        if setup.dist.enabled:  # gradients averaged across processes after each backward
            from torch.nn.parallel import DistributedDataParallel

            self.forward_model = DistributedDataParallel(
                self.forward_model, device_ids=[device.index] if device.type == "cuda" else None)
        self.autocast, self.scaler = autocast_for(device, cfg.amp)
        self.augment = BatchAugment(cfg.augment, setup.prep.input_size, setup.prep.mean, setup.prep.std)
        self.generator = torch.Generator().manual_seed(cfg.seed)  # epoch order: the same in every process
        self.aug_generator = torch.Generator(device=device).manual_seed(cfg.seed + 1)  # augment draws on the device
        self.train, self.val = setup.train, setup.val
        self.slices = batch_slices(len(self.train) // setup.dist.world, cfg.batch_size)

    def prepare(self) -> Iterator[Progress]:
        """Put the image cache on the GPU (no loader, no copies) and build the optimiser: quick, so no
        progress to report and no stop to check (an empty iterator)."""
        if self.setup.device.type == "cuda":
            self.train, self.val = self.train.to(self.setup.device), self.val.to(self.setup.device)
        self.opt = make_optimizer(self.setup.model, self.setup.cfg, self.setup.device)
        self.sched = make_scheduler(self.opt, self.setup.cfg, max(1, len(self.slices)))
        self.step = OptimStep(self.opt, self.sched, self.scaler, self.setup.model.parameters(),
                              self.setup.cfg.grad_clip, self.setup.cfg.label_smoothing)
        return iter(())

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        setup, rank, world = self.setup, self.setup.dist.rank, self.setup.dist.world
        order = torch.randperm(len(self.train), generator=self.generator)
        order = order[: len(order) // world * world][rank::world]  # equal shards: DDP needs equal step counts
        for start, end in self.slices:
            idx = order[start:end]
            x = self.augment(self.train.images[idx.to(self.train.images.device)].to(setup.device, non_blocking=True),
                             self.aug_generator)
            y = self.train.labels[idx.to(self.train.labels.device)].to(setup.device, non_blocking=True)
            if setup.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.forward_model(x)

    def train_epoch(self, epoch: int) -> Iterator[Progress]:
        self.setup.model.train()
        for m in self.frozen:  # frozen BatchNorm keeps its ImageNet statistics
            m.eval()
        return (yield from run_epoch(self._batches(), len(self.slices), self._forward, self.step, epoch=epoch,
                                     device=self.setup.device, stop=self.setup.stop, reduce=self.setup.dist.reduce_sum))

    def val_logits(self, epoch: int, stoppable: bool = True) -> Iterator[Progress]:
        # every process scores the whole (small) val split with rank 0's buffers: all agree on the best epoch
        setup = self.setup
        setup.dist.sync_buffers(setup.model)
        return (yield from iter_logits(setup.model, self.val, size=setup.prep.input_size, mean=setup.prep.mean,
                                       std=setup.prep.std, device=setup.device, autocast=self.autocast,
                                       batch_size=max(128, setup.cfg.batch_size * 4),
                                       channels_last=setup.cfg.channels_last,
                                       stop=setup.stop if stoppable else None, epoch=epoch))
