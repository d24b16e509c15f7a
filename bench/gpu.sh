#!/usr/bin/env bash
# GPU speed check (under 5 minutes on one GPU): notebook-style loop vs kd_accel's cached step,
# and a precompute; prints the ratios and writes bench/results/gpu.json. See bench/gpu.py.
set -euo pipefail
cd "$(dirname "$0")/.."
# a bare GPU image may have only python3
PY=$(command -v python3 || command -v python)
timeout 290 "$PY" bench/gpu.py --device cuda --json "${1:-bench/results/gpu.json}" "${@:2}"
