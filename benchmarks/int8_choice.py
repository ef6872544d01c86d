"""How the int8 export keeps its accuracy: which layers to leave in float32, chosen on training photos only.

For a checkpoint (default: the shipped checkpoints/flowers5-lite2) and the split it was trained with
(data.dataset.checkpoint_split), export float32 ONNX once, then quantise it statically (QDQ, per-channel
int8 weights, uint8 activations, MinMax ranges from --calibration training photos) two ways:

  all         every classifier layer int8 (the export's first rule)
  ends_fp32   the first convolution and the linear head left in float32 (export.onnx.sensitive_nodes)

The choice is made on --select other training photos (not the calibration ones): the mean over photos of
the largest |Δprobability| against float32. Training photos are classified 100 % correctly by float32 and
by both int8 files, so accuracy there cannot choose; the probability difference can. Only then are the
validation photos scored (accuracy, top-1 agreement with float32), to report, not to choose.

Percentile and entropy calibration were left out: onnxruntime's histogram calibrators ran out of the
machine's 24 GB on 200 photos (killed by the kernel).

    python benchmarks/int8_choice.py                    # the shipped model
    python benchmarks/int8_choice.py --calibration 16 --select 40 --limit 40   # smoke
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

try:
    from . import _common as common  # type: ignore[no-redef]
except ImportError:  # run as a script
    import _common as common  # type: ignore[no-redef]

NAME = "int8_choice"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--checkpoint", type=Path, default=common.REPO / "checkpoints" / "flowers5-lite2")
    p.add_argument("--data", type=Path, default=common.DEFAULT_DATA)
    p.add_argument("--calibration", type=int, default=200, help="training photos whose activation ranges set the scales")
    p.add_argument("--select", type=int, default=300, help="other training photos that choose the variant")
    p.add_argument("--limit", type=int, default=0, help="validation photos scored (0 = all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    common.apply_threads(args.threads)
    import numpy as np
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from flowerdemo.data.dataset import checkpoint_split
    from flowerdemo.export import export
    from flowerdemo.export.graph import pixels_from_tensor
    from flowerdemo.export.onnx import _Reader, float32_nodes, sensitive_nodes, session
    from flowerdemo.figures import wilson_interval
    from flowerdemo.infer.preprocess import prepare_image
    from flowerdemo.models.checkpoints import load_checkpoint

    info = common.machine_info()
    clf = load_checkpoint(args.checkpoint)
    split = checkpoint_split(common.require_data(args.data), clf.meta)
    p = clf.preprocessing
    train, val = list(split.train), list(split.val)[: args.limit or None]
    calib = train[:: max(1, len(train) // args.calibration)][: args.calibration]
    taken = {s.path for s in calib}
    select = [s for s in train[3::6] if s.path not in taken][: args.select]

    def pixels(samples):
        return [np.concatenate([pixels_from_tensor(prepare_image(s.path, p).tensor, p.mean, p.std).numpy()
                                for s in samples[i:i + 32]]) for i in range(0, len(samples), 32)]

    def labels(samples):
        return np.array([clf.classes.index(split.classes[s.label]) for s in samples])

    cal_px, sel_px, val_px = pixels(calib), pixels(select), pixels(val)
    val_y = labels(val)

    def run(path, batches):
        sess = session(path, args.threads)
        return np.concatenate([sess.run(None, {"pixels": b})[0] for b in batches])

    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="flowerdemo-int8-") as tmp:
        fp32 = export(clf, "onnx", Path(tmp) / "fp32").path
        ref_sel, ref_val = run(fp32, sel_px), run(fp32, val_px)
        detector = float32_nodes(fp32)
        variants = {"all": detector, "ends_fp32": detector + sensitive_nodes(fp32, detector)}
        for name, keep in variants.items():
            dst = Path(tmp) / f"{name}.onnx"
            t = time.perf_counter()
            quantize_static(str(fp32), str(dst), _Reader(list(cal_px)), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=keep,
                            calibrate_method=CalibrationMethod.MinMax)
            sel, got = run(dst, sel_px), run(dst, val_px)
            correct = int((got.argmax(1) == val_y).sum())
            results[name] = {
                "select_mean_max_dprob": round(float(np.abs(sel - ref_sel).max(1).mean()), 5),
                "select_top1_agreement": round(float((sel.argmax(1) == ref_sel.argmax(1)).mean()), 4),
                "val_accuracy": round(correct / len(val), 4), "val_correct": correct,
                "val_wilson95": [round(x, 4) for x in wilson_interval(correct, len(val))],
                "val_top1_agreement": round(float((got.argmax(1) == ref_val.argmax(1)).mean()), 4),
                "val_mean_max_dprob": round(float(np.abs(got - ref_val).max(1).mean()), 5),
                "size_mib": round(dst.stat().st_size / 2**20, 2), "seconds": round(time.perf_counter() - t, 1)}
        correct = int((ref_val.argmax(1) == val_y).sum())
        results["float32"] = {"val_accuracy": round(correct / len(val), 4), "val_correct": correct,
                              "size_mib": round(fp32.stat().st_size / 2**20, 2)}
    chosen = min(variants, key=lambda k: results[k]["select_mean_max_dprob"])
    rows = [[k, common.fmt(r.get("select_mean_max_dprob"), ".4f"), f"{r['val_accuracy']:.2%} ({r['val_correct']}/{len(val)})",
             common.fmt(r.get("val_top1_agreement"), ".4f"), r["size_mib"]] for k, r in results.items()]
    print(common.markdown_table(["variant", "select: mean max |Δprob|", "val accuracy", "val top-1 agreement", "MiB"], rows))
    print(f"\nchosen on the selection photos: {chosen}")
    payload = {"benchmark": NAME, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": info,
               "command": "python benchmarks/int8_choice.py " + " ".join(argv),
               "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "photos": {"calibration": len(calib), "select": len(select), "val": len(val)},
               "chosen_on_select": chosen, "results": results}
    out = common.write_json(args.out, NAME, payload)
    print(f"written: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
