"""Turns the engine's training events into what the Train tab shows. No gradio: returns plain values
keyed by output name; the tab maps them onto its components."""

from __future__ import annotations

import logging
import time
from typing import Any

from PIL import Image

from flowerdemo.models.reliability import has_diagram, reliability_diagram
from flowerdemo.train.events import CheckpointSaved, EpochEnd, Event, Finished, Progress, RunStarted, Stopped
from flowerdemo.train.metrics import format_accuracy

from . import plots
from .train_data import mistake_gallery

STAGES = {"decode": "Reading the photos", "features": "The starting model looks at each photo (once, quick mode)",
          "train": "Training", "val": "Validating",
          "unknown": "Learning what its photos look like (to recognise photos of none of its classes)"}
THROTTLE_S = 0.25  # batch-level progress is sent to the browser at most this often

log = logging.getLogger(__name__)


class TrainView:
    """Keeps what the events said so far (start info, epoch rows, timings) and renders updates."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.rows: list[dict[str, float]] = []
        self.start: RunStarted | None = None
        self.t0 = time.monotonic()
        self.epoch_t0 = self.t0
        self.stage_t0: dict[str, float] = {}
        self.last_emit = 0.0
        self.best = 0.0
        self.stopping = False

    def update(self, ev: Event) -> dict | None:
        """Values for the outputs that change with `ev`, or None when nothing needs sending yet."""
        now = time.monotonic()
        if isinstance(ev, Progress):
            key = f"{ev.stage}{ev.epoch}"
            self.stage_t0.setdefault(key, now)
            if ev.done < ev.total and now - self.last_emit < THROTTLE_S:
                return None
            self.last_emit = now
            return {"status": self.status(ev, now), "progress": self.bar(ev)}
        if isinstance(ev, RunStarted):
            self.start, self.epochs = ev, ev.epochs
            return {"status": self.status(None, now)}
        if isinstance(ev, EpochEnd):
            self.rows.append(ev.as_row())
            self.best, self.epoch_t0 = ev.best_val_acc, now
            loss, acc, lr = plots.curves(self.rows, self.epochs)
            return {"status": self.status(None, now), "loss": loss, "acc": acc, "lr": lr,
                    "progress": plots.progress_html(ev.epoch / ev.epochs, f"{ev.epoch} of {ev.epochs} epochs done")}
        if isinstance(ev, CheckpointSaved):
            return None
        if isinstance(ev, Stopped):
            if ev.epoch == 0:  # before anything was trained: the reason says it all
                return {"status": f"**Stopped**: {ev.reason}; finishing up…"}
            return {"status": f"**Stopped** during epoch {ev.epoch} ({ev.reason}); finishing up…"}
        if isinstance(ev, Finished):
            return self.finished(ev)
        return None

    def status(self, ev: Progress | None, now: float) -> str:
        elapsed = now - self.t0
        if self.stopping:
            head = "**Stopping** after the current batch…"
        elif ev is not None and ev.stage == "val":
            head = f"**Epoch {ev.epoch} / {self.epochs}** — {STAGES['val']} {ev.done} / {ev.total}"
        elif ev is None or ev.stage != "train":
            epoch = len(self.rows)
            head = (f"**Epoch {epoch} / {self.epochs} done**" if epoch else "**Preparing**") + (
                f" — {STAGES.get(ev.stage, ev.stage)} {ev.done:,} / {ev.total:,}" if ev else "")
        else:
            head = f"**Epoch {ev.epoch} / {self.epochs}** — batch {ev.done} / {ev.total}"
        parts = [head, f"elapsed {plots.fmt_seconds(elapsed)}"]
        eta = self.eta(ev, now)
        if eta is not None:
            parts.append(f"ETA ≈ {plots.fmt_seconds(eta)}")
        if self.rows:
            parts.append(f"best val accuracy {self.best:.1%}")
        text = " · ".join(parts)
        if self.start:
            s = self.start
            mode = "quick (fast mode)" if s.mode == "fast" else "thorough (full fine-tuning)"
            text += (f"  \nDevice: **{s.device}** · {mode} · {s.model} · {len(s.classes)} classes · "
                     f"{s.n_train:,} train / {s.n_val:,} val images")
        return text

    def eta(self, ev: Progress | None, now: float) -> float | None:
        """Remaining seconds: within a stage from its rate; over epochs from the mean epoch time."""
        if ev is not None and ev.stage != "train" and ev.done:
            t = now - self.stage_t0.get(f"{ev.stage}{ev.epoch}", now)
            return t / ev.done * (ev.total - ev.done) if t > 0 else None
        per_epoch = (self.rows and sum(r["seconds"] for r in self.rows) / len(self.rows)) or None
        if ev is not None and ev.stage == "train" and ev.done:
            in_epoch = now - self.epoch_t0
            per_epoch = per_epoch or in_epoch * ev.total / ev.done
            return max(0.0, per_epoch * (1 - ev.done / ev.total)) + per_epoch * (self.epochs - ev.epoch)
        if per_epoch:
            return per_epoch * (self.epochs - len(self.rows))
        return None

    def bar(self, ev: Progress) -> str:
        if ev.stage == "train":
            label = f"epoch {ev.epoch} / {self.epochs}: batch {ev.done} / {ev.total}"
        else:
            label = f"{STAGES.get(ev.stage, ev.stage)}: {ev.done:,} / {ev.total:,}"
        return plots.progress_html(ev.done / max(1, ev.total), label)

    def finished(self, ev: Finished) -> dict:
        took = plots.fmt_seconds(ev.seconds)
        if ev.run_dir is None:
            return {"status": f"**Stopped** before anything was trained ({took}); nothing was saved.",
                    "progress": plots.progress_html(0, "stopped")}
        how = f"stopped after {ev.epochs_run} of {self.epochs} epochs" if ev.stopped else f"{ev.epochs_run} epochs"
        accuracy = format_accuracy(ev.report) if "accuracy" in ev.report else f"{ev.best_val_acc:.1%}"
        which = "best validation accuracy" if ev.kept == "best" else "validation accuracy of the last epoch"
        summary = (f"### {'Stopped' if ev.stopped else 'Finished'}: {which} "
                   f"**{accuracy}** (epoch {ev.best_epoch})\n"
                   f"{how} in {took}; classes' average score {ev.report.get('macro_f1', 0):.3f} (macro F1: 1 is perfect). "
                   f"Saved as `{ev.run_dir.name}` — "
                   "it is now the active model in the **Predict** tab.")
        if ev.report.get("warning"):
            summary += f"\n\n**Rough figure.** {ev.report['warning']}"
        cal = ev.report.get("calibration")
        if cal and cal.get("note"):  # the temperature stayed 1: say why, not "calibrated" with nothing changed
            summary += f"\n\nConfidence left as the model gives it (temperature 1): {cal['note']}."
        elif cal and cal["before"].get("ece") is not None:
            b, a = cal["before"], cal["after"]
            summary += (f"\n\nConfidence calibrated (temperature {cal['temperature']:.3g}): expected calibration "
                        f"error on the validation split {b['ece']:.3f} → {a['ece']:.3f} "
                        "(how far the shown probabilities are from how often the model is right; lower is better); "
                        f"log loss (NLL) {b['nll']:.3f} → {a['nll']:.3f}, Brier score {b['brier']:.3f} → {a['brier']:.3f}.")
        summary += "\n\n" + unknown_line(ev.report.get("unknown"), ev.stopped)
        status = (f"**{'Stopped' if ev.stopped else 'Done'}** · {'best' if ev.kept == 'best' else 'last'} val accuracy "
                  f"{ev.best_val_acc:.1%} · "
                  f"{took}" + (f"  \nDevice: **{self.start.device}**" if self.start else ""))
        return {"status": status, "progress": plots.progress_html(1.0, f"done: {how}"),
                "results": True, "summary": summary, "per_class": plots.per_class_table(ev.report),
                "confusion": plots.confusion_image(ev.report), "reliability": reliability_image(cal),
                "mistakes": mistake_gallery(ev.mistakes)}


def unknown_line(unknown: dict[str, Any] | None, stopped: bool) -> str:
    """One line on the unknown-photo detector of a finished run (`report["unknown"]`), or on its absence."""
    head = "**Photos of none of these classes:**"
    if not unknown:
        why = ("this run was stopped, and a stopped run skips the unknown-photo detector (train to the end to get "
               "one)" if stopped else "this run has no unknown-photo detector")
        return f"{head} {why}, so the model puts every photo into one of its classes."
    photos = unknown.get("train_photos") or unknown.get("bank_photos")
    share = (unknown.get("shares") or {}).get("normal")
    fitted = f"detector fitted on {photos:,} training photos" if isinstance(photos, int) else "detector fitted"
    accepts = (f"; at 'normal' strictness it accepts {share:.0%} of the validation photos and answers photos "
               "unlike them \"none of these\"" if isinstance(share, (int, float)) else "")
    return f"{head} {fitted}{accepts}."


def reliability_image(calibration: dict[str, Any] | None) -> Image.Image | None:
    """The run's reliability diagram, or None when it has no calibration bins (or drawing failed: the rest
    of the results still show)."""
    if not has_diagram(calibration):
        return None
    try:
        return reliability_diagram(calibration)
    except Exception:
        log.exception("could not draw the reliability diagram")
        return None
