"""What each CLI sub-command does: call the core, print its results."""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import threading
from pathlib import Path

from tqdm import tqdm

from flowerdemo.config import TrainConfig
from flowerdemo.settings import Settings
from flowerdemo.train.events import CheckpointSaved, EpochEnd, Finished, Progress, RunStarted, Stopped

log = logging.getLogger("flowerdemo")


def run_train(args: argparse.Namespace, cfg: TrainConfig) -> int:
    from flowerdemo.data.dataset import resolve_data
    from flowerdemo.train.engine import train
    from flowerdemo.train.metrics import format_report

    settings = Settings.from_args(args)  # --out and --cache-dir, else FLOWERDEMO_*, else the defaults
    with tempfile.TemporaryDirectory(prefix="flowerdemo-") as work:
        if args.download_flowers:
            from flowerdemo.data.download import download_flowers

            data = download_flowers(settings.cache_dir)
        else:
            data = resolve_data(args.data, work)
        stop = threading.Event()
        bar: tqdm | None = None
        stage = None
        events = train(cfg, data, out_dir=settings.checkpoint_dir, stop=stop)
        try:
            for ev in events:
                if isinstance(ev, Progress):
                    if bar is None or stage != (ev.stage, ev.epoch):
                        if bar is not None:
                            bar.close()
                        stage = (ev.stage, ev.epoch)
                        label = f"epoch {ev.epoch}/{cfg.epochs}" if ev.stage == "train" else ev.stage
                        bar = tqdm(total=ev.total, desc=label, leave=False, unit="batch" if ev.epoch else "step")
                    bar.n = ev.done
                    bar.refresh()
                    continue
                if bar is not None:
                    bar.close()
                    bar, stage = None, None
                if isinstance(ev, RunStarted):
                    log.info("run %s | %s | %s mode | %s | %d classes: %s | %d train / %d val images%s",
                             ev.run_dir, ev.device, ev.mode, ev.model, len(ev.classes), ", ".join(ev.classes),
                             ev.n_train, ev.n_val, f" | {ev.skipped} file(s) skipped" if ev.skipped else "")
                elif isinstance(ev, EpochEnd):
                    log.info("epoch %3d/%d  train loss %.4f acc %.2f%%  val loss %.4f acc %.2f%%  lr %.2e  %.1fs  %.0f img/s%s",
                             ev.epoch, ev.epochs, ev.train_loss, 100 * ev.train_acc, ev.val_loss, 100 * ev.val_acc,
                             ev.lr, ev.seconds, ev.images_per_s, "  *best*" if ev.is_best else "")
                elif isinstance(ev, CheckpointSaved):
                    log.debug("saved %s (epoch %d)", ev.path, ev.epoch)
                elif isinstance(ev, Stopped):
                    log.warning("stopped at epoch %d: %s", ev.epoch, ev.reason)
                elif isinstance(ev, Finished):
                    log.info("%s val acc %.2f%% at epoch %d, %.1f s; checkpoint: %s\n%s", ev.kept, 100 * ev.best_val_acc,
                             ev.best_epoch, ev.seconds, ev.run_dir, format_report(ev.report))
                    if ev.label_issues:
                        log.info("%s", _label_issues_text(ev))
        except KeyboardInterrupt:
            stop.set()  # finish the current batch, keep the best checkpoint
            log.warning("interrupted: the best checkpoint so far is kept")
            events.close()
            return 130
    return 0


def _label_issues_text(ev: Finished, show: int = 5) -> str:
    """'photos that may be labelled wrong: 91 (87 training / 4 validation), e.g. rose/x.jpg filed as rose, looks
    like tulip (83%)' (from the finished run's out-of-sample predictions, train/label_issues.py)."""
    summary = ev.report.get("label_issues", {})
    by_split = summary.get("by_split", {})
    split = f" ({by_split.get('train', 0)} training / {by_split.get('val', 0)} validation)" if by_split else ""
    examples = "; ".join(f"{i['path']} filed as {i['given']}, looks like {i['suggested']} ({i['confidence']:.0%})"
                         for i in ev.label_issues[:show])
    return (f"photos that may be labelled wrong: {summary.get('total', len(ev.label_issues))}{split}, most suspect "
            f"first: {examples}")


def _checkpoint(path: Path | None):
    from flowerdemo.models.checkpoints import CheckpointError, list_checkpoints, load_checkpoint

    if path is None:
        runs = Settings.from_env().checkpoint_dir
        found = list_checkpoints(runs)
        if not found:
            raise CheckpointError(f"no checkpoint under {runs}/: train one with "
                                  "`python -m flowerdemo train --data DIR` or pass --checkpoint")
        path = found[0]
    return load_checkpoint(path)


def run_evaluate(args: argparse.Namespace) -> int:

    import torch

    from flowerdemo.data.dataset import DatasetError, checkpoint_split, resolve_data
    from flowerdemo.data.tensorcache import decode_samples
    from flowerdemo.device import autocast_for, resolve_device
    from flowerdemo.train.calibration import calibration_summary
    from flowerdemo.train.evaluate import loss_and_accuracy, predict_tensors
    from flowerdemo.train.metrics import classification_report, format_report

    clf = _checkpoint(args.checkpoint)
    with tempfile.TemporaryDirectory(prefix="flowerdemo-") as work:
        split = checkpoint_split(resolve_data(args.data, work), clf.meta)  # --split val: the run's own split
        unknown = [c for c in split.classes if c not in clf.classes]
        if unknown:
            raise DatasetError(f"classes {unknown} are not known to the checkpoint, which has: {', '.join(clf.classes)}")
        remap = torch.tensor([clf.classes.index(c) for c in split.classes])
        samples = split.val if args.split == "val" else split.train + split.val
        data, bad = decode_samples(samples, clf.preprocessing.resize_size)
        data.labels = remap[data.labels]
        device = resolve_device("auto")
        clf.model.to(device)
        autocast, _ = autocast_for(device, True)
        p = clf.preprocessing
        logits = predict_tensors(clf.model, data, size=p.input_size, mean=p.mean, std=p.std, device=device,
                                 autocast=autocast, batch_size=args.batch_size)
    loss, acc = loss_and_accuracy(logits, data.labels)
    report = classification_report(data.labels, logits.argmax(1), clf.classes)
    # before = the raw softmax (T = 1), after = the checkpoint's own temperature (1 when it has none)
    fitted_on = (clf.meta.get("calibration") or {}).get("fitted_on")
    report["calibration"] = calibration_summary(logits, data.labels, clf.temperature, fitted_on=fitted_on,
                                                note=_calibration_note(clf.meta, split.root, args.split))
    skipped = len(bad) + len(split.skipped)
    if args.json:
        print(json.dumps({"checkpoint": str(clf.path), "data": str(split.root), "split": args.split, "images": len(data),
                          "skipped": skipped, "loss": round(loss, 4), **report, "temperature": clf.temperature}, indent=2))
        return 0
    print(f"checkpoint {clf.path}\ndata {split.root} ({args.split}: {len(data)} images, "
          f"{skipped} skipped)\nloss {loss:.4f}\n{format_report(report)}")
    return 0


def _calibration_note(meta: dict, root: Path, split: str) -> str | None:
    """What the figures after the stored temperature are worth on these photos."""
    if not meta.get("calibration"):
        return "this checkpoint has no stored temperature (written before calibration): T = 1, before = after"
    if Path(str((meta.get("data") or {}).get("root", ""))).name != root.name:
        return None  # another folder: photos the temperature was not fitted on, the honest check
    if split == "val":
        return "the temperature was fitted on this same validation split: the figures with T are optimistic"
    return "'all' includes the training photos, which the model fits better than new ones"


def run_predict(args: argparse.Namespace) -> int:
    from flowerdemo.data.images import ImageError
    from flowerdemo.infer.explain import explain, heatmap_image
    from flowerdemo.infer.predict import classify
    from flowerdemo.infer.preprocess import photo_note, prepare_image
    from flowerdemo.models.unknown import UNAVAILABLE_NOTE

    clf = _checkpoint(args.checkpoint)
    if clf.detector is None and args.strictness != "off":
        log.warning("%s: %s", clf.name, UNAVAILABLE_NOTE)
    failures = 0
    for path in args.images:
        try:  # decoded once: the answer, and the photo's size for the small-photo warning
            prepared = prepare_image(path, clf.preprocessing)
            pred = classify(clf, tta=args.tta, strictness=args.strictness, prepared=prepared)
        except ValueError as exc:
            # an ImageError's message starts with the file already ("photo.jpg: file not found. Accepted: …")
            if isinstance(exc, ImageError):
                log.error("%s", exc)
            else:
                log.error("%s: %s", path, exc)
            if args.json:
                print(json.dumps({"file": str(path), "error": str(exc)}))
            failures += 1
            continue
        record = {"file": str(path), **pred.to_dict()}
        small = photo_note(*prepared.decoded_size, clf.preprocessing.input_size)
        if small:
            log.warning("%s: %s", path, small)
            record["warning"] = small
        if not args.json:
            print(f"{path}: {_prediction_line(pred, clf.classes, args.top_k)}")
        if args.cam != "none":
            ex = explain(clf, path, method=args.cam, target=args.target, alpha=args.alpha)
            out_dir = args.out or path.parent
            out_dir.mkdir(parents=True, exist_ok=True)
            overlay = out_dir / f"{path.stem}.{args.cam}.png"
            ex.overlay.save(overlay)
            heatmap_image(ex.heatmap).save(out_dir / f"{path.stem}.{args.cam}.heatmap.png")
            record["overlay"] = str(overlay)
            if not args.json:
                print(f"  {args.cam} for '{ex.class_name}' -> {overlay}")
        if args.json:
            print(json.dumps(record))
    return 1 if failures else 0


def _prediction_line(pred, classes: tuple[str, ...], top_k: int) -> str:
    """One line: the classes (top k), and the unknown-photo verdict with its score and threshold."""
    probs = ", ".join(f"{k} {v:.1%}" for k, v in list(pred.probabilities.items())[:top_k])
    f = pred.familiarity
    if f.known is False:
        return (f"NOT one of the {len(classes)} classes this model knows ({', '.join(classes)}): unknown-photo "
                f"score {f.score:.3f} > threshold {f.threshold:.3f} ({f.strictness}). Closest: {probs}")
    if f.known:
        return f"{probs} (looks like its training photos: score {f.score:.3f} <= {f.threshold:.3f}, {f.strictness})"
    return probs + (" (unknown-photo check off)" if f.available else "")


def run_experiment(args: argparse.Namespace, cfg: TrainConfig) -> int:
    from flowerdemo.data.dataset import resolve_data
    from flowerdemo.train.experiments import run_suite

    out = args.out / args.suite if args.out == Path("experiments") else args.out
    with tempfile.TemporaryDirectory(prefix="flowerdemo-") as work:
        run_suite(args.suite, resolve_data(args.data, work), cfg, args.seeds, out)
    print((out / "report.md").read_text())
    return 0
