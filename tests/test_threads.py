"""All physical cores by default on CPU; an explicit choice always respected."""
import os
import subprocess
import sys

import pytest

from kd_accel.threads import choose_threads, launcher_chose_one, physical_cores, share_with_workers

from conftest import ROOT

LAUNCHED = {"OMP_NUM_THREADS": "1", "ACCELERATE_MIXED_PRECISION": "no"}
ACCEL_ARGV = ["/usr/bin/python", "/usr/bin/accelerate", "launch", "launch/distill.py"]


def test_default_is_every_physical_core_shared_by_local_processes():
    assert choose_threads({}, cores=8)[0] == 8
    assert choose_threads({"LOCAL_WORLD_SIZE": "2"}, cores=8)[0] == 4
    assert choose_threads({"LOCAL_WORLD_SIZE": "3"}, cores=2)[0] == 1  # never 0
    assert choose_threads(LAUNCHED, cores=8, launcher_default=True)[0] == 8


def test_explicit_choice_is_respected():
    n, why = choose_threads({"OMP_NUM_THREADS": "3"}, cores=8)
    assert n is None and "OMP_NUM_THREADS=3" in why
    assert choose_threads(LAUNCHED, cores=8, launcher_default=False)[0] is None


def test_a_folder_run_leaves_the_workers_their_cores():
    """Image folders on CPU: the training threads are this process's cores less its decoding
    workers (at least 1); a number the user chose is kept; no workers, nothing changes."""
    import torch

    before = torch.get_num_threads()
    try:
        n = choose_threads({})[0]
        line = share_with_workers(1, env={})
        assert torch.get_num_threads() == max(1, n - 1) and "beside 1 DataLoader workers" in line
        share_with_workers(n + 5, env={})
        assert torch.get_num_threads() == 1
        torch.set_num_threads(before)
        assert share_with_workers(2, env={"OMP_NUM_THREADS": "2"}) is None and torch.get_num_threads() == before
        assert share_with_workers(0, env={}) is None and torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_launcher_default_told_apart_from_user_choice():
    assert launcher_chose_one(LAUNCHED, ACCEL_ARGV, ["PATH=/bin"])
    # the user gave the launcher a count, or had OMP_NUM_THREADS set when launching
    assert not launcher_chose_one(LAUNCHED, ACCEL_ARGV + ["--num_cpu_threads_per_process", "1"], ["PATH=/bin"])
    assert not launcher_chose_one(LAUNCHED, ACCEL_ARGV + ["--num_cpu_threads_per_process=1"], ["PATH=/bin"])
    assert not launcher_chose_one(LAUNCHED, ACCEL_ARGV, ["OMP_NUM_THREADS=1"])
    # not started by accelerate, or not a 1
    assert not launcher_chose_one({"OMP_NUM_THREADS": "1"}, ACCEL_ARGV, [])
    assert not launcher_chose_one(LAUNCHED, ["bash", "run.sh"], [])
    assert not launcher_chose_one({**LAUNCHED, "OMP_NUM_THREADS": "2"}, ACCEL_ARGV, [])


def _launch(*launcher_args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | (env_extra or {})
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", *launcher_args,
           str(ROOT / "tests" / "scripts" / "threads_check.py")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return int(out.stdout.split("torch_threads")[-1]), out.stdout


@pytest.mark.slow
@pytest.mark.skipif(physical_cores() < 2, reason="needs 2 physical cores to tell 1 from all")
def test_accelerate_launch_uses_all_cores_unless_told():
    n, text = _launch()
    assert n == physical_cores() and "physical cores" in text
    assert _launch("--num_cpu_threads_per_process", "1")[0] == 1
    assert _launch(env_extra={"OMP_NUM_THREADS": "1"})[0] == 1
