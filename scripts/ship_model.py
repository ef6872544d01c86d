"""Package a training run as the app's bundled default model (checkpoints/<runs.DEFAULT_RUN>).

    python scripts/ship_model.py RUN_DIR --data ../shared/datasets/flowers5-dev --command "python -m flowerdemo train ..."

Re-scores the run on the validation split it was trained without (same seed and fraction as in its
config), in float32 and in float16, keeps float16 only if it loses no accuracy, fits the calibration
temperature on the shipped weights' validation logits (the training engine's function), fits the
unknown-photo detector on the training photos with thresholds from the validation photos (the engine's
function too), and writes the checkpoint plus a model card (README.md) with provenance, metrics, command and limits,
and the reliability diagram the card shows (reliability.png).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowerdemo.data.dataset import checkpoint_split  # noqa: E402
from flowerdemo.data.tensorcache import decode_samples  # noqa: E402
from flowerdemo.device import autocast_for  # noqa: E402
from flowerdemo.models.checkpoints import load_checkpoint, read_meta, save_checkpoint  # noqa: E402
from flowerdemo.models.hub import DIAGRAM, model_card  # noqa: E402
from flowerdemo.models.reliability import has_diagram, save_reliability_diagram  # noqa: E402
from flowerdemo.serve.runs import DEFAULT_RUN  # noqa: E402
from flowerdemo.train.calibration import calibration_summary, fit_temperature, unfit_reason  # noqa: E402
from flowerdemo.train.evaluate import predict_tensors  # noqa: E402
from flowerdemo.train.metrics import classification_report, format_accuracy  # noqa: E402
from flowerdemo.train.step import drain  # noqa: E402
from flowerdemo.train.unknown import fit_from_images  # noqa: E402

PROVENANCE = (
    "Trained on `flowers5-dev`: 2,482 photos at 227x227 px, a subset of the public Kaggle \"Flowers "
    "Recognition\" collection (Flickr and web photos, with some label noise and near-duplicates). The "
    "photos are not shipped with this model. The validation split below was held out from training "
    "(stratified and seeded); the model never trained on it. It did serve to pick the best epoch and "
    "to choose between the candidate runs listed in docs/benchmarks.md, so the figure below is "
    "slightly optimistic for new photos.")
# what this model's photos cannot cover, after the card's own Limits (which say what the detector does)
DATA_LIMIT = ("- The photos it learned from are mostly centred, daylight, consumer photos; close-ups, drawings or "
              "unusual colours (e.g. a blue rose) may be misclassified.")


def score(clf, data) -> tuple[float, dict, torch.Tensor]:
    p = clf.preprocessing
    autocast, _ = autocast_for(torch.device("cpu"), False)
    logits = predict_tensors(clf.model, data, size=p.input_size, mean=p.mean, std=p.std,
                             device=torch.device("cpu"), autocast=autocast)
    pred = logits.argmax(1)
    return float((pred == data.labels).float().mean()), classification_report(data.labels, pred, clf.classes), logits


def trust_figures(result: dict) -> dict:
    """What the model card shows of a benchmarks/trust.py result: the stored detector's figures and where
    they come from."""
    stored = result["stored"]
    return {**stored, "sets": result.get("sets"), "calibration_cross_fitted": result.get("calibration_cross_fitted"),
            "source": "benchmarks/trust.py: flowers5-dev's validation split vs non-flower photos shipped by "
                      "installed packages (scikit-image, Gradio, Matplotlib, scikit-learn), their corner crops and "
                      "100 small face photos"}


def cam_ranking(result: dict, z: float = 2.0) -> list[str]:
    """The CAM methods best first from a benchmarks/cam_faithfulness.py result (ROAD, per photo): a method
    goes before Grad-CAM only when its paired lead over it is more than `z` standard errors (a tie keeps the
    fast, familiar default); the rest follow by mean ROAD score. The random baseline is left out."""
    import math

    (entry,) = [v for v in result["results"].values() if "methods" in v][:1] or [None]
    if entry is None:
        raise SystemExit("the given CAM results hold no ROAD scores (run benchmarks/cam_faithfulness.py with --per-class)")
    methods = {k: v for k, v in entry["methods"].items() if k != "random"}
    base = methods["gradcam"]["scores"]

    def lead(name: str) -> tuple[float, float]:
        d = [a - b for a, b in zip(methods[name]["scores"], base, strict=True)]
        mean = sum(d) / len(d)
        sem = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d)) if len(d) > 1 else float("inf")
        return mean, sem

    clear = sorted((n for n in methods if n != "gradcam" and lead(n)[0] > z * lead(n)[1]),
                   key=lambda n: -methods[n]["road_mean"])
    rest = sorted((n for n in methods if n != "gradcam" and n not in clear), key=lambda n: -methods[n]["road_mean"])
    return [*clear, "gradcam", *rest]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="the run directory written by `python -m flowerdemo train`")
    ap.add_argument("--data", type=Path, required=True, help="the dataset the run was trained on")
    ap.add_argument("--out", type=Path, default=ROOT / "checkpoints" / DEFAULT_RUN)
    ap.add_argument("--command", default="", help="the training command, quoted in the model card [the run's own]")
    ap.add_argument("--trust", type=Path, help="results JSON of benchmarks/trust.py on these weights: its figures go "
                                               "into the model card (meta['trust'])")
    ap.add_argument("--cam-ranking", type=Path, help="results JSON of benchmarks/cam_faithfulness.py: the CAM methods "
                                                     "ranked for this model (meta['cam_ranking']; the app's default)")
    args = ap.parse_args(argv)

    clf = load_checkpoint(args.run)
    cfg = clf.meta["config"]
    split = checkpoint_split(args.data, clf.meta)
    if tuple(split.classes) != tuple(clf.classes):
        raise SystemExit(f"classes differ: data {split.classes} vs checkpoint {clf.classes}")
    val, bad = decode_samples(split.val, clf.preprocessing.resize_size)
    acc32, report32, logits32 = score(clf, val)
    save_checkpoint(args.out, clf.model, clf.meta, half=True)  # temporary: measure what fp16 costs
    half = load_checkpoint(args.out)
    acc16, report16, logits16 = score(half, val)
    use_half = acc16 >= acc32
    print(f"validation accuracy ({len(val)} images): float32 {acc32:.4%}, float16 {acc16:.4%} -> "
          f"shipping {'float16' if use_half else 'float32'}")
    report = report16 if use_half else report32
    # the temperature of the weights that ship, fitted as the engine fits it (on the split that also chose
    # the epoch and the run, so its "after" figures are optimistic; unseen photos are the real check)
    logits = logits16 if use_half else logits32
    temperature = fit_temperature(logits, val.labels)
    calibration = calibration_summary(logits, val.labels, temperature, fitted_on=f"validation split ({len(val)} photos)",
                                      note=unfit_reason(logits, val.labels))
    print(f"calibration: temperature {temperature:.4f}, ECE {calibration['before']['ece']} -> "
          f"{calibration['after']['ece']} ({len(val)} validation images)")
    train, bad_train = decode_samples(split.train, clf.preprocessing.resize_size)
    detector = drain(fit_from_images(train, val, clf.preprocessing, torch.device("cpu"), int(cfg["seed"])))
    print(f"unknown-photo detector: {len(detector.bank)} training photos, thresholds {detector.thresholds}")
    meta = dict(clf.meta)
    meta["calibration"] = calibration
    meta["data"] = {**meta.get("data", {}), "root": args.data.name, "provenance": PROVENANCE}
    meta["metrics"] = {**meta["metrics"], **report, "best_val_acc": acc16 if use_half else acc32,
                       "val_acc_float32": acc32, "val_acc_float16": acc16}
    meta["command"] = args.command or meta.get("command", "")
    if args.trust:
        meta["trust"] = trust_figures(json.loads(args.trust.read_text()))
    if args.cam_ranking:
        meta["cam_ranking"] = cam_ranking(json.loads(args.cam_ranking.read_text()))
    meta.pop("mistakes", None)  # paths into the trainer's copy of the photos: meaningless elsewhere
    save_checkpoint(args.out, clf.model, meta, half=use_half, detector=detector)
    size_mb = (args.out / "model.safetensors").stat().st_size / 1e6
    shipped = read_meta(args.out)  # what ships, the detector's meta["unknown"] included
    card = model_card(shipped, extra_limits=[DATA_LIMIT]).split("\n")
    # provenance and command of this particular model, after the generated title paragraph
    at = card.index("## Classes")
    extra = ["## Provenance", "", PROVENANCE, "", f"Weights: {'float16' if use_half else 'float32'}, "
             f"{size_mb:.1f} MB. Validation accuracy on the held-out images: float32 {format_accuracy(report32)}, "
             f"float16 {format_accuracy(report16)}.", ""]
    if meta["command"]:
        extra += ["Trained with:", "", "```bash", meta["command"], "```", ""]
    card[at:at] = extra
    (args.out / "README.md").write_text("\n".join(card))
    if has_diagram(calibration):  # the card shows it
        save_reliability_diagram(calibration, args.out / DIAGRAM)
    print(json.dumps({"out": str(args.out), "size_mb": round(size_mb, 2), "acc32": acc32, "acc16": acc16,
                      "temperature": temperature,
                      "unknown_thresholds": detector.thresholds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
