"""Helper for the equivalence tests, run under 1, 2 or 3 processes (accelerate launch).

  train_check.py train  OUT --role teacher|student --batch-size B [--grad-accum K] [--arch SPEC]
      trains on the first 400 MNIST samples for 2 epochs and saves the final weights (rank 0);
      --arch: a zoo architecture (models/zoo.py) instead of the notebook's model of the role
  train_check.py eval   OUT
      evaluates a fixed seeded student on the first 1001 test samples; writes the accuracy
  train_check.py order  OUT --batch-size B
      trains a student 2 epochs on 400 samples; rank r writes OUT.rank<r>.json: the sample
      indices of each of its batches, in order
"""
import argparse
import json
import sys
from pathlib import Path

import torch
from accelerate.utils import set_seed
from safetensors.torch import save_file

from kd_accel.config import from_flags
from kd_accel.data import load_split
from kd_accel.evaluation import evaluate
from kd_accel.models import build_model, build_zoo_model
from kd_accel.pipeline import columns, make_accelerator
from kd_accel.training import TrainSpec, fit, make_objective
from kd_accel.data import TensorData

p = argparse.ArgumentParser()
p.add_argument("mode", choices=["train", "eval", "order"])
p.add_argument("out")
p.add_argument("--data-dir", required=True)
p.add_argument("--role", default="student")
p.add_argument("--arch", help="a models/zoo.py spec, e.g. timm:test_efficientnet")
p.add_argument("--batch-size", type=int, default=40)
p.add_argument("--grad-accum", type=int, default=1)
p.add_argument("--no-bn", action="store_true", help="BatchNorm -> Identity (micro-batch BN statistics differ)")
a = p.parse_args()

# Contiguous (NCHW) layout: with channels-last, oneDNN picks different conv kernels for batch 20
# and batch 40, and Adam's per-element normalisation turns their different rounding of
# near-zero gradients into lr-sized steps (measured: weights 4e-3 apart after 20 steps). In NCHW
# the kernels agree and what is compared is the data-parallel mechanics themselves.
cfg = from_flags(epochs=2, batch_size=a.batch_size, grad_accum=a.grad_accum, seed=5, lr=2e-3, channels_last=False)
accelerator = make_accelerator(cfg, cpu=True)
set_seed(cfg.run.seed)
train = load_split("mnist", "train", a.data_dir).subset(400)
test = load_split("mnist", "test", a.data_dir).subset(1001)

if a.mode == "eval":
    set_seed(1)
    model = build_model("student").to(accelerator.device)
    acc = evaluate(accelerator, model, test)
    if accelerator.is_main_process:
        Path(a.out).write_text(json.dumps({"accuracy": acc, "processes": accelerator.num_processes}))
    accelerator.end_training()  # destroys the process group: see kd_accel.errors.close_process_group
    sys.exit(0)

model = build_zoo_model(a.arch, 10, 1, (28, 28))[0] if a.arch else build_model(a.role)
if a.no_bn:
    for mod in model.modules():
        for name, child in mod.named_children():
            if isinstance(child, torch.nn.BatchNorm2d):
                setattr(mod, name, torch.nn.Identity())
if a.role == "teacher":
    cols, objective = columns(train), make_objective("ce")
else:  # distillation from a fixed synthetic "cache"
    g = torch.Generator().manual_seed(0)
    cols = columns(train, teacher_logits=torch.randn(len(train), 10, generator=g) * 3)
    objective = make_objective("hinton", 2.0, 0.5)
if a.mode == "order":
    seen, real_objective = [], objective

    def objective(logits, batch):
        seen.append(batch["idx"].tolist())
        return real_objective(logits, batch)

model, _ = fit(accelerator, model, TensorData(cols), test.subset(100), TrainSpec.of(cfg.student, cfg.run), objective, a.role)
state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
# The function the weights compute, on 100 fixed test images, with BN on batch statistics: a
# conv bias before BN then cancels exactly, so its Adam-amplified float noise (and the running
# mean that follows it) cannot hide or fake a difference.
model.train()
with torch.no_grad():
    probe = model(test.images[:100].float().div(255).to(accelerator.device)).cpu()
if a.mode == "order":
    Path(f"{a.out}.rank{accelerator.process_index}.json").write_text(json.dumps(seen))
elif accelerator.is_main_process:
    save_file({**state, "_probe_logits": probe}, a.out)
accelerator.end_training()
