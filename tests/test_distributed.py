"""The pipeline under two CPU processes (gloo), launched the Accelerate way."""
import json

import pytest
import torch
from safetensors.torch import load_file

from kd_accel.cache import read_metadata

from conftest import run_script

SMALL = ["--limit-train", "1001", "--limit-test", "333", "--epochs", "1", "--teacher-epochs", "1"]


@pytest.mark.slow
def test_two_process_pipeline_matches_one_process_cache(mnist_dir, tmp_path):
    out = tmp_path / "ddp"
    proc = run_script("distill.py", "--data-dir", mnist_dir, "--output-dir", out, *SMALL, "--no-baseline", nproc=2)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["environment"]["processes"] == 2
    assert metrics["num_train"] == 1001 and metrics["num_test"] == 333
    # rank-0-only output: the summary is printed once
    assert proc.stdout.count("distilled student") == 1, proc.stdout
    files = sorted(p.name for p in out.iterdir())
    assert files == ["config.json", "metrics.json", "recipe.yaml", "student.safetensors", "teacher.safetensors",
                     "teacher_logits.safetensors"], files

    # the same teacher, one process: the caches agree row for row
    one = tmp_path / "one.safetensors"
    run_script("precompute_logits.py", "--data-dir", mnist_dir, "--teacher", out / "teacher.safetensors",
               "--out", one, "--limit-train", "1001", "--output-dir", tmp_path / "p")
    a, b = load_file(out / "teacher_logits.safetensors"), load_file(one)
    assert a["logits"].shape == (1, 1001, 10)  # one clean view
    assert torch.allclose(a["logits"], b["logits"], atol=1e-5)
    assert torch.equal(a["labels"], b["labels"])
    ma, mb = read_metadata(out / "teacher_logits.safetensors"), read_metadata(one)
    assert ma["teacher_fingerprint"] == mb["teacher_fingerprint"] and ma["data_fingerprint"] == mb["data_fingerprint"]
