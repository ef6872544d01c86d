"""The network an export contains: eval-crop pixels in, calibrated probabilities (and the unknown-photo
score) out, so that a user needs no flowerdemo code around it.

Input `pixels`: uint8 RGB, (N, S, S, 3), the eval crop as Pillow gives it (`np.asarray(crop)`); the
/255, mean/std normalisation and the NHWC -> NCHW transpose happen inside. Outputs: `probabilities`
= softmax(logits / T) with the checkpoint's temperature (what flowerdemo's `predict` returns),
`logits` (before the temperature) and, when the checkpoint has a detector and it is included,
`unknown_score` = 1 - mean cosine similarity of the photo's reference features to their k nearest
training photos (models/unknown.py): above the chosen threshold, "none of these".
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from flowerdemo.models import unknown
from flowerdemo.models.checkpoints import Classifier

INPUT = "pixels"
PROBABILITIES, LOGITS, UNKNOWN_SCORE = "probabilities", "logits", "unknown_score"


class ExportGraph(nn.Module):
    """A self-contained copy of a classifier (and its unknown-photo detector), for tracing/export."""

    def __init__(self, clf: Classifier, with_unknown: bool = True) -> None:
        super().__init__()
        p = clf.preprocessing
        # copies: exporting must not change the layout or flags of a model other threads are serving with
        self.model = copy.deepcopy(clf.model).eval().to(memory_format=torch.contiguous_format)
        self.register_buffer("mean", torch.tensor(p.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(p.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.temperature = float(clf.temperature)
        self.size = p.input_size
        self.norm = (tuple(p.mean), tuple(p.std))
        self.with_unknown = bool(with_unknown and clf.detector is not None)
        if self.with_unknown:
            det = clf.detector
            encoder = unknown.reference_encoder("cpu")  # the BatchNorm-folded encoder predict uses
            self.encoder = copy.deepcopy(encoder).eval().to(memory_format=torch.contiguous_format)
            # the bank as stored (int8 rows + fp16 scales: a quarter of fp32's size); dequantised in the graph
            # exactly as UnknownDetector.from_checkpoint does, so scores match predict's
            stored = det.to_tensors()
            self.register_buffer("bank_q", stored[f"{unknown.PREFIX}bank"])
            self.register_buffer("bank_scale", stored[f"{unknown.PREFIX}bank_scale"])
            self.k = min(det.k, det.bank.shape[0])
        for param in self.parameters():
            param.requires_grad_(False)

    @property
    def output_names(self) -> list[str]:
        return [PROBABILITIES, LOGITS] + ([UNKNOWN_SCORE] if self.with_unknown else [])

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # the same float ops as infer/preprocess.py: float32 / 255, then (x - mean) / std
        x = (pixels.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
        logits = self.model(x).float()
        probs = (logits / self.temperature).softmax(1)  # Classifier.softmax
        if not self.with_unknown:
            return probs, logits
        ref = unknown.reference_input(x, *self.norm).contiguous()
        feats = F.normalize(self.encoder(ref).float(), dim=1)
        bank = F.normalize(self.bank_q.float() * self.bank_scale.float(), dim=1)
        score = 1.0 - (feats @ bank.T).topk(self.k, dim=1).values.mean(1)  # UnknownDetector.scores
        return probs, logits, score


def example_pixels(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A fixed random uint8 batch (N, S, S, 3): the tracing example and the export's own parity check.
    Two photos, not one: a batch of 1 lets the exporter specialise the batch axis to 1."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, size, size, 3), generator=g, dtype=torch.uint8)


def pixels_from_tensor(x: torch.Tensor, mean, std) -> torch.Tensor:
    """The uint8 NHWC crop behind a normalised NCHW batch from infer/preprocess.py (exact: the batch was
    made from uint8 values, and float error is far below half a grey level)."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x.float() * s + m) * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
