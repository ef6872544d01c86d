"""Replicas of a loaded model for explanations: own modules and hooks, the same weights.

One `Classifier` serves every visitor, from many threads at once. `predict` only reads it (under
`torch.inference_mode`), which is safe concurrently. A CAM is not a reader: pytorch-grad-cam registers
forward hooks on the target layer, and a hook on a module of the shared model fires for ANY thread's
forward (it would record a concurrent prediction's activations), and it needs gradients at that layer,
which a backbone frozen in training does not give (flipping `requires_grad` on the shared parameters
would change them under everyone else). So a CAM runs on a replica:

- its own module objects, hence its own hook dicts, created empty (hooks on the shared model are not
  copied: they belong to whoever registered them there);
- its own `Parameter` objects with `requires_grad=True`, made with `p.detach()`: views of the shared
  storage, so no weight is copied and the gradients land on the replica's parameters only;
- the shared buffers themselves (BatchNorm running statistics), which eval mode only reads.

Replicas are pooled per model (a WeakKeyDictionary: a model that is dropped takes its pool with it)
and bounded: at most `MAX_REPLICAS` explanations of one model run at once, the others wait.
"""

from __future__ import annotations

import copy
import itertools
import logging
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

log = logging.getLogger(__name__)

# Each explanation in flight holds its own activations and, for the gradient methods, one gradient per
# parameter (as much memory again as the weights). More CAMs at once than a few only queue for the same
# cores, so a burst of requests waits here instead of multiplying that memory.
MAX_REPLICAS = 4



def _hook_dicts(m: nn.Module) -> list[dict]:
    """A module's dicts of hooks and hook-like callbacks (_forward_hooks, _backward_pre_hooks, ...)."""
    return [value for name, value in vars(m).items() if "hook" in name and isinstance(value, dict)]


def make_replica(model: nn.Module) -> nn.Module:
    """A copy of `model`'s module tree in eval mode whose parameters (requires_grad=True) are views of
    `model`'s and whose buffers are `model`'s: no tensor is copied, no hook comes along. (A model that
    needs hooks of its own to compute, e.g. weight_norm's pre-hook, would need them re-registered here;
    no registry backbone does, and tests/test_infer_threads.py checks that replicas compute the same.)"""
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(p.detach(), requires_grad=True)
    for b in model.buffers():
        memo[id(b)] = b
    for m in model.modules():  # every dict of hooks and hook-like callbacks starts empty on the replica
        for hooks in _hook_dicts(m):
            memo[id(hooks)] = type(hooks)()
    return copy.deepcopy(model, memo).eval()


def _signature(model: nn.Module) -> tuple[int, ...]:
    """Where the model's tensors live. `.to()`, `.half()`, `load_state_dict(assign=True)` or a replaced
    module give it new memory that existing replicas would not see (in-place updates they do see).
    Addresses alone suffice: a replica keeps the old memory alive, so new tensors cannot reuse it."""
    return tuple(t.data_ptr() for t in itertools.chain(model.parameters(), model.buffers()))


def has_hooks(model: nn.Module) -> bool:
    return any(hooks for m in model.modules() for hooks in _hook_dicts(m))


class ReplicaPool:
    """Idle replicas of one model, and how many are lent out (never more than `size`)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.in_use = 0
        self._idle: list[nn.Module] = []
        self._signature: tuple | None = None
        self._cond = threading.Condition()

    @property
    def idle(self) -> int:
        return len(self._idle)

    @contextmanager
    def borrow(self, model: nn.Module) -> Iterator[nn.Module]:
        signature = _signature(model)
        with self._cond:
            self._cond.wait_for(lambda: self.in_use < self.size)
            self.in_use += 1
            if signature != self._signature:  # first use, or the model got new tensors: start over
                self._idle.clear()
                self._signature = signature
            replica = self._idle.pop() if self._idle else None
        try:
            if replica is None:
                replica = make_replica(model)  # outside the lock: other threads keep borrowing meanwhile
            yield replica
        finally:
            # only a replica as clean as it was made goes back (a CAM removes its hooks on exit)
            clean = replica is not None and not has_hooks(replica)
            if replica is not None:
                replica.zero_grad(set_to_none=True)  # an idle replica holds no gradient memory
            with self._cond:
                self.in_use -= 1
                if clean and signature == self._signature:
                    self._idle.append(replica)
                elif replica is not None:
                    log.debug("dropping a replica of %s (model changed or hooks left on it)", type(model).__name__)
                self._cond.notify()


_POOLS: weakref.WeakKeyDictionary[nn.Module, ReplicaPool] = weakref.WeakKeyDictionary()
_POOLS_LOCK = threading.Lock()


def pool_for(model: nn.Module) -> ReplicaPool:
    """The replica pool of `model` (created on first use; it goes when the model is garbage)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(model)
        if pool is None:
            pool = _POOLS[model] = ReplicaPool(MAX_REPLICAS)
        return pool


@contextmanager
def replica(model: nn.Module) -> Iterator[nn.Module]:
    """Borrow a replica of `model` for one explanation; it returns to the pool on exit."""
    with pool_for(model).borrow(model) as borrowed:
        yield borrowed


@contextmanager
def gradients_at(model: nn.Module, layer: nn.Module) -> Iterator[nn.Module]:
    """Within the block, only `layer`'s parameters of the replica `model` require gradients; restored on exit.

    A gradient CAM needs the gradient at the target layer's output, nothing before it. With every parameter
    requiring gradients the forward records (and the backward computes) the whole network; with only the
    target layer's, the forward is recorded from that layer on and the backward stops there, while the gradient
    at the layer's output is the same (the same function of it). Only for a borrowed replica: its flags are its
    own, never the shared model's."""
    own = {id(p) for p in layer.parameters()}
    if not own:  # a layer without parameters would get no gradient at its output: keep them all
        yield model
        return
    changed = [p for p in model.parameters() if p.requires_grad and id(p) not in own]
    for p in changed:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in changed:
            p.requires_grad_(True)


def shares_weights(replica_model: nn.Module, model: nn.Module) -> bool:
    """True when every parameter and buffer of the replica uses `model`'s memory (a check for tests
    and benchmarks: a replica must cost no weight copy)."""
    mine = [*replica_model.parameters(), *replica_model.buffers()]
    theirs = [*model.parameters(), *model.buffers()]
    return len(mine) == len(theirs) and all(a.data_ptr() == b.data_ptr() and a.shape == b.shape
                                            for a, b in zip(mine, theirs, strict=True))

