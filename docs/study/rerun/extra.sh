#!/usr/bin/env bash
# The rest of the significant studies, re-run with seeds that vary the data order: limited labels
# and the notebook's recipe, one lane per data set, one thread each.
cd /work/study_tree
export PYTHONPATH=/work/study_tree OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
S=/work/main/runs/study2
lane() {  # $1 dataset
  TC="--dataset $1 --data-dir /work/shared/data --teacher $S/$1/teacher/teacher.safetensors --logits $S/$1/teacher/teacher_logits.safetensors"
  for N in 600 3000 6000; do
    python launch/compare.py $TC --output-dir $S/$1/labels$N --epochs 5 --train-subset $N --variants baseline hinton:T=2,alpha=0.9 > $S/$1_labels$N.log 2>&1
    python launch/compare.py $TC --output-dir $S/$1/labels${N}_softsub --epochs 5 --train-subset $N --soft-targets subset --variants baseline hinton:T=2,alpha=0.9 > $S/$1_labels${N}_softsub.log 2>&1
  done
  python launch/compare.py --dataset $1 --data-dir /work/shared/data --preset notebook --output-dir $S/$1/notebook --variants baseline seed-mse hinton > $S/$1_notebook.log 2>&1
  python launch/compare.py $TC --output-dir $S/$1/labels600_100ep --epochs 100 --train-subset 600 --variants baseline > $S/$1_labels600_100ep.log 2>&1
  echo done > $S/extra_$1.done
}
lane mnist & lane fashion-mnist & wait
