"""`flowerdemo export`: a checkpoint as an ONNX (float32 or int8) or TorchScript file that runs without
flowerdemo (examples/onnx_predict.py shows how)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub) -> None:
    """Add the `export` sub-command to an argparse sub-parsers object."""
    from flowerdemo.export import FORMATS

    x = sub.add_parser("export", help="write a checkpoint as ONNX (float32 / int8) or TorchScript, with its classes, "
                                      "preprocessing, temperature and unknown-photo thresholds as metadata",
                       description="Export a checkpoint to a single file that takes the eval crop as uint8 pixels and "
                                   "returns calibrated probabilities (and the unknown-photo score). "
                                   "ONNX needs: pip install \"flowerdemo[onnx]\".")
    x.add_argument("--checkpoint", type=Path, help="run directory or .safetensors file "
                   "[the newest under FLOWERDEMO_CHECKPOINT_DIR, else checkpoints/]")
    x.add_argument("--format", dest="fmt", choices=FORMATS, default="onnx", help="file format [onnx]")
    x.add_argument("--int8", action="store_true",
                   help="ONNX only: quantise to int8 with onnxruntime (static with --calibration, else dynamic)")
    x.add_argument("--calibration", type=Path,
                   help="with --int8: a folder of photos (e.g. some training photos) whose activation ranges set the "
                        "int8 scales; static quantisation keeps the accuracy, dynamic (without it) loses some")
    x.add_argument("--no-unknown", dest="with_unknown", action="store_false",
                   help="leave the unknown-photo detector out (a smaller file that cannot say 'none of these')")
    x.add_argument("--out", type=Path, default=Path("exports"), help="output folder [exports/]")
    x.add_argument("--json", action="store_true", help="print one JSON object describing the file written")


def run(args: argparse.Namespace) -> int:
    """Export as asked; prints where the file went. Errors (bad option, missing onnx) raise ValueError."""
    from flowerdemo.cli.commands import _checkpoint
    from flowerdemo.export import check_options, export

    check_options(args.fmt, args.int8, args.calibration)  # before the minute of loading and tracing
    clf = _checkpoint(args.checkpoint)
    res = export(clf, args.fmt, args.out, int8=args.int8, calibration=args.calibration,
                 with_unknown=args.with_unknown)
    record = {"file": str(res.path), "format": res.fmt, "int8": res.int8, "bytes": res.size_bytes,
              "max_abs_dprob_fp32_vs_torch": res.max_abs_diff, "unknown_included": res.unknown_included,
              "checkpoint": clf.name}
    if args.json:
        print(json.dumps(record))
        return 0
    kind = f"int8 ({res.int8})" if res.int8 else "float32"
    unknown = ("includes the unknown-photo detector (output unknown_score)" if res.unknown_included
               else "no unknown-photo detector")
    print(f"{res.path}: {res.fmt} {kind}, {res.size_bytes / 2**20:.1f} MiB, {unknown}; float32 graph vs torch: "
          f"max |Δprobability| {res.max_abs_diff:.1e}")
    if res.fmt == "onnx":
        print(f"run it without flowerdemo: python examples/onnx_predict.py {res.path} PHOTO")
    return 0
