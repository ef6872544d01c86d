"""Classification metrics from predictions: confusion matrix, per-class precision/recall/F1."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows are true classes, columns predicted classes."""
    idx = y_true.long() * num_classes + y_pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def classification_report(y_true: torch.Tensor, y_pred: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """Plain dict (JSON-ready): accuracy, macro F1, per-class precision/recall/F1/support, confusion."""
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
    total = float(cm.sum())
    return {
        "accuracy": round(float(tp.sum()) / total, 4) if total else 0.0,
        "macro_f1": round(float(f1.mean()), 4),
        "per_class": per_class,
        "confusion_matrix": cm.long().tolist(),
        "classes": list(classes),
    }


def format_report(report: dict[str, Any]) -> str:
    """Text table of a `classification_report` for the CLI."""
    classes = report["classes"]
    width = max(9, *(len(c) for c in classes))
    lines = [f"accuracy {report['accuracy']:.2%}   macro F1 {report['macro_f1']:.4f}", "",
             f"{'class':<{width}}  precision  recall     f1  support"]
    for name in classes:
        m = report["per_class"][name]
        lines.append(f"{name:<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  {m['support']:7d}")
    lines += ["", "confusion matrix (rows = true, columns = predicted)",
              " " * (width + 2) + " ".join(f"{c[:6]:>6}" for c in classes)]
    for name, row in zip(classes, report["confusion_matrix"], strict=True):
        lines.append(f"{name:<{width}}  " + " ".join(f"{v:6d}" for v in row))
    return "\n".join(lines)
