"""What thread-safe explanations cost: a replica of the shared model per concurrent explanation
(flowerdemo/infer/replicas.py), against the alternative of a full per-thread copy of the model.

    python benchmarks/replica_cost.py                      # the shipped model
    python benchmarks/replica_cost.py --checkpoint checkpoints/<run>
"""

from __future__ import annotations

import argparse
import copy
import gc
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

try:
    from . import _common as common  # type: ignore[no-redef]
except ImportError:  # run as a script
    import _common as common  # type: ignore[no-redef]

from flowerdemo.infer import replicas  # noqa: E402
from flowerdemo.infer.explain import explain  # noqa: E402
from flowerdemo.models.checkpoints import load_checkpoint  # noqa: E402
from flowerdemo.serve.runs import DEFAULT_RUN  # noqa: E402

NAME = "replica_cost"


def _mib(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / DEFAULT_RUN,
                   help="model to replicate [the shipped model]")
    p.add_argument("--image", type=Path, default=ROOT / "examples" / "daisy.jpg", help="image explained [examples/daisy.jpg]")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per figure [10]")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 = torch's default")
    p.add_argument("--out", type=Path, default=None, help=f"JSON file [benchmarks/results/{NAME}-<timestamp>.json]")
    args = p.parse_args(argv)
    common.apply_threads(args.threads)
    clf = load_checkpoint(args.checkpoint)
    model = clf.model
    weights_mib = _mib([*model.parameters(), *model.buffers()])

    replica = replicas.make_replica(model)
    own = [t for t in replica.parameters() if not any(t.data_ptr() == s.data_ptr() for s in model.parameters())]
    gc.collect()
    tracemalloc.start()
    kept = replicas.make_replica(model)
    objects_kib = tracemalloc.get_traced_memory()[0] / 1024
    tracemalloc.stop()
    del kept
    rows = {
        "model weights + buffers (MiB)": weights_mib,
        "tensor memory a replica owns (MiB)": _mib(own),
        "Python objects of a replica (KiB, tracemalloc)": objects_kib,
        "build a replica (ms, p50)": common.time_calls(lambda: replicas.make_replica(model), args.repeats, 1)["p50_ms"],
        "full copy.deepcopy instead (ms, p50)": common.time_calls(lambda: copy.deepcopy(model), args.repeats, 1)["p50_ms"],
    }
    t0 = time.perf_counter()
    explain(clf, args.image)  # the first explanation builds the pool's first replica
    rows["first Grad-CAM, replica built in it (ms)"] = (time.perf_counter() - t0) * 1e3
    rows["later Grad-CAM (ms, p50)"] = common.time_calls(lambda: explain(clf, args.image), args.repeats, 1)["p50_ms"]

    info = common.machine_info()
    print(common.machine_line(info))
    print(common.markdown_table(["what", "value"], [[k, f"{v:.1f}"] for k, v in rows.items()]))
    settings = {k: str(v) for k, v in vars(args).items()}
    out = common.write_json(args.out, NAME, {"rows": rows, "settings": settings, "machine": info,
                                             "command": " ".join(["python", "benchmarks/replica_cost.py", *sys.argv[1:]])})
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
