"""On-disk cache of fast-mode backbone activations (pooled features, or the last stage's inputs),
keyed by everything that determines them: backbone, weights, geometry, augmentation settings, views,
seed, what is cached, precision and the exact image files (path, size, mtime). A second run on the
same data and backbone skips extraction entirely."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torchvision
from safetensors.torch import load_file, save_file

from flowerdemo.config import TrainConfig
from flowerdemo.models.registry import Preprocessing

log = logging.getLogger(__name__)


# Least recently used entries beyond this total are deleted after each write, so the cache's disk use
# stays bounded (what one entry weighs for the dev set: docs/benchmarks.md §1, fast mode)
MAX_CACHE_BYTES = 4 * 2**30  # above fast.MAP_BUDGET_BYTES: one big entry never evicts all others


def default_cache_dir() -> Path:
    """<cache root>/features: the root is the app's and the CLI's cache_dir setting ($FLOWERDEMO_CACHE)."""
    from flowerdemo.settings import Settings

    return Settings.one_from_env("cache_dir") / "features"


# Bump when the features of the same backbone name change: 2 = Lite weights on timm's tf_ variant
# (TF "SAME" padding); caches written by the PyTorch-padded variant must not be reused. 3 = fp16 as
# computed (no fp32 round trip), "cached" and "precision" in the key.
FEATURES_VERSION = 3


def feature_key(cfg: TrainConfig, prep: Preprocessing, train_paths: Sequence[Path], val_paths: Sequence[Path],
                cached: str = "pooled", precision: str = "fp32", device: str = "cpu") -> str:
    """`cached`: "pooled" features or "trunk" activations (the last stage's inputs); `precision`: the
    autocast dtype they were computed in; `device`: the device type (kernels differ in rounding)."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": FEATURES_VERSION, "model": cfg.model, "pretrained": cfg.pretrained, "prep": prep.to_dict(),
                         "augment": cfg.to_dict()["augment"], "views": cfg.fast_views, "seed": cfg.seed,
                         "cached": cached, "precision": precision, "device": device, "torch": torch.__version__,
                         "timm": timm.__version__, "torchvision": torchvision.__version__}, sort_keys=True).encode())
    for tag, paths in (("train", train_paths), ("val", val_paths)):
        h.update(tag.encode())
        for p in paths:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def load_features(cache_dir: Path, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    path = Path(cache_dir) / f"{key}.safetensors"
    if not path.is_file():
        return None
    try:
        t = load_file(str(path))
        os.utime(path)  # recently used: the last to be pruned
        return t["train"], t["val"]
    except Exception as exc:  # a truncated or foreign file: recompute
        log.warning("ignoring unreadable feature cache %s: %s", path, exc)
        return None


def save_features(cache_dir: Path, key: str, train: torch.Tensor, val: torch.Tensor) -> None:
    """fp16 on disk, as computed (post-BN activations: fp16 loses nothing measurable); atomic."""
    cache_dir = Path(cache_dir)
    tmp = cache_dir / f".{key}.tmp-{os.getpid()}"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        save_file({"train": train.half().contiguous(), "val": val.half().contiguous()}, str(tmp))
        os.replace(tmp, cache_dir / f"{key}.safetensors")
        prune(cache_dir, keep=key)
    except Exception as exc:  # a read-only home or a full disk must not stop training (safetensors
        # reports write errors as SafetensorError, not OSError)
        log.warning("could not write the feature cache in %s: %s", cache_dir, exc)
    finally:
        tmp.unlink(missing_ok=True)


def prune(cache_dir: Path, keep: str = "", max_bytes: int | None = None) -> list[Path]:
    """Delete the least recently used cache files until the rest fit in `max_bytes` (default
    MAX_CACHE_BYTES); the entry `keep` (just written) always stays. Returns what was deleted."""
    limit = MAX_CACHE_BYTES if max_bytes is None else max_bytes
    for stale in Path(cache_dir).glob(".*.tmp-*"):  # left by a process killed mid-write, an hour ago or more
        try:
            if time.time() - stale.stat().st_mtime > 3600:
                stale.unlink()
        except OSError:
            continue
    entries = []
    for path in Path(cache_dir).glob("*.safetensors"):
        try:
            st = path.stat()
        except OSError:  # removed meanwhile by another process
            continue
        entries.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in entries)
    deleted = []
    for _, size, path in sorted(entries):  # oldest first
        if total <= limit:
            break
        if path.stem == keep:
            continue
        try:
            path.unlink()
        except OSError:
            continue
        total -= size
        deleted.append(path)
    if deleted:
        log.info("feature cache: removed %d least recently used file(s) to stay under %.1f GiB", len(deleted), limit / 2**30)
    return deleted
