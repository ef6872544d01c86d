"""Multi-process training under `torchrun`: each process trains on a shard of the data, metrics
are summed across processes, and only rank 0 writes checkpoints. One process = no-op helpers."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            t = t.clone()
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running stats drift apart per shard) to every process,
        so that all processes score the same model and agree on the best epoch."""
        if self.enabled:
            for buf in module.buffers():
                dist.broadcast(buf.data, src=0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_from_env() -> DistInfo:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        log.info("process %d/%d joined the %s process group", rank, world, backend)
    return DistInfo(rank, world, local_rank)


def device_for(info: DistInfo, requested: torch.device) -> torch.device:
    """Each process drives its own GPU (cuda:LOCAL_RANK)."""
    if info.enabled and requested.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return requested
