"""Reproduce the report's comparisons with several seeds: augmentation ladder (Table 2),
LR schedules (Table 3) and freezing. Writes a markdown report with mean +- std and curve plots."""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from flowerdemo.config import AugmentConfig, TrainConfig
from flowerdemo.train.engine import train
from flowerdemo.train.events import EpochEnd, Finished, RunStarted

log = logging.getLogger(__name__)

_NONE = AugmentConfig.none()
SUITES: dict[str, list[tuple[str, Callable[[TrainConfig], TrainConfig]]]] = {
    "augment": [  # the report's Table 2 ladder
        ("centre crop + normalisation", lambda c: replace(c, augment=_NONE)),
        ("+ horizontal flip", lambda c: replace(c, augment=replace(_NONE, hflip=True))),
        ("+ colour jitter + rotation",
         lambda c: replace(c, augment=replace(_NONE, hflip=True, color_jitter=True, rotation=True))),
        ("all five (crop, flip, jitter, rotation+translation, erasing)",
         lambda c: replace(c, augment=AugmentConfig(crop_scale_min=c.augment.crop_scale_min))),
    ],
    "schedule": [  # the report's Table 3, plus a constant LR
        ("linear warm-up + cosine", lambda c: replace(c, schedule="warmup_cosine")),
        ("LinearLR only (warm-up, then constant)", lambda c: replace(c, schedule="linear")),
        ("constant", lambda c: replace(c, schedule="constant", warmup_epochs=0)),
    ],
    "freeze": [
        ("no freezing", lambda c: replace(c, freeze="none")),
        ("first 2 stages frozen", lambda c: replace(c, freeze="stages", frozen_stages=2)),
        ("head only (backbone frozen)", lambda c: replace(c, freeze="backbone")),
    ],
}


def run_one(cfg: TrainConfig, data: Path, work: Path) -> dict:
    """One training run; returns its per-epoch curve and final numbers (the checkpoint is discarded)."""
    curve, mode, t0 = [], "", time.perf_counter()
    for ev in train(cfg, data, out_dir=work):
        if isinstance(ev, RunStarted):
            mode = ev.mode
        elif isinstance(ev, EpochEnd):
            curve.append({"epoch": ev.epoch, "train_loss": ev.train_loss, "val_acc": ev.val_acc, "val_loss": ev.val_loss})
        elif isinstance(ev, Finished):
            return {"best_val_acc": ev.best_val_acc, "final_val_acc": curve[-1]["val_acc"],
                    "final_train_loss": curve[-1]["train_loss"], "curve": curve, "mode": mode,
                    "seconds": time.perf_counter() - t0}
    raise RuntimeError("training ended without a Finished event")


def run_suite(suite: str, data: Path, base: TrainConfig, seeds: int, out_dir: Path,
              on_result: Callable[[str, int, dict], None] | None = None) -> dict:
    """Every configuration of `suite` with seeds 0..seeds-1; writes report.md, results.json, curves.png."""
    if suite not in SUITES:
        raise ValueError(f"unknown experiment {suite!r}; choose one of: {', '.join(SUITES)}")
    if seeds < 2:
        raise ValueError(f"need at least 2 seeds for a standard deviation, got {seeds}")
    if suite == "freeze" and base.mode != "full":
        log.warning("the freeze experiment fine-tunes the backbone: running it in full mode")
        base = replace(base, mode="full")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="flowerdemo-exp-") as work:
        for name, change in SUITES[suite]:
            for seed in range(seeds):
                res = run_one(change(replace(base, seed=seed)), data, Path(work))
                results.setdefault(name, []).append(res)
                log.info("%s | seed %d | best val %.2f%% | final val %.2f%% | %.0f s", name, seed,
                         100 * res["best_val_acc"], 100 * res["final_val_acc"], res["seconds"])
                if on_result:
                    on_result(name, seed, res)
    summary = {name: _stats(runs) for name, runs in results.items()}
    (out_dir / "results.json").write_text(json.dumps({"suite": suite, "config": base.to_dict(), "seeds": seeds,
                                                       "summary": summary, "runs": results}, indent=2))
    _plot(results, out_dir / f"{suite}-curves.png", suite)
    (out_dir / "report.md").write_text(format_report(suite, base, seeds, summary, f"{suite}-curves.png", data))
    return summary


def _stats(runs: list[dict]) -> dict[str, float]:
    out = {}
    for key in ("best_val_acc", "final_val_acc", "final_train_loss", "seconds"):
        values = [r[key] for r in runs]
        out[key + "_mean"] = statistics.fmean(values)
        out[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    out["n"] = len(runs)
    return out


def format_report(suite: str, base: TrainConfig, seeds: int, summary: dict, plot: str, data: Path) -> str:
    lines = [f"# Experiment: {suite}", "",
             f"Data: `{data}`; {seeds} seeds per configuration (seed changes the split, the init and the "
             f"augmentation draws); mode {base.mode}, model {base.model}, {base.epochs} epochs, batch {base.batch_size}, "
             f"lr {base.lr}, image size {base.image_size or 'backbone default'}. Mean ± sample std over seeds.", "",
             "| configuration | best val acc (%) | final val acc (%) | final train loss | time per run (s) |",
             "|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {100 * s['best_val_acc_mean']:.2f} ± {100 * s['best_val_acc_std']:.2f} | "
                     f"{100 * s['final_val_acc_mean']:.2f} ± {100 * s['final_val_acc_std']:.2f} | "
                     f"{s['final_train_loss_mean']:.3f} ± {s['final_train_loss_std']:.3f} | {s['seconds_mean']:.0f} |")
    lines += ["", f"![validation accuracy per epoch]({plot})", ""]
    return "\n".join(lines)


def _plot(results: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, runs in results.items():
        n = min(len(r["curve"]) for r in runs)
        epochs = np.arange(1, n + 1)
        for ax, key in zip(axes, ("val_acc", "train_loss"), strict=True):
            values = np.array([[row[key] for row in r["curve"][:n]] for r in runs])
            mean, std = values.mean(0), values.std(0)
            ax.plot(epochs, mean, label=name)
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
    axes[0].set(title=f"{title}: validation accuracy", xlabel="epoch", ylabel="accuracy")
    axes[1].set(title=f"{title}: training loss", xlabel="epoch", ylabel="loss")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
