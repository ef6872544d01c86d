"""Keep near-duplicate groups on one side of a train/validation split, so that a photo and its copy
(re-encoded, resized, cropped, or filed under two classes) never sit on both sides and inflate the
measured accuracy.

It starts from the plain seeded split and changes as little as possible: a group cut in two moves
whole to the side holding most of its members, then each class gets back its validation share by
moving photos that belong to no group, so a folder without near-duplicates splits exactly as before
(and `evaluate --split val` of an older checkpoint finds its validation photos).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
            logger.warning("class %d: too few photos outside near-duplicate groups to keep them on one side", c)
            val[c] = set(order[:target])
    after = [i for i, g in enumerate(groups) if is_cut(g)]
    return GroupedSplit(tuple(frozenset(v) for v in val), len(groups), len(cut_before - set(after)), len(after))
