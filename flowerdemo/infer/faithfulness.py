"""Is a heatmap faithful? Remove the part of the photo it highlights most and see how far the explained
class's probability falls, next to removing random parts of the same size.

A heatmap that points at what the model used makes its class fall much further than a random patch does.
The check costs one batched forward (the image, its highlighted region removed, a few random regions
removed) on the shared model under inference mode, like `predict`, so it is safe from many threads.

Why a flat fill and not ROAD's imputation (`pytorch_grad_cam.metrics.road.NoisyLinearImputer`): at 240 px
that imputer solves a sparse system per removed region, 0.8 s for 20 % of one image on this project's
2-core machine (more for larger regions), so a check with a few random regions would cost seconds. The
removed pixels are instead set to the normalisation mean (0 after normalising: the dataset's mean colour)
with pytorch-grad-cam's `multiply_tensor_with_cam`, the perturbation of its `cam_mult_image` metric.
A hard-edged grey patch is itself unusual to the model, but the random regions have the same area, the
same fill and blob shapes of the same scale, so that effect is in both numbers and the comparison stands.
benchmarks/cam_faithfulness.py ranks the methods with the full ROAD metric instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam.metrics.cam_mult_image import multiply_tensor_with_cam

from flowerdemo.infer.predict import probabilities
from flowerdemo.models.checkpoints import Classifier

AREA = 0.2  # share of the model's input removed: enough to take away a flower, little enough to leave context
RANDOM_REGIONS = 3  # random regions averaged for the baseline: one is noisy, each adds a forward to the batch
LOW_PROBABILITY = 0.10  # below this, removing parts of the photo cannot show much of a fall
CLEAR_MARGIN = 0.10  # the highlighted region's fall beats the random one's by this much: points at the evidence
SOME_MARGIN = 0.03  # above this but below CLEAR_MARGIN: only weakly
STILL_SURE = 0.90  # the class this likely without the highlighted region: the model found it elsewhere too


@dataclass(frozen=True)
class Faithfulness:
    """What removing the highlighted region did to the explained class (probabilities are calibrated)."""

    class_name: str
    before: float  # probability of the class on the unchanged input
    after_top: float  # ... with the most highlighted `area` of the input removed
    after_random: float  # ... with a random region of the same area removed (mean over RANDOM_REGIONS)
    area: float  # share of the model's input that was removed, in (0, 1)

    @property
    def drop_top(self) -> float:
        """How much the probability fell without the highlighted region (negative: it rose)."""
        return self.before - self.after_top

    @property
    def drop_random(self) -> float:
        return self.before - self.after_random

    @property
    def verdict(self) -> str:
        """'faithful', 'weak', 'not faithful', 'inconclusive' (the class was unlikely to begin with) or 'still sure'
        (without the highlighted region the model is still sure of the class: this check cannot tell)."""
        if self.before < LOW_PROBABILITY:
            return "inconclusive"
        margin = self.drop_top - self.drop_random
        if margin >= CLEAR_MARGIN:
            return "faithful"
        if min(self.after_top, self.after_random) >= STILL_SURE:  # a sunflower at 100 % is still one at 99 %
            return "still sure"  # without any fifth of it: neither removal shows anything
        return "weak" if margin >= SOME_MARGIN else "not faithful"

    @property
    def text(self) -> str:
        """One plain sentence for people."""
        pct, name = f"{self.area:.0%}", f"'{self.class_name}'"
        if self.verdict == "inconclusive":
            return (f"{name} is only {self.before:.0%} likely here, too low for removing parts of the photo to show "
                    "whether the heatmap points at what the model used.")
        ending = {"faithful": "the heatmap points at what the model used.",
                  "weak": "the heatmap points only weakly at what the model used.",
                  "not faithful": "the heatmap does not point at what the model used any better than chance.",
                  "still sure": "the model finds enough of it in the rest of the photo, so this check cannot tell "
                                "whether the heatmap points at what it used."}
        return (f"Removing the highlighted {pct} of the photo {_change(self.before, self.after_top, name, True)}; "
                f"removing a random {pct} {_change(self.before, self.after_random, 'it', False)}: {ending[self.verdict]}")


def _change(before: float, after: float, name: str, start: bool) -> str:
    """'lowers 'rose' from 91% to 35%' (with `start`), 'lowers it to 88%', 'leaves it at 91%'."""
    b, a = f"{before:.0%}", f"{after:.0%}"
    if a == b:
        return f"leaves {name} at {b}"
    return f"{'lowers' if after < before else 'raises'} {name} {f'from {b} ' if start else ''}to {a}"


def top_region(cam: torch.Tensor, area: float) -> torch.Tensor:
    """Boolean (H, W) mask of the `area` share of pixels with the highest CAM values (exactly that many:
    a percentile threshold would take all or none of a plateau, and ReLU'd CAMs are flat at zero)."""
    k = max(1, round(area * cam.numel()))
    mask = torch.zeros(cam.numel(), dtype=torch.bool)
    mask[torch.topk(cam.flatten(), k).indices] = True
    return mask.view_as(cam)


def random_maps(shape: tuple[int, int], count: int, generator: torch.Generator, grid: int = 8) -> torch.Tensor:
    """`count` smooth random heatmaps (count, H, W) in [0, 1]: uniform noise on a `grid` x `grid` lattice,
    upsampled bilinearly, so their peaks are blobs at a CAM's own scale (the Lite backbones' last stage is
    1/32 of the input: 8x8 at 240 px), not scattered pixels. Also the random baseline of the benchmark."""
    noise = torch.rand(count, 1, grid, grid, generator=generator)
    return torch.nn.functional.interpolate(noise, size=shape, mode="bilinear", align_corners=False)[:, 0]


def random_regions(shape: tuple[int, int], area: float, count: int, generator: torch.Generator,
                   grid: int = 8) -> torch.Tensor:
    """`count` boolean (H, W) masks of `area` each: the tops of `random_maps`."""
    return torch.stack([top_region(m, area) for m in random_maps(shape, count, generator, grid)])


def check_faithfulness(clf: Classifier, x: torch.Tensor, cam: np.ndarray, class_index: int, area: float = AREA,
                       random_count: int = RANDOM_REGIONS, seed: int = 0, before: float | None = None) -> Faithfulness:
    """Remove the top `area` of `cam` from the prepared input `x` (1, 3, S, S), and `random_count` random
    regions of the same area, and compare the calibrated probability of `class_index` in one forward.
    `cam` is the grayscale CAM at input resolution (S, S); `seed` makes the random regions repeatable
    (an own generator: no process-wide RNG is touched, so concurrent checks do not disturb each other).
    `before`: the class's calibrated probability on the unchanged input when the caller has it (the CAM's
    own forward gives it): the batch is then one image shorter."""
    if not 0.0 < area < 1.0:
        raise ValueError(f"area must be strictly between 0 and 1, got {area}")
    if x.ndim != 4 or x.shape[0] != 1 or tuple(cam.shape) != tuple(x.shape[-2:]):
        raise ValueError(f"expected one prepared image (1, 3, S, S) and its CAM (S, S); got {tuple(x.shape)} "
                         f"and {tuple(cam.shape)}")
    image = x[0].detach().cpu().float()
    cam_t = torch.nan_to_num(torch.as_tensor(np.asarray(cam, dtype=np.float32)))
    generator = torch.Generator().manual_seed(seed)
    grid = max(2, round(image.shape[-1] / 32))
    removed = torch.cat([top_region(cam_t, area)[None],
                         random_regions(tuple(image.shape[-2:]), area, random_count, generator, grid)])
    # pytorch-grad-cam's cam_mult_image perturbation, with a binary "keep" map: removed pixels become 0,
    # the normalisation mean
    batch = torch.stack(([] if before is not None else [image]) +
                        [multiply_tensor_with_cam(image, (~m).float()) for m in removed])
    probs = probabilities(clf, batch, queue="check")[:, class_index]  # answers never queue behind it
    if before is not None:
        probs = torch.cat([torch.tensor([before], dtype=probs.dtype), probs])
    area_done = float(removed[0].float().mean())
    return Faithfulness(clf.classes[class_index], _unit(probs[0]), _unit(probs[1]), _unit(probs[2:].mean()), area_done)


def _unit(p: torch.Tensor) -> float:
    return float(min(1.0, max(0.0, float(p))))
