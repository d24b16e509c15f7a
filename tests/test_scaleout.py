"""Distributed equivalence, gradient accumulation, precision and fault handling (issue: scale out)."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from kd_accel.cache import read_metadata

from conftest import ROOT, free_port, run_script

HELPER = ROOT / "tests" / "scripts" / "train_check.py"


def launch(nproc, *args, env=None):
    """Run the helper under `nproc` CPU processes (gloo), the Accelerate way."""
    env = {**os.environ, **(env or {})}
    if nproc == 1:
        cmd = [sys.executable, str(HELPER), *map(str, args)]
    else:
        env["ACCELERATE_USE_CPU"] = "1"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(HELPER), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def noise_only(k, keys):
    """A conv bias followed by BN has an exactly-zero gradient; Adam turns its float noise into
    lr-sized random steps, and BN's running mean follows it. Neither changes what the model
    computes (the probe logits check that), so they are left out of the weight comparison."""
    return k.endswith("num_batches_tracked") or k.endswith("running_mean") or (
        k.endswith(".0.bias") and k.replace(".0.bias", ".1.running_mean") in keys)


def assert_same_weights(a, b, atol=1e-3):
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    pa, pb = wa.pop("_probe_logits"), wb.pop("_probe_logits")
    assert torch.allclose(pa, pb, atol=0.02, rtol=0.01), ("probe logits", (pa - pb).abs().max())
    for k in wa:
        if not noise_only(k, wa):
            assert torch.allclose(wa[k].float(), wb[k].float(), atol=atol, rtol=1e-3), (k, (wa[k] - wb[k]).abs().max())


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_two_processes_half_batch_equal_one_process_full_batch(role, tmp_path, mnist_dir):
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    launch(1, "train", one, "--data-dir", mnist_dir, "--role", role, "--batch-size", 40)
    launch(2, "train", two, "--data-dir", mnist_dir, "--role", role, "--batch-size", 20)
    assert_same_weights(one, two)
    # and the check can fail: a different batch size gives different weights
    other = tmp_path / "other.safetensors"
    launch(1, "train", other, "--data-dir", mnist_dir, "--role", role, "--batch-size", 20)
    with pytest.raises(AssertionError):
        assert_same_weights(one, other)


def test_grad_accumulation_equals_full_batch(tmp_path, mnist_dir):
    """K micro-batches of B/K == one batch of B, on one and on two processes. BatchNorm is
    replaced by Identity here: BN normalises each micro-batch with its own statistics, so with BN
    accumulation is close to, but not the same as, a K-times larger batch (see README)."""
    common = ["--data-dir", mnist_dir, "--role", "student", "--no-bn"]
    full, accum, ddp = (tmp_path / f"{n}.safetensors" for n in ("full", "accum", "ddp"))
    launch(1, "train", full, *common, "--batch-size", 40)
    launch(1, "train", accum, *common, "--batch-size", 10, "--grad-accum", 4)
    launch(2, "train", ddp, *common, "--batch-size", 10, "--grad-accum", 2)
    assert_same_weights(full, accum)
    assert_same_weights(full, ddp)


@pytest.mark.parametrize("nproc", [2, 3])
def test_evaluation_counts_every_sample_once(nproc, tmp_path, mnist_dir):
    launch(1, "eval", tmp_path / "1.json", "--data-dir", mnist_dir)
    launch(nproc, "eval", tmp_path / "n.json", "--data-dir", mnist_dir)
    one, many = (json.loads((tmp_path / f).read_text()) for f in ("1.json", "n.json"))
    assert many["processes"] == nproc
    assert many["accuracy"] == one["accuracy"]
