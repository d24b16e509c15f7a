#!/usr/bin/env bash
# Top-k soft targets vs full logits (issue 12, item 6): Fashion-MNIST, the study's teacher, 20 epochs, 5 seeds.
set -u
out=/work/main/runs/study3/fashion-topk
cd /work/study_tree2
OMP_NUM_THREADS=1 PYTHONPATH=/work/study_tree2 python launch/compare.py --data-dir /work/shared/data --dataset fashion-mnist \
  --output-dir $out --teacher /work/main/runs/study3/fashion-mnist20/teacher.safetensors --epochs 20 \
  --cache-dtype fp16 --checkpoint-every epoch --resume latest --seeds 0 1 2 3 4 --reference "hinton T=2 a=0.9" \
  --variants hinton hinton:topk=1 hinton:topk=3 hinton:topk=5
