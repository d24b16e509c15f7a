#!/usr/bin/env bash
# The worked example of docs/own-models.md, on 10,000 MNIST training images (the full test set):
#  1. a torchvision ResNet-18 teacher trained here, exported as torchvision's own .pth state dict;
#  2. that .pth given back as a user's pretrained teacher (--teacher-weights, --teacher-epochs 0),
#     distilled into the notebook student and into timm's mobilenetv3_small_100, each beside its
#     own baseline, two seeds (torchvision's mobilenet_v3_small evaluates at chance here: its batch
#     norms' momentum 0.01 leaves the running statistics far behind after a few hundred steps);
#  3. the notebook's own teacher, the same notebook students and seeds: which teacher teaches better?
#  4. (below) the ResNet-18 trained for 5 epochs like the notebook's teacher, the same students.
# Usage: bash docs/examples/own_models.sh [OUT]   (DATA: the folder holding MNIST/raw)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/own-models}
DATA=${DATA:-../shared/data}
common=(--data-dir "$DATA" --limit-train 10000 --epochs 5)
mkdir -p "$OUT"
{ date -u; nproc; grep -m1 "model name" /proc/cpuinfo; grep -o -m1 -w 'avx512f' /proc/cpuinfo || echo "no avx512f";
  python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"; } \
  > "$OUT/machine.txt"

[ -f "$OUT/tv-teacher/teacher.safetensors" ] ||  # a rerun keeps the teacher of the first
python launch/train_teacher.py --data-dir "$DATA" --limit-train 10000 --arch torchvision:resnet18 --epochs 3 \
  --output-dir "$OUT/tv-teacher"
python -c "import sys, torch, kd_accel; torch.save(kd_accel.load_model(sys.argv[1]).state_dict(), sys.argv[2])" \
  "$OUT/tv-teacher/teacher.safetensors" "$OUT/resnet18_mnist.pth"

python launch/compare.py "${common[@]}" --teacher-arch torchvision:resnet18 --teacher-weights "$OUT/resnet18_mnist.pth" \
  --teacher-epochs 0 --seeds 0 1 --output-dir "$OUT/resnet18-teacher" \
  --variants baseline hinton baseline:arch=timm:mobilenetv3_small_100 hinton:arch=timm:mobilenetv3_small_100
python launch/compare.py "${common[@]}" --teacher-epochs 5 --seeds 0 1 --output-dir "$OUT/notebook-teacher" \
  --variants baseline hinton
# 4. the ResNet-18 trained as long as the notebook's teacher (5 epochs), given as the kd_accel file
#    it was saved as (--teacher: its architecture and preprocessing come with it)
[ -f "$OUT/tv-teacher-5ep/teacher.safetensors" ] ||
python launch/train_teacher.py --data-dir "$DATA" --limit-train 10000 --arch torchvision:resnet18 --epochs 5 \
  --output-dir "$OUT/tv-teacher-5ep"
python launch/compare.py "${common[@]}" --teacher "$OUT/tv-teacher-5ep/teacher.safetensors" --seeds 0 1 \
  --output-dir "$OUT/resnet18-5ep-teacher" --variants baseline hinton
