"""Helper for the equivalence tests, run under 1, 2 or 3 processes (accelerate launch):

  train_check.py --data-dir DIR JOB [JOB ...]

runs each JOB (one argument, split like a shell line) in turn in the same processes, so several
checks share one launch (its start-up, imports and gloo group: 5-8 s each under 2 processes).
Each job starts from its own seed, as a launch of its own would: the tests compare runs made
by the same job under 1 and N processes.

  train  OUT --role teacher|student --batch-size B [--grad-accum K] [--arch SPEC] [--no-bn]
      trains on the first 400 MNIST samples for 2 epochs and saves the final weights (rank 0);
      rank r writes OUT.rank<r>.json: the sample indices of each of its batches, in order;
      --arch: a zoo architecture (models/zoo.py) instead of the notebook's model of the role
  eval   OUT
      evaluates a fixed seeded student on the first 1001 test samples; writes the accuracy
  precompute FLAGS...
      precompute_logits.py's main with FLAGS, in these processes; the last job only: the main
      ends the Accelerator it made (cli.ends_training), and with it the process group
"""
import argparse
import json
import shlex
from pathlib import Path

import torch
from accelerate.utils import set_seed
from safetensors.torch import save_file

from kd_accel.cli import precompute_main
from kd_accel.config import from_flags
from kd_accel.data import TensorData, load_split
from kd_accel.errors import close_process_group
from kd_accel.evaluation import evaluate
from kd_accel.models import build_model, build_zoo_model
from kd_accel.pipeline import columns, make_accelerator
from kd_accel.training import TrainSpec, fit, make_objective

job_parser = argparse.ArgumentParser(prog="JOB")
job_parser.add_argument("mode", choices=["train", "eval"])
job_parser.add_argument("out")
job_parser.add_argument("--role", default="student")
job_parser.add_argument("--arch", help="a models/zoo.py spec, e.g. timm:test_efficientnet")
job_parser.add_argument("--batch-size", type=int, default=40)
job_parser.add_argument("--grad-accum", type=int, default=1)
job_parser.add_argument("--no-bn", action="store_true", help="BatchNorm -> Identity (micro-batch BN statistics differ)")


def setup(a):
    """A job's Accelerator (its gradient accumulation) and the seed a fresh launch starts from.

    Contiguous (NCHW) layout: with channels-last, oneDNN picks different conv kernels for batch 20
    and batch 40, and Adam's per-element normalisation turns their different rounding of
    near-zero gradients into lr-sized steps (measured: weights 4e-3 apart after 20 steps). In NCHW
    the kernels agree and what is compared is the data-parallel mechanics themselves."""
    cfg = from_flags(epochs=2, batch_size=a.batch_size, grad_accum=a.grad_accum, seed=5, lr=2e-3, channels_last=False)
    accelerator = make_accelerator(cfg, cpu=True)
    set_seed(cfg.run.seed)
    return cfg, accelerator


def run_eval(a, test):
    _, accelerator = setup(a)
    set_seed(1)
    model = build_model("student").to(accelerator.device)
    acc = evaluate(accelerator, model, test)
    if accelerator.is_main_process:
        Path(a.out).write_text(json.dumps({"accuracy": acc, "processes": accelerator.num_processes}))


def run_train(a, train, test):
    cfg, accelerator = setup(a)
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
    seen = []

    def recorded(logits, batch):
        seen.append(batch["idx"].tolist())
        return objective(logits, batch)

    model, _ = fit(accelerator, model, TensorData(cols), test.subset(100), TrainSpec.of(cfg.student, cfg.run), recorded,
                   a.role)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    # The function the weights compute, on 100 fixed test images, with BN on batch statistics: a
    # conv bias before BN then cancels exactly, so its Adam-amplified float noise (and the running
    # mean that follows it) cannot hide or fake a difference.
    model.train()
    with torch.no_grad():
        probe = model(test.images[:100].float().div(255).to(accelerator.device)).cpu()
    Path(f"{a.out}.rank{accelerator.process_index}.json").write_text(json.dumps(seen))
    if accelerator.is_main_process:
        save_file({**state, "_probe_logits": probe}, a.out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", required=True)
    p.add_argument("jobs", nargs="+", help="one argument each: 'train OUT --role teacher ...'")
    args = p.parse_args()
    train = load_split("mnist", "train", args.data_dir).subset(400)
    test = load_split("mnist", "test", args.data_dir).subset(1001)
    for n, job in enumerate(args.jobs):
        argv = shlex.split(job)
        if argv[0] == "precompute":
            assert n == len(args.jobs) - 1, "precompute ends the process group: make it the last job"
            precompute_main(argv[1:])
            continue
        a = job_parser.parse_args(argv)
        if a.mode == "eval":
            run_eval(a, test)
        else:
            run_train(a, train, test)
    close_process_group()  # see kd_accel.errors.close_process_group


if __name__ == "__main__":
    main()
