"""Scan an ImageFolder-style dataset and make a deterministic, stratified train/val split."""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from flowerdemo.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, check_image_header, is_image_file

logger = logging.getLogger(__name__)

IGNORED_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini", "__pycache__"})
VAL_DIR_NAMES = ("val", "valid", "validation")
LAYOUT = "root/<class>/<image> (or root/train/<class>/<image> + root/val/<class>/<image>)"
_ACCEPTED_EXT = " ".join(sorted(IMAGE_EXTENSIONS))


class DatasetError(ValueError):
    """The dataset folder cannot be used (message says what is wrong and what is accepted)."""


@dataclass(frozen=True)
class Sample:
    """One labelled image file."""

    path: Path
    label: int


@dataclass(frozen=True)
class DatasetSplit:
    """Result of scan_dataset: classes, train/val samples and every file that was not used."""

    root: Path
    classes: tuple[str, ...]
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    skipped: tuple[tuple[Path, str], ...]
    presplit: bool
    near_duplicate_groups: int = 0  # groups of identical or near-identical photos found (0: not looked for)
    groups_kept_together: int = 0  # of those, groups a plain split would have cut, kept on one side
    groups_left_split: int = 0  # groups on both sides: given train/ and val/ folders, or a class of one group

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class: {"train": {cls: n}, "val": {cls: n}} (every class listed, zeros included)."""
        out: dict[str, dict[str, int]] = {}
        for split, samples in (("train", self.train), ("val", self.val)):
            c = Counter(s.label for s in samples)
            out[split] = {name: c.get(i, 0) for i, name in enumerate(self.classes)}
        return out

    def duplicates_text(self) -> str:
        """What the scan found about identical and near-identical photos, "none" included (for a split made
        with `keep_groups`, which looks for them; 0 groups otherwise also means "not looked for")."""
        if not self.near_duplicate_groups:
            return "No identical or near-identical photos found."
        groups = self.near_duplicate_groups
        text = f"{groups:,} group{'s' if groups != 1 else ''} of identical or near-identical photos found"
        if self.groups_kept_together:
            text += (f"; {self.groups_kept_together:,} kept on one side of the split, so that no photo is validated "
                     "against its own copy")
        if self.groups_left_split:
            text += (f"; {self.groups_left_split:,} on both sides: the validation accuracy is optimistic (run "
                     "`flowerdemo check` to see them)")
        return text + "."

    def summary(self) -> str:
        """One human-readable paragraph: classes, per-class counts, split kind and skipped files."""
        counts = self.counts()
        per_class = ", ".join(f"{c} {counts['train'][c]}/{counts['val'][c]}" for c in self.classes)
        how = "using the given train/val folders" if self.presplit else "stratified random split"
        text = (
            f"{len(self.classes)} classes, {len(self.train)} training and {len(self.val)} validation images "
            f"({how}) from {self.root}. Per class (train/val): {per_class}."
        )
        if self.near_duplicate_groups:
            text += " " + self.duplicates_text()
        if self.skipped:
            examples = "; ".join(f"{p.name}: {why}" for p, why in self.skipped[:3])
            text += f" Skipped {len(self.skipped)} file(s), e.g. {examples}."
        return text


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def _visible(folder: Path) -> tuple[list[Path], list[Path]]:
    """(sub-folders, files) of `folder`, sorted, without hidden/OS-junk entries."""
    dirs: list[Path] = []
    files: list[Path] = []
    with os.scandir(folder) as it:
        for entry in it:
            if _ignored(entry.name):
                continue
            (dirs if entry.is_dir(follow_symlinks=True) else files).append(Path(entry.path))
    return sorted(dirs), sorted(files)


def _require_dir(path: str | os.PathLike) -> Path:
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset folder {root} does not exist; expected a folder laid out as {LAYOUT}")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; expected a folder laid out as {LAYOUT}")
    return root


def find_dataset_root(path: str | os.PathLike) -> Path:
    """Descend through single wrapping folders (e.g. a zip's "flower_photos/") to the class folders."""
    root = _require_dir(path)
    for _ in range(16):
        dirs, files = _visible(root)
        if len(dirs) != 1 or any(is_image_file(f) for f in files):
            break
        if dirs[0].name.lower() == "train":  # a lone train/ folder is a layout, not a wrapper
            break
        sub_dirs, sub_files = _visible(dirs[0])
        if not sub_dirs and any(is_image_file(f) for f in sub_files):
            break  # the lone folder holds images itself: it is a (single) class, not a wrapper
        root = dirs[0]
    return root


def _scan_class(folder: Path, max_pixels: int, skipped: list[tuple[Path, str]]) -> list[Path]:
    """Usable image files anywhere under a class folder; the rest go to `skipped` with a reason."""
    good: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _ignored(d))
        for name in sorted(filenames):
            if _ignored(name):
                continue
            path = Path(dirpath) / name
            if not is_image_file(path):
                skipped.append((path, f"not an image file (extension '{path.suffix}'; accepted: {_ACCEPTED_EXT})"))
                continue
            try:
                check_image_header(path, max_pixels=max_pixels)
            except ImageError as exc:
                skipped.append((path, exc.problem))
                continue
            good.append(path)
    return good


def _loose_files(files: list[Path], where: str, skipped: list[tuple[Path, str]]) -> None:
    for f in files:
        skipped.append((f, f"loose file in {where}, not inside a class folder"))


def _classes_in(folder: Path, where: str, skipped: list[tuple[Path, str]]) -> list[Path]:
    dirs, files = _visible(folder)
    _loose_files(files, where, skipped)
    return dirs


def _require_classes(dirs: list[Path], folder: Path) -> None:
    if not dirs:
        from flowerdemo.models.checkpoints import WEIGHTS

        if (folder / WEIGHTS).is_file():  # a model's .zip given as photos (a walkthrough did)
            raise DatasetError(f"{folder} holds a trained model ({WEIGHTS}), not photos to train on: load it in the "
                               f"app's Models tab, or use it with `flowerdemo predict --checkpoint`. A dataset is "
                               f"laid out as {LAYOUT}")
        raise DatasetError(f"no class folders found in {folder}; expected the layout {LAYOUT}")
    if len(dirs) < 2:
        raise DatasetError(
            f"only one class folder found in {folder} ('{dirs[0].name}'); at least 2 classes are needed, "
            f"laid out as {LAYOUT}"
        )


@dataclass(frozen=True)
class DatasetFiles:
    """Every usable file of a dataset by class, before any split (what `flowerdemo check` examines)."""

    root: Path
    classes: tuple[str, ...]
    files: tuple[tuple[Path, ...], ...]  # per class: given train/ files first when presplit
    given_val: frozenset[Path]  # the files of a given val/ folder (empty unless presplit)
    skipped: tuple[tuple[Path, str], ...]
    presplit: bool
    class_dirs: tuple[Path, ...]  # the (training) folder of each class


def _list_presplit(
    train_dir: Path, val_dir: Path, max_pixels: int, skipped: list[tuple[Path, str]]
) -> tuple[list[Path], list[list[Path]], set[Path]]:
    """Class folders, files per class and the given validation files of a train/ + val/ layout."""
    class_dirs = _classes_in(train_dir, train_dir.name + "/", skipped)
    _require_classes(class_dirs, train_dir)
    classes = [d.name for d in class_dirs]
    val_dirs = {d.name: d for d in _classes_in(val_dir, val_dir.name + "/", skipped)}
    unknown = sorted(set(val_dirs) - set(classes))
    if unknown:
        raise DatasetError(
            f"{val_dir.name}/ has class folder(s) {unknown} that are not in {train_dir.name}/; the validation "
            f"classes must be a subset of the training classes {classes}"
        )
    missing = [c for c in classes if c not in val_dirs]
    if missing:
        logger.warning("Validation folder %s has no folder for class(es) %s", val_dir, missing)
    files, given_val = [], set()
    for d in class_dirs:
        val = _scan_class(val_dirs[d.name], max_pixels, skipped) if d.name in val_dirs else []
        files.append(_scan_class(d, max_pixels, skipped) + val)
        given_val.update(val)
    return class_dirs, files, given_val


def list_dataset(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DatasetFiles:
    """The classes and usable files of an ImageFolder dataset (optionally pre-split into train/ and val/);
    raises DatasetError only when its layout cannot be used at all."""
    root = find_dataset_root(path)
    dirs, files = _visible(root)
    if not dirs and not files:
        raise DatasetError(f"dataset folder {root} is empty; expected the layout {LAYOUT}")
    skipped: list[tuple[Path, str]] = []
    _loose_files(files, "the dataset root", skipped)
    by_name = {d.name.lower(): d for d in dirs}
    train_dir = by_name.get("train")
    val_dir = next((by_name[n] for n in VAL_DIR_NAMES if n in by_name), None)
    presplit = train_dir is not None and val_dir is not None
    given_val: set[Path] = set()
    if presplit:
        assert train_dir is not None and val_dir is not None
        extra = [d.name for d in dirs if d not in (train_dir, val_dir)]
        if extra:
            logger.info("Pre-split dataset %s: ignoring folders %s", root, extra)
        dirs, per_class, given_val = _list_presplit(train_dir, val_dir, max_pixels, skipped)
    else:
        class_root = root
        if train_dir is not None:  # train/ (and maybe test/) without val/: split train/ itself
            logger.warning("%s has train/ but no val/ (or valid/, validation/) folder; splitting train/", root)
            class_root = train_dir
            dirs = _classes_in(train_dir, "train/", skipped)
        _require_classes(dirs, class_root)
        per_class = [_scan_class(d, max_pixels, skipped) for d in dirs]
    return DatasetFiles(root, tuple(d.name for d in dirs), tuple(tuple(f) for f in per_class), frozenset(given_val),
                        tuple(sorted(skipped, key=lambda t: t[0].as_posix())), presplit, tuple(dirs))


def scan_dataset(
    path: str | os.PathLike,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    keep_groups: bool = True,
) -> DatasetSplit:
    """Scan an ImageFolder dataset (optionally pre-split into train/ and val/) and split it.

    `keep_groups`: identical and near-identical photos (data/similar.py, data/split.py) stay on one side of the split,
    so that the validation accuracy is not inflated by copies of training photos; False gives the plain
    stratified split (for comparison). Given train/ and val/ folders are never changed."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
    from flowerdemo.data.split import split_files  # the split builds on this module's types

    result = split_files(list_dataset(path, max_pixels=max_pixels), val_fraction=val_fraction, seed=seed,
                         keep_groups=keep_groups)
    if result.skipped:
        examples = "; ".join(f"{p}: {why}" for p, why in result.skipped[:3])
        logger.warning("Skipped %d file(s) in %s, e.g. %s", len(result.skipped), result.root, examples)
    logger.info("%s", result.summary())
    return result


def checkpoint_split(path: str | os.PathLike, meta: dict, max_pixels: int = DEFAULT_MAX_PIXELS) -> DatasetSplit:
    """The split a checkpoint was trained with, made again from its metadata: its val_fraction and seed, and
    near-duplicate groups kept together only if its run did (`meta["data"]["keep_groups"]`; checkpoints from
    before the group-keeping split do not have it and get the plain split they were trained on)."""
    cfg, data = meta.get("config", {}), meta.get("data", {})
    return scan_dataset(path, val_fraction=cfg.get("val_fraction", 0.2), seed=cfg.get("seed", 0),
                        max_pixels=max_pixels, keep_groups=bool(data.get("keep_groups", False)))


def resolve_data(path: Path, workdir: str | None = None) -> Path:
    """A folder as is; a .zip extracted safely into a temporary folder."""
    from flowerdemo.data.archive import (
        extract_zip,  # archive is the lower layer; imported here to keep scan imports light
    )

    if path.suffix.lower() == ".zip":
        dest = Path(workdir or tempfile.mkdtemp(prefix="flowerdemo-"))
        return find_dataset_root(extract_zip(path, dest / "data"))
    return path
