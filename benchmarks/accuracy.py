"""Accuracy of the default training recipe: flowerdemo's TrainConfig defaults on a seeded 80/20 split.

Trains with `flowerdemo.train.engine.train` and reads everything from its events (EpochEnd, Finished):
best validation accuracy, per-class recall (and precision/F1), the per-epoch curve, wall time and
training images/s. Only --mode, --image-size, --epochs (and --fast-views, --head-only, --seed,
--device) are overridden; every other setting is the TrainConfig default and is stored in the JSON.

The fast-mode feature cache points at a fresh temporary folder, so the wall time is that of a
first (cold) run; checkpoints go to a temporary folder too unless --keep-checkpoint DIR is given.

    python benchmarks/accuracy.py                                   # defaults: mode auto (GPU full, CPU fast)
    python benchmarks/accuracy.py --mode full --device cuda
    python benchmarks/accuracy.py --mode fast --seed 1
    python benchmarks/accuracy.py --mode fast --head-only           # the linear-probe baseline
    python benchmarks/accuracy.py --limit-per-class 20 --epochs 1 --image-size 96   # smoke
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

try:
    from . import _common as common  # type: ignore[no-redef]
except ImportError:  # run as a script
    import _common as common  # type: ignore[no-redef]

NAME = "accuracy"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    common.add_common_args(p, NAME)
    p.add_argument("--mode", choices=("auto", "fast", "full"), default="auto",
                   help="auto (the default config): full fine-tuning on a GPU, fast mode (cached activations) on a CPU")
    p.add_argument("--image-size", type=int, default=None, help="override TrainConfig.image_size (0 = backbone's own)")
    p.add_argument("--epochs", type=int, default=None, help="override TrainConfig.epochs")
    p.add_argument("--fast-views", type=int, default=None, help="override TrainConfig.fast_views (fast mode)")
    p.add_argument("--head-only", action="store_true",
                   help="fast mode: freeze the whole backbone and train the head on pooled features "
                        "(TrainConfig.fast_tune_last_stage=False), the plain linear-probe baseline")
    p.add_argument("--seed", type=int, default=0, help="split and training seed (TrainConfig.seed)")
    p.add_argument("--limit-per-class", type=int, default=0, help="use at most N images per class (0 = all)")
    p.add_argument("--keep-checkpoint", type=Path, default=None, metavar="DIR",
                   help="write the run's checkpoint under DIR (default: a temporary folder, deleted)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    common.require_data(args.data)
    common.apply_threads(args.threads)
    from flowerdemo.config import ConfigError, TrainConfig
    from flowerdemo.data.dataset import DatasetError, scan_dataset

    device = common.resolve_device(args.device)
    overrides: dict[str, Any] = {"mode": args.mode, "seed": args.seed, "device": device}
    for key in ("image_size", "epochs", "fast_views"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.head_only:
        overrides["fast_tune_last_stage"] = False
    try:
        cfg = replace(TrainConfig(), **overrides)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    try:
        full = scan_dataset(args.data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    except DatasetError as exc:
        sys.exit(f"error: {exc}")
    split = common.limit_split(full, args.limit_per_class, cfg.val_fraction)
    info = common.machine_info()
    print(f"accuracy benchmark: {cfg.model}, mode {cfg.mode}, {device}, {len(split.train)} train / {len(split.val)} "
          f"val images, {cfg.epochs} epoch(s)\nmachine: {common.machine_line(info)}", file=sys.stderr, flush=True)

    from flowerdemo.train.engine import train
    from flowerdemo.train.events import EpochEnd, Finished, RunStarted

    with tempfile.TemporaryDirectory(prefix="flowerdemo-accuracy-") as tmp:
        os.environ["FLOWERDEMO_CACHE"] = str(Path(tmp) / "cache")  # cold fast-mode feature cache
        out_dir = args.keep_checkpoint or Path(tmp) / "checkpoints"
        epochs: list[dict[str, Any]] = []
        started = finished = None
        t0 = time.perf_counter()
        for ev in train(cfg, split, out_dir=out_dir):
            if isinstance(ev, RunStarted):
                started = ev
            elif isinstance(ev, EpochEnd):
                epochs.append({"epoch": ev.epoch, "train_loss": round(ev.train_loss, 4),
                               "train_acc": round(ev.train_acc, 4), "val_loss": round(ev.val_loss, 4),
                               "val_acc": round(ev.val_acc, 4), "lr": ev.lr, "seconds": round(ev.seconds, 3),
                               "elapsed": round(ev.elapsed, 3), "images_per_s": round(ev.images_per_s, 2)})
                print(f"  epoch {ev.epoch}/{ev.epochs}: val acc {ev.val_acc:.4f}, {ev.images_per_s:.1f} img/s, "
                      f"{ev.elapsed:.1f} s", file=sys.stderr, flush=True)
            elif isinstance(ev, Finished):
                finished = ev
        wall = time.perf_counter() - t0
    if finished is None or not epochs:
        sys.exit("error: the engine finished without a Finished event")

    report = finished.report
    train_s = sum(e["seconds"] for e in epochs)
    images = sum(e["images_per_s"] * e["seconds"] for e in epochs)
    per_class = {c: m["recall"] for c, m in report["per_class"].items()}
    summary = {"val_acc": round(finished.best_val_acc, 4), "best_epoch": finished.best_epoch,
               "macro_f1": report.get("macro_f1"), "per_class_recall": per_class,
               "wall_s": round(wall, 2), "engine_seconds": round(finished.seconds, 2),
               "setup_s": round(epochs[0]["elapsed"] - epochs[0]["seconds"], 2),  # decode (+ features) + first val
               "train_s": round(train_s, 2), "train_img_s": round(images / train_s, 2) if train_s else None,
               "mode": started.mode if started else cfg.mode, "device": started.device if started else device,
               "n_train": started.n_train if started else len(split.train),
               "n_val": started.n_val if started else len(split.val)}

    classes = list(per_class)
    header = ["config", "val acc", *(f"{c} recall" for c in classes), "macro F1", "wall s", "train img/s"]
    size = cfg.image_size or "default"
    how = ""
    if summary["mode"] == "fast":
        how = f", {cfg.fast_views} views, {'last stage + head' if cfg.fast_tune_last_stage else 'head only'}"
    row = [f"{cfg.model} {summary['mode']}{how}, {cfg.epochs} ep, {size} px, seed {cfg.seed}", f"{summary['val_acc']:.4f}",
           *(f"{per_class[c]:.3f}" for c in classes), f"{summary['macro_f1']:.4f}", f"{summary['wall_s']:.1f}",
           common.fmt(summary["train_img_s"])]
    print(common.markdown_table(header, [row]))
    payload = {"benchmark": NAME, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": info,
               "command": "python benchmarks/accuracy.py " + " ".join(argv),
               "settings": {"overrides": {k: v for k, v in overrides.items()}, "config": cfg.to_dict(),
                            "data": str(args.data), "limit_per_class": args.limit_per_class or None,
                            "subset": bool(args.limit_per_class), "counts": split.counts(),
                            "threads": args.threads or "torch default",
                            "checkpoint": str(finished.run_dir) if args.keep_checkpoint else None},
               "summary": summary, "epochs": epochs, "report": report, "mistakes": list(finished.mistakes),
               "table": {"header": header, "rows": [row]}}
    path = common.write_json(args.out, NAME, payload)
    print(f"\nwritten: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
