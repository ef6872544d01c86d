"""NCHW vs NHWC (channels_last) on this machine: one training step and one single-image forward.

Why full mode and load_checkpoint use channels_last on the CPU too. Random inputs (no data needed):

    python benchmarks/layout.py                                   # Lite0 train step at 192 px, shipped-model forward
    python benchmarks/layout.py --model efficientnet_lite2 --train-size 240 --frozen-stages 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

try:
    from . import _common as common  # type: ignore[no-redef]
except ImportError:  # run as a script
    import _common as common  # type: ignore[no-redef]

from flowerdemo.models.checkpoints import load_checkpoint  # noqa: E402
from flowerdemo.models.registry import build_model, freeze  # noqa: E402
from flowerdemo.serve.runs import DEFAULT_RUN  # noqa: E402

NAME = "layout"


def train_step_ms(args, nhwc: bool) -> float:
    torch.manual_seed(0)
    model = build_model(args.model, 5, pretrained=False).train()
    if args.frozen_stages:
        freeze(model, "stages", args.frozen_stages)
    x = torch.randn(args.batch_size, 3, args.train_size, args.train_size)
    if nhwc:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3)
    y = torch.randint(0, 5, (args.batch_size,))

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return common.time_calls(step, args.repeats, warmup=2)["p50_ms"]


@torch.inference_mode()
def forward_ms(args, nhwc: bool) -> float:
    clf = load_checkpoint(args.checkpoint)  # load_checkpoint hands out NHWC; undo it for the NCHW case
    model = clf.model.to(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    size = clf.preprocessing.input_size
    x = torch.randn(1, 3, size, size)
    if nhwc:
        x = x.contiguous(memory_format=torch.channels_last)
    return common.time_calls(lambda: model(x), args.repeats * 4, warmup=2)["p50_ms"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet_lite0", help="backbone of the training step [efficientnet_lite0]")
    p.add_argument("--train-size", type=int, default=192, help="training input size [192]")
    p.add_argument("--batch-size", type=int, default=32, help="training batch [32]")
    p.add_argument("--frozen-stages", type=int, default=0, help="first stages frozen in the training step [0]")
    p.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / DEFAULT_RUN,
                   help="model for the single-image forward [the shipped model]")
    p.add_argument("--repeats", type=int, default=5, help="timed training steps (forwards: 4x as many) [5]")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 = torch's default")
    p.add_argument("--out", type=Path, default=None, help=f"JSON file [benchmarks/results/{NAME}-<timestamp>.json]")
    args = p.parse_args(argv)
    common.apply_threads(args.threads)
    rows = []
    for what, fn in (("train step", train_step_ms), ("one-image forward", forward_ms)):
        nchw, nhwc = fn(args, False), fn(args, True)
        rows.append({"what": what, "nchw_ms": nchw, "nhwc_ms": nhwc, "speedup": nchw / nhwc})
    info = common.machine_info()
    print(common.machine_line(info))
    print(common.markdown_table(["what", "NCHW ms", "NHWC ms", "NCHW/NHWC"],
                                [[r["what"], f"{r['nchw_ms']:.1f}", f"{r['nhwc_ms']:.1f}", f"{r['speedup']:.2f}"]
                                 for r in rows]))
    settings = {k: str(v) for k, v in vars(args).items()}
    out = common.write_json(args.out, NAME, {"rows": rows, "settings": settings, "machine": info,
                                             "command": " ".join(["python", "benchmarks/layout.py", *sys.argv[1:]])})
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
