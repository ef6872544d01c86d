"""Likely label errors found by a default fast-mode run (flowerdemo.train.label_issues), and what finding them costs.

Trains the default recipe in fast mode with `flowerdemo.train.engine.train` on a cold feature cache (as
benchmarks/accuracy.py does) and reads the Finished event: how many photos cleanlab flags per split, the
seconds the label-issue step took inside the run (its own figure: cross-fitting, cleanlab and, on a first
run in a process, importing scikit-learn and cleanlab), and the size of the per-photo validation
predictions stored for the confusion matrix. A contact sheet of the top 20 (thumbnail, given -> suggested
label, confidence) is written outside the repository (it shows dataset photos): look at it and judge
which are truly mislabelled.

    python benchmarks/label_issues.py                          # ../shared/datasets/flowers5-dev, ~3 min on 2 cores
    python benchmarks/label_issues.py --limit-per-class 30 --epochs 2 --image-size 96    # smoke
    python benchmarks/label_issues.py --cost 3 --feature-cache ~/.cache/flowerdemo      # the steps' seconds only
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
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

NAME = "label_issues"
SHEET_N = 20
THUMB = 180


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    common.add_common_args(p, NAME)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="default: the TrainConfig default")
    p.add_argument("--image-size", type=int, default=None, help="default: the backbone's own")
    p.add_argument("--limit-per-class", type=int, default=None, help="a subset (smoke runs)")
    p.add_argument("--feature-cache", type=Path, default=None,
                   help="reuse fast mode's feature cache in this folder (default: a cold one, as benchmarks/accuracy.py); "
                        "the label-issue figures do not depend on it, the run's length does")
    p.add_argument("--cost", type=int, default=0, metavar="N",
                   help="instead of training: prepare fast mode (features from --feature-cache when there) and time "
                        "the label-issue steps on the training photos N times (the first includes the imports)")
    p.add_argument("--sheet", type=Path, default=Path(tempfile.gettempdir()) / "flowerdemo-label-issues-top20.png",
                   help="contact sheet of the top 20 (kept out of the repository: it shows dataset photos)")
    return p.parse_args(argv)


def contact_sheet(issues: list[dict[str, Any]], root: str, path: Path, cols: int = 5) -> None:
    """Thumbnails of the top issues with rank, given -> suggested label, confidence and split."""
    from PIL import Image, ImageDraw, ImageOps

    from flowerdemo.train.label_issues import photo_path

    rows = max(1, -(-len(issues) // cols))
    cell_h = THUMB + 48
    sheet = Image.new("RGB", (cols * THUMB, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for k, issue in enumerate(issues):
        x, y = (k % cols) * THUMB, (k // cols) * cell_h
        with Image.open(photo_path(issue["path"], root)) as img:
            sheet.paste(ImageOps.fit(img.convert("RGB"), (THUMB - 4, THUMB - 4)), (x + 2, y + 2))
        draw.text((x + 4, y + THUMB), f"#{k + 1} {issue['given']} -> {issue['suggested']}", fill="black")
        draw.text((x + 4, y + THUMB + 14), f"conf {issue['confidence']:.2f} q {issue['quality']:.3f} {issue['split']}",
                  fill="black")
        draw.text((x + 4, y + THUMB + 28), Path(issue["path"]).name[:28], fill="gray")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def import_seconds() -> float:
    """What importing scikit-learn and cleanlab costs a fresh process (paid once, by the first finished run)."""
    code = "import time; t = time.perf_counter(); import sklearn.linear_model, cleanlab.filter; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(float(out.stdout.strip()), 2)


def cost(cfg, split, repeats: int) -> list[dict[str, float]]:
    """Seconds of each label-issue step on the training photos (features, cross-fitting, cleanlab), `repeats` times."""

    from flowerdemo.train import label_issues as li
    from flowerdemo.train.engine import Run, prepare

    with tempfile.TemporaryDirectory(prefix="flowerdemo-label-issues-") as tmp:
        run = Run(cfg, None, Path(tmp))
        for _ in prepare(run, split):
            pass
        setup, rows = run.trainer.setup, []
        labels, paths = setup.train.labels.numpy(), [str(p) for p in setup.train.paths]
        for _ in range(repeats):
            t0 = time.perf_counter()
            features = li.starting_features(run.trainer)
            t1 = time.perf_counter()
            probs = li.cross_fitted_probs(features, labels, len(split.classes), seed=cfg.seed)
            t2 = time.perf_counter()
            found = li.find_label_issues(labels, probs, split.classes, paths, ["train"] * len(paths))
            t3 = time.perf_counter()
            rows.append({"features_s": round(t1 - t0, 2), "cross_fit_s": round(t2 - t1, 2), "cleanlab_s": round(t3 - t2, 2),
                         "total_s": round(t3 - t0, 2), "issues": len(found),
                         "cross_fit_acc": round(float((probs.argmax(1) == labels).mean()), 4)})
            print(rows[-1], file=sys.stderr, flush=True)
        run.discard_if_unsaved()
    return rows


def command(argv: list[str]) -> str:
    """The command line, with the values of the folder/file options that name this machine's paths left out."""
    masked = [("<" + prev.lstrip("-").upper() + ">" if prev in ("--feature-cache", "--sheet", "--out") else a)
              for prev, a in zip(["", *argv], argv, strict=False)]
    return "python benchmarks/label_issues.py " + " ".join(masked)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    common.require_data(args.data)
    common.apply_threads(args.threads)
    from flowerdemo.config import TrainConfig
    from flowerdemo.data.dataset import scan_dataset
    from flowerdemo.train.engine import train
    from flowerdemo.train.events import EpochEnd, Finished, Progress

    overrides: dict[str, Any] = {"mode": "fast", "seed": args.seed, "device": common.resolve_device(args.device)}
    for key in ("epochs", "image_size"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    cfg = replace(TrainConfig(), **overrides)
    split = common.limit_split(scan_dataset(args.data, val_fraction=cfg.val_fraction, seed=cfg.seed),
                               args.limit_per_class, cfg.val_fraction)
    info = common.machine_info()
    print(f"label issues: {cfg.model} fast, {len(split.train)} train / {len(split.val)} val, {cfg.epochs} epochs\n"
          f"machine: {common.machine_line(info)}", file=sys.stderr, flush=True)
    if args.cost:
        if args.feature_cache:
            os.environ["FLOWERDEMO_CACHE"] = str(args.feature_cache)
        rows = cost(cfg, split, args.cost)
        path = common.write_json(args.out, NAME + "-cost", {
            "benchmark": NAME + "-cost", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": info,
            "load_average": os.getloadavg(), "command": command(argv),
            "settings": {"config": cfg.to_dict(), "data": str(args.data), "counts": split.counts()}, "runs": rows})
        print(f"written: {path}", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory(prefix="flowerdemo-label-issues-") as tmp:
        os.environ["FLOWERDEMO_CACHE"] = str(args.feature_cache or Path(tmp) / "cache")  # default cold
        t0 = time.perf_counter()
        done, extracted = None, False
        for ev in train(cfg, split, out_dir=Path(tmp) / "runs"):
            if isinstance(ev, Progress) and ev.stage == "features":
                extracted = True
            elif isinstance(ev, EpochEnd):
                print(f"  epoch {ev.epoch}/{ev.epochs}: val acc {ev.val_acc:.4f}, {ev.elapsed:.0f} s", file=sys.stderr)
            elif isinstance(ev, Finished):
                done = ev
        wall = time.perf_counter() - t0
    if done is None or done.stopped:
        sys.exit("error: the run did not finish")
    found = done.report["label_issues"]
    if "error" in found:
        sys.exit(f"error: label issues failed in the run: {found['error']}")
    top = [dict(issue) for issue in done.label_issues[:SHEET_N]]
    contact_sheet(top, done.data_root, args.sheet)
    summary = {"val_acc": round(done.best_val_acc, 4), "issues_total": found["total"], "issues_by_split": found["by_split"],
               "photos_checked": found["checked"], "label_issue_seconds": found["seconds"],
               "share_of_run": round(found["seconds"] / done.seconds, 4), "run_seconds": round(done.seconds, 1),
               "wall_s": round(wall, 1), "import_seconds_fresh_process": import_seconds(),
               "val_predictions": len(done.val_predictions),
               "val_predictions_json_bytes": len(json.dumps(list(done.val_predictions))),
               "label_issues_json_bytes": len(json.dumps(list(done.label_issues)))}
    header = ["photos checked (train/val)", "issues (train/val)", "label-issue s", "share of run", "val acc"]
    row = [f"{found['checked']['train']}/{found['checked']['val']}",
           f"{found['total']} ({found['by_split']['train']}/{found['by_split']['val']})",
           f"{found['seconds']:.2f}", f"{summary['share_of_run']:.1%}", f"{done.best_val_acc:.4f}"]
    print(common.markdown_table(header, [row]))
    for k, issue in enumerate(top, 1):
        print(f"{k:2d}. {issue['path']}: {issue['given']} -> {issue['suggested']} ({issue['confidence']:.2f}, "
              f"quality {issue['quality']:.3f}, {issue['split']})")
    payload = {"benchmark": NAME, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": info,
               "command": command(argv),
               "settings": {"config": cfg.to_dict(), "data": str(args.data), "counts": split.counts(),
                            "features": "extracted in this run" if extracted else "read from the feature cache",
                            "limit_per_class": args.limit_per_class, "method": found["method"],
                            "train_probs": found["train_probs"], "val_probs": found["val_probs"]},
               "summary": summary, "issues": list(done.label_issues), "table": {"header": header, "rows": [row]}}
    path = common.write_json(args.out, NAME, payload)
    print(f"\ncontact sheet: {args.sheet}\nwritten: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
