"""Which CAM method's heatmap is most faithful to the model? Each method is scored with ROAD (Rong et al.
2022, pytorch-grad-cam's `metrics.road`) on validation photos, next to a random-heatmap baseline:

    ROAD = (mean over percentiles of p(class | least relevant pixels removed)
            - mean over percentiles of p(class | most relevant pixels removed)) / 2

(ROADCombined's formula: higher = removing what the map highlights hurts more than removing what it
ignores). p is the model's calibrated probability of the class it predicted, the class the CAM explains.

    python benchmarks/cam_faithfulness.py                                  # the shipped model
    python benchmarks/cam_faithfulness.py --checkpoint checkpoints/flowers5-lite2 --checkpoint /tmp/run
    python benchmarks/cam_faithfulness.py --imputer road                   # ROAD's own imputer (slow)
    python benchmarks/cam_faithfulness.py --per-class 0 --time-photo P.jpg # explain() seconds per method only
    python benchmarks/cam_faithfulness.py --per-class 0 --time-photo P.jpg --app  # ... as the app adds it

The photos are the first --per-class validation photos of each class in the split the shipped model held
out (scan_dataset(val_fraction=0.2, seed=0)). Removed pixels are filled by --imputer: `smooth` (default)
is a pull-push fill (known pixels averaged down an image pyramid and pushed back into the holes: a smooth
fill from the surrounding pixels, like ROAD's noisy linear imputation, with the same 0.01 noise), because
ROAD's sparse solve costs 1-10 s per removal at 240 px on 2 cores (8 removals per method and photo);
`road` uses the library's NoisyLinearImputer unchanged. The per-model ranking (random left out) is
written as "cam_ranking" into the JSON, the list flowerdemo.infer.explain.best_cam_method reads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

try:
    from . import _common as common  # type: ignore[no-redef]
except ImportError:  # run as a script
    import _common as common  # type: ignore[no-redef]

from pytorch_grad_cam.metrics.perturbation_confidence import (  # noqa: E402
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.metrics.road import NoisyLinearImputer  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from flowerdemo.data.dataset import scan_dataset  # noqa: E402
from flowerdemo.infer.explain import CAM_METHODS  # noqa: E402
from flowerdemo.infer.faithfulness import random_maps  # noqa: E402
from flowerdemo.infer.predict import probabilities  # noqa: E402
from flowerdemo.infer.preprocess import prepare_image  # noqa: E402
from flowerdemo.infer.replicas import replica  # noqa: E402
from flowerdemo.models.checkpoints import Classifier, load_checkpoint  # noqa: E402
from flowerdemo.serve.runs import DEFAULT_RUN  # noqa: E402

NAME = "cam_faithfulness"
RANDOM = "random"


class SmoothImputer:
    """Pull-push fill of the pixels where `keep` is 0 (ROAD's imputer interface: (C, H, W), (H, W) -> (C, H, W))."""

    def __init__(self, noise: float = 0.01, seed: int = 0) -> None:
        self.noise = noise
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, img: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        w = keep.float()[None]
        levels, v = [], img * w
        while min(v.shape[-2:]) > 1:  # pull: weighted averages of the known pixels, coarser and coarser
            levels.append((v, w))
            v, w = F.avg_pool2d(v[None], 2, ceil_mode=True)[0], F.avg_pool2d(w[None], 2, ceil_mode=True)[0]
        fill = v / w.clamp_min(1e-8)
        for v, w in reversed(levels):  # push: where a level knows little, take the coarser level's estimate
            up = F.interpolate(fill[None], size=v.shape[-2:], mode="bilinear", align_corners=False)[0]
            fill = v / w.clamp_min(1e-8) * w.clamp(0, 1) + up * (1 - w.clamp(0, 1))
        noise = self.noise * torch.randn(img.shape, generator=self.generator)
        return torch.where(keep.bool()[None], img, fill + noise)


class Probability:
    """ROAD's target: the calibrated probability of one class (as every probability the app shows)."""

    def __init__(self, clf: Classifier, index: int) -> None:
        self.clf, self.index = clf, index

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self.clf.softmax(output[None])[0, self.index]


def road_combined(x: torch.Tensor, cams: np.ndarray, targets, model, percentiles, imputer) -> np.ndarray:
    """ROADCombined built from the library's pieces with a chosen imputer (ROADCombined fixes its own).
    return_diff=False: the unperturbed score cancels in LeRF - MoRF, so its forwards are skipped."""
    def mean(remover) -> np.ndarray:
        return np.mean([PerturbationConfidenceMetric(remover(p, imputer))(x, cams, targets, model, return_diff=False)
                        for p in percentiles], axis=0)

    with torch.no_grad():
        return (mean(RemoveLeastRelevantFirst) - mean(RemoveMostRelevantFirst)) / 2


def cam_maps(clf: Classifier, x: torch.Tensor, index: int, methods, seed: int) -> tuple[np.ndarray, dict[str, float]]:
    """One grayscale map (S, S) per method for class `index`, and each method's seconds."""
    maps, seconds = [], {}
    with replica(clf.model) as model:
        for method in methods:
            t0 = time.perf_counter()
            if method == RANDOM:
                grid = max(2, round(x.shape[-1] / 32))
                m = random_maps(tuple(x.shape[-2:]), 1, torch.Generator().manual_seed(seed), grid)[0].numpy()
            else:
                with CAM_METHODS[method](model=model, target_layers=[model.target_layer]) as cam:
                    m = cam(input_tensor=x.contiguous(memory_format=torch.channels_last),
                            targets=[ClassifierOutputTarget(index)])[0]
            seconds[method] = time.perf_counter() - t0
            maps.append(np.nan_to_num(m.astype(np.float32)))
    # ROAD thresholds at percentiles: a plateau (a ReLU'd CAM is flat at 0) would be removed all or nothing,
    # so ties are broken by noise far below any real difference
    jitter = np.random.default_rng(seed).uniform(0, 1e-6, size=(len(maps), *maps[0].shape)).astype(np.float32)
    return np.stack(maps) + jitter, seconds


def evaluate(clf: Classifier, samples, methods, percentiles, imputer, seed: int) -> dict:
    scores = {m: [] for m in methods}
    seconds = {m: [] for m in methods}
    for i, sample in enumerate(samples):
        x = prepare_image(sample.path, clf.preprocessing).tensor
        index = int(probabilities(clf, x)[0].argmax())
        maps, secs = cam_maps(clf, x, index, methods, seed + i)
        road = road_combined(x.repeat(len(methods), 1, 1, 1), maps, [Probability(clf, index)] * len(methods),
                             clf.model, percentiles, imputer)
        for m, s in zip(methods, road, strict=True):
            scores[m].append(float(s))
            seconds[m].append(secs[m])
        print(f"  {i + 1}/{len(samples)} {sample.path.name}: " + " ".join(f"{m} {s:+.3f}" for m, s in zip(methods, road,
                                                                                                       strict=True)),
              flush=True)
    rows = {}
    for m in methods:
        a = np.asarray(scores[m])
        wins = np.mean(a > np.asarray(scores[RANDOM])) if RANDOM in scores and m != RANDOM else None
        # the photos are shared, so method differences are judged per photo (paired), against Grad-CAM
        diff = a - np.asarray(scores["gradcam"]) if "gradcam" in scores and len(a) > 1 else None
        rows[m] = {"road_mean": float(a.mean()), "road_std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
                   "road_sem": float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else 0.0,
                   "beats_random": None if wins is None else float(wins),
                   "minus_gradcam": None if diff is None else float(diff.mean()),
                   "minus_gradcam_sem": None if diff is None else float(diff.std(ddof=1) / np.sqrt(len(diff))),
                   "seconds_mean": statistics.fmean(seconds[m]), "scores": scores[m]}
    ranked = sorted(methods, key=lambda m: rows[m]["road_mean"], reverse=True)
    return {"methods": rows, "order": ranked, "cam_ranking": [m for m in ranked if m != RANDOM]}


def time_explain(clf: Classifier, photo: Path, methods, repeats: int, app: bool = False) -> dict[str, dict[str, float]]:
    """explain() end to end on one photo per method, as a caller without an answer calls it (overlay at most
    1024 px); with `app`, as the app's Predict tab does after its answer: the onnxruntime twins on
    (infer/runtime.py), the photo decoded once for an 800 px overlay, the answer's forward reused by Grad-CAM
    (`answered`): the time the heatmap adds, the figures behind flowerdemo.infer.cam_times.CAM_SECONDS."""
    from flowerdemo.infer.explain import explain, prepare_for_explain
    from flowerdemo.infer.predict import classify, warm_up

    out = {}
    if app:
        from flowerdemo.infer import runtime

        runtime.enable()
        warm_up(clf)
        prepared = prepare_for_explain(clf, photo, 800)  # ui/predict_tab.MAX_SIDE
        answered = classify(clf, prepared=prepared)
    for method in methods:
        if method != RANDOM:
            call = ((lambda m=method: explain(clf, method=m, prepared=prepared, answered=answered)) if app else
                    (lambda m=method: explain(clf, photo, method=m, max_side=1024)))
            out[method] = common.time_calls(call, repeats, 1)
            print(f"  explain {method}: p50 {out[method]['p50_ms'] / 1000:.2f} s", flush=True)
    if app:
        return out
    # what the faithfulness check adds (one batched forward of 1 + 1 + RANDOM_REGIONS images)
    out["gradcam, check=True"] = common.time_calls(lambda: explain(clf, photo, max_side=1024, check=True), repeats, 1)
    print(f"  explain gradcam with check: p50 {out['gradcam, check=True']['p50_ms'] / 1000:.2f} s; "
          f"{explain(clf, photo, max_side=1024, check=True).faithfulness.text}", flush=True)
    return out


def _paired(row: dict) -> str:
    return "-" if row["minus_gradcam"] is None else f"{row['minus_gradcam']:+.3f} ± {row['minus_gradcam_sem']:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p, NAME)
    p.add_argument("--checkpoint", type=Path, action="append",
                   help=f"model to rank the methods for; repeat for several [checkpoints/{DEFAULT_RUN}]")
    p.add_argument("--per-class", type=int, default=12, help="validation photos per class [12]")
    p.add_argument("--percentiles", type=int, nargs="+", default=[20, 40, 60, 80], help="ROAD percentiles [20 40 60 80]")
    p.add_argument("--methods", nargs="+", default=[*CAM_METHODS, RANDOM], choices=[*CAM_METHODS, RANDOM],
                   help="methods to rank [all, and the random baseline]")
    p.add_argument("--imputer", choices=("smooth", "road"), default="smooth",
                   help="fill of removed pixels: smooth (pull-push, fast) or road (NoisyLinearImputer) [smooth]")
    p.add_argument("--seed", type=int, default=0, help="random heatmaps and imputation noise [0]")
    p.add_argument("--time-photo", type=Path, help="also time explain() per method on this photo (app's 1024 px overlay)")
    p.add_argument("--repeats", type=int, default=3, help="timed explain() calls per method with --time-photo [3]")
    p.add_argument("--app", action="store_true",
                   help="with --time-photo: time the heatmap as the app adds it after its answer (onnxruntime twins, "
                        "800 px overlay, the answer's forward reused)")
    args = p.parse_args(argv)
    if not args.data.is_dir():
        print(f"skipped: dataset folder {args.data} not found (pass --data DIR)")
        return 0
    common.apply_threads(args.threads)
    torch.manual_seed(args.seed)  # NoisyLinearImputer draws its noise from torch's global generator
    checkpoints = args.checkpoint or [common.REPO / "checkpoints" / DEFAULT_RUN]
    split = scan_dataset(args.data, val_fraction=0.2, seed=0)
    samples = [s for label in range(len(split.classes)) for s in [v for v in split.val if v.label == label][:args.per_class]]
    imputer = SmoothImputer(seed=args.seed) if args.imputer == "smooth" else NoisyLinearImputer()
    info = common.machine_info()
    print(common.machine_line(info))
    print(f"{len(samples)} validation photos ({args.per_class} per class), percentiles {args.percentiles}, "
          f"imputer {args.imputer}")
    results = {}
    for path in checkpoints:
        clf = load_checkpoint(path, device=common.resolve_device(args.device))
        print(f"{path} ({clf.meta['architecture']}):", flush=True)
        t0 = time.perf_counter()
        res = evaluate(clf, samples, args.methods, args.percentiles, imputer, args.seed) if samples else {}
        if args.time_photo:
            res["explain_seconds"] = time_explain(clf, args.time_photo, args.methods, args.repeats, args.app)
        res.update(checkpoint=str(Path(path).resolve()), architecture=clf.meta["architecture"],
                   photos=len(samples), wall_s=time.perf_counter() - t0)
        results[str(path)] = res
        if not samples:
            continue
        print(common.markdown_table(
            ["rank", "method", "ROAD (mean ± std)", "± sem", "minus Grad-CAM, paired (± sem)", "beats random",
             "CAM s/photo"],
            [[i + 1, m, f"{res['methods'][m]['road_mean']:.3f} ± {res['methods'][m]['road_std']:.3f}",
              f"{res['methods'][m]['road_sem']:.3f}", _paired(res["methods"][m]),
              common.fmt(res["methods"][m]["beats_random"], ".0%", "-"), f"{res['methods'][m]['seconds_mean']:.2f}"]
             for i, m in enumerate(res["order"])]))
        print(f"cam_ranking: {res['cam_ranking']}", flush=True)
    settings = {k: str(v) for k, v in vars(args).items()}
    out = common.write_json(args.out, NAME, {
        "results": results, "settings": settings, "photos": [str(s.path) for s in samples], "machine": info,
        "command": " ".join(["python", "benchmarks/cam_faithfulness.py", *sys.argv[1:]])})
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
