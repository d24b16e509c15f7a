#!/usr/bin/env bash
# GPU check (under 5 minutes on one GPU): notebook-style loop vs kd_accel's cached step, a
# precompute, a kill and --resume latest under --deterministic, and the zoo pair (ResNet-50 ->
# ResNet-18 at 224 px), the image-folder pipeline; prints the ratios and writes bench/results/gpu.json. See bench/gpu.py.
#   bash bench/gpu.sh [OUT_JSON] [more bench/gpu.py flags]
# Without a GPU it falls back to a small CPU dry run of the same cases (its JSON says cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
# a bare GPU image may have only python3
PY=$(command -v python3 || command -v python)
OUT=${1:-bench/results/gpu.json}
if "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  exec timeout 290 "$PY" bench/gpu.py --device cuda --json "$OUT" "${@:2}"
fi
echo "no CUDA device: a CPU dry run of the same cases (small sizes, synthetic data)" >&2
exec timeout 290 "$PY" bench/gpu.py --device cpu --steps 20 --reps 1 --synthetic --modes eager \
  --zoo-size 32 --zoo-batch 8 --zoo-steps 4 --folder-images 200 --folder-size 64 --folder-workers 2 \
  --json "$OUT" "${@:2}"
