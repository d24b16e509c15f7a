#!/usr/bin/env bash
# Fashion-MNIST 5-epoch grid cells, split in two seed groups run as soon as a core frees up.
cd /work/study_tree
export PYTHONPATH=/work/study_tree OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
S=/work/main/runs/study2
TC="--dataset fashion-mnist --data-dir /work/shared/data --teacher $S/fashion-mnist/teacher/teacher.safetensors --logits $S/fashion-mnist/teacher/teacher_logits.safetensors"
V="baseline seed-mse hinton:T=4,alpha=0.9 hinton:T=8,alpha=0.5 hinton:T=8,alpha=0.9"
( while [ ! -f $S/lane_b.done ]; do sleep 10; done
  python launch/compare.py $TC --output-dir $S/fashion-mnist/grid_s012 --epochs 5 --temperature 1 --alpha 0.5 --seeds 0 1 2 --variants $V > $S/fashion_grid_s012.log 2>&1 ) &
( while [ ! -f $S/mnist/grid/results.json ]; do sleep 10; done
  python launch/compare.py $TC --output-dir $S/fashion-mnist/grid_s34 --epochs 5 --temperature 1 --alpha 0.5 --seeds 3 4 --variants $V > $S/fashion_grid_s34.log 2>&1 ) &
wait
echo done > $S/fashion_grid.done
