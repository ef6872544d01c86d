"""Cross-validated accuracy of training recipes: repeated seeded, leakage-free 80/20 splits of one folder.

Each recipe (a named set of TrainConfig overrides, RECIPES below) is trained with
`flowerdemo.train.engine.train` on every split; per split it records the best-epoch validation
accuracy (optimistic: that epoch was chosen on the same photos), the last-epoch accuracy (nothing was
chosen on it: the honest figure), the last-epoch weights' accuracy with flip test-time augmentation
(the image's and its mirror's probabilities averaged, as `predict --tta`), the per-epoch curve, and
the seconds of decoding, extraction (fast mode), training and finishing. Then mean ± sample std over
splits, and each recipe's per-split difference from the first recipe named (the same splits: paired).

Split seeds start at 100: seed 0 is the split every earlier figure and the shipped model's recipe were
chosen on, so it is refused. The split keeps near-duplicate groups on one side (scan_dataset's default).
The training seed is the split seed (as `train --seed S` does). Fast-mode activations are cached per
split + backbone + geometry (`--cache`): a recipe that changes only the training after extraction
reuses them, and its row says `cached` (its wall time then lacks the extraction).

    python benchmarks/cv.py --recipe default                       # 3 splits, seeds 100-102
    python benchmarks/cv.py --recipe default --recipe epochs12 --cache ~/.cache/flowerdemo-cv
    python benchmarks/cv.py --resume benchmarks/results/cv-X.json --recipe lite2-260   # add to a file
    python benchmarks/cv.py --limit-per-class 20 --splits 2 --set epochs=2 --set image_size=96   # smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

try:
    from . import _common as common  # type: ignore[no-redef]
    from ._cv_run import run_recipe  # type: ignore[no-redef]
except ImportError:  # run as a script
    import _common as common  # type: ignore[no-redef]
    from _cv_run import run_recipe  # type: ignore[no-redef]

NAME = "cv"
FIRST_SEED = 100  # not 0: the split earlier recipe choices were made on
# name -> (what it changes, TrainConfig overrides); "default" is TrainConfig() as the CPU's one click runs it
RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("TrainConfig() defaults (CPU: fast mode, Lite0, 224 px, 20 epochs)", {}),
    "epochs8": ("8 epochs (schedule shortened with them)", {"epochs": 8}),
    "epochs12": ("12 epochs (schedule shortened with them)", {"epochs": 12}),
    "epochs30": ("30 epochs", {"epochs": 30}),
    "views2": ("2 cached views instead of 3 (less extraction)", {"fast_views": 2}),
    "views4": ("4 cached views instead of 3 (more extraction)", {"fast_views": 4}),
    "lite2-240": ("EfficientNet-Lite2 at 240 px (the shipped model's size)",
                  {"model": "efficientnet_lite2", "image_size": 240}),
    "lite2-260": ("EfficientNet-Lite2 at 260 px (its native size)", {"model": "efficientnet_lite2", "image_size": 260}),
    "lite0-240": ("Lite0 at 240 px", {"image_size": 240}),
    "head-only": ("head only on pooled features (the linear probe)", {"fast_tune_last_stage": False}),
}
METRICS = ("last_acc", "best_acc", "tta_last_acc", "wall_s", "extract_s", "train_s")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    common.add_common_args(p, NAME)
    p.add_argument("--recipe", action="append", choices=sorted(RECIPES), default=None,
                   help="recipe(s) to run, in order; the first is the baseline of the paired differences "
                        "(default: default). " + "; ".join(f"{k}: {v[0]}" for k, v in RECIPES.items()))
    p.add_argument("--splits", type=int, default=3, help="number of split seeds")
    p.add_argument("--first-seed", type=int, default=FIRST_SEED, help="split seeds are first-seed, first-seed+1, ...")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="TrainConfig override applied to every recipe (JSON value, e.g. epochs=2 or model=\"x\")")
    p.add_argument("--no-tta", action="store_true", help="skip the flip-TTA scoring of the last-epoch weights")
    p.add_argument("--cache", type=Path, default=None,
                   help="cache root for fast mode's activations and the near-duplicate fingerprints "
                        "($FLOWERDEMO_CACHE); default: the app's cache_dir setting")
    p.add_argument("--resume", type=Path, default=None,
                   help="an earlier cv JSON: its runs are kept, (recipe, seed) pairs already in it are skipped, "
                        "and it is rewritten (unless --out is given)")
    p.add_argument("--limit-per-class", type=int, default=0, help="use at most N images per class (0 = all)")
    return p.parse_args(argv)


def parse_sets(items: list[str]) -> dict[str, Any]:
    """["epochs=2", 'model="x"'] -> {"epochs": 2, "model": "x"}; a bare word is taken as a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            sys.exit(f"error: --set {item!r}: expected KEY=VALUE, e.g. --set epochs=12")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def mean_std(values: list[float]) -> dict[str, float | int | None]:
    """Mean and sample standard deviation (n - 1; None for one value) of the non-missing values."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else None, "n": len(vals)}


def summarise(runs: list[dict[str, Any]], recipes: list[str]) -> dict[str, Any]:
    """Per recipe: mean ± std of METRICS over its splits, and of its per-split difference from the first
    recipe's (only on the seeds both have)."""
    by = {r: {run["seed"]: run for run in runs if run["recipe"] == r} for r in recipes}
    base = by[recipes[0]] if recipes else {}
    out: dict[str, Any] = {}
    for r in recipes:
        stats = {m: mean_std([run.get(m) for run in by[r].values()]) for m in METRICS}
        common_seeds = sorted(set(by[r]) & set(base))
        for m in ("last_acc", "best_acc", "tta_last_acc"):
            diffs = [by[r][s][m] - base[s][m] for s in common_seeds
                     if by[r][s].get(m) is not None and base[s].get(m) is not None]
            stats[f"{m}_minus_{recipes[0]}"] = mean_std(diffs)
        stats["seeds"] = sorted(by[r])
        stats["any_cached"] = any(run.get("features_cached") for run in by[r].values())
        out[r] = stats
    return out


def _pct(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "n/a"
    return f"{100 * s['mean']:.2f}" + (f" ± {100 * s['std']:.2f}" if s["std"] is not None else "")


def table(summary: dict[str, Any], recipes: list[str]) -> tuple[list[str], list[list[str]]]:
    base = recipes[0]
    header = ["recipe", "last epoch %", "best epoch %", "last + flip TTA %", f"last − {base} (pts)",
              "wall s", "extract s", "train s", "splits"]
    rows = []
    for r in recipes:
        s = summary[r]
        wall = common.fmt(s["wall_s"]["mean"], ".0f") + (" (cached)" if s["any_cached"] else "")
        rows.append([r, _pct(s["last_acc"]), _pct(s["best_acc"]), _pct(s["tta_last_acc"]),
                     _pct(s[f"last_acc_minus_{base}"]) if r != base else "—", wall,
                     common.fmt(s["extract_s"]["mean"], ".0f"), common.fmt(s["train_s"]["mean"], ".0f"), str(len(s["seeds"]))])
    return header, rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    recipes = args.recipe or ["default"]
    seeds = list(range(args.first_seed, args.first_seed + args.splits))
    if args.splits < 1:
        sys.exit(f"error: --splits must be >= 1, got {args.splits}")
    if 0 in seeds:
        sys.exit(f"error: split seeds {seeds} include 0, the split earlier recipe choices were made on; "
                 f"choose --first-seed >= 1 (default {FIRST_SEED})")
    common.require_data(args.data)
    if args.cache is not None:
        os.environ["FLOWERDEMO_CACHE"] = str(args.cache.expanduser().resolve())
    common.apply_threads(args.threads)
    from flowerdemo.config import ConfigError, TrainConfig
    from flowerdemo.data.dataset import DatasetError, scan_dataset

    device = common.resolve_device(args.device)
    extra = parse_sets(args.set)
    configs = {}
    try:
        for r in recipes:
            configs[r] = replace(TrainConfig(), device=device, **{**RECIPES[r][1], **extra})
    except (ConfigError, TypeError) as exc:
        sys.exit(f"error: recipe {r!r} with --set {extra}: {exc}")
    out = args.out or args.resume or common.default_out(NAME)
    runs: list[dict[str, Any]] = []
    shown = ["CACHE_DIR" if i and argv[i - 1] == "--cache" else a for i, a in enumerate(argv)]  # no machine path
    commands = ["python benchmarks/cv.py " + " ".join(shown)]
    if args.resume:
        earlier = json.loads(args.resume.read_text())
        runs, commands = earlier["runs"], [*earlier.get("commands", [earlier["command"]]), *commands]
    previous = [r for r in dict.fromkeys(run["recipe"] for run in runs) if r not in recipes]
    info = common.machine_info()
    print(f"cv benchmark: recipes {recipes} on split seeds {seeds} of {args.data}\nmachine: {common.machine_line(info)}",
          file=sys.stderr, flush=True)
    for seed in seeds:
        try:
            split = scan_dataset(args.data, val_fraction=TrainConfig().val_fraction, seed=seed, keep_groups=True)
        except DatasetError as exc:
            sys.exit(f"error: {exc}")
        split = common.limit_split(split, args.limit_per_class)
        for r in recipes:
            if any(run["recipe"] == r and run["seed"] == seed for run in runs):
                continue
            cfg = replace(configs[r], seed=seed)
            print(f"  {r}, split seed {seed}: {len(split.train)} train / {len(split.val)} val", file=sys.stderr, flush=True)
            result = run_recipe(cfg, split, tta=not args.no_tta)
            runs.append({"recipe": r, "seed": seed, "overrides": {**RECIPES[r][1], **extra},
                         "counts": split.counts(), "groups_kept_together": split.groups_kept_together,
                         "groups_left_split": split.groups_left_split, "git_commit": info["git_commit"], **result})
            print(f"    last {result['last_acc']:.4f}, best {result['best_acc']:.4f} (epoch {result['best_epoch']}), "
                  f"tta {common.fmt(result['tta_last_acc'], '.4f')}, wall {result['wall_s']:.0f} s"
                  f"{' (features cached)' if result['features_cached'] else ''}", file=sys.stderr, flush=True)
            _write(out, args, commands, info, runs, previous + recipes, device, extra)
    summary = summarise(runs, previous + recipes)
    print(common.markdown_table(*table(summary, previous + recipes)))
    path = _write(out, args, commands, info, runs, previous + recipes, device, extra)
    print(f"\nwritten: {path}", file=sys.stderr)
    return 0


def _write(out: Path, args: argparse.Namespace, commands: list[str], info: dict[str, Any], runs: list[dict[str, Any]],
           recipes: list[str], device: str, extra: dict[str, Any]) -> Path:
    """The whole file again after every run, so an interrupted sweep keeps what it measured (--resume)."""
    from flowerdemo.config import TrainConfig

    summary = summarise(runs, recipes)
    header, rows = table(summary, recipes)
    payload = {"benchmark": NAME, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": info,
               "command": commands[-1], "commands": commands,  # every invocation that added runs (--resume)
               "settings": {"data": str(args.data), "device": device, "recipes": {r: RECIPES[r] for r in recipes},
                            "set": extra, "base_config": TrainConfig().to_dict(), "split": "scan_dataset(keep_groups=True)",
                            "limit_per_class": args.limit_per_class or None, "threads": args.threads or "torch default",
                            "std": "sample standard deviation over splits (n - 1)",
                            "tta": "last-epoch weights, full model on the decoded validation photos, softmax (T = 1) "
                                   "of the centre crop and its mirror averaged"},
               "summary": summary, "runs": runs, "table": {"header": header, "rows": rows}}
    return common.write_json(out, NAME, payload)


if __name__ == "__main__":
    sys.exit(main())
