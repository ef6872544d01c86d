"""The report's augmentations as batched tensor operations (one kernel per op for the whole batch).

Input is the uint8 image cache (N, 3, S, S), S = the eval resize size; output is a normalised
float batch at the model's input size. Crop, flip, rotation and translation are folded into one
affine `grid_sample` per batch; colour jitter is one 3x3 colour matrix per image; random erasing
is a boxed mask. The same code runs on CPU and on the GPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from flowerdemo.config import AugmentConfig

# YIQ: luma + two chroma axes; a hue shift is a rotation of the chroma plane.
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)

JITTER = (0.2, 0.2, 0.2, 0.1)  # report: brightness, contrast, saturation, hue
ROTATION_DEG = 30.0  # report: +-30 degrees
TRANSLATE = 0.1  # report: +-10 %
ERASE_P, ERASE_SCALE, ERASE_RATIO = 0.5, (0.02, 0.33), (0.3, 3.3)  # torchvision RandomErasing defaults


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre crop of a (N, C, S, S) batch; the cache is already resized, so this is the eval transform."""
    s = x.shape[-1]
    if size > s:
        return F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    top = (s - size) // 2
    return x[..., top:top + size, top:top + size]


def eval_batch(x: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """uint8 cache batch -> normalised float centre crop (the report's evaluation transform)."""
    return normalize(center_crop(x, size).float().div_(255), mean, std)


class BatchAugment:
    """Callable: uint8 (N, 3, S, S) -> augmented, normalised float (N, 3, size, size)."""

    def __init__(self, cfg: AugmentConfig, size: int, mean, std) -> None:
        self.cfg, self.size, self.mean, self.std = cfg, size, mean, std

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = x.float().div_(255)
        x = self._geometry(x, g)
        if self.cfg.color_jitter:
            x = self._jitter(x, g)
        x = normalize(x, self.mean, self.std)
        if self.cfg.random_erasing:
            x = self._erase(x, g)
        return x

    def _geometry(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, dev, c = x.shape[0], x.device, self.cfg
        s = x.shape[-1]
        if not (c.random_resized_crop or c.rotation or c.translate):
            # exactly the eval crop (no resampling: the affine path would sample half a pixel off and blur)
            x = center_crop(x, self.size)
            if not c.hflip:
                return x
            flip = torch.rand(n, generator=g, device=dev) < 0.5
            return torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
        if c.random_resized_crop:  # area fraction and log-uniform aspect ratio, as RandomResizedCrop
            area = _uniform(n, c.crop_scale_min, 1.0, g, dev)
            log_r = _uniform(n, math.log(3 / 4), math.log(4 / 3), g, dev)
            half_w = torch.sqrt(area * log_r.exp()).clamp(max=1.0)
            half_h = torch.sqrt(area / log_r.exp()).clamp(max=1.0)
            cx = (torch.rand(n, generator=g, device=dev) * 2 - 1) * (1 - half_w)
            cy = (torch.rand(n, generator=g, device=dev) * 2 - 1) * (1 - half_h)
        else:  # centre crop of the model's size out of the cached resize
            half_w = half_h = torch.full((n,), min(1.0, self.size / s), device=dev)
            cx = cy = torch.zeros(n, device=dev)
        flip = torch.ones(n, device=dev)
        if c.hflip:
            flip = torch.where(torch.rand(n, generator=g, device=dev) < 0.5, -1.0, 1.0)
        angle = _uniform(n, -ROTATION_DEG, ROTATION_DEG, g, dev) * (math.pi / 180) if c.rotation else torch.zeros(n, device=dev)
        if c.translate:  # +-10 % of the width is +-0.2 in [-1, 1] coordinates
            tx, ty = _uniform(n, -2 * TRANSLATE, 2 * TRANSLATE, g, dev), _uniform(n, -2 * TRANSLATE, 2 * TRANSLATE, g, dev)
        else:
            tx = ty = torch.zeros(n, device=dev)
        cos, sin = angle.cos(), angle.sin()
        # input = centre + diag(half) @ diag(flip, 1) @ R(angle) @ (output - t)
        a11, a12 = half_w * flip * cos, -half_w * flip * sin
        a21, a22 = half_h * sin, half_h * cos
        theta = torch.stack([
            torch.stack([a11, a12, cx - a11 * tx - a12 * ty], 1),
            torch.stack([a21, a22, cy - a21 * tx - a22 * ty], 1),
        ], 1)
        grid = F.affine_grid(theta.to(x.dtype), [n, 3, self.size, self.size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _jitter(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, dev = x.shape[0], x.device
        b, c, s, h = JITTER
        bright = _uniform(n, 1 - b, 1 + b, g, dev).view(n, 1, 1, 1)
        contrast = _uniform(n, 1 - c, 1 + c, g, dev).view(n, 1, 1, 1)
        sat = _uniform(n, 1 - s, 1 + s, g, dev)
        hue = _uniform(n, -h, h, g, dev) * (2 * math.pi)
        x = (x * bright).clamp_(0, 1)
        gray = (x * torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = ((x - gray.mean((2, 3), keepdim=True)) * contrast + gray.mean((2, 3), keepdim=True)).clamp_(0, 1)
        # saturation scales the chroma plane, hue rotates it: one 3x3 matrix per image
        rot = torch.zeros(n, 3, 3, device=dev)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2] = sat * hue.cos(), -sat * hue.sin()
        rot[:, 2, 1], rot[:, 2, 2] = sat * hue.sin(), sat * hue.cos()
        m = _YIQ2RGB.to(dev) @ rot @ _RGB2YIQ.to(dev)
        return torch.einsum("nij,njhw->nihw", m.to(x.dtype), x).clamp_(0, 1)

    def _erase(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, dev, size = x.shape[0], x.device, x.shape[-1]
        area = _uniform(n, *ERASE_SCALE, g, dev)
        log_r = _uniform(n, math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]), g, dev)
        eh = (torch.sqrt(area * log_r.exp()) * size).clamp(1, size)
        ew = (torch.sqrt(area / log_r.exp()) * size).clamp(1, size)
        y0 = torch.rand(n, generator=g, device=dev) * (size - eh)
        x0 = torch.rand(n, generator=g, device=dev) * (size - ew)
        on = torch.rand(n, generator=g, device=dev) < ERASE_P
        ys = torch.arange(size, device=dev).view(1, size, 1)
        xs = torch.arange(size, device=dev).view(1, 1, size)
        box = ((ys >= y0.view(n, 1, 1)) & (ys < (y0 + eh).view(n, 1, 1))
               & (xs >= x0.view(n, 1, 1)) & (xs < (x0 + ew).view(n, 1, 1)) & on.view(n, 1, 1))
        return x.masked_fill(box.unsqueeze(1), 0.0)  # 0 after normalisation = the mean colour
