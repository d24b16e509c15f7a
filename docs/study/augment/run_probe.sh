#!/usr/bin/env bash
# Where might consistent KD pay on MNIST (issue 12)? T and alpha under augmentation, from the
# 20-view cache of the 20-epoch study's teacher; finished baselines copied from that study
# (stamped: reused only if their settings match).
set -u
out=/work/main/runs/study3/mnist20-probe
cd /work/study_tree2
OMP_NUM_THREADS=1 PYTHONPATH=/work/study_tree2 python launch/compare.py --data-dir /work/shared/data --dataset mnist \
  --output-dir $out --teacher /work/main/runs/study3/mnist20/teacher.safetensors --epochs 20 \
  --checkpoint-every epoch --resume latest --seeds 0 1 2 3 4 --reference "baseline augment=shift" \
  --variants baseline:augment=shift hinton:T=4,alpha=0.5,augment=shift,teacher=cache,K=20 \
             hinton:T=2,alpha=0.5,augment=shift,teacher=cache,K=20 hinton:T=8,alpha=0.9,augment=shift,teacher=cache,K=20
