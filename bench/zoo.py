"""Side-by-side benchmark of a zoo student (issue 18), in one run, each case a fresh process:

    python bench/zoo.py --data-dir ../shared/data [--reps 3] [--json bench/results/zoo.json]

- ce:      one epoch of the student on hard labels (pipeline's fit, cross-entropy);
- kd:      the same epoch distilled from cached logits ([N, C] gathered by sample index, Hinton);
- online:  the same epoch with the frozen teacher run on every batch (--teacher-mode online);
- teacher: the teacher's forward alone over the same batches (no_grad, eval, channels-last).

Targets: kd / ce <= 1.05 (a cached soft target costs next to nothing); (online - kd) / teacher
within 1 +- 0.1 (the online mode's extra cost is the teacher's forward, no more). The online
case also times the teacher's calls where they run, inside the loop, to say where the extra goes. The student is
torchvision's mobilenet_v3_small, the teacher torchvision's resnet18, both for 1x28x28 MNIST.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package of this tree
sys.path.insert(0, str(ROOT / "bench"))
from machine import describe, machine_info  # noqa: E402

CASES = ("ce", "kd", "online", "teacher")


def run_case(case, data_dir, n, student_arch, teacher_arch):
    from accelerate.utils import set_seed

    from kd_accel.augment import SPECS
    from kd_accel.config import from_flags
    from kd_accel.data import load_split, make_loader
    from kd_accel.pipeline import columns, make_accelerator
    from kd_accel.roles import build, inputs_for
    from kd_accel.training import TrainSpec, fit, make_objective, online_objective
    from kd_accel.data import TensorData

    set_seed(0)
    cfg = from_flags(epochs=1, batch_size=100, arch=student_arch, teacher_arch=teacher_arch)
    accelerator = make_accelerator(cfg, cpu=True)
    train = load_split("mnist", "train", data_dir).subset(n)
    quiet = lambda line: None  # noqa: E731
    teacher, trecord = build(cfg.teacher, train, "teacher", quiet)
    teacher.eval().requires_grad_(False).to(memory_format=torch.channels_last)  # as teaching.frozen_teacher
    student, record = build(cfg.student, train, "student", quiet)
    inputs = inputs_for(SPECS["none"], record["preprocessing"])
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # dynamo's one-off import, outside every timer
    if case == "teacher":
        loader = make_loader(columns(train), 100, shuffle=True, seed=0)
        loader.sampler.set_epoch(0)
        start = time.perf_counter()
        with torch.no_grad():
            for batch in loader:
                teacher(inputs(batch).contiguous(memory_format=torch.channels_last))
        return {"seconds": time.perf_counter() - start}
    kd = make_objective("hinton", 4.0, 0.9)
    cols = columns(train)
    if case == "ce":
        objective = make_objective("ce")
    elif case == "kd":
        cols = columns(train, teacher_logits=torch.randn(len(train), train.num_classes))
        objective = kd
    else:  # the same preprocessing: the student's batch["x"]; the teacher's calls timed where they run
        teacher = Timed(teacher)
        objective = online_objective(teacher, kd)
    start = time.perf_counter()
    fit(accelerator, student, TensorData(cols), None, TrainSpec.of(cfg.student, cfg.run), objective, "student", inputs=inputs)
    return {"seconds": time.perf_counter() - start, **({"teacher_in_loop_s": teacher.total} if case == "online" else {})}


class Timed(torch.nn.Module):
    """A model whose forward calls add up their wall time (CPU: each call is synchronous)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.total = model, 0.0

    def forward(self, x):
        start = time.perf_counter()
        out = self.model(x)
        self.total += time.perf_counter() - start
        return out


def main():
    p = argparse.ArgumentParser(description="a zoo student: cached KD vs CE, online teacher vs its forward")
    p.add_argument("--data-dir", default=os.environ.get("KD_ACCEL_DATA_DIR", "data"))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--samples", type=int, default=2000, help="training samples: an epoch is samples/100 steps")
    p.add_argument("--student", default="torchvision:mobilenet_v3_small")
    p.add_argument("--teacher", default="torchvision:resnet18")
    p.add_argument("--json", default=None)
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.data_dir, args.samples, args.student, args.teacher)))
        return
    info = machine_info("cpu")
    print(describe(info), flush=True)
    results = {c: [] for c in CASES}
    for rep in range(args.reps):
        for c in CASES:  # alternating, so a slow minute on the machine hits every case alike
            cmd = [sys.executable, __file__, "--case", c, "--data-dir", args.data_dir, "--samples", str(args.samples),
                   "--student", args.student, "--teacher", args.teacher]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                raise SystemExit(f"case {c} failed:\n{proc.stderr[-3000:]}")
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            results[c].append(out["seconds"])
            if "teacher_in_loop_s" in out:
                results.setdefault("online: teacher calls", []).append(out["teacher_in_loop_s"])
            print(f"rep {rep + 1}/{args.reps} {c}: {results[c][-1]:.2f}s", flush=True)
    med = {c: statistics.median(v) for c, v in results.items()}
    ratios = {"kd / ce": (med["kd"] / med["ce"], "<= 1.05", med["kd"] / med["ce"] <= 1.05),
              "(online - kd) / teacher forward": ((med["online"] - med["kd"]) / med["teacher"], "1 +- 0.1",
                                                  abs((med["online"] - med["kd"]) / med["teacher"] - 1) <= 0.1),
              # where the extra goes: the teacher's own calls inside the loop, against the same forward alone
              "teacher calls in the loop / alone": (med["online: teacher calls"] / med["teacher"], "(diagnostic)", True),
              "(online - kd) / teacher calls in the loop": ((med["online"] - med["kd"]) / med["online: teacher calls"],
                                                           "(diagnostic)", True)}
    print(f"\n{describe(info)}; student {args.student}, teacher {args.teacher}, {args.samples} samples, batch 100, "
          f"{args.reps} reps")
    for c in results:
        print(f"{c:<22} median {med[c]:.2f}s  (min {min(results[c]):.2f}, max {max(results[c]):.2f})")
    for name, (value, target, met) in ratios.items():
        print(f"{name:<44}{value:>6.3f}  target {target:<13}{'met' if met else 'MISSED'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": info, "student": args.student, "teacher": args.teacher,
                                               "samples": args.samples, "seconds": results, "median_s": med,
                                               "ratios": {k: {"value": v, "target": t, "met": m}
                                                          for k, (v, t, m) in ratios.items()}}, indent=2))


if __name__ == "__main__":
    main()
