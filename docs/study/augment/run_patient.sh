#!/usr/bin/env bash
# The patient schedule (issue 12): 100 epochs, augmented baseline vs the 100-view cached student,
# the 20-epoch study's teacher, 5 seeds; resumable: run it again to continue (--resume latest).
# usage: run_patient.sh mnist|fashion-mnist
set -u
ds=$1
out=/work/main/runs/study3/${ds}100
cd /work/study_tree2
OMP_NUM_THREADS=1 PYTHONPATH=/work/study_tree2 nice -n 15 python launch/compare.py --data-dir /work/shared/data --dataset $ds \
  --output-dir $out --teacher /work/main/runs/study3/${ds}20/teacher.safetensors --epochs 100 \
  --checkpoint-every epoch --resume latest --seeds 0 1 2 3 4 --reference "baseline augment=shift" \
  --variants baseline:augment=shift hinton:augment=shift,teacher=cache,K=100
