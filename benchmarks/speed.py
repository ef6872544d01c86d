"""Training speed: a plain PyTorch reference loop vs flowerdemo's engine, in one run.

Same files (one flowerdemo.data.dataset.scan_dataset split), same model (flowerdemo.models.registry.build_model),
same epochs, batch size, input size and recipe (param groups, warm-up + cosine schedule, label
smoothing, gradient clipping, AdamW), so what differs is the pipeline:

  plain  torchvision-style: a Dataset over the split's files + DataLoader(num_workers = cores),
         PIL transforms (RandomResizedCrop, flip, ColorJitter, RandomAffine rotation/translate,
         ToTensor, Normalize, RandomErasing) decoded every epoch, fp32, `.item()` every step,
         torch.optim.AdamW (default implementation), best weights saved with torch.save.
  full   flowerdemo.train.engine.train(mode="full"): images decoded once into a uint8 tensor cache (on the
         GPU when there is one), batched tensor augmentations, bf16 autocast + channels_last +
         fused AdamW on CUDA, one host sync per epoch.
  fast   flowerdemo.train.engine.train(mode="fast", the CPU default): the backbone up to its last stage
         runs once per view (cached), then the last stage + head train from that cache. Its img/s
         counts steps on cached activations, so compare it by wall time / time to target, not img/s.

Each variant runs in its own subprocess (clean peak-memory numbers, no cudnn / thread settings
leaking from one variant into the next); the files are read once beforehand so all variants see
a warm page cache. The fast-mode feature cache points at a fresh temporary folder: cold run.

    python benchmarks/speed.py                                   # resnet50, pretrained, 5 epochs
    python benchmarks/speed.py --no-pretrained --target-acc 0.5  # resnet50 without weights (offline)
    python benchmarks/speed.py --model efficientnet_lite0        # bundled weights, offline
    python benchmarks/speed.py --limit-per-class 20 --epochs 1 --image-size 96 --model efficientnet_lite0  # smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    from . import _common as common  # type: ignore[no-redef]
except ImportError:  # run as a script
    import _common as common  # type: ignore[no-redef]

VARIANTS = ("plain", "full", "fast")
NAME = "speed"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    common.add_common_args(p, NAME)
    p.add_argument("--model", default="resnet50", help="any flowerdemo model name (default resnet50)")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="random weights: throughput needs none, and torchvision weights cannot be downloaded offline")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=0, help="model input size; 0 = the backbone's own (224)")
    p.add_argument("--limit-per-class", type=int, default=0, help="use at most N images per class (0 = all)")
    p.add_argument("--target-acc", type=float, default=0.85,
                   help="report the wall time until validation accuracy first reaches this (0..1)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of plain,full,fast")
    p.add_argument("--workers", type=int, default=0, help="plain loop DataLoader workers; 0 = one per core")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--in-process", action="store_true",
                   help="run the variants in this process, one after another (smoke runs and tests: no interpreter "
                        "start-up per variant, but peak memory and backend flags are shared between variants)")
    p.add_argument("--_variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: run one variant
    p.add_argument("--_split", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad or not args.variants:
        p.error(f"--variants: unknown {bad}; choose from {', '.join(VARIANTS)}")
    if not 0 < args.target_acc <= 1:
        p.error("--target-acc must be in (0, 1]")
    if args.epochs < 1 or args.batch_size < 1:
        p.error("--epochs and --batch-size must be >= 1")
    return args


def train_config(args: argparse.Namespace, mode: str, device: str):
    from flowerdemo.config import TrainConfig

    return TrainConfig(model=args.model, pretrained=args.pretrained, mode=mode, epochs=args.epochs,
                       batch_size=args.batch_size, image_size=args.image_size, device=device, seed=args.seed)


# --- the split, passed to each subprocess as a file list ----------------------------------------

def save_split(split, path: Path) -> None:
    path.write_text(json.dumps({"root": str(split.root), "classes": list(split.classes),
                                "train": [[str(s.path), s.label] for s in split.train],
                                "val": [[str(s.path), s.label] for s in split.val]}))


def load_split(path: Path):
    from flowerdemo.data.dataset import DatasetSplit, Sample

    d = json.loads(path.read_text())
    return DatasetSplit(Path(d["root"]), tuple(d["classes"]), tuple(Sample(Path(p), int(y)) for p, y in d["train"]),
                        tuple(Sample(Path(p), int(y)) for p, y in d["val"]), skipped=(), presplit=False)


# --- timing bookkeeping shared by the variants ---------------------------------------------------

class Clock:
    """Wall-clock marks of one variant: start, per-epoch start/end, validation accuracy."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.epochs: dict[int, dict[str, float]] = {}

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def summary(self, target: float) -> dict[str, Any]:
        rows = [self.epochs[k] for k in sorted(self.epochs)]
        steady = rows[1:] or rows  # epoch 1 pays warm-up (worker start-up, cudnn autotune): skip it when we can
        reached = next((r for r in rows if r["val_acc"] >= target), None)
        return {
            "setup_s": round(rows[0]["start"], 3) if rows else None,
            "train_img_s": round(statistics.median(r["images"] / r["train_s"] for r in steady), 2) if rows else None,
            "train_img_s_epoch1": round(rows[0]["images"] / rows[0]["train_s"], 2) if rows else None,
            "epoch_s": round(statistics.median(r["end"] - r["start"] for r in steady), 3) if rows else None,
            "best_val_acc": round(max(r["val_acc"] for r in rows), 4) if rows else None,
            "target_acc": target,
            "time_to_target_s": round(reached["end"], 3) if reached else None,
            "epoch_to_target": reached["epoch"] if reached else None,
            "epochs": rows,
        }


def peak_memory(device: str) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"rss_mib": common.peak_rss_mib()}  # the training process itself
    if device == "cuda":
        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["cuda_max_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    return out


# --- (a) the plain reference loop ----------------------------------------------------------------

def run_plain(args: argparse.Namespace, split, device_name: str, work: Path) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms as T
    from torchvision.datasets.folder import pil_loader

    from flowerdemo.models.registry import build_model
    from flowerdemo.train.optim import lr_factor, param_groups

    class Files(Dataset):
        """The split's files, loaded like torchvision's ImageFolder does (pil_loader + transform)."""

        def __init__(self, samples, transform) -> None:
            self.samples, self.transform = samples, transform

        def __len__(self) -> int:
            return len(self.samples)

        def __getitem__(self, i: int):
            s = self.samples[i]
            return self.transform(pil_loader(str(s.path))), s.label

    cfg = train_config(args, "full", device_name)
    device = torch.device(device_name)
    clock = Clock()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(split.classes), cfg.pretrained, cfg.head, cfg.head_hidden,
                        cfg.head_dropout).to(device)
    prep = model.spec.preprocessing.with_size(cfg.image_size)
    size = prep.input_size
    train_tf = T.Compose([
        T.RandomResizedCrop(size, scale=(cfg.augment.crop_scale_min, 1.0)),
        T.RandomHorizontalFlip(),
        T.ColorJitter(0.2, 0.2, 0.2, 0.1),
        T.RandomAffine(degrees=30, translate=(0.1, 0.1)),
        T.ToTensor(),
        T.Normalize(prep.mean, prep.std),
        T.RandomErasing(),
    ])
    val_tf = T.Compose([T.Resize(prep.resize_size), T.CenterCrop(size), T.ToTensor(), T.Normalize(prep.mean, prep.std)])
    workers = args.workers or common.cores()
    n_train = len(split.train)
    train_loader = DataLoader(Files(split.train, train_tf), batch_size=cfg.batch_size, shuffle=True,
                              num_workers=workers, drop_last=n_train % cfg.batch_size == 1)  # BatchNorm needs >= 2
    val_loader = DataLoader(Files(split.val, val_tf), batch_size=cfg.batch_size, num_workers=workers)
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = len(train_loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, steps))
    best, workers_pss = -1.0, 0.0
    for epoch in range(1, cfg.epochs + 1):
        start = clock.now()
        model.train()
        t_train = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        for step, (x, y) in enumerate(train_loader):
            if step == steps // 2:  # workers are alive mid-epoch: sample what they add
                pss = common.children_pss_mib()
                workers_pss = max(workers_pss, pss) if pss is not None else workers_pss
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad()
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        train_s = time.perf_counter() - t_train
        model.eval()
        val_correct, val_seen = 0, 0
        with torch.no_grad():
            for x, y in val_loader:
                x, y = x.to(device), y.to(device)
                val_correct += (model(x).argmax(1) == y).sum().item()
                val_seen += len(y)
        val_acc = val_correct / max(1, val_seen)
        if val_acc > best:
            best = val_acc
            torch.save(model.state_dict(), work / "plain-best.pt")
        clock.epochs[epoch] = {"epoch": epoch, "start": start, "end": clock.now(), "train_s": train_s, "images": seen,
                               "train_loss": loss_sum / max(1, seen), "train_acc": correct / max(1, seen),
                               "val_acc": val_acc}
        log_epoch("plain", clock.epochs[epoch], cfg.epochs)
    wall = clock.now()
    return {"variant": "plain", "mode": "plain loop", "wall_s": round(wall, 3), "loader_workers": workers,
            "precision": "fp32", "input_size": size, "loader_workers_pss_mib": workers_pss,
            **clock.summary(args.target_acc)}


# --- (b) flowerdemo's engine ---------------------------------------------------------------------

def run_engine(args: argparse.Namespace, split, device_name: str, mode: str, work: Path) -> dict[str, Any]:
    import torch

    os.environ["FLOWERDEMO_CACHE"] = str(work / "cache")  # fresh fast-mode feature cache: a cold run
    from flowerdemo.device import autocast_for
    from flowerdemo.models.registry import get_spec
    from flowerdemo.train.engine import train
    from flowerdemo.train.events import CheckpointSaved, EpochEnd, Finished, Progress, RunStarted

    cfg = train_config(args, mode, device_name)
    clock = Clock()
    last = 0.0  # when the previous event arrived = when the engine resumed after it
    started: dict[str, Any] = {}
    finished = None
    for ev in train(cfg, split, out_dir=work / "checkpoints"):
        now = clock.now()
        if isinstance(ev, Progress) and ev.stage == "train" and ev.epoch not in clock.epochs:
            clock.epochs[ev.epoch] = {"epoch": ev.epoch, "start": last}
        elif isinstance(ev, RunStarted):
            started = {"device": ev.device, "mode": ev.mode, "n_train": ev.n_train, "n_val": ev.n_val,
                       "decoded_at_s": round(now, 3)}
        elif isinstance(ev, EpochEnd):
            clock.epochs[ev.epoch].update(end=now, train_s=ev.seconds, images=ev.images_per_s * ev.seconds,
                                          train_loss=ev.train_loss, train_acc=ev.train_acc, val_acc=ev.val_acc)
            log_epoch(mode, clock.epochs[ev.epoch], cfg.epochs)
        elif isinstance(ev, CheckpointSaved):
            clock.epochs[ev.epoch]["end"] = now  # saving the best weights is part of the epoch, as in plain
        elif isinstance(ev, Finished):
            finished = ev
        last = clock.now()
    wall = clock.now()
    precision = "fp32"
    if device_name == "cuda" and cfg.amp:
        ctx, _ = autocast_for(torch.device("cuda"), True)
        precision = str(ctx.keywords.get("dtype", "")).replace("torch.", "") + " autocast"
    return {"variant": mode, "mode": f"engine {mode}", "wall_s": round(wall, 3), "precision": precision,
            "run_started": started, "final_best_val_acc": round(finished.best_val_acc, 4) if finished else None,
            "input_size": get_spec(cfg.model).preprocessing.with_size(cfg.image_size).input_size,
            **clock.summary(args.target_acc)}


def log_epoch(name: str, row: dict[str, Any], epochs: int) -> None:
    print(f"  [{name}] epoch {row['epoch']}/{epochs}: train {row['train_s']:.1f} s, "
          f"{row['images'] / max(row['train_s'], 1e-9):.1f} img/s, val acc {row['val_acc']:.3f}, "
          f"at {row['end']:.1f} s", file=sys.stderr, flush=True)


def child(args: argparse.Namespace) -> None:
    """One variant, in this (fresh) process; results to args._result."""
    import torch

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    common.apply_threads(args.threads)
    split = load_split(args._split)
    device = common.resolve_device(args.device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix=f"flowerdemo-speed-{args._variant}-") as tmp:
        work = Path(tmp)
        if args._variant == "plain":
            result = run_plain(args, split, device, work)
        else:
            result = run_engine(args, split, device, args._variant, work)
    if device == "cuda":
        torch.cuda.synchronize()
    result["peak_memory"] = peak_memory(device)
    result["torch_threads"] = torch.get_num_threads()
    args._result.write_text(json.dumps(result, default=str))


# --- the parent: split, run each variant, compare --------------------------------------------------

def forwarded(argv: list[str]) -> list[str]:
    """The user's arguments, minus --out/--variants (the parent's business)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--out", "--variants"):
            skip = True
            continue
        if a.startswith(("--out=", "--variants=")):
            continue
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args._variant:
        child(args)
        return 0

    common.require_data(args.data)
    common.apply_threads(args.threads)
    from flowerdemo.data.dataset import DatasetError, scan_dataset
    from flowerdemo.models.registry import ModelError, get_spec, weights_available

    device = common.resolve_device(args.device)
    try:
        get_spec(args.model)
    except ModelError as exc:
        sys.exit(f"error: {exc}")
    if args.pretrained and not weights_available(args.model):
        sys.exit(f"error: pretrained weights for {args.model} are not on this machine (torchvision downloads them on "
                 f"first use). Pass --no-pretrained (throughput needs no pretrained weights; set a lower --target-acc), "
                 f"or --model efficientnet_lite0 (bundled weights).")
    try:
        split = common.limit_split(scan_dataset(args.data, val_fraction=0.2, seed=args.seed), args.limit_per_class)
    except DatasetError as exc:
        sys.exit(f"error: {exc}")
    files = [s.path for s in split.train + split.val]
    warm_s = common.warm_page_cache(files)
    info = common.machine_info()
    print(f"speed benchmark: {args.model} ({'pretrained' if args.pretrained else 'random init'}), {device}, "
          f"{len(split.train)} train / {len(split.val)} val images, {args.epochs} epoch(s), batch {args.batch_size}; "
          f"variants {', '.join(args.variants)}\nmachine: {common.machine_line(info)}", file=sys.stderr, flush=True)

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="flowerdemo-speed-") as tmp:
        split_file = Path(tmp) / "split.json"
        save_split(split, split_file)
        for variant in args.variants:
            result_file = Path(tmp) / f"{variant}.json"
            child_argv = [*forwarded(argv), "--device", device, "--_variant", variant, "--_split", str(split_file),
                          "--_result", str(result_file)]
            print(f"- {variant} ...", file=sys.stderr, flush=True)
            t = time.perf_counter()
            error = run_in_process(child_argv) if args.in_process else run_subprocess(child_argv)
            process_s = time.perf_counter() - t
            if error or not result_file.exists():
                results[variant] = {"variant": variant, "error": error or ["no result written"]}
                continue
            results[variant] = json.loads(result_file.read_text())
            results[variant]["process_s"] = round(process_s, 3)  # incl. interpreter start-up and imports

    plain = results.get("plain", {})
    for r in results.values():
        if "error" in r or r is plain or "error" in plain or not plain:
            continue
        r["vs_plain"] = {
            "train_img_s_ratio": _ratio(r.get("train_img_s"), plain.get("train_img_s")),
            "wall_speedup": _ratio(plain.get("wall_s"), r.get("wall_s")),
            "epoch_speedup": _ratio(plain.get("epoch_s"), r.get("epoch_s")),
            "time_to_target_speedup": _ratio(plain.get("time_to_target_s"), r.get("time_to_target_s")),
        }

    header = ["variant", "train img/s", "epoch s", "setup s", "wall s", f"to {args.target_acc:.0%} val acc",
              "best val acc", "peak mem MiB", "img/s ours/plain", "wall plain/ours"]
    rows = [table_row(r, device) for r in results.values()]
    print(common.markdown_table(header, rows))
    payload = {"benchmark": NAME, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": info,
               "command": "python benchmarks/speed.py " + " ".join(argv),
               "settings": {"model": args.model, "pretrained": args.pretrained, "device": device, "epochs": args.epochs,
                            "batch_size": args.batch_size, "image_size": args.image_size or "model default",
                            "limit_per_class": args.limit_per_class or None, "target_acc": args.target_acc,
                            "seed": args.seed, "threads": args.threads or "torch default",
                            "n_train": len(split.train), "n_val": len(split.val),
                            "data": str(args.data), "page_cache_warm_s": round(warm_s, 2),
                            "subset": bool(args.limit_per_class), "in_process": args.in_process},
               "results": results, "table": {"header": header, "rows": rows}}
    path = common.write_json(args.out, NAME, payload)
    print(f"\nwritten: {path}", file=sys.stderr)
    return 1 if any("error" in r for r in results.values()) else 0


def run_subprocess(child_argv: list[str]) -> list[str]:
    """One variant in a fresh interpreter; [] when it succeeded, else the last line of its stderr."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *child_argv], stderr=subprocess.PIPE, text=True)
    sys.stderr.write(proc.stderr)
    if proc.returncode == 0:
        return []
    return proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]


def run_in_process(child_argv: list[str]) -> list[str]:
    """One variant in this process (--in-process); [] when it succeeded, else the error."""
    import traceback

    try:
        child(parse_args(child_argv))
    except Exception as exc:  # reported like a failed subprocess: the other variants still run
        traceback.print_exc()
        return [f"{type(exc).__name__}: {exc}"]
    return []


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def table_row(r: dict[str, Any], device: str) -> list[str]:
    if "error" in r:
        return [r["variant"], "failed: " + " ".join(r["error"])[:120]] + [""] * 8
    mem = r["peak_memory"]
    if device == "cuda":
        peak = f"{mem['cuda_max_allocated_mib']:.0f} (CUDA)"
    else:
        peak = f"{mem['rss_mib']:.0f} RSS"
        if r.get("loader_workers_pss_mib"):
            peak += f" + {r['loader_workers_pss_mib']:.0f} workers (PSS)"
    ttt = (f"{r['time_to_target_s']:.1f} s (epoch {r['epoch_to_target']})" if r["time_to_target_s"] is not None
           else "not reached")
    vs = r.get("vs_plain", {})
    name = r["variant"] + (" (img/s = steps on cached activations)" if r["variant"] == "fast" else "")
    return [name, common.fmt(r["train_img_s"]), common.fmt(r["epoch_s"], ".2f"), common.fmt(r["setup_s"], ".1f"),
            common.fmt(r["wall_s"], ".1f"), ttt, common.fmt(r["best_val_acc"], ".3f"), peak,
            "n/a (cached)" if r["variant"] == "fast" and vs else common.fmt(vs.get("train_img_s_ratio"), ".2f", "—"),
            common.fmt(vs.get("wall_speedup"), ".2f", "—")]


if __name__ == "__main__":
    sys.exit(main())
