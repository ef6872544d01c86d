"""Unknown-photo detection ("none of these") and calibration, measured: flowers5-dev's validation split
(photos of the known classes the model never trained on) against non-flower photos that installed Python
packages ship (scikit-image's sample data, Gradio's media assets, Matplotlib's and scikit-learn's sample
images; read where they are installed, never copied into the repo), plus corner crops of those photos and
100 small face photos (scikit-image's LFW subset).

    pip install ".[bench]"              # scikit-image: the benchmark's only extra dependency (more photos)
    python benchmarks/trust.py                      # the shipped model's stored detector
    python benchmarks/trust.py --candidates         # + every candidate score side by side (how it was chosen)

Reported: AUROC (flowers vs non-flowers), the share of non-flowers accepted and of flowers accepted at
each stored strictness, the ECE before/after temperature scaling, and what the check costs per photo.
The validation split also set the thresholds, so its acceptance is by construction; "cross-fitted"
sets each half's thresholds on the other half (as the detector sets them: a tolerance bound), an honest
estimate for unseen flower photos (slightly pessimistic: a half has fewer photos to set them from). The package
photos are few (about 30 distinct scenes): a sanity check, not an acceptance test.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

try:
    from . import _common as common  # type: ignore[no-redef]
except ImportError:  # run as a script
    import _common as common  # type: ignore[no-redef]

from PIL import Image  # noqa: E402

from flowerdemo.data.dataset import checkpoint_split  # noqa: E402
from flowerdemo.infer.predict import familiarity, probabilities  # noqa: E402
from flowerdemo.infer.preprocess import prepare_image  # noqa: E402
from flowerdemo.models.checkpoints import load_checkpoint  # noqa: E402
from flowerdemo.models.unknown import STRICTNESS, K, reference_features, tolerance_threshold  # noqa: E402
from flowerdemo.serve.runs import DEFAULT_RUN  # noqa: E402
from flowerdemo.train.calibration import calibration_metrics, calibration_summary, fit_temperature  # noqa: E402

NAME = "trust"
# (package, folder inside it, file names or None for every photo > 30 KB); flower photos are left out
SOURCES = [
    ("skimage", "data", None),
    ("gradio", "media_assets/images", ["cheetah.jpg", "groot.jpeg", "tower.jpg"]),
    ("gradio", "test_data", ["cheetah2.jpg"]),
    ("matplotlib", "mpl-data/sample_data", ["grace_hopper.jpg"]),
    ("sklearn", "datasets/images", ["china.jpg"]),  # its flower.jpg is a flower: not used
]


def package_photos() -> tuple[list[tuple[str, Image.Image]], list[str]]:
    """(name, RGB image) of every non-flower photo found in installed packages, and the packages missing."""
    photos, missing = [], []
    for package, folder, names in SOURCES:
        try:
            root = Path(importlib.import_module(package).__file__).parent / folder
        except ImportError:
            missing.append(package)
            continue
        files = ([root / n for n in names] if names else
                 sorted(p for p in root.glob("*") if p.suffix.lower() in (".png", ".jpg") and p.stat().st_size > 30_000))
        photos += [(f"{package}/{p.name}", Image.open(p).convert("RGB")) for p in files if p.is_file()]
    return photos, missing


def faces(limit: int = 100) -> list[tuple[str, Image.Image]]:
    try:
        root = Path(importlib.import_module("skimage").__file__).parent / "data"
        arr = np.load(root / "lfw_subset.npy")[:limit]
    except (ImportError, OSError):
        return []
    return [(f"skimage/lfw_subset[{i}]", Image.fromarray((a * 255).astype(np.uint8)).convert("RGB")) for i, a in enumerate(arr)]


def corner_crops(photos: list[tuple[str, Image.Image]], frac: float = 0.6) -> list[tuple[str, Image.Image]]:
    out = []
    for name, im in photos:
        w, h = im.size
        cw, ch = int(w * frac), int(h * frac)
        for i, (left, top) in enumerate(((0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch))):
            out.append((f"{name}#crop{i}", im.crop((left, top, left + cw, top + ch))))
    return out


@torch.inference_mode()
def describe(clf, images: list, batch: int = 32, everything: bool = False) -> dict[str, torch.Tensor]:
    """Logits and reference features (and, with `everything`, the fine-tuned pooled features and the
    pooled input of the last stage) of images given as paths or PIL images, at the eval crop."""
    rows: dict[str, list[torch.Tensor]] = {"logits": [], "reference": [], "finetuned": [], "stage": []}
    trunk, tail = clf.model.split()
    p = clf.preprocessing
    for start in range(0, len(images), batch):
        x = torch.cat([prepare_image(im, p).tensor for im in images[start:start + batch]])
        x = x.contiguous(memory_format=torch.channels_last)
        if everything:
            maps = trunk(x)
            pooled = tail(maps)
            rows["stage"].append(maps.float().mean((2, 3)))
            rows["finetuned"].append(pooled.float())
            rows["logits"].append(clf.model.head(pooled).float())
        else:
            rows["logits"].append(clf.model(x).float())
        rows["reference"].append(reference_features(x, p.mean, p.std))
    return {k: torch.cat(v) for k, v in rows.items() if v}


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(score of a non-flower > score of a flower), ties counted half (higher score = more unknown)."""
    diff = outside[:, None] - inside[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def threshold_for(scores: np.ndarray, share: float) -> float:
    """How the detector sets a threshold from validation scores (a tolerance bound, models/unknown.py)."""
    return tolerance_threshold(torch.from_numpy(np.asarray(scores, dtype=np.float32)), share)


def cross_fitted_acceptance(val: np.ndarray, share: float, seeds: int = 20) -> float:
    """Share of flower photos accepted when each half's threshold comes from the other half (mean over
    random halvings): an estimate for photos the thresholds never saw."""
    rates = []
    for seed in range(seeds):
        idx = np.random.default_rng(seed).permutation(len(val))
        a, b = idx[: len(val) // 2], idx[len(val) // 2:]
        rates.append(((val[b] <= threshold_for(val[a], share)).sum() + (val[a] <= threshold_for(val[b], share)).sum())
                     / len(val))
    return float(np.mean(rates))


def cross_fitted_ece(logits: torch.Tensor, labels: torch.Tensor, seeds: int = 5) -> dict:
    """ECE on photos the temperature was not fitted on: T fitted on one half of the validation split,
    ECE measured on the other half, both ways, over a few random halvings (the stored T saw them all)."""
    eces, raw = [], []
    for seed in range(seeds):
        idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
        halves = idx[: len(idx) // 2], idx[len(idx) // 2:]
        for fit, test in (halves, halves[::-1]):
            t = fit_temperature(logits[fit], labels[fit])
            eces.append(calibration_metrics((logits[test] / t).softmax(1), labels[test])["ece"])
            raw.append(calibration_metrics(logits[test].softmax(1), labels[test])["ece"])
    return {"ece_calibrated_mean": round(float(np.mean(eces)), 4), "ece_calibrated_max": round(float(np.max(eces)), 4),
            "ece_uncalibrated_mean": round(float(np.mean(raw)), 4), "halves": len(eces),
            "note": "ECE of a half of the validation split with T fitted on the other half (15 bins, ~248 photos each)"}


def knn_distance(bank: torch.Tensor, q: torch.Tensor, k: int = K) -> np.ndarray:
    sims = F.normalize(q, dim=1) @ F.normalize(bank, dim=1).T
    return (1 - sims.topk(min(k, len(bank)), dim=1).values.mean(1)).numpy()


def mahalanobis(train: torch.Tensor, labels: torch.Tensor, q: torch.Tensor) -> np.ndarray:
    """Class-conditional Gaussians with a shared, slightly shrunk covariance: min over classes."""
    x, q = train.double(), q.double()
    classes = labels.unique()
    mu = torch.stack([x[labels == c].mean(0) for c in classes])
    centred = x - mu[torch.searchsorted(classes, labels)]
    cov = centred.T @ centred / len(x)
    cov += 1e-3 * cov.trace() / len(cov) * torch.eye(len(cov), dtype=cov.dtype)
    prec = torch.linalg.inv(cov)
    d = torch.stack([((q - m) @ prec * (q - m)).sum(1) for m in mu], 1)
    return d.min(1).values.numpy()


def candidates(clf, feats: dict, train: dict, labels: torch.Tensor, shares=(0.95,)) -> dict[str, dict[str, np.ndarray]]:
    """score name -> {set name: scores}; higher = more unknown."""
    t = clf.temperature
    out: dict[str, dict[str, np.ndarray]] = {}

    def each(fn):
        return {name: fn(f) for name, f in feats.items()}

    out["max softmax probability (calibrated)"] = each(lambda f: (1 - (f["logits"] / t).softmax(1).max(1).values).numpy())
    out["energy"] = each(lambda f: (-torch.logsumexp(f["logits"], 1)).numpy())
    out[f"k-NN cosine ({K}), fine-tuned features"] = each(lambda f: knn_distance(train["finetuned"], f["finetuned"]))
    out["Mahalanobis, fine-tuned features"] = each(lambda f: mahalanobis(train["finetuned"], labels, f["finetuned"]))
    out[f"k-NN cosine ({K}), pooled input of the last stage"] = each(lambda f: knn_distance(train["stage"], f["stage"]))
    out[f"k-NN cosine ({K}), reference encoder (stored)"] = each(lambda f: knn_distance(train["reference"], f["reference"]))
    out["Mahalanobis, reference encoder"] = each(lambda f: mahalanobis(train["reference"], labels, f["reference"]))
    # combined: z-scores (by the validation scores) of the fine-tuned and the reference k-NN, summed
    a, b = out[f"k-NN cosine ({K}), fine-tuned features"], out[f"k-NN cosine ({K}), reference encoder (stored)"]
    za = {n: (v - a["validation flowers"].mean()) / a["validation flowers"].std() for n, v in a.items()}
    zb = {n: (v - b["validation flowers"].mean()) / b["validation flowers"].std() for n, v in b.items()}
    out["fine-tuned + reference k-NN (z-scores summed)"] = {n: za[n] + zb[n] for n in za}
    return out


def summarise(scores: dict[str, np.ndarray], thresholds: dict[str, float] | None) -> dict:
    val = scores["validation flowers"]
    outside = np.concatenate([scores["non-flower photos"], scores["faces"]])
    row = {"auroc": round(auroc(val, outside), 4)}
    for name, share in STRICTNESS.items():
        t = thresholds[name] if thresholds else threshold_for(val, share)
        row[name] = {"threshold": round(t, 4),
                     "flowers_accepted_cross_fitted": round(cross_fitted_acceptance(val, share), 4),
                     "flowers_accepted_validation": round(float((val <= t).mean()), 4),
                     **{f"{k}_accepted": round(float((v <= t).mean()), 4) for k, v in scores.items()
                        if k != "validation flowers" and len(v)}}
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / DEFAULT_RUN)
    p.add_argument("--candidates", action="store_true",
                   help="also compare every candidate score (needs a pass over the training photos)")
    p.add_argument("--repeats", type=int, default=50, help="timed single-photo calls for the cost figures")
    common.add_common_args(p, NAME)
    args = p.parse_args(argv)
    common.apply_threads(args.threads)
    data = common.require_data(args.data)
    clf = load_checkpoint(args.checkpoint)
    if clf.detector is None:
        sys.exit(f"error: {args.checkpoint} has no unknown-photo detector (saved before they existed); "
                 "retrain it or re-run scripts/ship_model.py")
    split = checkpoint_split(data, clf.meta)
    photos, missing = package_photos()
    if missing:
        print(f"note: not installed, so their photos are left out: {', '.join(missing)} (pip install scikit-image)")
    sets = {"validation flowers": [s.path for s in split.val], "non-flower photos": [im for _, im in photos],
            "faces": [im for _, im in faces()], "corner crops": [im for _, im in corner_crops(photos)]}
    t0 = time.perf_counter()
    feats = {name: describe(clf, items, everything=args.candidates) if items else {} for name, items in sets.items()}
    labels = torch.tensor([s.label for s in split.val])
    stored = {name: clf.detector.scores(f["reference"]).numpy() if f else np.zeros(0) for name, f in feats.items()}
    result = {"checkpoint": str(args.checkpoint), "data": str(data), "machine": common.machine_info(),
              "sets": {k: len(v) for k, v in sets.items()}, "package_photos": [n for n, _ in photos],
              "detector": {k: v for k, v in clf.meta.get("unknown", {}).items()},
              "stored": summarise(stored, clf.detector.thresholds)}
    logits = feats["validation flowers"]["logits"]
    result["calibration"] = calibration_summary(logits, labels, clf.temperature, fitted_on="stored temperature")
    result["calibration_cross_fitted"] = cross_fitted_ece(logits, labels)
    if args.candidates:
        train_feats = describe(clf, [s.path for s in split.train], everything=True)
        train_labels = torch.tensor([s.label for s in split.train])
        scored = candidates(clf, {k: v for k, v in feats.items() if v}, train_feats, train_labels)
        result["candidates"] = {name: summarise({**{k: np.zeros(0) for k in sets}, **s}, None) for name, s in scored.items()}
    result["seconds_scoring"] = round(time.perf_counter() - t0, 1)
    # cost per photo: the model's forward (what every prediction pays) and the detector on top of it
    x = prepare_image(split.val[0].path, clf.preprocessing).tensor
    result["cost_ms"] = {"probabilities": common.time_calls(lambda: probabilities(clf, x), args.repeats, 5),
                         "unknown_check": common.time_calls(lambda: familiarity(clf, x), args.repeats, 5)}
    out = common.write_json(args.out, NAME, result)
    s = result["stored"]
    print(f"stored detector: AUROC {s['auroc']}")
    rows = [[name, s[name]["threshold"], s[name]["flowers_accepted_cross_fitted"], s[name].get("non-flower photos_accepted"),
             s[name].get("faces_accepted"), s[name].get("corner crops_accepted")] for name in STRICTNESS]
    print(common.markdown_table(["strictness", "threshold", "flowers accepted (cross-fitted)", "non-flowers accepted",
                                 "faces accepted", "crops accepted"], rows))
    if args.candidates:
        rows = [[name, r["auroc"], r["normal"]["flowers_accepted_cross_fitted"], r["normal"].get("non-flower photos_accepted"),
                 r["normal"].get("faces_accepted"), r["normal"].get("corner crops_accepted")]
                for name, r in result["candidates"].items()]
        print(common.markdown_table(["score", "AUROC", "flowers accepted", "non-flowers accepted", "faces accepted",
                                     "crops accepted"], rows))
    c = result["calibration"]
    x = result["calibration_cross_fitted"]
    print(f"ECE {c['before']['ece']} -> {c['after']['ece']} (T = {clf.temperature:.3f}, on the validation split that fitted it); "
          f"cross-fitted: {x['ece_uncalibrated_mean']} -> {x['ece_calibrated_mean']} (max {x['ece_calibrated_max']})")
    print(f"cost per photo: probabilities p50 {result['cost_ms']['probabilities']['p50_ms']} ms, "
          f"unknown check p50 {result['cost_ms']['unknown_check']['p50_ms']} ms")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
