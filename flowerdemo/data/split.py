"""The seeded, stratified train/validation split of a listed dataset, keeping near-duplicate groups on
one side, so that a photo and its copy (re-encoded, resized, cropped, or filed under two classes) never
sit on both sides and inflate the measured accuracy.

Keeping groups together starts from the plain seeded split and changes as little as possible: a group
cut in two moves whole to the side holding most of its members, then each class gets back its
validation share by moving photos that belong to no group, so a folder without near-duplicates splits
exactly as before (and `evaluate --split val` of an older checkpoint finds its validation photos).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flowerdemo.data.dataset import _ACCEPTED_EXT, DatasetError, DatasetFiles, DatasetSplit, Sample

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupedSplit:
    """Validation files per class, and what keeping groups together did."""

    val: tuple[frozenset[Path], ...]  # per class, the files on the validation side
    groups: int  # near-duplicate groups among the files (exact copies included)
    kept_together: int  # groups the plain split cut in two, now on one side
    left_split: int  # groups still cut: a class had too few other photos to fill its side


def keep_together(orders: Sequence[Sequence[Path]], n_val: Sequence[int], groups: Sequence[Sequence[Path]]) -> GroupedSplit:
    """`orders[c]`: class c's files in the plain split's shuffled order, its first `n_val[c]` the
    validation side; `groups`: sets of files (any classes) that must share a side."""
    cls_of = {p: c for c, order in enumerate(orders) for p in order}
    val = [set(order[:n]) for order, n in zip(orders, n_val, strict=True)]
    groups = [[p for p in g if p in cls_of] for g in groups]
    groups = [g for g in groups if len(g) > 1]
    grouped = {p for g in groups for p in g}

    def is_cut(g: list[Path]) -> bool:
        sides = {p in val[cls_of[p]] for p in g}
        return len(sides) == 2

    cut_before = {i for i, g in enumerate(groups) if is_cut(g)}
    for i in sorted(cut_before):
        g = groups[i]
        to_val = 2 * sum(p in val[cls_of[p]] for p in g) > len(g)  # the majority's side; a tie trains
        for p in g:
            (val[cls_of[p]].add if to_val else val[cls_of[p]].discard)(p)
    for c, (order, target) in enumerate(zip(orders, n_val, strict=True)):
        free = [p for p in order if p not in grouped]
        if len(val[c]) < target:  # refill from the plain split's next training photos
            for p in [p for p in free if p not in val[c]][: target - len(val[c])]:
                val[c].add(p)
        elif len(val[c]) > target:  # give back the plain split's last validation photos
            for p in [p for p in reversed(free) if p in val[c]][: len(val[c]) - target]:
                val[c].discard(p)
        if not val[c] or len(val[c]) == len(order):  # a class that is (nearly) one group: plain split
            logger.warning("class folder '%s' has too few photos outside near-duplicate groups to keep each group on "
                           "one side of the split; its validation accuracy is optimistic (add photos that are not "
                           "copies)", order[0].parent.name)
            val[c] = set(order[:target])
    after = [i for i, g in enumerate(groups) if is_cut(g)]
    return GroupedSplit(tuple(frozenset(v) for v in val), len(groups), len(cut_before - set(after)), len(after))


def _order_class(files: list[Path], name: str, val_fraction: float, seed: int) -> tuple[list[Path], int]:
    """The class's files in a seeded random order, and how many of the first go to validation."""
    if len(files) < 2:
        raise DatasetError(
            f"class '{name}' has {len(files)} usable image(s); each class needs at least 2 "
            f"(one for training, one for validation) with extensions {_ACCEPTED_EXT}"
        )
    order = sorted(files, key=lambda p: p.as_posix())
    random.Random(f"{seed}/{name}").shuffle(order)
    n_val = min(max(round(len(order) * val_fraction), 1), len(order) - 1)
    return order, n_val


def _sample_key(s: Sample) -> tuple[int, str]:
    return s.label, s.path.as_posix()


def _sample_key(s: Sample) -> tuple[int, str]:
    return s.label, s.path.as_posix()


def _presplit_sides(ds: DatasetFiles, groups: list[list[Path]] | None) -> tuple[list[frozenset[Path]], dict[str, int]]:
    """The given validation files per class; the groups the given folders cut are only counted."""
    for name, d, files in zip(ds.classes, ds.class_dirs, ds.files, strict=True):
        if not any(p not in ds.given_val for p in files):
            raise DatasetError(
                f"class '{name}' has 0 usable training images in {d}; each class needs at least 1 training "
                f"image with one of the extensions {_ACCEPTED_EXT}"
            )
    if not ds.given_val:
        raise DatasetError(f"{ds.root} has no usable validation images; put images in val/<class>/<image>")
    val_sets = [frozenset(p for p in files if p in ds.given_val) for files in ds.files]
    if groups is None:
        return val_sets, {}
    cut = sum(len({p in ds.given_val for p in g}) == 2 for g in groups)
    return val_sets, {"near_duplicate_groups": len(groups), "groups_left_split": cut}


def split_files(ds: DatasetFiles, *, val_fraction: float = 0.2, seed: int = 0, keep_groups: bool = True,
                groups: list[list[Path]] | None = None) -> DatasetSplit:
    """Split listed files (see scan_dataset); `groups`: near-duplicate groups already found, else found here."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
    if keep_groups and groups is None:
        groups = _groups([p for files in ds.files for p in files])
    groups = groups if keep_groups else None
    counts: dict[str, int] = {}
    if ds.presplit:
        orders = ds.files
        val_sets, counts = _presplit_sides(ds, groups)
    else:
        orders, n_val = zip(*(_order_class(list(f), name, val_fraction, seed) for f, name in zip(ds.files, ds.classes,
                                                                                                  strict=True)), strict=True)
        val_sets = [frozenset(order[:n]) for order, n in zip(orders, n_val, strict=True)]
        if groups is not None:
            grouped = keep_together(orders, n_val, groups)
            val_sets = list(grouped.val)
            counts = {"near_duplicate_groups": grouped.groups, "groups_kept_together": grouped.kept_together,
                      "groups_left_split": grouped.left_split}
    train, val = [], []
    for label, (order, in_val) in enumerate(zip(orders, val_sets, strict=True)):
        train += [Sample(p, label) for p in order if p not in in_val]
        val += [Sample(p, label) for p in order if p in in_val]
    return DatasetSplit(ds.root, ds.classes, tuple(sorted(train, key=_sample_key)), tuple(sorted(val, key=_sample_key)),
                        ds.skipped, ds.presplit, **counts)


def _groups(paths: list[Path]) -> list[list[Path]]:
    """Groups of identical or near-identical files among `paths` (fingerprints cached across runs)."""
    from flowerdemo.data.similar import fingerprints, similar_groups  # numpy/scipy: only when grouping

    return [[paths[i] for i in g] for g in similar_groups(fingerprints(paths))]
