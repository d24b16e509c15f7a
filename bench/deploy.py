"""The deployment figures of teacher/student pairs, side by side on this machine: FLOPs per image
(torch.utils.flop_counter, kd_accel.deploy.forward_flops), parameters and inference latency at
batch 1 and 64 (kd_accel.deploy.latency: median of repeats after a warm-up, eval mode, no_grad),
the models' latencies measured in alternation, so the student's speed-up over its teacher is a
same-run ratio. Weights are random: the cost of a forward does not depend on their values.

    python bench/deploy.py                       # the worked examples of docs/own-models.md and own-data.md
    python bench/deploy.py --pair torchvision:resnet18 timm:mobilenetv3_small_100 --shape 1 28 28
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe, machine_info  # noqa: E402

import torch  # noqa: E402

from kd_accel.deploy import forward_flops, latency  # noqa: E402
from kd_accel.io import write_json  # noqa: E402
from kd_accel.models import build_zoo_model, count_params  # noqa: E402

# (teacher, student, input shape C H W, classes, what): the worked examples' pairs
EXAMPLES = [
    ("torchvision:resnet18", "timm:mobilenetv3_small_100", (1, 28, 28), 10, "own-models: ResNet-18 -> MobileNetV3-small"),
    ("torchvision:resnet18", "notebook:student", (1, 28, 28), 10, "own-models: ResNet-18 -> notebook student"),
    ("notebook:teacher", "notebook:student", (1, 28, 28), 10, "notebook: teacher -> student (MNIST, the main job)"),
]


def build(spec, shape, classes):
    model, _ = build_zoo_model(spec, classes, shape[0], shape[1:])
    return model.float().eval()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pair", nargs=2, metavar=("TEACHER", "STUDENT"), help="one pair instead of the examples")
    p.add_argument("--shape", type=int, nargs=3, default=(1, 28, 28), metavar=("C", "H", "W"))
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--reps", type=int, default=5, help="alternating rounds; each round times every model once")
    p.add_argument("--budget", type=float, default=0.5, help="seconds per model, batch size and round")
    p.add_argument("--out", default="bench/results/deploy.json")
    a = p.parse_args()
    pairs = [(*a.pair, tuple(a.shape), a.classes, "given pair")] if a.pair else EXAMPLES
    info = machine_info()
    print(describe(info))
    rows = []
    for teacher, student, shape, classes, what in pairs:
        models = {role: build(spec, shape, classes) for role, spec in (("teacher", teacher), ("student", student))}
        ms = {(role, b): [] for role in models for b in (1, 64)}
        for r in range(a.reps):
            for role in (("teacher", "student") if r % 2 == 0 else ("student", "teacher")):
                for b in (1, 64):
                    ms[role, b].append(latency(models[role], shape, b, a.budget)["median_ms"])
        row = {"what": what, "teacher": teacher, "student": student, "input_shape": list(shape)}
        for role, model in models.items():
            row[role + "_flops"] = forward_flops(model, shape)
            row[role + "_params"] = count_params(model)
            for b in (1, 64):
                row[f"{role}_ms_b{b}"] = statistics.median(ms[role, b])
        for b in (1, 64):  # the ratio of each round's pair, then the median: a same-run ratio
            row[f"speedup_b{b}"] = statistics.median(t / s for t, s in zip(ms["teacher", b], ms["student", b]))
        rows.append(row)
        print(f"{what}: FLOPs/img {row['teacher_flops']:,} -> {row['student_flops']:,}; params "
              f"{row['teacher_params']:,} -> {row['student_params']:,}; ms b1 {row['teacher_ms_b1']:.2f} -> "
              f"{row['student_ms_b1']:.2f} ({row['speedup_b1']:.2f}x); ms b64 {row['teacher_ms_b64']:.1f} -> "
              f"{row['student_ms_b64']:.1f} ({row['speedup_b64']:.2f}x)", flush=True)
    write_json(Path(a.out), {"machine": info, "torch_threads": torch.get_num_threads(), "rows": rows})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
