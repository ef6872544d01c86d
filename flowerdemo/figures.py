"""How measured figures are stated: an accuracy always with its count and its 95 % Wilson interval, so
that 100 % of 9 photos is not read like 96.6 % of 496. Pure functions, no torch: every layer may use
them (the training report, the model card, the app's model lists)."""

from __future__ import annotations

import math
from typing import Any


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion (95 % for z = 1.96). Unlike the normal approximation it
    stays inside [0, 1] and is not zero-width at 0/n or n/n. (0.0, 1.0) for n = 0: nothing is known."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # at 0/n and n/n one bound equals the estimate in exact arithmetic: no rounding error there
    low = max(0.0, centre - half) if successes > 0 else 0.0
    high = min(1.0, centre + half) if successes < n else 1.0
    return low, high


def format_accuracy(report: dict[str, Any]) -> str:
    """"91.7% (11/12; 95% interval 65–99%)": the figure with its count and its 95 % Wilson interval in
    whole percents (more digits would claim a precision the interval itself denies)."""
    acc = f"{report['accuracy']:.1%}"
    if "total" not in report:  # a report from before the count was recorded
        return acc
    low, high = report["accuracy_interval"]
    return (f"{acc} ({report['correct']}/{report['total']}; 95% interval "
            f"{100 * low:.0f}–{100 * high:.0f}%)")


def format_count(correct: int, total: int) -> str:
    """`format_accuracy` of `correct` right out of `total`."""
    return format_accuracy({"accuracy": correct / total if total else 0.0, "correct": correct, "total": total,
                            "accuracy_interval": list(wilson_interval(correct, total))})


def checkpoint_accuracy(metrics: dict[str, Any]) -> str | None:
    """A checkpoint's best validation accuracy as `format_accuracy` writes it, for the model lists. Older
    checkpoints have no count, but their confusion matrix gives it; None when nothing was recorded."""
    if "total" in metrics:
        return format_accuracy(metrics)
    cm = metrics.get("confusion_matrix")
    if cm:
        correct, total = sum(row[i] for i, row in enumerate(cm)), sum(map(sum, cm))
        if total:
            return format_count(correct, total)
    acc = metrics.get("best_val_acc")
    return f"{acc:.1%}" if isinstance(acc, (int, float)) else None
