"""Optimiser and learning-rate schedule, stepped once per batch."""

from __future__ import annotations

import math

import torch
from torch import nn

from flowerdemo.config import TrainConfig


def param_groups(model: nn.Module, cfg: TrainConfig, backbone_lr_scale: float | None = None) -> list[dict]:
    """Head at `lr`, trainable backbone parameters at `lr * backbone_lr_scale` (the config's unless
    given); no weight decay on norms/biases."""
    scale = cfg.backbone_lr_scale if backbone_lr_scale is None else backbone_lr_scale
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        groups.setdefault((name.startswith("backbone."), p.ndim <= 1), []).append(p)
    out = []
    for (is_backbone, no_decay), params in groups.items():
        lr = cfg.lr * (scale if is_backbone else 1.0)
        out.append({"params": params, "lr": lr, "initial_lr": lr, "weight_decay": 0.0 if no_decay else cfg.weight_decay,
                    "is_head": not is_backbone})
    return out


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device,
                   backbone_lr_scale: float | None = None) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg, backbone_lr_scale)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    fused = device.type == "cuda"  # one kernel for all parameters instead of one per tensor
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base LR at optimiser step `step` (0-based)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.step_gamma ** (step // max(1, cfg.step_epochs * steps_per_epoch))
    if step < warm:  # report eq. (3): linear from warmup_start_factor to 1
        return cfg.warmup_start_factor + (1 - cfg.warmup_start_factor) * step / warm
    if cfg.schedule == "linear":  # the report's "LinearLR only": warm-up, then constant
        return 1.0
    progress = (step - warm) / max(1, total - warm)  # report eq. (4) with eta_min = 0
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, steps_per_epoch))


def head_lr(opt: torch.optim.Optimizer) -> float:
    for g in opt.param_groups:
        if g.get("is_head"):
            return float(g["lr"])
    return float(opt.param_groups[0]["lr"])
