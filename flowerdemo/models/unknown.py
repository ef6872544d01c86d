""""None of these": an unknown-input detector that says when a photo is unlike anything the model was
trained on (a portrait, a building, a texture), so that it is not answered with one of the classes.

How it decides: every image is described by a reference encoder that fine-tuning never touches (the
bundled ImageNet EfficientNet-Lite0 at 224 px, the same for every model, offline), and scored by its
cosine distance to its k nearest training photos (1 - mean cosine similarity of the k most similar).
Thresholds come from the scores of the validation photos, which the detector never saw: for each
strictness, the lowest validation score below which, with 90 % confidence, at least the chosen share of
new photos of the known classes falls (90 / 95 / 99 %; an order statistic of the validation scores, a
one-sided tolerance bound). A plain 95 % quantile of ~500 validation photos accepts only ~94 % of other
photos of the same collection on average (measured by cross-fitting); the bound keeps the promise.

Why this one: benchmarks/trust.py compares it with the maximum softmax probability, energy,
k-NN on the fine-tuned features and class-conditional Mahalanobis distance (docs/benchmarks.md, "Unknown
photos"); features a fine-tuning specialised to five flowers let far more non-flowers through.

Stored in the checkpoint as tensors (`unknown.bank`, int8 rows with one fp16 scale each, at most
MAX_BANK rows: ~1.3 KB per training photo) plus JSON (`meta["unknown"]`): pickle-free, like the rest.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

REFERENCE_MODEL = "efficientnet_lite0"
REFERENCE_SIZE = 224
K = 10  # neighbours averaged: steadier than the single nearest photo (near-duplicates in a collection)
MAX_BANK = 2048  # training photos kept (a class-stratified subset beyond it): <= 2.7 MB for 1280-d features
STRICTNESS = {"strict": 0.90, "normal": 0.95, "lenient": 0.99}  # share of new photos of the classes accepted
CONFIDENCE = 0.90  # how sure the threshold is to accept at least that share (the validation photos are a sample)
OFF = "off"
DEFAULT_STRICTNESS = "normal"
PREFIX = "unknown."  # tensor names in model.safetensors
META_KEY = "unknown"
REF_MEAN = REF_STD = (0.5, 0.5, 0.5)  # EfficientNet-Lite's normalisation


class UnknownDetectorError(ValueError):
    """A bad strictness name or detector data that does not fit."""


def strictness_choices() -> list[str]:
    return [*STRICTNESS, OFF]


def check_strictness(strictness: str) -> str:
    if strictness not in STRICTNESS and strictness != OFF:
        raise UnknownDetectorError(f"unknown strictness {strictness!r}; choose one of: {', '.join(strictness_choices())}")
    return strictness


@dataclass(frozen=True)
class Familiarity:
    """The detector's answer for one image. `known` is None when the model has no detector (older
    checkpoints) or strictness is "off"; `score` is the distance (higher = less like the training photos)."""

    known: bool | None
    score: float | None
    threshold: float | None
    strictness: str
    available: bool

    def to_dict(self) -> dict[str, Any]:
        return {"known": self.known, "score": None if self.score is None else round(self.score, 4),
                "threshold": None if self.threshold is None else round(self.threshold, 4),
                "strictness": self.strictness, "detector": self.available}


UNAVAILABLE_NOTE = ("This model was saved without an unknown-photo detector, so it cannot say when a photo is "
                    "none of its classes; retrain it (or re-run scripts/ship_model.py) to add one.")


@dataclass(frozen=True)
class UnknownDetector:
    bank: torch.Tensor  # (M, D) float32, rows L2-normalised: reference features of training photos
    thresholds: dict[str, float]  # strictness -> highest accepted score
    k: int = K
    info: dict[str, Any] = field(default_factory=dict)  # how it was fitted (photos, shares, encoder)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """1 - mean cosine similarity to the k nearest bank rows; `features` (N, D), any scale."""
        q = F.normalize(features.float(), dim=1)
        sims = q @ self.bank.T
        k = min(self.k, self.bank.shape[0])
        return 1.0 - sims.topk(k, dim=1).values.mean(1)

    def decide(self, features: torch.Tensor, strictness: str = DEFAULT_STRICTNESS) -> list[Familiarity]:
        check_strictness(strictness)
        scores = self.scores(features).tolist()
        if strictness == OFF:
            return [Familiarity(None, s, None, OFF, True) for s in scores]
        t = self.thresholds[strictness]
        return [Familiarity(s <= t, s, t, strictness, True) for s in scores]

    # --- storage: int8 rows + fp16 scales (safetensors) and JSON ---------------------------------
    def to_tensors(self) -> dict[str, torch.Tensor]:
        scale = self.bank.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127.0
        q = torch.round(self.bank / scale).clamp(-127, 127).to(torch.int8)
        return {f"{PREFIX}bank": q.contiguous(), f"{PREFIX}bank_scale": scale.half().contiguous()}

    def to_meta(self) -> dict[str, Any]:
        return {"method": "knn-cosine", "encoder": REFERENCE_MODEL, "input_size": REFERENCE_SIZE, "k": self.k,
                "thresholds": {k: float(v) for k, v in self.thresholds.items()}, "shares": dict(STRICTNESS),
                "confidence": CONFIDENCE,
                **self.info}

    @classmethod
    def from_checkpoint(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None) -> UnknownDetector | None:
        """The stored detector, or None for checkpoints written before detectors existed."""
        if meta is None:
            return None
        try:
            q, scale = tensors[f"{PREFIX}bank"], tensors[f"{PREFIX}bank_scale"]
            thresholds = {str(k): float(v) for k, v in meta["thresholds"].items()}
            k = int(meta.get("k", K))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UnknownDetectorError(f"the stored unknown-photo detector is incomplete ({exc!r})") from exc
        if q.ndim != 2 or scale.shape != (q.shape[0], 1) or set(STRICTNESS) - set(thresholds):
            raise UnknownDetectorError(f"the stored unknown-photo detector does not fit: bank {tuple(q.shape)}, "
                                       f"scales {tuple(scale.shape)}, thresholds for {sorted(thresholds)}")
        encoder, size = meta.get("encoder", REFERENCE_MODEL), int(meta.get("input_size", REFERENCE_SIZE))
        if encoder != REFERENCE_MODEL or size != REFERENCE_SIZE:
            raise UnknownDetectorError(f"the unknown-photo detector was fitted with {meta.get('encoder')} at "
                                       f"{meta.get('input_size')} px; this flowerdemo uses {REFERENCE_MODEL} at {REFERENCE_SIZE}")
        bank = F.normalize(q.float() * scale.float(), dim=1)
        info = {key: v for key, v in meta.items() if key not in ("method", "encoder", "input_size", "k", "thresholds", "shares",
                                                                   "confidence")}
        return cls(bank, thresholds, k, info)


def fit_detector(train_features: torch.Tensor, train_labels: torch.Tensor, val_features: torch.Tensor,
                 generator: torch.Generator | None = None, k: int = K) -> UnknownDetector:
    """Bank = training photos' reference features (a class-stratified subset beyond MAX_BANK); thresholds
    = tolerance bounds on the validation photos' scores. With fewer than 50 validation photos they add
    the training photos' leave-one-out scores (each scored against the others) so that they are not
    set by a handful of photos."""
    bank = F.normalize(train_features.float(), dim=1)
    labels = train_labels.cpu()
    if len(bank) > MAX_BANK:
        keep = _stratified(labels, MAX_BANK, generator or torch.Generator().manual_seed(0))
        bank, labels = bank[keep], labels[keep]
    # scores are computed against the stored (quantised) bank, so thresholds match what predict sees
    detector = UnknownDetector(bank, {}, k)
    stored = UnknownDetector.from_checkpoint(detector.to_tensors(), {"thresholds": dict.fromkeys(STRICTNESS, 0.0), "k": k})
    val_scores = stored.scores(val_features)
    reference = val_scores
    note = f"validation split ({len(val_scores)} photos)"
    if len(val_scores) < 50 and len(stored.bank) > k:
        sims = stored.bank @ stored.bank.T
        sims.fill_diagonal_(-2.0)  # not its own neighbour
        loo = 1.0 - sims.topk(k, dim=1).values.mean(1)
        reference = torch.cat([val_scores, loo])
        note += f" + leave-one-out scores of {len(loo)} training photos (the validation split is small)"
    thresholds = {name: tolerance_threshold(reference, share) for name, share in STRICTNESS.items()}
    accepted = {name: round(float((val_scores <= t).float().mean()), 4) for name, t in thresholds.items()}
    info = {"bank_photos": len(stored.bank), "train_photos": len(train_features), "thresholds_from": note,
            "val_accepted": accepted,
            "val_scores": {"median": round(float(val_scores.median()), 4), "max": round(float(val_scores.max()), 4)}}
    return UnknownDetector(stored.bank, thresholds, k, info)


def tolerance_threshold(scores: torch.Tensor, share: float, confidence: float = CONFIDENCE) -> float:
    """The k-th smallest score, k the smallest rank for which P(at least `share` of new photos score <= it)
    >= `confidence`. The k-th order statistic of n scores covers a Beta(k, n - k + 1) share of the
    distribution, so that probability is P(Binomial(n, share) <= k - 1). With too few scores for the
    confidence, the largest score."""
    ordered = scores.float().sort().values
    n = len(ordered)
    cdf, log_p, log_q = 0.0, math.log(share), math.log1p(-share)
    for k in range(1, n + 1):  # add P(Binomial = k - 1)
        j = k - 1
        cdf += math.exp(math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * log_p + (n - j) * log_q)
        if cdf >= confidence:
            return float(ordered[k - 1])
    return float(ordered[-1])


def _stratified(labels: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of an n-row subset keeping each class's share."""
    out = []
    classes = labels.unique()
    for c in classes.tolist():
        idx = (labels == c).nonzero().flatten()
        take = max(1, math.floor(n * len(idx) / len(labels)))
        out.append(idx[torch.randperm(len(idx), generator=generator)[:take]])
    return torch.cat(out).sort().values


# --- the reference encoder: one per process and device, built on first use, only read afterwards ----

_encoders: dict[str, torch.nn.Module] = {}
_lock = threading.Lock()


def reference_encoder(device: torch.device | str = "cpu") -> torch.nn.Module:
    """The bundled ImageNet EfficientNet-Lite0 backbone (pooled features), BatchNorm folded, eval mode."""
    device = torch.device(device)
    key = str(device)
    with _lock:
        if key not in _encoders:
            from flowerdemo.models.fold import folded_or_original
            from flowerdemo.models.registry import build_model

            backbone = build_model(REFERENCE_MODEL, 2, pretrained=True).backbone.eval().to(device)
            example = torch.randn(2, 3, REFERENCE_SIZE, REFERENCE_SIZE, generator=torch.Generator().manual_seed(0)).to(device)
            encoder = folded_or_original(backbone, example)
            for p in encoder.parameters():
                p.requires_grad_(False)
            _encoders[key] = encoder.to(memory_format=torch.channels_last)
        return _encoders[key]


def reference_input(x: torch.Tensor, mean, std) -> torch.Tensor:
    """A batch prepared for a model (normalised with its mean/std, its input size) as the reference
    encoder's input: the same pixels, renormalised, resized to REFERENCE_SIZE."""
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    r = torch.tensor(REF_MEAN, device=x.device).view(1, 3, 1, 1)
    rs = torch.tensor(REF_STD, device=x.device).view(1, 3, 1, 1)
    x = ((x.float() * s + m) - r) / rs
    if x.shape[-1] != REFERENCE_SIZE or x.shape[-2] != REFERENCE_SIZE:
        x = F.interpolate(x, size=(REFERENCE_SIZE, REFERENCE_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def reference_features(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(N, 1280) reference features of a model-input batch, on the batch's device."""
    return reference_encoder(x.device)(reference_input(x, mean, std)).float()
