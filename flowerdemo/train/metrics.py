"""Classification metrics from predictions: confusion matrix, per-class precision/recall/F1, and the
accuracy with its count and 95 % Wilson interval, flagged as rough when a class has few validation photos."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

# stated the same way everywhere; re-exported here, where they were first written
from flowerdemo.figures import checkpoint_accuracy, format_accuracy, wilson_interval

__all__ = ["checkpoint_accuracy", "classification_report", "confusion_matrix", "format_accuracy",
           "format_report", "rough_warning", "wilson_interval"]

# Below this many validation photos in a class, its recall moves in steps of >= 5 points and the 95 %
# interval of a 90 % accuracy spans 27 points (Wilson, 18/20: 70-97 %); at 50 photos 17 (45/50: 79-96 %).
RELIABLE_PER_CLASS = 20
IDEAL_PER_CLASS = 50


def rough_warning(support: dict[str, int]) -> str | None:
    """A plain warning naming the classes with fewer than RELIABLE_PER_CLASS validation photos; None if none."""
    small = sorted((n, c) for c, n in support.items() if n < RELIABLE_PER_CLASS)
    if not small:
        return None
    parts = [f"{n} {'photo' if n == 1 else 'photos'} of {c}" if i == 0 else f"{n} of {c}"
             for i, (n, c) in enumerate(small[:3])]
    if len(small) > 3:
        parts.append(f"fewer than {RELIABLE_PER_CLASS} of {len(small) - 3} more classes")
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return (f"The validation split has only {listed}: the accuracy is rough; about {RELIABLE_PER_CLASS} "
            f"photos per class (ideally {IDEAL_PER_CLASS}+) make it reliable.")


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows are true classes, columns predicted classes."""
    idx = y_true.long() * num_classes + y_pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def classification_report(y_true: torch.Tensor, y_pred: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """Plain dict (JSON-ready): accuracy with its count (correct/total), 95 % Wilson interval, a `rough`
    flag and plain `warning` when a class has few photos; macro F1, per-class precision/recall/F1/support,
    confusion matrix."""
    cm = confusion_matrix(y_true.cpu(), y_pred.cpu(), len(classes)).double()
    tp = cm.diag()
    precision = torch.where(cm.sum(0) > 0, tp / cm.sum(0).clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(cm.sum(1) > 0, tp / cm.sum(1).clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(tp))
    per_class = {
        name: {"precision": round(float(precision[i]), 4), "recall": round(float(recall[i]), 4),
               "f1": round(float(f1[i]), 4), "support": int(cm[i].sum())}
        for i, name in enumerate(classes)
    }
    correct, total = int(tp.sum()), int(cm.sum())
    low, high = wilson_interval(correct, total)
    warning = rough_warning({name: m["support"] for name, m in per_class.items()})
    return {
        "accuracy": round(correct / total, 4) if total else 0.0,
        "correct": correct,
        "total": total,
        "accuracy_interval": [round(low, 4), round(high, 4)],  # 95 % Wilson
        "rough": warning is not None,  # some class has fewer than RELIABLE_PER_CLASS validation photos
        "warning": warning,
        "macro_f1": round(float(f1.mean()), 4),
        "per_class": per_class,
        "confusion_matrix": cm.long().tolist(),
        "classes": list(classes),
    }


def format_report(report: dict[str, Any]) -> str:
    """Text table of a `classification_report` for the CLI (with its calibration block when it has one)."""
    classes = report["classes"]
    width = max(9, *(len(c) for c in classes))
    lines = [f"accuracy {format_accuracy(report)}   macro F1 {report['macro_f1']:.4f}"]
    if report.get("warning"):
        lines.append(f"warning: {report['warning']}")
    lines += ["", f"{'class':<{width}}  precision  recall     f1  support"]
    for name in classes:
        m = report["per_class"][name]
        lines.append(f"{name:<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  {m['support']:7d}")
    lines += ["", "confusion matrix (rows = true, columns = predicted)",
              " " * (width + 2) + " ".join(f"{c[:6]:>6}" for c in classes)]
    for name, row in zip(classes, report["confusion_matrix"], strict=True):
        lines.append(f"{name:<{width}}  " + " ".join(f"{v:6d}" for v in row))
    if report.get("calibration"):
        from flowerdemo.train.calibration import format_calibration

        lines += ["", format_calibration(report["calibration"])]
    return "\n".join(lines)
