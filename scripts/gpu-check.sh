#!/usr/bin/env bash
# The GPU check: CUDA tests, plain loop vs engine, the report's 50-epoch recipe, fast mode and prediction
# latency, each with its own time limit, <= 8 minutes on one H100/H200; results in --out (default $OUT, else
# gpu-check-results/). `--dry-run` runs every step with tiny settings on the CPU. Options: --help.
#
#   bash scripts/gpu-check.sh --out "$OUT"       # on the GPU machine (PyTorch preinstalled, maybe no network)
#   bash scripts/gpu-check.sh --dry-run          # anywhere, in well under a minute of work
#   bash scripts/gpu-check.sh --prepare          # here, before a device run: .gpu-carry/ with what its image lacks
set -uo pipefail  # no -e: the driver reports failing steps itself and carries on
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  for candidate in python3 python; do  # the GPU machine's python3 is the one that holds PyTorch
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON="$candidate"; break; fi
  done
fi
if [ -z "$PYTHON" ]; then
  echo "error: no python3 or python on PATH (set PYTHON=/path/to/python)" >&2
  exit 2
fi
if [ -d .gpu-carry/site ]; then  # packages carried by the device tool (scripts/gpu-check.sh --prepare)
  export PYTHONPATH=".gpu-carry/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec "$PYTHON" scripts/gpu_check.py "$@"
