"""The CLI under torchrun: 2 CPU processes (gloo), each a shard of the data, one checkpoint."""

import os
import re
import subprocess
import sys
from pathlib import Path

from flowerdemo.models.checkpoints import list_checkpoints, load_checkpoint
from tests.synth import make_dataset

ROOT = Path(__file__).resolve().parents[1]


def test_torchrun_two_processes_write_one_checkpoint(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=10, size=48)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "FLOWERDEMO_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "flowerdemo", "train", "--data", str(data), "--out", str(tmp_path / "ck"), "--mode", "full",
           "--epochs", "2", "--image-size", "48", "--batch-size", "6", "--workers", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [p for p in (tmp_path / "ck").iterdir()]
    assert len(runs) == 1, runs  # only rank 0 writes
    assert list_checkpoints(tmp_path / "ck") == runs
    clf = load_checkpoint(runs[0])
    assert clf.meta["world_size"] == 2
    assert clf.meta["metrics"]["epochs_run"] == 2
    assert clf.classes == ("circle", "square", "triangle")
    # both processes score rank 0's weights and buffers, so they must agree on the best epoch
    best = re.findall(r"best val acc ([0-9.]+)% at epoch (\d+)", proc.stderr)
    assert len(best) == 2 and best[0] == best[1], best
