"""Exported models against torch: parity, accuracy, size and single-photo latency.

For a checkpoint (default: the shipped checkpoints/flowers5-lite2) and the validation split it was
trained with (data.dataset.checkpoint_split: its config's val_fraction and seed, near-duplicate groups as
its run kept them), prepared exactly as `predict` does:

  parity     max |Δprobability| and max |Δunknown score| of the float32 ONNX file vs flowerdemo's torch path
             (predict.probabilities / predict.familiarity), and how many verdicts ("none of these" at each
             strictness) differ
  accuracy   torch, ONNX float32, ONNX int8 dynamic, ONNX int8 static calibrated on CALIBRATION_PHOTOS
             training photos, and on the app's example pictures (what the Models tab's int8 download uses),
             each with its count and 95 % Wilson interval
  size       of each file
  latency    one photo (the first validation photo, already cropped), classifier + unknown-photo detector:
             torch (flowerdemo's predict.probabilities + familiarity) vs the onnxruntime files, --threads
             threads each, p50/p95 over --repeats calls

    python benchmarks/export.py                        # the shipped model, 2 threads
    python benchmarks/export.py --limit 50 --repeats 5 # smoke
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

try:
    from . import _common as common  # type: ignore[no-redef]
except ImportError:  # run as a script
    import _common as common  # type: ignore[no-redef]

NAME = "export"
DEFAULT_CHECKPOINT = common.REPO / "checkpoints" / "flowers5-lite2"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    common.add_common_args(p, NAME)
    p.set_defaults(threads=2)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="run directory [the shipped model]")
    p.add_argument("--limit", type=int, default=0, help="at most this many validation photos (0 = all) [0]")
    p.add_argument("--repeats", type=int, default=50, help="timed calls per latency case [50]")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per latency case [5]")
    return p.parse_args(argv)


def prepared(paths, prep, batch: int = 32):
    """Normalised (N, 3, S, S) batches, prepared as predict does."""
    import torch

    from flowerdemo.infer.preprocess import prepare_image

    for i in range(0, len(paths), batch):
        yield torch.cat([prepare_image(p, prep).tensor for p in paths[i:i + batch]])


def app_photos() -> list[Path]:
    """What the app calibrates its int8 download on (ui/models_tab.py): its example pictures."""
    from ui.models_tab import calibration_photos

    return calibration_photos()


def detector_mib(path: Path) -> float:
    """MiB of the file's weights that belong to the unknown-photo detector (reference encoder + bank)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    return round(sum(numpy_helper.to_array(t).nbytes for t in graph.initializer
                     if t.name.startswith(("encoder.", "bank_"))) / 2**20, 2)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    common.apply_threads(args.threads)
    import numpy as np

    from flowerdemo.data.dataset import checkpoint_split
    from flowerdemo.export import CALIBRATION_PHOTOS, export
    from flowerdemo.export.graph import pixels_from_tensor
    from flowerdemo.export.onnx import session
    from flowerdemo.figures import wilson_interval
    from flowerdemo.infer.predict import familiarity, probabilities
    from flowerdemo.models.checkpoints import load_checkpoint
    from flowerdemo.models.unknown import STRICTNESS

    info = common.machine_info()
    clf = load_checkpoint(args.checkpoint)
    split = checkpoint_split(common.require_data(args.data), clf.meta)
    val = list(split.val)[: args.limit or None]
    labels = np.array([clf.classes.index(split.classes[s.label]) for s in val])
    p = clf.preprocessing
    print(f"export benchmark: {clf.name} ({clf.meta['architecture']}, {p.input_size} px), {len(val)} validation "
          f"photos, {args.threads} threads\nmachine: {common.machine_line(info)}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="flowerdemo-export-") as tmp:
        tmp = Path(tmp)
        calib = tmp / "calibration"  # training photos only: the validation split stays unseen
        for s in list(split.train)[:: max(1, len(split.train) // CALIBRATION_PHOTOS)][:CALIBRATION_PHOTOS]:
            (calib / s.path.parent.name).mkdir(parents=True, exist_ok=True)
            (calib / s.path.parent.name / s.path.name).symlink_to(s.path.resolve())
        files, seconds = {}, {}
        for key, kwargs in (("onnx_fp32", {}), ("onnx_int8_dynamic", {"int8": True}),
                            ("onnx_int8_static", {"int8": True, "calibration": calib}),
                            ("onnx_int8_static_app", {"int8": True, "calibration": app_photos()})):
            t = time.perf_counter()
            res = export(clf, "onnx", tmp / key, **kwargs)
            seconds[key] = round(time.perf_counter() - t, 1)
            files[key] = res.path
            print(f"  exported {key}: {res.size_bytes / 2**20:.1f} MiB in {seconds[key]} s", file=sys.stderr, flush=True)
        sessions = {key: session(path, args.threads) for key, path in files.items()}

        probs = {key: [] for key in ("torch", *files)}
        scores = {key: [] for key in ("torch", *files)}
        for x in prepared([s.path for s in val], p):
            probs["torch"].append(probabilities(clf, x).numpy())
            if clf.detector is not None:
                scores["torch"].append(np.array([f.score for f in familiarity(clf, x, "off")]))
            pixels = pixels_from_tensor(x, p.mean, p.std).numpy()
            for key, sess in sessions.items():
                out = sess.run(None, {"pixels": pixels})
                probs[key].append(out[0])
                if len(out) > 2:
                    scores[key].append(out[2])
        probs = {k: np.concatenate(v) for k, v in probs.items()}
        scores = {k: np.concatenate(v) for k, v in scores.items() if v}

        rows, results = [], {}
        for key in probs:
            correct = int((probs[key].argmax(1) == labels).sum())
            lo, hi = wilson_interval(correct, len(labels))
            r = {"accuracy": round(correct / len(labels), 4), "correct": correct, "n": len(labels),
                 "wilson95": [round(lo, 4), round(hi, 4)],
                 "max_abs_dprob_vs_torch": float(np.abs(probs[key] - probs["torch"]).max()),
                 "top1_agreement_vs_torch": round(float((probs[key].argmax(1) == probs["torch"].argmax(1)).mean()), 4),
                 "size_mib": round(files[key].stat().st_size / 2**20, 2) if key in files else None,
                 "detector_mib": detector_mib(files[key]) if key in files else None,
                 "export_s": seconds.get(key)}
            if key in scores:
                r["max_abs_dscore_vs_torch"] = float(np.abs(scores[key] - scores["torch"]).max())
                r["verdicts_changed"] = {name: int(((scores[key] <= t) != (scores["torch"] <= t)).sum())
                                         for name, t in clf.detector.thresholds.items() if name in STRICTNESS}
            results[key] = r

        one = next(prepared([val[0].path], p))
        one_pixels = pixels_from_tensor(one, p.mean, p.std)
        latency = {}

        def run_torch():  # flowerdemo's own path: calibrated probabilities + the unknown-photo check
            return probabilities(clf, one), familiarity(clf, one, "normal")

        latency["torch"] = common.time_calls(run_torch, args.repeats, args.warmup)
        for key, sess in sessions.items():
            feed = {"pixels": one_pixels.numpy()}
            latency[key] = common.time_calls(lambda s=sess, f=feed: s.run(None, f), args.repeats, args.warmup)
        for key in results:
            results[key]["latency"] = latency[key]
            rows.append([key, f"{results[key]['accuracy']:.2%} ({results[key]['correct']}/{len(labels)})",
                         f"{results[key]['max_abs_dprob_vs_torch']:.1e}", results[key]["size_mib"] or "",
                         f"{latency[key]['p50_ms']:.1f}", f"{latency[key]['p95_ms']:.1f}"])

    header = ["variant", "val accuracy", "max |Δprob| vs torch", "size MiB", "p50 ms", "p95 ms"]
    print(common.markdown_table(header, rows))
    payload = {"benchmark": NAME, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": info,
               "command": "python benchmarks/export.py " + " ".join(argv),
               "settings": {"checkpoint": str(args.checkpoint), "data": str(args.data), "val_photos": len(val),
                            "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup,
                            "unknown_included": clf.detector is not None, "calibration_photos": CALIBRATION_PHOTOS,
                            "latency_photo": str(val[0].path),
                            "note": "2-core machine shared with other jobs while measured: latency is indicative"},
               "results": results, "table": {"header": header, "rows": rows}}
    out = common.write_json(args.out, NAME, payload)
    print(f"\nwritten: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
