"""Classify a photo with a model exported by `flowerdemo export --format onnx`, using onnxruntime, numpy
and Pillow only (no torch, no flowerdemo).

    python examples/onnx_predict.py model.onnx photo.jpg [--top-k 3] [--strictness normal] [--json]

The class names, the preprocessing and the unknown-photo thresholds come from the file's metadata.
The preprocessing below is flowerdemo's (infer/preprocess.py) step for step, so the probabilities match
`flowerdemo predict` to ~1e-6.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


def load_model(path: str) -> tuple[ort.InferenceSession, dict]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    if props.get("format") != json.dumps("flowerdemo-export"):
        sys.exit(f"error: {path} was not exported by flowerdemo (no flowerdemo metadata)")
    return session, {key: json.loads(value) for key, value in props.items()}


def prepare(photo: str, prep: dict) -> np.ndarray:
    """The eval crop as uint8 (1, S, S, 3): decode (JPEG at a reduced DCT scale when it is big enough), EXIF
    orientation, RGB, centre square of the resize-then-crop geometry, bilinear resize to S."""
    size, resize = prep["input_size"], prep["resize_size"]
    with Image.open(photo) as img:
        if img.format in ("JPEG", "MPO"):
            img.draft("RGB", (resize, resize))
        if getattr(img, "is_animated", False):
            img.seek(0)
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")  # transparency onto white
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        img = img.convert("RGB")
    width, height = img.size
    side = max(1, round(min(width, height) * size / resize))
    left, top = (width - side) // 2, (height - side) // 2
    crop = img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side),
                      reducing_gap=None if width < 4 * size else 2.0)
    return np.asarray(crop, dtype=np.uint8)[None]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="an .onnx file written by flowerdemo export")
    p.add_argument("photo", help="a photo (JPEG, PNG, WebP, ...)")
    p.add_argument("--top-k", type=int, default=3, help="classes to print [3]")
    p.add_argument("--strictness", default=None, help="unknown-photo strictness (strict, normal, lenient) "
                   "[the file's default]")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)

    session, meta = load_model(args.model)
    outputs = [o.name for o in session.get_outputs()]
    values = dict(zip(outputs, session.run(None, {"pixels": prepare(args.photo, meta["preprocessing"])}), strict=True))
    probs = values["probabilities"][0]
    order = np.argsort(-probs)[: args.top_k]
    top = [(meta["classes"][i], float(probs[i])) for i in order]
    unknown = meta["unknown"]
    verdict = None
    if unknown.get("included"):
        strictness = args.strictness or unknown["default_strictness"]
        if strictness not in unknown["thresholds"]:
            sys.exit(f"error: --strictness {strictness!r}; choose one of: {', '.join(unknown['thresholds'])}")
        score, threshold = float(values["unknown_score"][0]), float(unknown["thresholds"][strictness])
        verdict = {"known": score <= threshold, "score": score, "threshold": threshold, "strictness": strictness}
    if args.json:
        print(json.dumps({"probabilities": dict(top), "unknown": verdict}))
        return 0
    line = ", ".join(f"{name} {prob:.1%}" for name, prob in top)
    if verdict is None:
        print(f"{line} (this export cannot tell when a photo is none of its classes)")
    elif verdict["known"]:
        print(f"{line} (looks like its training photos: score {verdict['score']:.3f} <= {verdict['threshold']:.3f})")
    else:
        print(f"NOT one of the classes this model knows ({', '.join(meta['classes'])}): score {verdict['score']:.3f} "
              f"> {verdict['threshold']:.3f} ({verdict['strictness']}). Closest: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
