#!/usr/bin/env bash
# Re-run of the significant studies after the seed fix (issue 9). Two lanes, one thread each.
set -u
cd /work/study_tree
export PYTHONPATH=/work/study_tree
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
D=/work/shared/data
S=/work/main/runs/study2
teacher() {  # $1 dataset, $2 folder
  python launch/train_teacher.py --dataset $1 --data-dir $D --output-dir $2 &&
  python launch/precompute_logits.py --dataset $1 --data-dir $D --output-dir $2 --teacher $2/teacher.safetensors --out $2/teacher_logits.safetensors
}
tc() { echo "--dataset $1 --data-dir $D --teacher $S/$1/teacher/teacher.safetensors --logits $S/$1/teacher/teacher_logits.safetensors"; }
lane_a() {
  teacher mnist $S/mnist/teacher > $S/mnist_teacher.log 2>&1
  python launch/compare.py $(tc mnist) --output-dir $S/mnist/long20 --epochs 20 --variants baseline hinton:T=4,alpha=0.9 > $S/mnist_long20.log 2>&1
  python launch/compare.py $(tc mnist) --output-dir $S/mnist/grid --epochs 5 --temperature 1 --alpha 0.5 \
     --variants baseline seed-mse hinton:T=2,alpha=0.9 fitnets:T=2,alpha=0.9 > $S/mnist_grid.log 2>&1
  while [ ! -f $S/fashion-mnist/teacher/teacher_logits.safetensors ]; do sleep 10; done
  python launch/compare.py $(tc fashion-mnist) --output-dir $S/fashion-mnist/grid --epochs 5 --temperature 1 --alpha 0.5 \
     --variants baseline seed-mse hinton:T=4,alpha=0.9 hinton:T=8,alpha=0.5 hinton:T=8,alpha=0.9 > $S/fashion_grid.log 2>&1
  echo done > $S/lane_a.done
}
lane_b() {
  teacher fashion-mnist $S/fashion-mnist/teacher > $S/fashion_teacher.log 2>&1
  python launch/compare.py $(tc fashion-mnist) --output-dir $S/fashion-mnist/long20 --epochs 20 \
     --variants baseline hinton:T=2,alpha=0.9 hinton:T=4,alpha=0.9 > $S/fashion_long20.log 2>&1
  echo done > $S/lane_b.done
}
lane_a & lane_b & wait
