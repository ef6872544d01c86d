"""One training of benchmarks/cv.py: the engine's events turned into accuracies and phase timings, and the
last-epoch weights scored with flip test-time augmentation."""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
TTA_BATCH = 64


def _engine_run(gen) -> Any:
    """The engine's `Run` (train/engine.py) behind a suspended `train(...)` generator, or None.

    The engine keeps the best epoch's weights (the default, which this runner measures) and the honest
    figure is the last epoch's, so those weights are copied while the generator is paused at the last
    EpochEnd, and the run's decoded validation photos are reached for flip TTA. (`TrainConfig(keep="last")`
    keeps the last epoch's weights in the checkpoint, but then the recipe measured would not be the default.)"""
    frame = getattr(gen, "gi_frame", None)
    return None if frame is None else frame.f_locals.get("run")


@torch.no_grad()
def flip_tta_accuracy(model: torch.nn.Module, setup: Any, autocast=nullcontext) -> tuple[float, float]:
    """(plain, flip-TTA) accuracy of `model` on the decoded validation photos of `setup` (a TrainSetup):
    the eval centre crop, and the average of its and its mirror's softmax (T = 1), as `predict --tta`."""
    from flowerdemo.data.augment import eval_batch

    model.eval()
    prep, data = setup.prep, setup.val
    correct_plain = correct_tta = 0
    for start in range(0, len(data), TTA_BATCH):
        x = eval_batch(data.images[start:start + TTA_BATCH].to(setup.device), prep.input_size, prep.mean, prep.std)
        x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            p = model(x).float().softmax(1)
            q = model(x.flip(-1)).float().softmax(1)
        y = data.labels[start:start + TTA_BATCH].to(p.device)
        correct_plain += int((p.argmax(1) == y).sum())
        correct_tta += int(((p + q) / 2).argmax(1).eq(y).sum())
    return correct_plain / len(data), correct_tta / len(data)


def run_recipe(cfg, split, tta: bool = True) -> dict[str, Any]:
    """Train `cfg` on `split` (checkpoints in a temporary folder, deleted) and return what cv.py records."""
    from flowerdemo.train.engine import train
    from flowerdemo.train.events import EpochEnd, Finished, Progress, RunStarted

    epochs: list[dict[str, float]] = []
    finished = started = run = last_state = None
    t = {"start": time.perf_counter()}
    saw_features = False
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="flowerdemo-cv-") as tmp:
        gen = train(cfg, split, out_dir=Path(tmp))
        for ev in gen:
            now = time.perf_counter()
            if isinstance(ev, RunStarted):
                started, t["started"] = ev, now
                run = _engine_run(gen)
            elif isinstance(ev, Progress):
                saw_features |= ev.stage == "features"
                if ev.stage == "train" and "train" not in t:
                    t["train"] = now
            elif isinstance(ev, EpochEnd):
                epochs.append({"epoch": ev.epoch, "val_acc": round(ev.val_acc, 4), "val_loss": round(ev.val_loss, 4),
                               "train_acc": round(ev.train_acc, 4), "seconds": round(ev.seconds, 2)})
                t["last_epoch"] = now
                if ev.epoch == ev.epochs and tta and run is not None and run.trainer is not None:
                    last_state = copy.deepcopy(run.trainer.setup.model.state_dict())
            elif isinstance(ev, Finished):
                finished, t["finished"] = ev, now
    if finished is None or not epochs or started is None:
        raise RuntimeError(f"the engine ended without a Finished event (recipe {cfg.to_dict()})")
    t_tta = time.perf_counter()
    plain = tta_acc = None
    if tta and last_state is not None:
        setup = run.trainer.setup
        setup.model.load_state_dict(last_state)
        plain, tta_acc = flip_tta_accuracy(setup.model, setup, getattr(run.trainer, "autocast", nullcontext))
    elif tta:
        log.warning("flip TTA skipped: the engine's run could not be reached (see _engine_run)")
    t_tta = time.perf_counter() - t_tta
    train_start = t.get("train", t["started"])
    return {
        "last_acc": epochs[-1]["val_acc"], "best_acc": round(finished.best_val_acc, 4), "best_epoch": finished.best_epoch,
        # the last-epoch weights through the full model from the decoded photos (fast mode's own figure
        # comes from cached activations: the two should agree to a photo or so)
        "plain_full_last_acc": None if plain is None else round(plain, 4),
        "tta_last_acc": None if tta_acc is None else round(tta_acc, 4),
        "n_val": started.n_val, "n_train": started.n_train, "mode": started.mode, "model": cfg.model,
        "image_size": cfg.image_size, "macro_f1": finished.report.get("macro_f1"),
        "features_cached": started.mode == "fast" and not saw_features,
        "wall_s": round(t["finished"] - t["start"], 1),  # the one-click time: decode to checkpoint with its extras
        "decode_s": round(t["started"] - t["start"], 1),  # model build + decoding every photo
        "extract_s": round(train_start - t["started"], 1),  # fast mode's activations (or their cache read) + optimiser
        "train_s": round(sum(e["seconds"] for e in epochs), 1),  # training steps, validation scoring excluded
        "fit_s": round(t["last_epoch"] - train_start, 1),  # training + validation scoring
        "finish_s": round(t["finished"] - t["last_epoch"], 1),  # report, calibration, label issues, unknown detector
        "tta_eval_s": round(t_tta, 1), "torch_threads": torch.get_num_threads(), "loadavg_start": [round(x, 2) for x in load],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()], "curve": [e["val_acc"] for e in epochs], "epochs": epochs,
    }
