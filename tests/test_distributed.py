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
    proc = run_script("distill.py", "--data-dir", mnist_dir, "--output-dir", out, *SMALL, "--no-baseline",
                      "--export", "pt2", nproc=2)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["environment"]["processes"] == 2
    assert metrics["num_train"] == 1001 and metrics["num_test"] == 333
    # rank-0-only output: the summary is printed once, the student exported once
    assert proc.stdout.count("distilled student") == 1 and proc.stdout.count("(model card)") == 1, proc.stdout
    files = sorted(p.name for p in out.iterdir())
    assert files == ["config.json", "export", "metrics.json", "recipe.yaml", "student.safetensors",
                     "teacher.safetensors", "teacher_logits.safetensors"], files
    assert sorted(p.name for p in (out / "export").iterdir()) == ["README.md", "student.pt2"]

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


def test_setting_aside_a_result_passes_the_same_barriers_on_every_process(tmp_path):
    """A 2-process re-run in a finished folder hung (1 run in 3): the main process moved
    metrics.json to previous/ before the other one looked for it, so that one skipped the barrier
    the main one waited in. Two threads stand for the processes, a threading.Barrier for
    wait_for_everyone; the other process looks late. Each must pass as many barriers as the other."""
    import threading
    import time
    from types import SimpleNamespace

    from kd_accel.config import from_flags
    from kd_accel.runfolder import set_aside_previous_result

    cfg = from_flags(output_dir=str(tmp_path))
    (tmp_path / "metrics.json").write_text("{}")
    barrier, passed, errors = threading.Barrier(2, timeout=5), {}, []

    def rank(main):
        def wait():
            barrier.wait()
            passed[main] = passed.get(main, 0) + 1

        acc = SimpleNamespace(is_main_process=main, wait_for_everyone=wait, print=lambda *a, **k: None)
        try:
            if not main:
                time.sleep(0.3)  # the other process comes late to the folder
            set_aside_previous_result(acc, cfg)
        except threading.BrokenBarrierError as e:
            errors.append(e)

    threads = [threading.Thread(target=rank, args=(m,)) for m in (True, False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and passed[True] == passed[False], (passed, errors)
    assert (tmp_path / "previous" / "metrics.json").exists() and not (tmp_path / "metrics.json").exists()
