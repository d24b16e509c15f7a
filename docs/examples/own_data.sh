#!/usr/bin/env bash
# The worked example of docs/own-data.md: Fashion-MNIST (real, offline) written as a PNG image
# folder, then distilled from the folder end to end: the notebook teacher trained on it with
# RandomResizedCrop + flip (drawn in the DataLoader workers), a 5-view cache of its logits with
# each view's crop stored beside them, the notebook student replaying those crops (view e mod 5 in
# epoch e) against its baseline on the same crops' distribution, two seeds.
# Usage: bash docs/examples/own_data.sh [OUT]   (DATA: the folder holding MNIST-style data sets;
# Fashion-MNIST also comes from Debian's dataset-fashion-mnist)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/own-data}
mkdir -p "$OUT"
{ date -u; nproc; grep -m1 "model name" /proc/cpuinfo; grep -o -m1 -w 'avx512f' /proc/cpuinfo || echo "no avx512f";
  python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"; } \
  > "$OUT/machine.txt"
# the first 20,000 training images (all classes: --limit-train on a folder would take the first files of its
# sorted listing, i.e. the first classes) and the 10,000 test images
python docs/examples/make_folder.py --dataset fashion-mnist ${DATA:+--data-dir "$DATA"} --limit-train 20000 \
  --out "$OUT/fashion-mnist-png"
du -sb "$OUT/fashion-mnist-png/train" "$OUT/fashion-mnist-png/val" > "$OUT/folder_bytes.txt"
python launch/compare.py --dataset imagefolder --data-dir "$OUT/fashion-mnist-png" --channels 1 --image-size 28 \
  --teacher-image-size 28 --epochs 5 --teacher-epochs 5 --views 5 --seeds 0 1 \
  --variants baseline hinton --output-dir "$OUT/compare"
ls -l "$OUT"/compare/teacher_logits*.safetensors > "$OUT/cache_bytes.txt"
