"""A run's randomness comes from its own `torch.Generator`s, never from the process-global RNG that a
server shares with every other visitor's requests: seeding that (`torch.manual_seed`) would change
what everyone else draws. The data order and augmentations already take generators; this module
covers what PyTorch layers draw by themselves: parameter initialisation and dropout."""

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


def seed_dropout_(module: nn.Module, generator: torch.Generator) -> None:
    """Replace every nn.Dropout inside `module` with a SeededDropout of the same p on `generator`
    (no parameters change: checkpoints are unaffected)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Dropout):
            setattr(module, name, SeededDropout(child.p, generator))
        else:
            seed_dropout_(child, generator)
