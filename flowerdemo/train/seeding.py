"""A run's randomness comes from its own `torch.Generator`s, never from the process-global RNG that a
server shares with every other visitor's requests: seeding that (`torch.manual_seed`) would change
what everyone else draws. The data order and augmentations already take generators; this module
covers what PyTorch layers draw by themselves: parameter initialisation, dropout and stochastic depth
(torchvision's StochasticDepth in EfficientNet/ConvNeXt, timm's DropPath)."""

from __future__ import annotations

import math

import torch
from torch import nn


def init_(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise every Linear, Conv and BatchNorm in `module` from `generator`: Linear as PyTorch's
    default (Kaiming-uniform, a=sqrt(5)), convolutions as torchvision's CNNs (Kaiming-normal, fan-out),
    BatchNorm to identity."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            if m.bias is not None:
                bound = 1 / math.sqrt(m.in_features) if m.in_features > 0 else 0.0
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SeededDropout(nn.Module):
    """nn.Dropout drawing its masks from a given CPU generator (masks are small: the head's width)."""

    def __init__(self, p: float, generator: torch.Generator) -> None:
        super().__init__()
        self.p, self.generator = p, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, generator=self.generator) >= self.p
        return x * keep.to(x.device, x.dtype) / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SeededDropPath(nn.Module):
    """Stochastic depth (drop a whole residual branch per sample, "row", or per batch, "batch"; scale
    the kept ones by 1/keep) drawing from a given CPU generator: torchvision's StochasticDepth and
    timm's DropPath, which draw from the global RNG."""

    def __init__(self, p: float, mode: str, generator: torch.Generator, scale: bool = True) -> None:
        super().__init__()
        self.p, self.mode, self.generator, self.scale = p, mode, generator, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = 1.0 - self.p
        shape = [x.shape[0]] + [1] * (x.ndim - 1) if self.mode == "row" else [1] * x.ndim
        mask = (torch.rand(shape, generator=self.generator) < keep).to(x.device, x.dtype)
        return x * mask / keep if self.scale and keep > 0 else x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode}"


def _seeded(child: nn.Module, generator: torch.Generator) -> nn.Module | None:
    """The seeded stand-in for a layer that draws random numbers in training, or None."""
    from timm.layers import DropPath
    from torchvision.ops import StochasticDepth

    if isinstance(child, nn.Dropout):
        return SeededDropout(child.p, generator)
    if isinstance(child, StochasticDepth):
        return SeededDropPath(child.p, child.mode, generator)
    if isinstance(child, DropPath):
        return SeededDropPath(child.drop_prob, "row", generator, getattr(child, "scale_by_keep", True))
    return None


def seed_randomness_(module: nn.Module, generator: torch.Generator) -> None:
    """Replace every dropout / stochastic-depth layer inside `module` with a seeded one of the same
    probability on `generator` (no parameters change: checkpoints are unaffected)."""
    for name, child in module.named_children():
        seeded = _seeded(child, generator)
        if seeded is not None:
            setattr(module, name, seeded)
        else:
            seed_randomness_(child, generator)
