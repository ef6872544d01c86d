"""Check a dataset before training: duplicates and near-duplicates (within a class and across classes,
i.e. conflicting labels), class balance, classes with too few photos, unusable files, tiny and
extreme-aspect images. One function, `check_dataset`, used by the app and `flowerdemo check`.

Near-duplicates are found by perceptual hash (data/similar.py; why that method and threshold:
docs/benchmarks.md, "Dataset check"); the fingerprints are cached, so the split that every training
makes (data/split.py keeps each group on one side) reuses them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowerdemo.data.dataset import DatasetFiles, list_dataset
from flowerdemo.data.similar import Fingerprint, exact_pairs, fingerprints, similar_groups, union_groups
from flowerdemo.data.split import split_files

logger = logging.getLogger(__name__)

KINDS = ("exact_duplicate", "near_duplicate", "conflicting_labels", "imbalance", "too_few", "unreadable", "tiny",
         "extreme_aspect")
SEVERITIES = ("error", "warning", "info")  # error: fix before trusting a model trained on it
IMBALANCE_RATIO = 3.0  # largest / smallest class at which a model measurably leans to the large class
MIN_PHOTOS = 20  # per class: below it the validation share holds a handful of photos per class
TINY_SIDE = 64  # px, shorter side: the models see 224 px, so such a photo is mostly interpolation
EXTREME_ASPECT = 3.0  # long / short side: the square centre crop keeps a third of the photo or less
SHOWN = 3  # files named in a message; `paths` holds them all


@dataclass(frozen=True)
class Finding:
    """One problem: what kind, how serious, a plain sentence naming files and classes, and the files."""

    kind: str
    severity: str
    message: str
    paths: tuple[Path, ...] = ()
    classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetCheck:
    """What `check_dataset` found; `groups` are the near-duplicate groups (exact copies included)."""

    root: Path
    classes: tuple[str, ...]
    counts: dict[str, int]
    findings: tuple[Finding, ...]
    groups: tuple[tuple[Path, ...], ...]
    seconds: float
    presplit: bool = False
    groups_kept_together: int = 0  # groups a plain 80/20 split (seed 0) would cut: the training split keeps them
    groups_left_split: int = 0  # groups the given train/ and val/ folders put on both sides

    @property
    def errors(self) -> int:
        return sum(f.severity == "error" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, paths relative to `root`."""
        return {"root": str(self.root), "classes": list(self.classes), "counts": dict(self.counts),
                "presplit": self.presplit, "seconds": round(self.seconds, 2),
                "findings": [{"kind": f.kind, "severity": f.severity, "message": f.message,
                              "paths": [_rel(p, self.root) for p in f.paths], "classes": list(f.classes)}
                             for f in self.findings],
                "groups": [[_rel(p, self.root) for p in g] for g in self.groups],
                "groups_kept_together": self.groups_kept_together, "groups_left_split": self.groups_left_split}

    def summary(self) -> str:
        """A few plain lines: the photos per class, then one line per finding, most serious first."""
        per_class = ", ".join(f"{c} {n:,}" for c, n in self.counts.items())
        lines = [f"{sum(self.counts.values()):,} photos in {len(self.classes)} classes ({per_class}), checked in "
                 f"{self.seconds:.1f} s."]
        if not self.findings:
            lines.append("No problems found.")
        for f in self.findings:
            lines.append(f"[{f.severity}] {f.message}")
        if self.groups_kept_together:
            kept = self.groups_kept_together
            lines.append(f"Training keeps {kept} group{'s' if kept != 1 else ''} of near-identical photos on one side of "
                         "the split that a plain random split would have cut in two.")
        return "\n".join(lines)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _names(paths: list[Path] | tuple[Path, ...], root: Path, extra: dict[Path, str] | None = None) -> str:
    shown = [_rel(p, root) + (f" ({extra[p]})" if extra and p in extra else "") for p in paths[:SHOWN]]
    more = f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
    return ", ".join(shown) + more


def check_dataset(root: str | os.PathLike, *, near: bool = True,
                  progress: Callable[[int, int], None] | None = None) -> DatasetCheck:
    """Check the dataset at `root` (root/<class>/<image>, or root/train/<class> + root/val/<class>).
    `near`: also look for near-duplicates (else only identical files); `progress(done, total)` per file."""
    t0 = time.perf_counter()
    ds = list_dataset(root)
    paths = [p for files in ds.files for p in files]
    label = {p: ds.classes[c] for c, files in enumerate(ds.files) for p in files}
    fps = fingerprints(paths, progress=progress)
    if near:
        idx = similar_groups(fps)
    else:
        ok = [i for i, fp in enumerate(fps) if not fp.error]
        idx = [[ok[i] for i in g] for g in union_groups(len(ok), exact_pairs([fps[i].sha for i in ok]))]
    groups = [[paths[i] for i in g] for g in idx]
    findings = _group_findings(ds, groups, {p: fp for p, fp in zip(paths, fps, strict=True)}, label)
    findings += _class_findings(ds) + _file_findings(ds, paths, fps)
    kept = left = 0
    try:
        split = split_files(ds, groups=groups)
        kept, left = split.groups_kept_together, split.groups_left_split
    except ValueError:  # a class too small to split: already a "too_few" error
        pass
    order = {s: i for i, s in enumerate(SEVERITIES)}
    findings.sort(key=lambda f: (order[f.severity], KINDS.index(f.kind)))
    result = DatasetCheck(ds.root, ds.classes, {c: len(f) for c, f in zip(ds.classes, ds.files, strict=True)},
                          tuple(findings), tuple(tuple(g) for g in groups), time.perf_counter() - t0, ds.presplit,
                          kept, left)
    logger.info("dataset check of %s: %d finding(s), %d near-duplicate group(s), %.1f s", ds.root, len(findings),
                len(groups), result.seconds)
    return result


def _group_findings(ds: DatasetFiles, groups: list[list[Path]], fps: dict[Path, Fingerprint],
                    label: dict[Path, str]) -> list[Finding]:
    out = []
    for g in groups:
        classes = tuple(sorted({label[p] for p in g}))
        names = _names(g, ds.root)
        identical = len({fps[p].sha for p in g}) == 1
        what = "identical files" if identical else "near-identical (the same photo re-encoded, resized, cropped or recoloured)"
        cut = ""
        if ds.presplit and len({p in ds.given_val for p in g}) == 2:
            cut = (" Some are in the training folder and some in the validation folder, so the validation accuracy "
                   "is inflated: keep them on one side.")
        if len(classes) > 1:
            out.append(Finding("conflicting_labels", "error",
                               f"{len(g)} files filed under different classes ({', '.join(classes)}) are {what}: "
                               f"{names}. A photo can only have one right answer: keep it in its correct class and "
                               "delete the other copies." + cut, tuple(g), classes))
        elif identical:
            out.append(Finding("exact_duplicate", "warning",
                               f"{len(g)} identical files in class '{classes[0]}': {names}. Keep one; the copies only "
                               "make the model count that photo several times." + cut, tuple(g), classes))
        else:
            out.append(Finding("near_duplicate", "warning" if cut else "info",
                               f"{len(g)} files in class '{classes[0]}' are {what}: {names}. Training keeps them on "
                               "one side of the split; remove the extra copies unless they show something new." + cut,
                               tuple(g), classes))
    return out


def _class_findings(ds: DatasetFiles) -> list[Finding]:
    out = []
    counts = {c: len(f) for c, f in zip(ds.classes, ds.files, strict=True)}
    for c, n in counts.items():
        if n < 2:
            out.append(Finding("too_few", "error", f"Class '{c}' has {n} usable photo(s): training needs at least 2 "
                               "(one to learn from, one to check on), and at least "
                               f"{MIN_PHOTOS} to be worth training.", classes=(c,)))
        elif n < MIN_PHOTOS:
            out.append(Finding("too_few", "warning", f"Class '{c}' has only {n} photos: with fewer than {MIN_PHOTOS} "
                               "the model learns it poorly and the accuracy measured on it rests on a handful of "
                               "photos. Add more.", classes=(c,)))
    big, small = max(counts, key=counts.get), min(counts, key=counts.get)
    if counts[small] and counts[big] / counts[small] >= IMBALANCE_RATIO:
        ratio = counts[big] / counts[small]
        out.append(Finding("imbalance", "warning", f"Class '{big}' has {counts[big]} photos but '{small}' only "
                           f"{counts[small]} ({ratio:.0f}:1): the model will lean towards '{big}' when unsure. Add "
                           f"photos to '{small}' (or leave some of '{big}' out).", classes=(big, small)))
    return out


def _file_findings(ds: DatasetFiles, paths: list[Path], fps: list[Fingerprint]) -> list[Finding]:
    out = []
    bad = {p: why for p, why in ds.skipped} | {p: fp.error for p, fp in zip(paths, fps, strict=True) if fp.error}
    if bad:
        files = sorted(bad, key=lambda p: p.as_posix())
        out.append(Finding("unreadable", "warning", f"{len(files)} file(s) cannot be used and will be skipped: "
                           f"{_names(files, ds.root, bad)}. Convert or remove them.", tuple(files)))
    ok = [(p, fp) for p, fp in zip(paths, fps, strict=True) if not fp.error]
    tiny = [p for p, fp in ok if min(fp.width, fp.height) < TINY_SIDE]
    sizes = {p: f"{fp.width}x{fp.height}" for p, fp in ok}
    if tiny:
        out.append(Finding("tiny", "warning", f"{len(tiny)} photo(s) are smaller than {TINY_SIDE} px on a side: "
                           f"{_names(tiny, ds.root, sizes)}. The model sees 224 px, so they carry little detail; "
                           "use larger photos.", tuple(tiny)))
    wide = [p for p, fp in ok if max(fp.width, fp.height) >= EXTREME_ASPECT * min(fp.width, fp.height)]
    if wide:
        out.append(Finding("extreme_aspect", "warning", f"{len(wide)} photo(s) are at least {EXTREME_ASPECT:.0f} times "
                           f"longer than wide: {_names(wide, ds.root, sizes)}. The model sees a square from the middle, "
                           "a small part of them; crop them around the subject.", tuple(wide)))
    return out
