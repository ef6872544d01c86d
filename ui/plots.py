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


# up to this many epochs the curves' x axis is a category per epoch: on a number axis from 1 to 6 or fewer, Vega put
# ticks at 1.5, 2.5 (or 1.2, 1.4), whole epochs only from 7 on (x_lim_for); as text, "1" to "9" also sort right
EPOCHS_AS_CATEGORIES = 9


def x_lim_for(epochs: int) -> list[float] | None:
    """The curves' x range for a run of `epochs`: the whole run from its first epoch on, for a number axis."""
    return None if epochs <= EPOCHS_AS_CATEGORIES else [1, epochs]


def curves(rows: list[dict[str, float]], epochs: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Long-format frames (epoch, value, series) for the loss, accuracy and learning-rate plots of a run of
    `epochs`: its epochs as text (one category each) up to EPOCHS_AS_CATEGORIES, else as numbers."""
    as_text = 0 < epochs <= EPOCHS_AS_CATEGORIES

    def frame(pairs: list[tuple[str, str]]) -> pd.DataFrame:
        numbers = [int(r["epoch"]) for r in rows for _ in pairs]
        return pd.DataFrame({"epoch": pd.Series([str(n) for n in numbers], dtype="str") if as_text else
                             pd.Series(numbers, dtype="int64"),
                             "value": pd.Series([float(r[k]) for r in rows for k, _ in pairs], dtype="float64"),
                             "series": pd.Series([n for _ in rows for _, n in pairs], dtype="str")})

    return (frame([("train_loss", "train"), ("val_loss", "validation")]),
            frame([("train_acc", "train"), ("val_acc", "validation")]),
            frame([("lr", "learning rate")]))


def per_class_table(report: dict) -> pd.DataFrame:
    rows = [{"class": name, "precision": round(m["precision"], 3), "recall": round(m["recall"], 3),
             "f1": round(m["f1"], 3), "support": m["support"]} for name, m in report.get("per_class", {}).items()]
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
/* Gradio floats a block's label over the content: over a File's drop-zone icon and text (on a phone its long label
   wraps to three lines and hides them), over an Image's picture (the reliability diagram's title), over a
   Gallery's top row. Put it in the flow above the content, clear of the icon buttons in the top corner (now the
   block's corner, not the picture's); a picture shrinks to the rest of the block's height. */
.block:has(> button.upload-container, > .image-container, > .gallery-container) {
  display: flex; flex-direction: column; flex-wrap: nowrap}
.block:has(> button.upload-container, > .image-container, > .gallery-container) > label[data-testid="block-label"].float {
  position: static; flex: none; align-self: flex-start; margin: var(--block-label-margin) 0 0 var(--block-label-margin)}
.block:has(> .icon-button-wrapper.top-panel, > .image-container > .icon-button-wrapper.top-panel,
           > .gallery-container > .grid-wrap > .icon-button-wrapper.top-panel) > label[data-testid="block-label"] {
  margin-right: calc(var(--size-16) + var(--block-label-margin))}
label[data-testid="block-label"] > span {flex: none}  /* its icon, squeezed to a dot beside a wrapped label */
.block > .image-container {flex: 1 1 auto; min-height: 0; position: static}
.block:has(> .gallery-container) {height: auto !important}  /* a gallery keeps its height= below the label */
.block > .gallery-container {flex: none; height: auto; position: static}
.block > .gallery-container > .grid-wrap {position: static}
.block > .gallery-container > .preview {top: 0; left: 0}  /* a photo opened: over the whole block, as before */
.block:has(> label[data-testid="block-label"]) > .gallery-container > .grid-wrap > .grid-container.pt-6 {padding-top: 0}
/* a thumbnail's caption ("sunflower → daisy · 61%") on as many lines as it needs: one line cut it to "sunflo…" */
.block > .gallery-container .caption-label {white-space: normal; overflow-wrap: anywhere; left: var(--block-label-margin);
  max-width: none; font-size: var(--text-sm); line-height: 1.25}
.icon-button-wrapper.top-panel:not(:has(*)) {display: none}  /* an empty one: a stray mark in the corner */
/* the drop zone's text is 240 px tall at least, centred in a shorter zone (height=90..140): its icon and last
   line were cut off; now as tall as asked, or as its text */
.block > button.upload-container {min-height: min-content; flex: 1 1 auto}
.block > button.upload-container > [data-testid="upload-text"] {min-height: 0; padding: var(--spacing-lg) 0}
/* a dropdown's text ran on under its arrow (the arrow is drawn over the input's right end) */
.secondary-wrap > input[role="combobox"] {padding-right: calc(var(--size-5) * 2 + var(--size-2)); text-overflow: ellipsis}
/* tables a little tighter where they are narrow, so a few columns fit instead of the last being cut off (wider
   ones still scroll inside their own box): every table on a phone, the per-class table beside its pictures;
   a gallery's thumbnails as many to a row as fit a phone (6 columns of 100 px were cut off at the right) */
@media (max-width: 640px) {
  .table-container {--input-text-size: var(--text-sm)}
  .table-container .sizing-body td {padding-left: 0; padding-right: 0}
  .table-container .cell-wrap {padding-left: var(--size-1-5); padding-right: var(--size-1-5)}
  .block > .gallery-container > .grid-wrap > .grid-container {grid-template-columns: repeat(auto-fill, minmax(88px, 1fr))}
}
#train-per-class .table-container {--input-text-size: var(--text-sm)}
#train-per-class .table-container .sizing-body td {padding-left: 0; padding-right: 0}
#train-per-class .table-container .cell-wrap {padding-left: var(--size-1-5); padding-right: var(--size-1-5)}
"""
