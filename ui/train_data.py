"""Where the training images come from (an uploaded .zip, an allowed server folder, the flowers
download) and what was found in them. Plain functions: errors are the core's ValueErrors."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from flowerdemo.data.builder import DatasetDraft
from flowerdemo.data.dataset import DatasetSplit, scan_dataset
from flowerdemo.data.images import load_image
from flowerdemo.device import call_in_background
from flowerdemo.serve.runs import allowed_path, remove_tree
from flowerdemo.settings import MB

from .state import AppContext

SOURCES = [("Make it here: classes and photos", "builder"), ("Upload a .zip of class folders", "zip"),
           ("Folder on this server", "folder"),
           ("Built-in flowers: 5 classes, 3,670 photos (218 MB download)", "flowers")]
MAX_SKIPPED_ROWS = 50
KEPT = "review"  # a finished run's extracted .zip, kept while the visitor looks at its results (`keep`)
THUMBS = 12


def source_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """Folder paths are offered only when the operator allowed some folders (--data-dir)."""
    return [c for c in SOURCES if c[1] != "folder" or ctx.settings.data_dirs]


def resolve(ctx: AppContext, source: str, zip_file: str | None, folder: str | None, held: dict | None,
            progress: Callable[[float, str], None] | None = None,
            draft: DatasetDraft | None = None) -> tuple[Path, dict | None]:
    """(dataset folder, what this visitor's session now holds on disk).

    The builder's photos (`draft`, the visitor's own) are frozen into a copy of hard links first, so the
    run reads exactly the photos there were when it started while the visitor goes on editing.

    An uploaded .zip is extracted once into the app's scratch space and reused until another one
    is chosen; the previous extraction is deleted. It is checked from its directory first, with the
    limits the CLI uses (`extract_zip`), and errors call it by the name the visitor gave it: Gradio
    keeps that name as the file name of its temporary copy.
    """
    uploads = ctx.settings.folder("uploads")
    if source == "zip":
        if not zip_file:
            raise ValueError("Upload a .zip file of class folders first (one sub-folder per class).")
        if held and held.get("key") == str(zip_file) and Path(held["path"]).is_dir():
            return Path(held["path"]), held
        release(ctx, held)
        from flowerdemo.data.archive import extract_zip
        from flowerdemo.data.dataset import find_dataset_root

        workdir = uploads / uuid.uuid4().hex
        try:
            if progress:
                progress(0.1, "Extracting the .zip")
            root = find_dataset_root(extract_zip(zip_file, workdir / "data", name=Path(zip_file).name,
                                                 max_bytes=ctx.settings.max_extract_mb * MB))
        except BaseException:
            remove_tree(workdir, uploads)
            raise
        return root, {"key": str(zip_file), "path": str(root), "owned": str(workdir)}
    release(ctx, held)
    if source == "builder":
        return _snapshot(ctx, draft)
    if source == "folder":
        return allowed_path(folder or "", ctx.settings.data_dirs), None
    if source == "flowers":
        from flowerdemo.data.download import download_flowers

        def report(done: int, total: int | None) -> None:
            if progress and total:
                progress(done / total, f"Downloading flowers: {done / MB:.0f} / {total / MB:.0f} MB")

        return download_flowers(ctx.settings.cache_dir, progress=report), None
    raise ValueError(f"Unknown dataset source {source!r}; choose one of: {', '.join(v for _, v in SOURCES)}")


def _snapshot(ctx: AppContext, draft: DatasetDraft | None) -> tuple[Path, dict]:
    ready = draft.readiness() if draft is not None else None
    if ready is None or not ready.ready:
        todo = " ".join(ready.todo) if ready else "Add classes and their photos first."
        raise ValueError(f"Your photos are not ready for training yet. {todo}".replace("*", ""))
    workdir = ctx.settings.folder("uploads") / uuid.uuid4().hex
    try:
        root = draft.snapshot(workdir / "data")
    except BaseException:
        remove_tree(workdir, ctx.settings.folder("uploads"))
        raise
    return root, {"key": "builder", "path": str(root), "owned": str(workdir)}


def release(ctx: AppContext, held: dict | None) -> None:
    """Delete a session's extracted upload or builder snapshot (on a new upload, after a run that is not kept
    for its review, at session end)."""
    if held and held.get("owned"):
        remove_tree(held["owned"], ctx.settings.folder("uploads"))
        remove_tree(held["owned"], ctx.settings.folder(KEPT))


def keep(ctx: AppContext, held: dict | None, root: str) -> tuple[dict | None, str]:
    """After a finished run, keep its extracted .zip for the run's review (thumbnails, heatmaps): moved out of
    the uploads (same disk: no copy) into the kept area, where it stays until the visitor's next run or the end
    of their session (`release`), or state.SCRATCH_KEEP_S at most. Returns (what the session now holds, the run's data root
    there). A builder snapshot is not kept: the review reads the builder's own photos."""
    if not (held and held.get("owned")) or held.get("key") == "builder":
        return held, root
    area = ctx.settings.folder(KEPT)  # pruned by age in AppContext.housekeeping, which every finished run calls
    src = Path(held["owned"]).resolve()
    dest = area.resolve() / src.name
    data, run_root = Path(held["path"]).resolve().relative_to(src), Path(root).resolve().relative_to(src)
    if src != dest:
        os.replace(src, dest)
    return {**held, "path": str(dest / data), "owned": str(dest)}, str(dest / run_root)


def scan(path: Path, val_fraction: float = 0.2, seed: int = 0) -> DatasetSplit:
    return scan_dataset(path, val_fraction=val_fraction, seed=seed)


def open_dataset(ctx: AppContext, source: str, zip_file: str | None, folder: str | None, held: dict | None,
                 val_fraction: float = 0.2, seed: int = 0, progress: Callable[[float, str], None] | None = None,
                 draft: DatasetDraft | None = None) -> tuple[DatasetSplit, dict | None]:
    """`resolve` then `scan`. An upload that holds no usable dataset is deleted at once (not kept for
    hours), and its errors name the .zip, not the server folder it was extracted to."""
    path, held = resolve(ctx, source, zip_file, folder, held, progress, draft)
    try:
        return scan(path, val_fraction, seed), held
    except ValueError as exc:
        if not (held and held.get("owned")):
            raise
        release(ctx, held)
        extracted = str(Path(held["owned"]) / "data")
        name = "your photos" if source == "builder" else Path(zip_file or "the .zip").name
        raise ValueError(str(exc).replace(extracted, name)) from None


@contextmanager
def opened(ctx: AppContext, source: str, zip_file: str | None, folder: str | None, held: dict | None,
           val_fraction: float = 0.2, seed: int = 0, progress: Callable[[float, str], None] | None = None,
           draft: DatasetDraft | None = None) -> Iterator[tuple[DatasetSplit, dict | None]]:
    """`open_dataset` for one request: if the rest of the request fails (busy, bad settings, a bug), the
    upload this call extracted is deleted before the error returns. A failed request does not update the
    visitor's session, so nothing would ever hand that folder back; one the session already held stays."""
    # the scan decodes and hashes every photo: as background work (niced, one core), as the training itself
    split, now = call_in_background(open_dataset, ctx, source, zip_file, folder, held, val_fraction, seed, progress,
                                    draft)
    try:
        yield split, now
    except BaseException:
        if now is not held:
            release(ctx, now)
        raise


def preview(split: DatasetSplit) -> tuple[str, pd.DataFrame, pd.DataFrame, list]:
    """Summary line, per-class counts, skipped files and a few thumbnails of a scanned dataset."""
    counts = split.counts()
    table = pd.DataFrame([{"class": c, "train": counts["train"][c], "validation": counts["val"][c],
                           "total": counts["train"][c] + counts["val"][c]} for c in split.classes])
    skipped = pd.DataFrame([{"file": _rel(p, split.root), "why": why} for p, why in split.skipped[:MAX_SKIPPED_ROWS]],
                           columns=["file", "why"])
    how = "your train/ and val/ folders" if split.presplit else "a stratified 80/20 split"
    text = (f"**Found {len(split.classes)} classes, {len(split.train) + len(split.val):,} images** "
            f"({len(split.train):,} for training, {len(split.val):,} for validation, using {how}).")
    text += " " + split.duplicates_text()  # the app always scans with keep_groups: 0 means none found
    if split.skipped:
        more = f" (first {MAX_SKIPPED_ROWS} listed)" if len(split.skipped) > MAX_SKIPPED_ROWS else ""
        text += f" Skipped {len(split.skipped):,} file(s){more}: see the list below."
    return text, table, skipped, thumbnails(split)


def thumbnails(split: DatasetSplit, size: int = 160) -> list[tuple]:
    """A couple of training images per class, as small in-memory pictures (no server paths exposed)."""
    per_class = max(1, THUMBS // max(1, len(split.classes)))
    picked: dict[int, int] = {}
    out = []
    for sample in split.train:
        if picked.get(sample.label, 0) >= per_class or len(out) >= THUMBS:
            continue
        try:
            img = load_image(sample.path, draft=(size, size))
        except ValueError:
            continue
        img.thumbnail((size, size))
        out.append((img, split.classes[sample.label]))
        picked[sample.label] = picked.get(sample.label, 0) + 1
    return out


def mistake_gallery(mistakes: tuple[dict, ...], size: int = 192) -> list[tuple]:
    """The worst validation errors as (picture, 'true → predicted (confidence)') pairs."""
    out = []
    for m in mistakes:
        try:
            img = load_image(m["path"], draft=(size, size))
        except ValueError:
            continue
        img.thumbnail((size, size))
        out.append((img, f"{m['true']} → {m['pred']} ({m['confidence']:.0%})"))
    return out


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return path.name
