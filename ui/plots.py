"""Pictures and tables drawn from training events: curves, confusion matrix, per-class table, progress."""

from __future__ import annotations

import html
from functools import lru_cache

import pandas as pd
from PIL import Image, ImageDraw, ImageFont


def fmt_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# What a plot with no epochs yet is given: None, never a zero-row frame. Gradio 6.31's LinePlot
# draws no lines into a chart it first rendered from zero rows, however many rows come later.
EMPTY_PLOT = None


def curves(rows: list[dict[str, float]]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Long-format frames (epoch, value, series) for the loss, accuracy and learning-rate plots."""
    def frame(pairs: list[tuple[str, str]]) -> pd.DataFrame:
        return pd.DataFrame({"epoch": pd.Series([int(r["epoch"]) for r in rows for _ in pairs], dtype="int64"),
                             "value": pd.Series([float(r[k]) for r in rows for k, _ in pairs], dtype="float64"),
                             "series": pd.Series([n for _ in rows for _, n in pairs], dtype="str")})

    return (frame([("train_loss", "train"), ("val_loss", "validation")]),
            frame([("train_acc", "train"), ("val_acc", "validation")]),
            frame([("lr", "learning rate")]))


def per_class_table(report: dict) -> pd.DataFrame:
    rows = [{"class": name, "precision": m["precision"], "recall": m["recall"], "f1": m["f1"],
             "support": m["support"]} for name, m in report.get("per_class", {}).items()]
    return pd.DataFrame(rows, columns=["class", "precision", "recall", "f1", "support"])


@lru_cache(maxsize=8)  # loading the font is the slow part of measuring a label
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def confusion_image(report: dict, cell: int = 64) -> Image.Image | None:
    """The confusion matrix as a picture: rows true, columns predicted, shaded by row share."""
    classes, matrix = report.get("classes"), report.get("confusion_matrix")
    if not classes or not matrix:
        return None
    n = len(classes)
    cell, margin, names = _confusion_grid(classes, cell)
    font, small = _font(max(10, cell // 4)), _font(13)
    top = margin
    tiles = []  # column names, rotated 45 degrees, read upwards from their column's centre
    for name in names:
        tile = Image.new("RGBA", (int(small.getlength(name)) + 4, 18), (255, 255, 255, 0))
        ImageDraw.Draw(tile).text((2, 1), name, fill="black", font=small)
        tiles.append(tile.rotate(45, expand=True))
    overhang = max(0, max(t.width for t in tiles) - cell // 2)  # the last name reaches past the grid
    img = Image.new("RGB", (margin + n * cell + overhang + 8, top + n * cell + 36), "white")
    d = ImageDraw.Draw(img)
    for i, row in enumerate(matrix):
        total = max(1, sum(row))
        for j, count in enumerate(row):
            share = count / total
            good = i == j
            base = (46, 125, 50) if good else (198, 40, 40)  # green diagonal, red confusions
            colour = tuple(int(255 - share * (255 - c)) for c in base)
            x0, y0 = margin + j * cell, top + i * cell
            d.rectangle([x0, y0, x0 + cell - 2, y0 + cell - 2], fill=colour)
            ink = "white" if share > 0.55 else "black"
            d.text((x0 + cell / 2, y0 + cell / 2), str(count), fill=ink, font=font, anchor="mm")
    for k, name in enumerate(names):
        d.text((margin - 8, top + k * cell + cell / 2), name, fill="black", font=small, anchor="rm")
        tile = tiles[k]
        img.paste(tile, (margin + k * cell + cell // 2 - 8, top - tile.height - 2), tile)
    d.text((margin + n * cell / 2, top + n * cell + 18), "predicted class", fill="#555", font=small, anchor="mm")
    # "true" and a drawn arrow down the rows (the default font has no arrow glyphs)
    d.text((8, top - 16), "true", fill="#555", font=small, anchor="ls")
    x = 12 + small.getlength("true")
    d.line([(x, top - 26), (x, top - 12)], fill="#555", width=2)
    d.polygon([(x - 4, top - 15), (x + 4, top - 15), (x, top - 9)], fill="#555")
    return img


def _confusion_grid(classes: list[str], cell: int) -> tuple[int, int, list[str]]:
    """(cell size, left and top margin, shown names) of the confusion picture: one place for its geometry."""
    cell = max(28, min(cell, 640 // len(classes)))
    names = [c if len(c) <= 14 else c[:13] + "…" for c in classes]
    return cell, 24 + max(int(_font(13).getlength(c)) for c in names), names


def confusion_cell_at(report: dict, x: float, y: float, cell: int = 64) -> tuple[int, int] | None:
    """(true, predicted) class indices of the square of `confusion_image(report)` at pixel (x, y), or None
    outside the grid."""
    classes = report.get("classes")
    if not classes or not report.get("confusion_matrix"):
        return None
    size, margin, _ = _confusion_grid(classes, cell)
    i, j = (y - margin) // size, (x - margin) // size
    n = len(classes)
    return (int(i), int(j)) if 0 <= i < n and 0 <= j < n else None


def progress_html(fraction: float, label: str) -> str:
    """A thin progress bar with a caption (Gradio has no standalone progress component)."""
    pct = max(0.0, min(1.0, fraction)) * 100
    return (f'<div class="fd-progress"><div class="fd-bar" style="width:{pct:.1f}%"></div></div>'
            f'<div class="fd-progress-label">{html.escape(label)}</div>')


CSS = """
.fd-progress {height: 10px; background: var(--neutral-200); border-radius: 5px; overflow: hidden; margin-top: 4px}
.fd-bar {height: 100%; background: var(--color-accent); transition: width .3s}
.fd-progress-label {font-size: var(--text-sm); color: var(--body-text-color-subdued); margin-top: 4px}
.fd-note {border-left: 4px solid var(--color-accent); padding-left: 12px}
.fd-rejected {opacity: 0.45; filter: grayscale(1)}
/* Predict tab on a phone: the two columns become one, and the answer comes right after the photo (then the
   heatmap, then the controls), so it is on screen after an upload without scrolling */
@media (max-width: 640px) {
  .row:has(> .column > #predict-verdict) {flex-direction: column; flex-wrap: nowrap; gap: var(--layout-gap)}
  .row:has(> .column > #predict-verdict) > .column {display: contents}
  .row:has(> .column > #predict-verdict) > .column > * {order: 10}
  .row:has(> .column > #predict-verdict) > .column > #predict-image {order: 1}
  .row:has(> .column > #predict-verdict) > .column > #predict-verdict {order: 2}
  .row:has(> .column > #predict-verdict) > .column > #predict-label {order: 3}
  .row:has(> .column > #predict-verdict) > .column > .row:has(#predict-overlay) {order: 4}
  .row:has(> .column > #predict-verdict) > .column > #predict-timing {order: 5}
}
"""
