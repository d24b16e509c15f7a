"""Consistency of the K-view cache, end to end, under 1 or N processes (launched by
tests/test_views.py): distill.py runs in-process with a hook on every student batch that runs the
teacher on the student's actual input (batch["x"]) and compares its logits with the cached ones
the student was given. Each rank writes what it saw to <out>/views_rank<R>.json.

--stop-at STEP raises after that optimizer step (a crash mid-epoch); run again with
--resume latest to check the resumed epoch too."""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kd_accel import training  # noqa: E402
from kd_accel.cli import distill_main  # noqa: E402
from kd_accel.errors import KDError, run_cli  # noqa: E402
from kd_accel.models import load_model  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--data-dir", required=True)
p.add_argument("--teacher", required=True)
p.add_argument("--out", required=True)
p.add_argument("--stop-at", type=int)
p.add_argument("--resume", action="store_true")
a = p.parse_args()

teacher, _ = load_model(a.teacher, "teacher")
teacher.eval().requires_grad_(False).to(memory_format=torch.channels_last)
seen = {"batches": 0, "max_abs_diff": 0.0, "max_logit": 0.0, "samples": [], "label": None}


def check(label, batch):
    if label != "student":
        return
    with torch.no_grad():
        ref = teacher(batch["x"]).float()
    got = batch["teacher_logits"].float()
    seen["batches"] += 1
    seen["max_abs_diff"] = max(seen["max_abs_diff"], float((ref - got).abs().max()))
    seen["max_logit"] = max(seen["max_logit"], float(ref.abs().max()))
    seen["samples"] += batch["idx"].tolist()


def record():
    from accelerate import PartialState

    rank = PartialState().process_index
    Path(a.out, f"views_rank{rank}{'_resumed' if a.resume else ''}.json").write_text(json.dumps(seen))


def stop(label, step):
    if label == "student" and a.stop_at and step == a.stop_at:
        record()  # now: the launcher may SIGTERM this rank once another has failed
        raise KDError(f"simulated crash at step {step}")


training.HOOKS.batch.append(check)
training.HOOKS.step.append(stop)
args = ["--data-dir", a.data_dir, "--teacher", a.teacher, "--output-dir", a.out, "--limit-train", "300",
        "--limit-test", "100", "--epochs", "3", "--batch-size", "25", "--augment", "shift", "--views", "2",
        "--no-baseline", "--checkpoint-every", "4", "--seed", "1"]
run_cli(distill_main, args + ["--resume", "latest"] * a.resume)
record()
