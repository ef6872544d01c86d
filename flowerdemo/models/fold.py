"""Folding BatchNorm into the convolution before it, for frozen (inference-only) copies of a network.

In eval mode BatchNorm is a per-channel scale and shift, so it can be merged into the weights and
bias of the convolution that feeds it; what is left is its activation (timm's BatchNormAct2d) or
nothing. The memory pass over every activation map that BN costs disappears, so fast mode extracts
its cached activations with a folded copy of the frozen trunk (measured speed-up: docs/benchmarks.md
§1, "Scratch measurements"). The folded copy is checked against the original before it is used.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias.detach() if bn.affine else 0) - bn.running_mean * scale
    with torch.no_grad():
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
        bias = shift if conv.bias is None else conv.bias.detach() * scale + shift
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)


def _after_bn(bn: nn.BatchNorm2d) -> nn.Module | None:
    """What remains of `bn` once its normalisation is folded, or None when it cannot be folded."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    if isinstance(getattr(bn, "act", None), nn.Module) and isinstance(getattr(bn, "drop", None), nn.Module):
        return nn.Sequential(bn.drop, bn.act)  # timm's BatchNormAct2d: normalise, drop, act
    return None


def fold_batchnorm(module: nn.Module) -> tuple[nn.Module, int]:
    """(an eval-mode copy of `module` with each conv -> BatchNorm pair folded, number of pairs folded).
    A pair is a Conv2d child registered directly before a BatchNorm2d child with running statistics,
    the order every supported backbone runs them in; `verify_fold` checks that assumption."""
    folded = copy.deepcopy(module).eval()
    count = 0
    for parent in list(folded.modules()):
        names = list(parent._modules)
        for a, b in zip(names, names[1:], strict=False):
            conv, bn = parent._modules[a], parent._modules[b]
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            rest = _after_bn(bn)
            if rest is None or bn.running_var is None or conv.out_channels != bn.num_features:
                continue
            _fold_pair(conv, bn)
            parent._modules[b] = rest
            count += 1
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded, count


@torch.no_grad()
def verify_fold(original: nn.Module, folded: nn.Module, example: torch.Tensor, tol: float = 1e-3) -> bool:
    """True when both give the same output (fp32, relative to the output's scale) on `example`. Every
    submodule of `original` gets its own training flag back; cuDNN's TF32 is off for the comparison."""
    modes = [(m, m.training) for m in original.modules()]
    original.eval()
    cudnn = torch.backends.cudnn
    try:
        with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                         allow_tf32=False):
            a, b = original(example).float(), folded(example).float()
    finally:
        for m, mode in modes:
            m.training = mode
    return a.shape == b.shape and float((a - b).abs().max()) <= tol * max(1.0, float(a.abs().max()))


def folded_or_original(module: nn.Module, example: torch.Tensor) -> nn.Module:
    """The BN-folded copy of a frozen `module` when it verifiably computes the same, else `module`."""
    folded, count = fold_batchnorm(module)
    if count and verify_fold(module, folded, example):
        log.debug("folded %d BatchNorm layers into their convolutions", count)
        return folded
    if count:
        log.warning("BatchNorm folding changed the outputs of %s; extracting with the unfolded network",
                    type(module).__name__)
    return module
