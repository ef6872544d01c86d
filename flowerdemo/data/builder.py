"""A dataset built class by class (the app's "make it here"): one visitor's folder of class folders, in
the layout the CLI reads (`<area>/<name>/<class>/<photo>`), with checked names, checked photos and bounds.

    draft = DatasetDraft(area)                 # area: this visitor's own folder
    draft.add_class("rose"); draft.add_photos("rose", [(path, "IMG_1.jpg")])
    draft.readiness().sentences()              # ["Add at least 1 more photo to *rose*.", ...]
    draft.to_zip(out_dir)                      # <name>.zip, <name>/<class>/<photo>

Photos are decoded with the project's loader (a file that is no image is refused by name, the others
kept), turned upright, shrunk to `Limits.max_side` and stored as JPEG without their metadata (a phone
photo's location stays on the phone). Nothing here knows about visitors or the UI: the caller picks
the area; `prune_areas` removes areas left alone for a while.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from flowerdemo.data.dataset import IGNORED_NAMES, VAL_DIR_NAMES, find_dataset_root
from flowerdemo.data.images import ImageError, ImageSource, is_image_file, load_image

log = logging.getLogger(__name__)

MIN_CLASSES = 2  # scan_dataset's minimum: a model tells at least two classes apart
MIN_PER_CLASS = 2  # scan_dataset's minimum: one photo to train on, one to validate with
ADVISED_PER_CLASS = 10  # advice, not a rule: below this a validation score is a guess (1-2 photos per class)
MAX_NAME = 40  # a class name shows in buttons, tables and the checkpoint; longer ones are sentences
RESERVED = frozenset({"train", *VAL_DIR_NAMES})  # scan_dataset would read these folders as a pre-split layout
DEFAULT_NAME = "my-photos"


class BuilderError(ValueError):
    """A class name, photo or archive the builder cannot take (says what was given and what is accepted)."""


@dataclass(frozen=True)
class Limits:
    """Bounds of one visitor's dataset on a shared server (module constants, not operator settings yet)."""

    max_photos: int = 1000  # Teachable-Machine scale: a few hundred photos per class is plenty for fine-tuning
    max_mb: int = 300  # 1000 photos at max_side average ~200 KB as JPEG: the bound is met before this, not after
    max_classes: int = 30  # a class list longer than this no longer fits a phone screen
    max_side: int = 1024  # training uses <= 512 px; larger stored photos only cost disk and decode time
    quality: int = 92  # JPEG quality of stored photos: no visible loss at the sizes training uses


@dataclass(frozen=True)
class ClassInfo:
    name: str
    photos: tuple[Path, ...]  # newest first

    @property
    def count(self) -> int:
        return len(self.photos)


@dataclass(frozen=True)
class Added:
    """What `add_photos` (or `load`) kept and what it refused, each refusal naming the file and why."""

    added: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()
    classes: tuple[str, ...] = field(default=())  # classes created (by `load`)


@dataclass(frozen=True)
class Readiness:
    """Whether the dataset can be trained on, what to do first (`todo`) and what would help (`advice`)."""

    ready: bool
    todo: tuple[str, ...]
    advice: tuple[str, ...]

    def sentences(self) -> list[str]:
        return [*self.todo, *self.advice]


def md(text: str) -> str:
    """A visitor's text inside Markdown: its *, _, ` and brackets shown as typed."""
    return re.sub(r"([\\`*_\[\]<>#|])", r"\\\1", text)


class DatasetDraft:
    """The photos of one dataset under `area/name`, one folder per class."""

    def __init__(self, area: str | os.PathLike, name: str = DEFAULT_NAME, limits: Limits = Limits()) -> None:
        self.area, self.name, self.limits = Path(area), name, limits
        self.root = self.area / name

    # --- reading ---------------------------------------------------------------------------------

    def classes(self) -> list[ClassInfo]:
        """Classes in the order training labels them (sorted by folder name), photos newest first."""
        if not self.root.is_dir():
            return []
        out = []
        for d in sorted(p for p in self.root.iterdir() if p.is_dir() and not _hidden(p.name)):
            photos = sorted((f for f in d.iterdir() if f.is_file() and not _hidden(f.name)),
                            key=lambda f: (-f.stat().st_mtime_ns, f.name))
            out.append(ClassInfo(d.name, tuple(photos)))
        return out

    def usage(self) -> tuple[int, int]:
        """(photos, bytes) stored."""
        files = [f for c in self.classes() for f in c.photos]
        return len(files), sum(f.stat().st_size for f in files)

    def readiness(self) -> Readiness:
        """Plain sentences on what is missing before training, and advice once it can start."""
        classes = self.classes()
        todo: list[str] = []
        if not classes:
            todo.append("Add a first class: type its name (for example *rose*) and press **Add class**.")
        elif len(classes) < MIN_CLASSES:
            todo.append(f"Add a second class: a model learns to tell at least {MIN_CLASSES} classes apart.")
        for c in classes:
            if c.count < MIN_PER_CLASS:
                more = MIN_PER_CLASS - c.count
                todo.append(f"Add at least {more} more photo{'s' if more > 1 else ''} to *{md(c.name)}*.")
        few = [c for c in classes if MIN_PER_CLASS <= c.count < ADVISED_PER_CLASS]
        advice = []
        if few:
            listed = ", ".join(f"*{md(c.name)}* ({c.count})" for c in few)
            advice.append(f"For a steadier model, add more photos to {listed}: {ADVISED_PER_CLASS} or more per class "
                          "is better, taken from different angles and backgrounds.")
        return Readiness(not todo, tuple(todo), tuple(advice))

    # --- classes ---------------------------------------------------------------------------------

    def add_class(self, name: str) -> str:
        """Create class `name` (checked: see `check_name`); returns the name as stored."""
        name = self.check_name(name)
        if len(self.classes()) >= self.limits.max_classes:
            raise BuilderError(f"cannot add class '{name}': a dataset here holds at most {self.limits.max_classes} "
                               "classes")
        (self.root / name).mkdir(parents=True)
        self._touch()
        return name

    def rename_class(self, old: str, new: str) -> str:
        src = self._class_dir(old)
        new = self.check_name(new, ignore=src.name)
        if new != src.name:
            os.replace(src, self.root / new)
            self._touch()
        return new

    def delete_class(self, name: str) -> int:
        """Delete class `name` and its photos; returns how many photos went."""
        d = self._class_dir(name)
        n = sum(1 for f in d.iterdir() if f.is_file())
        shutil.rmtree(d)
        self._touch()
        return n

    def check_name(self, name: str, ignore: str | None = None) -> str:
        """`name` as a class folder name: 1 to MAX_NAME printable characters, no slashes, not hidden, not a
        layout folder name (train/val), unique regardless of case (except for the class called `ignore`)."""
        text = " ".join(str(name or "").split())
        given = repr(str(name or ""))
        if not text:
            raise BuilderError("Type a class name, e.g. rose (1 to 40 characters).")
        if len(text) > MAX_NAME or not text.isprintable():
            raise BuilderError(f"class name {given} is not accepted: use 1 to {MAX_NAME} printable characters "
                               f"(got {len(text)})")
        if "/" in text or "\\" in text or text.startswith(".") or text.lower() in IGNORED_NAMES:
            raise BuilderError(f"class name {given} is not accepted: no / or \\, and not starting with a dot")
        if text.lower() in RESERVED:
            raise BuilderError(f"class name {given} is not accepted: {', '.join(sorted(RESERVED))} are folder names "
                               "the dataset layout reserves; try e.g. 'train set' or 'value'")
        taken = {c.name.casefold(): c.name for c in self.classes() if c.name != ignore}
        if text.casefold() in taken:
            raise BuilderError(f"there is already a class '{taken[text.casefold()]}' (names are compared "
                               "without regard to case)")
        return text

    # --- photos ----------------------------------------------------------------------------------

    def add_photos(self, cls: str, photos: Iterable[tuple[ImageSource, str]]) -> Added:
        """Add each (source, the name the visitor knows it by) to class `cls`; non-images and photos over the
        bounds are refused by name, the others kept."""
        d = self._class_dir(cls)
        count, used = self.usage()
        added, refused = [], []
        for source, shown in photos:
            if count >= self.limits.max_photos:
                refused.append(f"{shown}: not added, the dataset is full ({self.limits.max_photos:,} photos at most)")
                continue
            try:
                img = load_image(source, draft=(self.limits.max_side, self.limits.max_side))
            except ImageError as exc:
                refused.append(f"{shown}: {exc.problem}")
                continue
            img.thumbnail((self.limits.max_side, self.limits.max_side))
            target = _unique(d, _stem(shown))
            tmp = d / f".tmp-{target.name}"
            img.save(tmp, "JPEG", quality=self.limits.quality)
            size = tmp.stat().st_size
            if used + size > self.limits.max_mb * 2**20:
                tmp.unlink()
                refused.append(f"{shown}: not added, the dataset is full ({self.limits.max_mb} MB at most)")
                continue
            os.replace(tmp, target)
            count, used = count + 1, used + size
            added.append(target.name)
        if added:
            self._touch()
        log.info("builder %s/%s: %d photo(s) added, %d refused", self.root, d.name, len(added), len(refused))
        return Added(tuple(added), tuple(refused))

    def remove_photo(self, cls: str, photo: str) -> None:
        d = self._class_dir(cls)
        path = d / photo
        if Path(photo).name != photo or _hidden(photo) or not path.is_file():
            raise BuilderError(f"class '{d.name}' has no photo {photo!r}")
        path.unlink()
        self._touch()

    def move_photo(self, cls: str, photo: str, to: str) -> None:
        """Move a photo filed under the wrong class (a conflicting label) to class `to`."""
        src, dest = self._class_dir(cls), self._class_dir(to)
        path = src / photo
        if Path(photo).name != photo or _hidden(photo) or not path.is_file():
            raise BuilderError(f"class '{src.name}' has no photo {photo!r}")
        os.replace(path, _unique(dest, _stem(photo).rsplit("-", 1)[0] or "photo"))
        self._touch()

    # --- whole dataset ---------------------------------------------------------------------------

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self._touch()

    def to_zip(self, dest_dir: str | os.PathLike) -> Path:
        """`dest_dir/<name>.zip` holding `<name>/<class>/<photo>`: what `flowerdemo train --data` reads."""
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        target, tmp = dest_dir / f"{self.name}.zip", dest_dir / f".{self.name}.zip.part"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:  # JPEGs do not deflate
            for c in self.classes():
                zf.writestr(f"{self.name}/{c.name}/", b"")  # an empty class stays a class
                for f in sorted(c.photos):
                    zf.write(f, f"{self.name}/{c.name}/{f.name}")
        os.replace(tmp, target)
        return target

    def snapshot(self, dest: str | os.PathLike) -> Path:
        """A frozen copy of the dataset at `dest/<name>` (hard links where the disk allows), so that a
        training reads exactly these photos while the visitor goes on editing."""
        out = Path(dest) / self.name
        for c in self.classes():
            (out / c.name).mkdir(parents=True, exist_ok=True)
            for f in c.photos:
                try:
                    os.link(f, out / c.name / f.name)
                except OSError:
                    shutil.copy2(f, out / c.name / f.name)
        return out

    def load(self, source: str | os.PathLike, max_bytes: int, shown: str | None = None) -> Added:
        """Replace the dataset with a .zip's or folder's class folders (`root/<class>/...`, or `train/` and
        `val/` folders of classes, merged). Checked like the visitor's own photos; the old dataset stays
        until the new one is complete. `shown` names the source in messages (a .zip's own file name)."""
        from flowerdemo.data.archive import extract_zip

        source = Path(source)
        shown = shown or source.name
        staging = self.area / f".load-{secrets.token_hex(4)}"
        try:
            if source.is_file():
                top = find_dataset_root(extract_zip(source, staging / "zip", max_bytes=max_bytes, name=shown))
            elif source.is_dir():
                top = find_dataset_root(source)
            else:
                raise BuilderError(f"{shown} is neither a .zip file nor a folder")
            new = DatasetDraft(staging, self.name, self.limits)
            new.root.mkdir(parents=True)
            added, refused, made = [], [], []
            for name, folders in _class_folders(top, shown).items():
                try:
                    name = new.add_class(name)
                except BuilderError as exc:
                    refused.append(f"{shown}: folder '{name}' skipped: {exc}")
                    continue
                made.append(name)
                files = [f for d in folders for f in sorted(d.rglob("*")) if f.is_file() and not _hidden(f.name)]
                done = new.add_photos(name, [(f, f"{name}/{f.name}") for f in files])
                added += done.added
                refused += done.refused
            if not made:
                raise BuilderError(f"{shown} holds no class folders; expected <class>/<photo> (or train/<class>/ "
                                   "and val/<class>/) with at least one folder of photos")
            shutil.rmtree(self.root, ignore_errors=True)
            self.area.mkdir(parents=True, exist_ok=True)
            os.replace(new.root, self.root)
            self._touch()
            return Added(tuple(added), tuple(refused), tuple(made))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # --- helpers ---------------------------------------------------------------------------------

    def _class_dir(self, name: str) -> Path:
        found = {c.name: self.root / c.name for c in self.classes()}
        if not name and found:
            raise BuilderError("choose a class first: click its name in the list of classes")
        if not name:
            raise BuilderError("add a class first: type its name (e.g. rose) and press Add class")
        if name not in found:
            listed = ", ".join(found) or "none yet"
            raise BuilderError(f"there is no class {str(name or '')!r}; the classes are: {listed}")
        return found[name]

    def _touch(self) -> None:
        """Mark the area as in use: `prune_areas` removes areas by the age of this mark."""
        self.area.mkdir(parents=True, exist_ok=True)
        os.utime(self.area)


def _class_folders(top: Path, shown: str) -> dict[str, list[Path]]:
    """Class name -> its folders under a dataset root: `<class>/`, or `train/<class>/` + `val/<class>/`."""
    dirs = [d for d in sorted(top.iterdir()) if d.is_dir() and not _hidden(d.name)]
    splits = [d for d in dirs if d.name.lower() in RESERVED]
    out: dict[str, list[Path]] = {}
    for d in splits or dirs:
        for c in ([x for x in sorted(d.iterdir()) if x.is_dir() and not _hidden(x.name)] if splits else [d]):
            out.setdefault(c.name, []).append(c)
    log.info("loading %s: %d class folder(s)", shown, len(out))
    return out


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def _stem(shown: str) -> str:
    """A safe file-name stem from the visitor's file name (letters, digits, - and _ only)."""
    stem = Path(str(shown).replace("\\", "/")).stem if is_image_file(shown) else Path(str(shown)).name
    return re.sub(r"[^\w-]+", "-", stem, flags=re.ASCII).strip("-_")[:40] or "photo"


def _unique(folder: Path, stem: str) -> Path:
    while True:
        path = folder / f"{stem}-{secrets.token_hex(3)}.jpg"
        if not path.exists():
            return path


def prune_areas(folder: str | os.PathLike, max_age_s: float, max_bytes: int = 0,
                keep: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Delete visitors' areas under `folder` untouched for `max_age_s`, then the least recently used ones
    beyond `max_bytes` together (0: no bound); never those in `keep`. Returns what went."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    safe = {Path(p).resolve() for p in keep}
    areas = sorted((p for p in folder.iterdir() if p.is_dir() and p.resolve() not in safe),
                   key=lambda p: p.stat().st_mtime)
    now, gone = time.time(), []
    for area in areas:
        if now - area.stat().st_mtime > max_age_s:
            gone.append(area)
    if max_bytes > 0:
        sizes = {a: sum(f.stat().st_size for f in a.rglob("*") if f.is_file()) for a in areas if a not in gone}
        total = sum(sizes.values()) + sum(sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file())
                                          for p in safe if Path(p).is_dir())
        for area, size in sizes.items():  # least recently used first
            if total <= max_bytes:
                break
            gone.append(area)
            total -= size
    for area in gone:
        log.info("removing the dataset area %s (unused or over the space for all datasets)", area)
        shutil.rmtree(area, ignore_errors=True)
    return gone
