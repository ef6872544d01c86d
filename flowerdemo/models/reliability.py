"""The reliability diagram of a checkpoint's calibration block (`meta["calibration"]`, written by
`flowerdemo.train.calibration.calibration_summary`): per confidence bin, how often the model was right
against how sure it said it was, before and after temperature scaling, with the photos in each bin.

Drawn with matplotlib's object API (a `Figure` on its own Agg canvas), never pyplot: pyplot keeps global
state, and the app draws from worker threads for many visitors at once.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image

BEFORE, AFTER, GAP, DIAGONAL = "#757575", "#1565c0", "#c62828", "#424242"
SOLID = 20  # photos in a bin from which its bar is drawn solid; fewer, paler (as few, as uncertain)


def reliability_bins(calibration: dict[str, Any], which: str) -> list[dict[str, Any]] | None:
    """The bins of `which` ("before" | "after"): `calibration["reliability"][which]` as
    `calibration_summary` stores them, or `calibration[which]["reliability"]` as `calibration_metrics`
    returns them; None when the block has none."""
    stored = calibration.get("reliability")
    if isinstance(stored, dict) and isinstance(stored.get(which), list):
        return stored[which]
    inner = calibration.get(which)
    bins = inner.get("reliability") if isinstance(inner, dict) else None
    return bins if isinstance(bins, list) else None


def has_diagram(calibration: Any) -> bool:
    """Whether `calibration` holds the bins a diagram is drawn from (older checkpoints have no block)."""
    return isinstance(calibration, dict) and bool(reliability_bins(calibration, "before"))


def reliability_diagram(calibration: dict[str, Any], dpi: int = 100) -> Image.Image:
    """The diagram as an RGB image: one panel for the raw probabilities and one for the calibrated ones
    (a single panel when the temperature changed nothing, T = 1), ECE in each title; below each, the number
    of validation photos per bin, since a bin of 3 photos says little. Empty bins are left blank."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    before = reliability_bins(calibration, "before")
    if not before:
        raise ValueError("this calibration block has no reliability bins (expected calibration['reliability']"
                         "['before'], as flowerdemo.train.calibration.calibration_summary writes it)")
    after = reliability_bins(calibration, "after")
    t = float(calibration.get("temperature", 1.0))
    figures = {w: calibration.get(w) if isinstance(calibration.get(w), dict) else {} for w in ("before", "after")}
    if not after or after == before:  # T = 1 (tiny or mistake-free split): one panel says it all
        panels = [(f"T = {t:.3g}: probabilities as the model gives them", before, figures["before"], AFTER)]
    else:
        panels = [("raw probabilities (T = 1)", before, figures["before"], BEFORE),
                  (f"calibrated (divided by T = {t:.3g})", after, figures["after"], AFTER)]
    fig = Figure(figsize=(4.6 * len(panels), 5.0), dpi=dpi, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, len(panels), height_ratios=(3, 1))
    for col, (title, bins, stats, colour) in enumerate(panels):
        ax = fig.add_subplot(grid[0, col])
        counts = fig.add_subplot(grid[1, col], sharex=ax)
        _panel(ax, counts, bins, title, stats, colour, legend=col == 0)
    canvas.draw()
    return Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1).convert("RGB")


def _alpha(count: int) -> float:
    return 0.3 + 0.7 * min(1.0, count / SOLID)


def _panel(ax, counts, bins: list[dict[str, Any]], title: str, stats: dict[str, Any], colour: str,
           legend: bool) -> None:
    from matplotlib.colors import to_rgba

    filled = [b for b in bins if b.get("count") and b.get("accuracy") is not None and b.get("confidence") is not None]
    centre = [(b["lower"] + b["upper"]) / 2 for b in filled]
    width = [b["upper"] - b["lower"] for b in filled]
    acc = [b["accuracy"] for b in filled]
    conf = [b["confidence"] for b in filled]
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color=DIAGONAL, label="perfectly calibrated")
    # a bin of few photos is noise (3 photos: its share right moves in steps of 33 points), so it is drawn pale
    ax.bar(centre, acc, width=width, color=[to_rgba(colour, _alpha(b["count"])) for b in filled],
           edgecolor="white", linewidth=0.6, label="share right")
    # the gap between how often it was right and how sure it was, in each bin: what ECE averages
    ax.bar(centre, [abs(a - c) for a, c in zip(acc, conf, strict=True)], width=width,
           bottom=[min(a, c) for a, c in zip(acc, conf, strict=True)], facecolor="none", hatch="///",
           edgecolor=GAP, linewidth=0.8, label="gap to its mean confidence")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="share of photos right")
    ax.tick_params(labelbottom=False)
    ece = stats.get("ece")
    ax.set_title(f"{title}\nECE {ece:.3f}" if isinstance(ece, (int, float)) else f"{title}\nECE n/a", fontsize=10)
    if not filled:
        ax.text(0.5, 0.5, "no photos", ha="center", va="center", color=DIAGONAL)
    if legend:
        ax.legend(loc="upper left", fontsize=8, frameon=False)
    n = [int(b.get("count") or 0) for b in bins]
    counts.bar([(b["lower"] + b["upper"]) / 2 for b in bins], n, width=[b["upper"] - b["lower"] for b in bins],
               color=[to_rgba(colour, _alpha(k)) for k in n], edgecolor="white", linewidth=0.6)
    top = max(n, default=0)
    for b, k in zip(bins, n, strict=True):
        if k:
            counts.text((b["lower"] + b["upper"]) / 2, k, str(k), ha="center", va="bottom", fontsize=7)
    counts.set(ylim=(0, max(1, top) * 1.35), xlabel="confidence (the top class's probability)",
               ylabel=f"photos\n(pale: < {SOLID})")
    counts.set_yticks([])


def reliability_png(calibration: dict[str, Any]) -> bytes:
    """The diagram as PNG bytes (for an upload)."""
    buf = io.BytesIO()
    reliability_diagram(calibration).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def save_reliability_diagram(calibration: dict[str, Any], path: str | Path) -> Path:
    """Write the diagram as a PNG to `path`; returns it."""
    path = Path(path)
    path.write_bytes(reliability_png(calibration))
    return path
