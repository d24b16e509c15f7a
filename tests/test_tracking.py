"""Experiment tracking (issue 11, part 2): --report-to starts Accelerate trackers with the resolved
configuration, each phase logs under its own prefix (per optimizer step: loss parts and lr; per
epoch: test accuracy, epoch time, samples/s), and end_training runs on every way out."""
import json
import math

import pytest
from accelerate import Accelerator

from kd_accel import cli, tracking, training
from kd_accel.errors import KDError

from conftest import run_script

# 300 samples, batch 20: 15 optimizer steps an epoch; the teacher 1 epoch, the students 2
ARGS = ["--limit-train", "300", "--limit-test", "100", "--epochs", "2", "--teacher-epochs", "1", "--batch-size", "20"]
STEPS = {"teacher": 15, "student": 30, "baseline": 30}
EPOCH_TAGS = ("test_accuracy", "epoch_time_s", "samples_per_s")
STEP_TAGS = {"teacher": ("loss", "hard", "lr"), "student": ("loss", "hard", "soft", "lr"),
             "baseline": ("loss", "hard", "lr")}


def distill(mnist_dir, out, *extra):
    cli.distill_main(["--data-dir", str(mnist_dir), "--output-dir", str(out), *ARGS, *map(str, extra)])


def scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})  # 0: keep every value
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def test_tensorboard_logs_each_phase_per_step_and_per_epoch(mnist_dir, tmp_path, monkeypatch, reset_accelerate):
    monkeypatch.setattr(training, "LOG_EVERY", 4)  # flushes mid-epoch too (steps 4, 8, 12, then the epoch end)
    out = tmp_path / "run"
    distill(mnist_dir, out, "--report-to", "tensorboard")
    metrics = json.loads((out / "metrics.json").read_text())
    logged = scalars(out / "tensorboard" / "distill" / "kd_accel")

    expected = {f"{phase}/{t}" for phase, tags in STEP_TAGS.items() for t in (*tags, *EPOCH_TAGS)}
    assert set(logged) == expected
    for phase, n in STEPS.items():
        per_epoch = n // 15
        for t in STEP_TAGS[phase]:  # one value per optimizer step, steps 1..n of this phase
            assert [e.step for e in logged[f"{phase}/{t}"]] == list(range(1, n + 1)), (phase, t)
        for t in EPOCH_TAGS:  # one value per epoch, at the epoch's last step
            assert [e.step for e in logged[f"{phase}/{t}"]] == [15 * (i + 1) for i in range(per_epoch)], (phase, t)
        history = metrics[phase]["epochs"]
        assert [e.value for e in logged[f"{phase}/test_accuracy"]] == pytest.approx(
            [h["test_accuracy"] for h in history])
        for e, (time_s, rate) in enumerate(zip(logged[f"{phase}/epoch_time_s"], logged[f"{phase}/samples_per_s"])):
            assert time_s.value > 0 and rate.value * time_s.value == pytest.approx(300, rel=1e-3)
            # the logged per-step losses of an epoch average to the epoch's loss in metrics.json
            for part in STEP_TAGS[phase][:-1]:
                values = [v.value for v in logged[f"{phase}/{part}"][15 * e:15 * (e + 1)]]
                assert sum(values) / 15 == pytest.approx(history[e][f"loss_{part}"], rel=1e-5), (phase, part, e)
    # the lr each step used: the student's cosine schedule over its 30 steps
    lr = [e.value for e in logged["student/lr"]]
    assert lr == pytest.approx([1e-3 * 0.5 * (1 + math.cos(math.pi * k / 30)) for k in range(30)], rel=1e-5)
    # the resolved configuration as hyper-parameters (None flattened to a string)
    (hparams,) = (out / "tensorboard" / "distill" / "kd_accel").glob("*/hparams.yml")
    text = hparams.read_text()
    assert "report_to: tensorboard" in text and "script: distill" in text and "teacher: none" in text


def test_report_to_none_writes_no_event_file(mnist_dir, tmp_path, reset_accelerate):
    out = tmp_path / "run"
    distill(mnist_dir, out, "--epochs", "1", "--no-baseline")
    assert (out / "metrics.json").exists()
    assert not list(out.rglob("events.out.tfevents*")) and not (out / "tensorboard").exists()


@pytest.mark.parametrize("failure", [KDError("boom after the teacher"), KeyboardInterrupt()])
def test_trackers_end_on_every_way_out(failure, mnist_dir, tmp_path, monkeypatch, reset_accelerate):
    ended = []
    real = Accelerator.end_training

    def spy(self):
        ended.append(self)
        real(self)

    def fails(*a, **k):
        raise failure

    monkeypatch.setattr(Accelerator, "end_training", spy)
    monkeypatch.setattr(cli, "resolve_soft_targets", fails)  # after the teacher is trained and logged
    out = tmp_path / "run"
    with pytest.raises(type(failure)):
        distill(mnist_dir, out, "--report-to", "tensorboard")
    assert len(ended) == 1
    writer = ended[0].get_tracker("tensorboard", unwrap=True)
    assert writer.all_writers is None  # closed
    logged = scalars(out / "tensorboard" / "distill" / "kd_accel")
    assert len(logged["teacher/loss"]) == 15 and "student/loss" not in logged
    assert not tracking._OPEN


def test_missing_tracker_package_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "installed", lambda name: name == "tensorboard")
    for name in ("wandb", "mlflow"):
        with pytest.raises(KDError, match=rf"^--report-to {name} needs: pip install {name}$"):
            cli.distill_main(["--output-dir", str(tmp_path / "run"), "--report-to", name])
    assert not (tmp_path / "run").exists()
    assert tracking.resolve("all") == ["tensorboard"]
    assert tracking.resolve("none") == []
    monkeypatch.setattr(tracking, "installed", lambda name: False)
    assert tracking.resolve("all") == []
    with pytest.raises(KDError, match=r"^--report-to tensorboard needs: pip install -e '\.\[tensorboard\]'"):
        tracking.resolve("tensorboard")


@pytest.mark.slow  # a process, as a user runs the script (3.5 s)
@pytest.mark.skipif(tracking.installed("wandb"), reason="wandb is installed here")
def test_missing_wandb_from_the_command_line(tmp_path):
    proc = run_script("distill.py", "--output-dir", tmp_path / "run", "--report-to", "wandb", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["kd_accel: error: --report-to wandb needs: pip install wandb"]
