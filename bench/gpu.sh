#!/usr/bin/env bash
# GPU check (under 5 minutes on one GPU): notebook-style loop vs kd_accel's cached step, a
# precompute, a kill and --resume latest under --deterministic, and the zoo pair (ResNet-50 ->
# ResNet-18 at 224 px), the image-folder pipeline; prints the ratios and writes bench/results/gpu.json. See bench/gpu.py.
#   bash bench/gpu.sh [OUT] [more bench/gpu.py flags]
# OUT: a folder (one that exists, or a path ending in /, made if missing) gets OUT/gpu.json and
# OUT/gpu.log (everything printed); any other path is the JSON file itself, as
# bench/results/gpu.json is by default. A relative OUT is from the current folder.
# Without a GPU it falls back to a small CPU dry run of the same cases (its JSON says cpu).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# a bare GPU image may have only python3
PY=$(command -v python3 || command -v python)
OUT=$ROOT/bench/results/gpu.json
if [ $# -gt 0 ] && [[ $1 != -* ]]; then  # a first argument that is a flag is bench/gpu.py's
  OUT=${1:-$OUT}  # an empty one: the default, as before
  shift
fi
JSON=$OUT LOG=
if [ -d "$OUT" ] || [[ $OUT == */ ]]; then
  if ! mkdir -p "$OUT" 2>/dev/null || [ ! -d "$OUT" ]; then
    echo "bench/gpu.sh: cannot make the folder $OUT for gpu.json and gpu.log" >&2
    exit 2
  fi
  JSON=${OUT%/}/gpu.json LOG=${OUT%/}/gpu.log
  : > "$LOG"
fi
say() {  # to stderr, and to the log when OUT is a folder
  echo "$1" >&2
  if [ -n "$LOG" ]; then echo "$1" >> "$LOG"; fi
}
if "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  ARGS=(--device cuda)
else
  say "no CUDA device: a CPU dry run of the same cases (small sizes, synthetic data)"
  ARGS=(--device cpu --steps 20 --reps 1 --synthetic --modes eager --zoo-size 32 --zoo-batch 8 --zoo-steps 4
        --folder-images 200 --folder-size 64 --folder-workers 2)
fi
if [ -n "$LOG" ]; then  # what it prints also goes to the log (stdout and stderr kept apart)
  exec > >(tee -a "$LOG") 2> >(tee -a "$LOG" >&2)
fi
exec timeout 290 "$PY" "$ROOT/bench/gpu.py" "${ARGS[@]}" --json "$JSON" "$@"
