"""Distributed equivalence, gradient accumulation, precision and fault handling (issue: scale out)."""
import json
import os
import shlex
import signal
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from kd_accel.cache import read_metadata

from conftest import ROOT, launch_cmd, run_script

HELPER = ROOT / "tests" / "scripts" / "train_check.py"
FAULT = ROOT / "tests" / "scripts" / "fault.py"  # runs a launch script with a SIGKILL step hook


def job(*words):
    """One train_check.py job: its words as one argument, split there like a shell line."""
    return " ".join(shlex.quote(str(w)) for w in words)


# the models trained on 1 process x batch 40 and 2 processes x 20 (and 1 x 20: another batch size)
MODELS = {"teacher": ["--role", "teacher"], "student": ["--role", "student"],
          "timm:test_efficientnet": ["--arch", "timm:test_efficientnet"], "timm:test_resnet": ["--arch", "timm:test_resnet"]}
NO_BN = ["--role", "student", "--no-bn"]


def jobs(nproc, folder, mnist_dir, teacher_file):
    """What one launch under `nproc` processes runs, for every check of this file that compares
    1 with N processes. Outputs: folder/<model>.b<B>.safetensors (and .rank<r>.json, the order),
    accum.safetensors and ddp.safetensors (gradient accumulation), eval.json, cache.safetensors."""
    batches = {1: (40, 20), 2: (20,), 3: ()}[nproc]
    out = [job("train", folder / f"{m}.b{b}.safetensors", *flags, "--batch-size", b)
           for m, flags in MODELS.items() for b in batches]
    if nproc == 1:  # K micro-batches of B/K, one process
        out.append(job("train", folder / "accum.safetensors", *NO_BN, "--batch-size", 10, "--grad-accum", 4))
        out.append(job("train", folder / "full.safetensors", *NO_BN, "--batch-size", 40))
    if nproc == 2:  # and on two
        out.append(job("train", folder / "ddp.safetensors", *NO_BN, "--batch-size", 10, "--grad-accum", 2))
    out.append(job("eval", folder / "eval.json"))
    out.append(job("precompute", "--data-dir", mnist_dir, "--teacher", teacher_file, "--out",
                   folder / "cache.safetensors", "--limit-train", "1001", "--augment", "shift", "--views", "2",
                   "--cache-dtype", "fp32", "--output-dir", folder / "precompute"))  # the last job: see train_check.py
    return out


@pytest.fixture(scope="module")
def launched(tmp_path_factory, mnist_dir, teacher_file):
    """nproc -> the folder of the one launch of tests/scripts/train_check.py under `nproc` CPU
    processes (gloo, the Accelerate way) that ran jobs(nproc): made on first use, then shared by
    the tests below (a 2-process launch costs 5-8 s before any work)."""
    done = {}

    def folder(nproc):
        if nproc not in done:
            out = tmp_path_factory.mktemp(f"launch{nproc}")
            cmd, extra = launch_cmd(HELPER, ["--data-dir", mnist_dir, *jobs(nproc, out, mnist_dir, teacher_file)], nproc)
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **extra}, cwd=ROOT, timeout=600)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            done[nproc] = out
        return done[nproc]

    return folder


def noise_only(k, keys):
    """A conv bias followed by BN has an exactly-zero gradient; Adam turns its float noise into
    lr-sized random steps, and BN's running mean follows it. Neither changes what the model
    computes (the probe logits check that), so they are left out of the weight comparison."""
    return k.endswith("num_batches_tracked") or k.endswith("running_mean") or (
        k.endswith(".0.bias") and k.replace(".0.bias", ".1.running_mean") in keys)


def assert_same_weights(a, b, atol=1e-3, every_weight=True):
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    pa, pb = wa.pop("_probe_logits"), wb.pop("_probe_logits")
    assert torch.allclose(pa, pb, atol=0.02, rtol=0.01), ("probe logits", (pa - pb).abs().max())
    for k in wa if every_weight else ():
        if not noise_only(k, wa):
            assert torch.allclose(wa[k].float(), wb[k].float(), atol=atol, rtol=1e-3), (k, (wa[k] - wb[k]).abs().max())


@pytest.mark.slow
@pytest.mark.parametrize("role", ["teacher", "student"])
def test_two_processes_half_batch_equal_one_process_full_batch(role, launched):
    one, two = launched(1) / f"{role}.b40.safetensors", launched(2) / f"{role}.b20.safetensors"
    assert_same_weights(one, two)
    # and the check can fail: a different batch size gives different weights
    with pytest.raises(AssertionError):
        assert_same_weights(one, launched(1) / f"{role}.b20.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["timm:test_efficientnet", "timm:test_resnet"])
def test_a_zoo_student_trains_the_same_on_two_processes(arch, launched):
    """Issue 18: any architecture, its batch norms synchronised (timm's BatchNormAct2d in
    test_efficientnet, BatchNorm2d in test_resnet), 1 process x 40 == 2 processes x 20.

    test_efficientnet: the function (probe logits) only. Its EdgeResidual blocks end in a BN whose
    output only reaches a conv and another BN (no residual): that BN's bias has a near-zero
    gradient (the zero-padded border alone), which Adam turns into lr-sized steps of float noise
    (measured: 0.011 apart after 20 steps, the next BN's running mean following), the same effect
    noise_only describes for a conv bias before BN."""
    one, two = launched(1) / f"{arch}.b40.safetensors", launched(2) / f"{arch}.b20.safetensors"
    assert_same_weights(one, two, every_weight=arch == "timm:test_resnet")
    with pytest.raises(AssertionError):  # and the check can fail: another batch size, other weights
        assert_same_weights(one, launched(1) / f"{arch}.b20.safetensors", every_weight=False)


@pytest.mark.slow
def test_grad_accumulation_equals_full_batch(launched):
    """K micro-batches of B/K == one batch of B, on one and on two processes. BatchNorm is
    replaced by Identity here: BN normalises each micro-batch with its own statistics, so with BN
    accumulation is close to, but not the same as, a K-times larger batch (see docs/scaling-out.md)."""
    full = launched(1) / "full.safetensors"
    assert_same_weights(full, launched(1) / "accum.safetensors")
    assert_same_weights(full, launched(2) / "ddp.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [2, 3])
def test_evaluation_counts_every_sample_once(nproc, launched):
    one, many = (json.loads((launched(n) / "eval.json").read_text()) for n in (1, nproc))
    assert many["processes"] == nproc
    assert many["accuracy"] == one["accuracy"]


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A seeded, untrained teacher checkpoint: enough to test precompute plumbing."""
    from kd_accel.models import Teacher, save_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_model(Teacher(), path, "teacher", 10)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [2, 3])
def test_precompute_on_n_processes_equals_one(nproc, launched):
    """1,001 samples divide by neither 2 nor 3: every (view, sample) row once, in index order,
    for a K-view cache of augmented views (each rank rebuilds its samples' views from their
    indices alone). precompute_logits.py's main, run in train_check.py's launches; the script
    itself runs under 2 processes in tests/test_distributed.py and tests/test_imagefolder.py."""
    outs = {n: launched(n) / "cache.safetensors" for n in (1, nproc)}
    a, b = load_file(outs[1]), load_file(outs[nproc])
    assert b["logits"].shape == (2, 1001, 10) and b["params"].shape == (2, 1001, 5)
    assert torch.allclose(a["logits"], b["logits"], atol=1e-5)
    assert not torch.allclose(b["logits"][0], b["logits"][1], atol=1e-3)  # two different views
    assert torch.equal(a["params"], b["params"]) and torch.equal(a["labels"], b["labels"])
    assert read_metadata(outs[1])["logits_sha256"] is not None


def test_teacher_is_frozen_and_never_prepared(teacher_file, mnist_dir, monkeypatch, tmp_path, accelerator):
    from kd_accel import teaching
    from kd_accel.config import from_flags
    from kd_accel.data import load_split
    from kd_accel.models import Teacher

    prepared, teachers = [], []
    real_prepare = accelerator.prepare
    monkeypatch.setattr(accelerator, "prepare", lambda *objs: (prepared.extend(objs), real_prepare(*objs))[1])
    real_init = Teacher.__init__

    def spy_init(self, *a, **k):
        real_init(self, *a, **k)
        teachers.append(self)

    monkeypatch.setattr(Teacher, "__init__", spy_init)
    train = load_split("mnist", "train", mnist_dir).subset(200)
    teaching.precompute(accelerator, from_flags(), teacher_file, train, tmp_path / "c.safetensors")
    assert len(teachers) == 1 and not any(isinstance(o, torch.nn.Module) for o in prepared)
    assert all(not p.requires_grad and p.grad is None for p in teachers[0].parameters())


@pytest.mark.slow  # a long end-to-end run (in this process: a process of its own spent 2-3 s on imports)
def test_bf16_pipeline_is_finite_and_cache_stays_fp32(tmp_path, mnist_dir):
    from kd_accel.cli import distill_main

    from conftest import run_main

    out = tmp_path / "bf16"
    run_main(distill_main, ["--data-dir", mnist_dir, "--output-dir", out, "--limit-train", "2000", "--limit-test",
                            "300", "--epochs", "2", "--teacher-epochs", "2", "--no-baseline", "--mixed-precision", "bf16"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["environment"]["mixed_precision"] == "bf16"
    for role in ("teacher", "student"):
        assert m[role]["test_accuracy"] > 80  # fp32 gives 93.0 (teacher) and 86.0 (student) here
        assert all(torch.isfinite(torch.tensor(v)) for e in m[role]["epochs"] for v in e.values())
    assert read_metadata(out / "teacher_logits.safetensors")["dtype"] == "fp32"
    assert load_file(out / "teacher_logits.safetensors")["logits"].dtype == torch.float32


def test_fp16_on_cpu_is_refused_in_one_line(tmp_path, mnist_dir, capsys, reset_accelerate):
    """In-process through run_cli, what launch/distill.py calls (a process of its own spent 2-3 s
    on its imports; each launch script runs as a process in tests/test_cli.py)."""
    from kd_accel.cli import distill_main

    from conftest import cli_error

    err = cli_error(distill_main, ["--data-dir", mnist_dir, "--output-dir", tmp_path / "o", "--mixed-precision", "fp16"],
                    capsys)
    assert err == "kd_accel: error: fp16 mixed precision needs a GPU; on CPU use --mixed-precision bf16 (or no)"
    assert not (tmp_path / "o").exists()


def test_non_finite_loss_stops_with_step_and_parts(accelerator):
    from kd_accel.config import from_flags
    from kd_accel.errors import KDError
    from kd_accel.models import Student
    from kd_accel.pipeline import columns
    from kd_accel.training import TrainSpec, fit, make_objective
    from kd_accel.data import TensorData

    from conftest import tiny_split

    train = tiny_split(60)
    cache = torch.randn(60, 10)
    cache[17] = float("nan")  # one poisoned teacher row
    cfg = from_flags(epochs=1, batch_size=10)
    with pytest.raises(KDError, match=r"non-finite loss at step [1-6] \(loss=nan, hard=[0-9.]+, soft=nan\)"):
        fit(accelerator, Student(), TensorData(columns(train, teacher_logits=cache)), train, TrainSpec.of(cfg.student, cfg.run), make_objective("hinton", 2.0, 0.5), "student")


def test_partial_checkpoints_are_never_resumed(tmp_path):
    from kd_accel.checkpointing import PROGRESS, complete_checkpoints, find_resume

    (tmp_path / "step_00000010").mkdir()
    (tmp_path / "step_00000010" / PROGRESS).write_text("{}")
    (tmp_path / "step_00000030").mkdir()  # crashed before progress.json: incomplete
    (tmp_path / ".tmp_step_00000040").mkdir()  # crashed mid-save
    (tmp_path / ".tmp_step_00000040" / PROGRESS).write_text("{}")
    assert complete_checkpoints(tmp_path) == [tmp_path / "step_00000010"]
    assert find_resume("latest", tmp_path) == tmp_path / "step_00000010"
    assert find_resume("latest", tmp_path / "none") is None


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, mnist_dir):
    """The whole pipeline, killed in its third phase (baseline), resumed with --resume latest."""
    args = ["--data-dir", mnist_dir, "--limit-train", "500", "--limit-test", "100", "--teacher-epochs", "1",
            "--epochs", "2", "--batch-size", "25", "--checkpoint-every", "8"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_script("distill.py", *args, "--output-dir", whole)
    # 20 steps an epoch; checkpoints at 8, 16, 20 (epoch end), 24; SIGKILL after baseline step 27
    cmd, _ = launch_cmd(FAULT, ["baseline:27", "--", ROOT / "launch" / "distill.py", *args, "--output-dir", killed], 1)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert (killed / "student.safetensors").exists() and not (killed / "baseline.safetensors").exists()
    assert not (killed / "metrics.json").exists()
    ckpts = sorted(p.name for p in (killed / "checkpoints" / "baseline").iterdir())
    assert ckpts == ["step_00000016", "step_00000020", "step_00000024"], ckpts  # keeps the last 3
    proc = run_script("distill.py", *args, "--output-dir", killed, "--resume", "latest")
    assert "baseline: resumed from" in proc.stdout and "step_00000024" in proc.stdout
    assert "student: already finished" in proc.stdout and "teacher: reusing" in proc.stdout
    for name in ("teacher", "student", "baseline"):
        a, b = load_file(whole / f"{name}.safetensors"), load_file(killed / f"{name}.safetensors")
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (whole, killed))
    for role in ("teacher", "student", "baseline"):
        assert ma[role]["test_accuracy"] == mb[role]["test_accuracy"]
    for ea, eb in zip(ma["baseline"]["epochs"], mb["baseline"]["epochs"]):
        assert ea == pytest.approx(eb, rel=1e-6)



@pytest.mark.parametrize("name", ["accelerate_config.yaml", "configs/cpu_2proc.yaml", "configs/multi_gpu.yaml",
                                  "configs/multi_node.yaml"])
def test_accelerate_config_files_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ROOT / name))
    assert cfg.num_processes >= 1 and cfg.compute_environment.value == "LOCAL_MACHINE"
    if "multi_node" in name:
        assert cfg.num_machines == 2 and cfg.main_process_ip


@pytest.mark.slow
def test_one_and_two_processes_see_the_same_global_order(launched):
    """The data order is the seed's alone: two ranks with batch B/2 take turns over the same
    global permutation that one process walks with batch B."""
    one = json.loads((launched(1) / "student.b40.safetensors.rank0.json").read_text())
    r0, r1 = (json.loads((launched(2) / f"student.b20.safetensors.rank{r}.json").read_text()) for r in (0, 1))
    assert len(one) == len(r0) == len(r1) == 20  # 2 epochs x 400 / 40 steps
    assert [a + b for a, b in zip(r0, r1)] == one
    assert sorted(sum(one[:10], [])) == list(range(400)) and one[:10] != one[10:]
