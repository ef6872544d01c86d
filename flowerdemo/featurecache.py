"""On-disk cache of fast-mode backbone features, keyed by everything that determines them:
backbone, weights, geometry, augmentation settings, views, seed and the exact image files (path,
size, mtime). A second run on the same data and backbone skips feature extraction entirely."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from .config import TrainConfig
from .models import Preprocessing

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("FLOWERDEMO_CACHE", Path.home() / ".cache" / "flowerdemo")) / "features"


# Bump when the features of the same backbone name change: 2 = Lite weights on timm's tf_ variant
# (TF "SAME" padding); caches written by the PyTorch-padded variant must not be reused.
FEATURES_VERSION = 2


def feature_key(cfg: TrainConfig, prep: Preprocessing, train_paths: Sequence[Path], val_paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"version": FEATURES_VERSION, "model": cfg.model, "pretrained": cfg.pretrained, "prep": prep.to_dict(),
                         "augment": cfg.to_dict()["augment"], "views": cfg.fast_views, "seed": cfg.seed,
                         "torch": torch.__version__}, sort_keys=True).encode())
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
        return t["train"].float(), t["val"].float()
    except Exception as exc:  # a truncated or foreign file: recompute
        log.warning("ignoring unreadable feature cache %s: %s", path, exc)
        return None


def save_features(cache_dir: Path, key: str, train: torch.Tensor, val: torch.Tensor) -> None:
    """fp16 on disk (features are post-BN activations: fp16 loses nothing measurable); atomic."""
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".{key}.tmp-{os.getpid()}"
        save_file({"train": train.half().contiguous(), "val": val.half().contiguous()}, str(tmp))
        os.replace(tmp, cache_dir / f"{key}.safetensors")
    except OSError as exc:  # a read-only home must not stop training
        log.warning("could not write the feature cache in %s: %s", cache_dir, exc)
