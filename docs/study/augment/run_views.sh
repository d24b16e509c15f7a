#!/usr/bin/env bash
# How many stored views does consistent teaching need? (issue 12: "K"): Fashion-MNIST, the 20-epoch
# study's teacher, 20 epochs, 5 seeds, K = 4 (view e mod 4: each view replayed five times), paired
# by seed, across runs, with K = 20 (fashion20.json: make_tables.py --pair).
set -u
out=/work/main/runs/study3/fashion-views
cd /work/study_tree3
OMP_NUM_THREADS=1 PYTHONPATH=/work/study_tree3 nice -n 15 python launch/compare.py --data-dir /work/shared/data \
  --dataset fashion-mnist --output-dir $out --teacher /work/main/runs/study3/fashion-mnist20/teacher.safetensors \
  --epochs 20 --checkpoint-every epoch --resume latest --seeds 0 1 2 3 4 \
  --reference "hinton T=2 a=0.9 augment=shift teacher=cache K=4" --variants hinton:augment=shift,teacher=cache,K=4
