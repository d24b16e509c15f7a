#!/usr/bin/env bash
# The 20-epoch augmentation study (issue 12), one data set per call, one thread, resumable.
# usage: run20.sh mnist|fashion-mnist
set -u
ds=$1
out=/work/main/runs/study3/${ds}20
cd /work/study_tree
OMP_NUM_THREADS=1 PYTHONPATH=/work/study_tree python launch/compare.py --data-dir /work/shared/data --dataset $ds \
  --output-dir $out --epochs 20 --teacher-epochs 20 --teacher-augment shift --checkpoint-every epoch --resume latest \
  --seeds 0 1 2 3 4 --reference "baseline augment=shift" \
  --variants baseline baseline:augment=shift hinton hinton:augment=shift,teacher=fixed \
             hinton:augment=shift,teacher=cache,K=20 hinton:augment=shift,teacher=online
