"""Likely label errors after a run, and the per-photo validation predictions behind a clickable confusion matrix.

Label issues are ranked by cleanlab (`cleanlab.filter.find_label_issues`, confident learning; quality =
`cleanlab.rank.get_label_quality_scores`, self-confidence) from out-of-sample class probabilities only:
- validation photos: the best epoch's temperature-scaled validation probabilities (the model never
  trained on them);
- training photos, in fast mode: cross-fitted probabilities of a logistic-regression head on pooled
  features of their clean view, fitted on k-1 folds and scored on the held-out fold. The features are
  the backbone's *as it was before this run* (the cached trunk activations through the last stage with
  its starting weights, or the cached pooled features): the fine-tuned model has fitted the training
  labels, wrong ones included, so its own features would hide the errors it memorised;
- training photos in full mode (no feature cache) are not covered: validation photos only.
Each split is ranked by cleanlab on its own (two sources of probabilities, two calibrations), then the
issues are merged by quality, most suspect first.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowerdemo.models.fold import folded_or_original

log = logging.getLogger(__name__)
FOLDS = 5  # cross-fitting: each training photo is scored by a head fitted on the other 80 %
MAX_STORED_ISSUES = 50  # issues kept in the event and the checkpoint (the total is counted separately)
MAX_VAL_PREDICTIONS = 5000  # per-photo validation predictions kept (~90 bytes of JSON each)
TAIL_CHUNK = 256  # cached maps per forward of the last stage


@dataclass(frozen=True)
class LabelIssue:
    """One photo whose given label looks wrong."""

    path: str  # relative to the data root where possible
    given: str  # the label it was filed under
    suggested: str  # the class the out-of-sample probabilities favour
    confidence: float  # probability of the suggested class
    quality: float  # cleanlab's label-quality score (probability of the given label); lower = more suspect
    split: str  # "train" | "val"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_label_issues(labels: Sequence[int], pred_probs: np.ndarray, classes: Sequence[str], paths: Sequence[str],
                      splits: Sequence[str]) -> tuple[LabelIssue, ...]:
    """The photos cleanlab flags as likely mislabelled, most suspect (lowest quality) first.

    `pred_probs` (N, classes) must be out-of-sample; photos are ranked per value of `splits` (each group
    should come from one model) and then merged."""
    from cleanlab.filter import find_label_issues as cleanlab_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(pred_probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (len(labels), len(classes)) or not len(labels) == len(paths) == len(splits):
        raise ValueError(f"pred_probs must be (photos, classes) = ({len(labels)}, {len(classes)}) with one path and "
                         f"split per photo; got {probs.shape}, {len(paths)} paths, {len(splits)} splits")
    splits_arr = np.asarray(splits)
    found: list[LabelIssue] = []
    for name in dict.fromkeys(splits):  # first-seen order
        idx = np.flatnonzero(splits_arr == name)
        y, p = labels[idx], probs[idx] / probs[idx].sum(1, keepdims=True)
        if len(np.unique(y)) < 2:  # confident learning compares classes: nothing to compare
            continue
        with warnings.catch_warnings():  # classes absent from a small split: cleanlab warns, the result stands
            warnings.simplefilter("ignore")
            flagged = cleanlab_issues(y, p, n_jobs=1)  # n_jobs=1: no worker processes inside a server
            quality = get_label_quality_scores(y, p)
        for j in np.flatnonzero(flagged):
            best = int(p[j].argmax())
            found.append(LabelIssue(str(paths[idx[j]]), classes[int(y[j])], classes[best], round(float(p[j, best]), 4),
                                    round(float(quality[j]), 4), str(name)))
    return tuple(sorted(found, key=lambda issue: issue.quality))


def cross_fitted_probs(features: np.ndarray, labels: Sequence[int], n_classes: int, folds: int = FOLDS,
                       seed: int = 0) -> np.ndarray | None:
    """(N, n_classes) probabilities, each photo's from a logistic-regression head fitted without it
    (stratified k-fold on standardised features); None when a class has fewer than 2 photos."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y, minlength=n_classes)
    smallest = counts[counts > 0].min() if len(y) else 0
    if smallest < 2 or (counts > 0).sum() < 2:
        return None
    out = np.zeros((len(y), n_classes))
    splitter = StratifiedKFold(n_splits=min(folds, int(smallest)), shuffle=True, random_state=seed)
    # one BLAS thread: these products are small, and BLAS threads spinning on a busy CPU made the same fits
    # 6x slower (1.8 vs 11 s for flowers5-dev's 1,986 photos with other processes running)
    with threadpool_limits(1):
        for fit_idx, held_idx in splitter.split(features, y):
            head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
            head.fit(features[fit_idx], y[fit_idx])
            out[np.ix_(held_idx, head.classes_)] = head.predict_proba(features[held_idx])
    return out


@torch.inference_mode()
def starting_features(trainer: Any) -> np.ndarray | None:
    """Pooled features of the training photos' clean view by the backbone as it was before the run
    (fast mode's cache); None without a feature cache (full mode)."""
    maps = getattr(trainer, "train_feats", None)
    if maps is None:
        return None
    clean = maps[0]
    if getattr(trainer, "cached", None) != "trunk":  # pooled features of the frozen backbone already
        return clean.float().cpu().numpy()
    tail = copy.deepcopy(trainer.tail)  # the run's tail is fine-tuned: a copy gets its starting weights back
    tail.load_state_dict(trainer.tail_start)
    tail.eval()
    channels_last = trainer.setup.cfg.channels_last
    tail = folded_or_original(tail, clean[:2].float())  # BatchNorm folded: ~30 % faster, same features
    out = []
    for start in range(0, len(clean), TAIL_CHUNK):
        x = clean[start:start + TAIL_CHUNK].float()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with trainer.autocast():
            out.append(tail(x).float().cpu())
    return torch.cat(out).numpy()


def relative_path(path: str | Path, root: str | Path | None) -> str:
    """`path` relative to the data root when it lies under it, else as given."""
    if root:
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            pass
    return str(path)


def photo_path(path: str, root: str | Path | None) -> Path:
    """The file a stored (possibly root-relative) path names."""
    p = Path(path)
    return p if p.is_absolute() or not root else Path(root) / p


def val_predictions(probs: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], paths: Sequence[Path],
                    root: str | Path | None, limit: int = MAX_VAL_PREDICTIONS) -> tuple[dict[str, Any], ...]:
    """One small dict per validation photo (path, true, pred, confidence of pred): what a confusion-matrix
    cell lists. `probs` are the calibrated (temperature-scaled) probabilities."""
    conf, pred = probs.max(1)
    return tuple({"path": relative_path(paths[i], root), "true": classes[int(labels[i])], "pred": classes[int(pred[i])],
                  "confidence": round(float(conf[i]), 4)} for i in range(min(len(labels), limit)))


def cell(predictions: Sequence[dict[str, Any]], true: str, pred: str) -> list[dict[str, Any]]:
    """The validation photos of one confusion-matrix cell (true class x predicted class), most confident first."""
    return sorted((p for p in predictions if p["true"] == true and p["pred"] == pred), key=lambda p: -p["confidence"])


def run_label_issues(trainer: Any, val_probs: torch.Tensor, classes: Sequence[str], root: str | Path | None,
                     seed: int = 0, features: np.ndarray | None = None) -> tuple[tuple[LabelIssue, ...], dict[str, Any]]:
    """A finished run's label issues (validation photos, plus training photos in fast mode) and what they
    were computed from, for the checkpoint's meta. A failure here is logged and reported in the result
    (`{"total": 0, "error": ...}`): the trained model is saved either way. `features`: the training photos'
    starting features when the caller has them (the unknown-photo detector's pass, for the reference model)."""
    try:
        return _run_label_issues(trainer, val_probs, classes, root, seed, features)
    except Exception as exc:  # an extra after training: never the reason a finished run loses its results
        log.exception("label issues could not be computed; the run is saved without them")
        return (), {"total": 0, "by_split": {"train": 0, "val": 0}, "error": f"{type(exc).__name__}: {exc}"}


def _run_label_issues(trainer: Any, val_probs: torch.Tensor, classes: Sequence[str], root: str | Path | None,
                      seed: int, features: np.ndarray | None) -> tuple[tuple[LabelIssue, ...], dict[str, Any]]:
    t0 = time.perf_counter()
    setup = trainer.setup
    labels = [setup.val.labels.cpu().numpy()]
    probs = [val_probs.double().cpu().numpy()]
    paths = [relative_path(p, root) for p in setup.val.paths]
    splits = ["val"] * len(setup.val)
    if features is None:
        features = starting_features(trainer)
    t_features = time.perf_counter()
    train_probs = None
    if features is not None:
        train_labels = setup.train.labels.cpu().numpy()
        train_probs = cross_fitted_probs(features, train_labels, len(classes), seed=seed)
    t_fit = time.perf_counter()
    if train_probs is not None:
        labels.append(train_labels)
        probs.append(train_probs)
        paths += [relative_path(p, root) for p in setup.train.paths]
        splits += ["train"] * len(setup.train)
    issues = find_label_issues(np.concatenate(labels), np.concatenate(probs), classes, paths, splits)
    info = {"total": len(issues), "by_split": {s: sum(i.split == s for i in issues) for s in ("train", "val")},
            "checked": {"val": len(setup.val), "train": len(setup.train) if train_probs is not None else 0},
            "method": "cleanlab find_label_issues (prune_by_noise_rate), ranked by self-confidence",
            "val_probs": "the model's, temperature-scaled",
            "train_probs": (f"{FOLDS}-fold cross-fitted logistic regression on the starting backbone's pooled features"
                            if train_probs is not None else "not checked (no feature cache: full mode)"),
            "seconds": round(time.perf_counter() - t0, 2),  # the first run in a process also imports scikit-learn
            "step_seconds": {"features": round(t_features - t0, 2), "cross_fit": round(t_fit - t_features, 2),
                             "cleanlab": round(time.perf_counter() - t_fit, 2)}}
    log.info("label issues: %d of %d photos flagged in %.1f s", len(issues), len(splits), info["seconds"])
    return issues, info
