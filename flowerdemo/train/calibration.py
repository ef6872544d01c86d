"""Calibrated probabilities: temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural
Networks") and the figures that say how well probabilities match how often the model is right.

One scalar T divides the logits before the softmax: T > 1 softens over-confident probabilities, T < 1
sharpens under-confident ones. The top class (argmax) never changes, so accuracy is untouched. T is
fitted on the validation split at the end of training (and by scripts/ship_model.py), stored in the
checkpoint and applied by `Classifier.softmax` to every probability the product returns.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

log = logging.getLogger(__name__)

T_MIN, T_MAX = 0.05, 20.0  # beyond these the split is telling us about itself, not about new photos
MIN_FIT_SAMPLES = 10  # fewer validation photos than this say next to nothing about one more parameter
BINS = 15  # Guo et al.'s 15 equal-width confidence bins, so figures compare with the literature
_BISECT_STEPS = 64  # halvings of [log 1/T_MAX, log 1/T_MIN]: below float64 resolution well before the end


def unfit_reason(logits: torch.Tensor, labels: torch.Tensor) -> str | None:
    """Why `fit_temperature` keeps T = 1 for these logits, in plain words; None when it fits one."""
    n = len(labels)
    if n < MIN_FIT_SAMPLES:
        return f"only {n} validation photos (at least {MIN_FIT_SAMPLES} are needed to fit a temperature)"
    if not bool(torch.isfinite(logits).all()):
        return "the validation logits are not all finite"
    if bool((logits.argmax(1) == labels.to(logits.device)).all()):
        # with no mistake, the likelihood keeps rising as T -> 0: the split cannot say how sure to be,
        # and sharpening to the bound would make every later answer (wrong ones too) look certain
        return f"no mistake among the {n} validation photos: nothing to calibrate against"
    return None


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T in [T_MIN, T_MAX] that minimises the NLL of softmax(logits / T) on (logits, labels); 1.0
    when `unfit_reason` gives a reason. Deterministic (bisection, no random start, no learning rate).

    The NLL is convex in the inverse temperature b = 1/T (a log-sum-exp of lines in b, minus a line), so
    its derivative mean(E_softmax(b z)[z] - z_label) only rises with b and one bisection finds its zero."""
    reason = unfit_reason(logits, labels)
    if reason is not None:
        log.info("temperature kept at 1: %s", reason)
        return 1.0
    z = logits.detach().double().cpu()
    y = labels.detach().long().cpu()
    z_label = z.gather(1, y[:, None])[:, 0]

    def slope(b: float) -> float:  # d NLL / d b
        return float(((torch.softmax(b * z, 1) * z).sum(1) - z_label).mean())

    lo, hi = math.log(1 / T_MAX), math.log(1 / T_MIN)
    if slope(math.exp(hi)) <= 0:
        return T_MIN
    if slope(math.exp(lo)) >= 0:
        return T_MAX
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        if slope(math.exp(mid)) > 0:
            hi = mid
        else:
            lo = mid
    t = 1 / math.exp((lo + hi) / 2)
    return min(max(t, T_MIN), T_MAX) if math.isfinite(t) else 1.0


def calibration_metrics(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> dict[str, Any]:
    """How well `probs` (N, C) match the outcomes `labels` (N,), all lower-is-better except the last two:

    - ece: expected calibration error, the bin-count-weighted mean |accuracy - mean top probability| over
      `bins` equal-width bins of the top probability ((0, 1/bins], ..., ((bins-1)/bins, 1]);
    - nll: mean -log p(true class);
    - brier: mean over photos of sum over classes of (p - one-hot)^2 (0 perfect, 2 worst);
    - confidence, accuracy: the mean top probability and how often the top class is right (their gap
      says over- (confidence > accuracy) or under-confident);
    - reliability: per bin, its edges, count, mean confidence and accuracy (None when empty): the data
      of a reliability diagram.
    Values are rounded to 4 decimals (plain JSON-ready floats); None throughout for an empty set."""
    p = probs.detach().double().cpu()
    y = labels.detach().long().cpu()
    n = len(y)
    conf, pred = p.max(1) if n else (torch.zeros(0, dtype=torch.double), torch.zeros(0, dtype=torch.long))
    hit = (pred == y).double()
    # (lo, hi] bins, as in Guo et al.; a confidence of exactly 0 cannot occur (top of a softmax >= 1/C)
    index = (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)
    reliability, ece = [], 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        mean_conf = float(conf[members].mean()) if count else None
        acc = float(hit[members].mean()) if count else None
        if count:
            ece += count / n * abs(acc - mean_conf)
        reliability.append({"lower": _r(b / bins), "upper": _r((b + 1) / bins), "count": count,
                            "confidence": _r(mean_conf), "accuracy": _r(acc)})
    if not n:
        return {"ece": None, "nll": None, "brier": None, "confidence": None, "accuracy": None,
                "count": 0, "reliability": reliability}
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).double()
    nll = float(-p.gather(1, y[:, None]).clamp(min=1e-12).log().mean())
    brier = float(((p - onehot) ** 2).sum(1).mean())
    return {"ece": _r(ece), "nll": _r(nll), "brier": _r(brier), "confidence": _r(float(conf.mean())),
            "accuracy": _r(float(hit.mean())), "count": n, "reliability": reliability}


def calibration_summary(logits: torch.Tensor, labels: torch.Tensor, temperature: float,
                        fitted_on: str | None = None, note: str | None = None) -> dict[str, Any]:
    """The calibration block of a checkpoint and a report: the temperature, where it was fitted, and the
    figures on (logits, labels) before (T = 1) and after dividing by it, with both reliability diagrams."""
    logits = logits.detach().float().cpu()
    before = calibration_metrics(logits.softmax(1), labels)
    after = calibration_metrics((logits / temperature).softmax(1), labels)
    out: dict[str, Any] = {"temperature": float(temperature), "fitted_on": fitted_on,
                           "before": {k: v for k, v in before.items() if k != "reliability"},
                           "after": {k: v for k, v in after.items() if k != "reliability"},
                           "reliability": {"before": before["reliability"], "after": after["reliability"]}}
    if note:
        out["note"] = note
    return out


def format_calibration(cal: dict[str, Any]) -> str:
    """Lines for the CLI: ECE / NLL / Brier before and after the temperature, and where it came from."""
    def row(label: str, m: dict[str, Any]) -> str:
        return (f"  {label:<16} ECE {_f(m.get('ece'))}  NLL {_f(m.get('nll'))}  Brier {_f(m.get('brier'))}  "
                f"mean top probability {_f(m.get('confidence'))} vs accuracy {_f(m.get('accuracy'))}")

    t = cal["temperature"]
    where = f", fitted on the {cal['fitted_on']}" if cal.get("fitted_on") else ""
    lines = [f"calibration ({BINS}-bin ECE, NLL, Brier; lower is better): temperature {t:.4g}{where}",
             row("raw (T = 1)", cal["before"]), row(f"with T = {t:.3g}", cal["after"])]
    if cal.get("note"):
        lines.append(f"  note: {cal['note']}")
    return "\n".join(lines)


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
