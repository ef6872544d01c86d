"""Prediction latency, end to end from the file on disk: decode + preprocess + forward (+ Grad-CAM).

The model is loaded once. For a small photo (a 227x227 JPEG from the dataset) and a 12-megapixel
JPEG (that photo upscaled to 4000x3000, JPEG quality 90, written to a temporary folder and deleted
afterwards) it times:

  predict            flowerdemo.infer.predict.predict(clf, path): class probabilities only
  gradcam            flowerdemo.infer.explain.explain(clf, path, "gradcam"): as the CLI calls it (max_side=None)
  gradcam max_side=N the same as the app calls it (max_side=1024: the overlay is drawn at most 1024 px)

Warm-up calls are excluded; p50/p95 over --repeats timed calls.

    python benchmarks/predict_latency.py                           # newest checkpoint under checkpoints/
    python benchmarks/predict_latency.py --checkpoint checkpoints/<run> --device cuda
    python benchmarks/predict_latency.py --repeats 5 --warmup 1    # smoke
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    from . import _common as common  # type: ignore[no-redef]
except ImportError:  # run as a script
    import _common as common  # type: ignore[no-redef]

NAME = "predict_latency"
BIG_SIZE = (4000, 3000)  # 12 megapixels, a phone photo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    common.add_common_args(p, NAME)
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="run directory; default: the newest under checkpoints/, else an untrained efficientnet_lite0 "
                        "checkpoint built in a temporary folder (latency does not depend on training)")
    p.add_argument("--photo", type=Path, default=None,
                   help="the small photo (default: the first JPEG of the first class folder of --data)")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per case (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per case before timing (default 3)")
    p.add_argument("--max-side", type=int, action="append", default=None,
                   help="extra Grad-CAM case with explain(max_side=N); repeatable; default 1024 (the app's value)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    args.max_side = [1024] if args.max_side is None else [m for m in args.max_side if m > 0]
    return args


def first_photo(data: Path) -> Path:
    from flowerdemo.data.images import is_image_file

    for folder in sorted(d for d in data.iterdir() if d.is_dir() and not d.name.startswith(".")):
        photos = sorted(f for f in folder.rglob("*") if f.is_file() and is_image_file(f)
                        and f.suffix.lower() in (".jpg", ".jpeg"))
        if photos:
            return photos[0]
    sys.exit(f"error: no JPEG found under {data}; pass --photo")


def make_big_jpeg(photo: Path, folder: Path) -> Path:
    from PIL import Image

    path = folder / f"{photo.stem}-{BIG_SIZE[0]}x{BIG_SIZE[1]}.jpg"
    with Image.open(photo) as img:
        img.convert("RGB").resize(BIG_SIZE, Image.Resampling.BICUBIC).save(path, "JPEG", quality=90)
    return path


def untrained_checkpoint(data: Path, folder: Path) -> Path:
    """efficientnet_lite0 with the bundled ImageNet backbone (random weights if that package is missing),
    an untrained head and the dataset's class names: the same cost as a trained one."""
    from flowerdemo.models.checkpoints import library_versions, save_checkpoint
    from flowerdemo.models.registry import build_model, weights_available

    classes = sorted(d.name for d in data.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = classes if len(classes) >= 2 else ["a", "b"]
    model = build_model("efficientnet_lite0", len(classes), pretrained=weights_available("efficientnet_lite0"))
    meta = {"architecture": "efficientnet_lite0", "classes": classes,
            "head": {"kind": "mlp", "hidden": 256, "dropout": 0.2},
            "preprocessing": model.spec.preprocessing.to_dict(), "versions": library_versions(),
            "note": "untrained: built by benchmarks/predict_latency.py for timing only"}
    return save_checkpoint(folder / "untrained-efficientnet_lite0", model, meta)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    common.apply_threads(args.threads)
    from PIL import Image

    from flowerdemo.infer.explain import explain
    from flowerdemo.infer.predict import predict
    from flowerdemo.models.checkpoints import CheckpointError, list_checkpoints, load_checkpoint

    device = common.resolve_device(args.device)
    photo = args.photo
    if photo is None:
        photo = first_photo(common.require_data(args.data))
    elif not photo.is_file():
        sys.exit(f"error: --photo {photo} not found")
    info = common.machine_info()

    with tempfile.TemporaryDirectory(prefix="flowerdemo-latency-") as tmp:
        tmp = Path(tmp)
        ckpt_source = "given"
        ckpt = ckpt_shown = args.checkpoint
        if ckpt is None:
            found = list_checkpoints(common.REPO / "checkpoints")
            if found:
                ckpt = ckpt_shown = found[0]
                ckpt_source = "newest under checkpoints/"
            else:
                ckpt = untrained_checkpoint(common.require_data(args.data), tmp)
                ckpt_shown = "<temp>/" + ckpt.name
                ckpt_source = "untrained head on efficientnet_lite0 (no checkpoint under checkpoints/)"
        t = time.perf_counter()
        try:
            clf = load_checkpoint(ckpt, device=device)
        except CheckpointError as exc:
            sys.exit(f"error: {exc}")
        load_s = time.perf_counter() - t
        big = make_big_jpeg(photo, tmp)
        images = {}
        for label, path in (("small", photo), ("12 MP", big)):
            with Image.open(path) as img:
                images[label] = {"path": str(path) if label == "small" else f"<temp>/{path.name}",
                                 "size": list(img.size), "bytes": path.stat().st_size}
        print(f"predict latency: {clf.meta['architecture']} from {ckpt_shown} ({ckpt_source}), {device}, input "
              f"{clf.preprocessing.input_size} px; {args.repeats} repeats after {args.warmup} warm-up\n"
              f"machine: {common.machine_line(info)}", file=sys.stderr, flush=True)

        cases: list[tuple[str, str, Callable[[Path], Any]]] = [("predict", "probabilities", lambda p: predict(clf, p))]
        cases.append(("gradcam", "Grad-CAM (CLI: max_side=None)", lambda p: explain(clf, p, method="gradcam")))
        for side in args.max_side:
            cases.append((f"gradcam_max{side}", f"Grad-CAM (app: max_side={side})",
                          lambda p, s=side: explain(clf, p, method="gradcam", max_side=s)))
        results = []
        for image_label, path in (("small", photo), ("12 MP", big)):
            for key, label, fn in cases:
                stats = common.time_calls(lambda fn=fn, path=path: fn(path), args.repeats, args.warmup)
                results.append({"image": image_label, "case": key, "label": label, **stats})
                print(f"  {image_label:6s} {label:34s} p50 {stats['p50_ms']:8.1f} ms  p95 {stats['p95_ms']:8.1f} ms",
                      file=sys.stderr, flush=True)

    header = ["image", "what", "p50 ms", "p95 ms", "mean ms", "min ms"]
    rows = [[f"{r['image']} ({images[r['image']]['size'][0]}x{images[r['image']]['size'][1]})", r["label"],
             f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}", f"{r['mean_ms']:.1f}", f"{r['min_ms']:.1f}"] for r in results]
    print(common.markdown_table(header, rows))
    payload = {"benchmark": NAME, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": info,
               "command": "python benchmarks/predict_latency.py " + " ".join(argv),
               "settings": {"device": device, "checkpoint": str(ckpt_shown), "checkpoint_source": ckpt_source,
                            "architecture": clf.meta["architecture"],
                            "input_size": clf.preprocessing.input_size, "repeats": args.repeats,
                            "warmup": args.warmup, "torch_threads": info["torch_threads"],
                            "model_load_s": round(load_s, 3), "images": images},
               "results": results, "table": {"header": header, "rows": rows}}
    out = common.write_json(args.out, NAME, payload)
    print(f"\nwritten: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
