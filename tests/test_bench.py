"""The benchmark scripts' own code paths (not timings: nothing here asserts a speed)."""
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu  # noqa: E402
import machine  # noqa: E402


def _fit_student(accelerator, images, labels, logits, cfg):
    from kd_accel.data import Split
    from kd_accel.models import Student
    from kd_accel.pipeline import columns
    from kd_accel.training import TrainSpec, fit, make_objective
    from kd_accel.data import TensorData

    torch.manual_seed(0)
    split = Split("mnist", "train", images, labels, 10)
    model, _ = fit(accelerator, Student(), TensorData(columns(split, teacher_logits=logits)), None, TrainSpec.of(cfg.student, cfg.run), make_objective("hinton", gpu.T, gpu.ALPHA), "student")
    return model.state_dict()


def _resident_student(images, labels, logits, seed=0):
    from kd_accel.models import Student

    torch.manual_seed(0)
    step = gpu.ResidentKDStep(images, labels, logits, torch.device("cpu"), "eager", seed=seed, student=Student())
    sums = step.epoch(0)
    step.check()
    return step.model.state_dict(), sums, step.steps


@pytest.mark.slow  # a benchmark's step against fit's, trained (3 s)
def test_resident_step_is_fits_step(accelerator, mnist_dir):
    """The GPU script's kd_accel step (data resident, gathered by the epoch permutation) trains
    the same weights as training.fit on the same data, seed and loss: it measures kd_accel's math."""
    from kd_accel.config import from_flags
    from kd_accel.data import load_split

    train = load_split("mnist", "train", mnist_dir).subset(500)
    logits = torch.randn(len(train), 10, generator=torch.Generator().manual_seed(1)) * 5
    cfg = from_flags(epochs=1, batch_size=gpu.BATCH, schedule="constant", lr=gpu.LR, seed=0)
    want = _fit_student(accelerator, train.images, train.labels, logits, cfg)
    got, sums, steps = _resident_student(train.images, train.labels, logits)
    assert steps == 5
    assert sums.shape == (3,) and torch.isfinite(sums).all()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    # the comparison can fail: another data order gives other weights
    other, _, _ = _resident_student(train.images, train.labels, logits, seed=1)
    assert not all(torch.equal(want[k], other[k]) for k in want)




def test_gpu_script_refuses_graph_mode_on_cpu():
    with pytest.raises(ValueError, match="CUDA"):
        gpu.ResidentKDStep(torch.zeros(200, 1, 28, 28, dtype=torch.uint8), torch.zeros(200, dtype=torch.long),
                           torch.zeros(200, 10), torch.device("cpu"), "graph")


def test_machine_info_names_the_machine():
    info = machine.machine_info()
    assert info["cpu"] and info["physical_cores"] >= 1 and info["torch_threads"] >= 1
    line = machine.describe(info)
    assert info["cpu"] in line and f"torch {torch.__version__}" in line


def test_cpu_inference_batch_gives_the_same_logits_and_accuracy(accelerator, mnist_dir):
    """Evaluation and precompute run in cache-sized batches on a CPU (a speed change only): the
    logits equal those of the old batch of 1000 within float rounding (bit for bit on the AVX2
    EPYC; on an AVX-512/AMX Xeon oneDNN's kernels for the two batch sizes differ in the last
    bits, 4e-8 seen) and so does every prediction, hence the accuracy."""
    from kd_accel.data import load_split
    from kd_accel.evaluation import evaluate, inference_batch, predict_logits
    from kd_accel.models import Teacher

    assert inference_batch("cpu") < 1000
    split = load_split("mnist", "test", mnist_dir).subset(2000)
    torch.manual_seed(0)
    teacher = Teacher().to(memory_format=torch.channels_last).requires_grad_(False)
    with torch.no_grad():  # BN statistics from data, so the logits are not all alike
        teacher.train()(split.images[:500].float() / 255)
    old = predict_logits(accelerator, teacher, split, batch_size=1000)
    new = predict_logits(accelerator, teacher, split)
    assert torch.allclose(old, new, rtol=1e-6, atol=1e-6), (old - new).abs().max()
    assert torch.equal(old.argmax(1), new.argmax(1))
    assert evaluate(accelerator, teacher, split) == evaluate(accelerator, teacher, split, batch_size=1000)


def test_gpu_script_keeps_what_it_measured_when_a_later_case_fails(tmp_path, monkeypatch):
    """The JSON is written after every case: a case that raises (or a kill, or the timeout)
    leaves the earlier ones on disk, marked partial."""
    out = tmp_path / "gpu.json"

    def broken(*_):
        raise RuntimeError("the precompute case breaks")

    monkeypatch.setattr(gpu, "kd_precompute", broken)
    with pytest.raises(RuntimeError, match="precompute case breaks"):
        gpu.main(["--device", "cpu", "--steps", "3", "--reps", "1", "--synthetic", "--modes", "eager", "--no-fit",
                  "--no-resume-check", "--no-zoo", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["partial"] is True
    assert saved["cases"]["nb_distill_epoch"]["n"] == 1 and saved["cases"]["kd_step_eager"]["n"] == 1


@pytest.mark.slow
def test_gpu_script_keeps_what_it_measured_when_killed(tmp_path):
    """SIGKILL of bench/gpu.py itself mid-run (what `timeout -s KILL` or a lost machine does):
    the JSON on disk is whole (written atomically after every case) and holds the cases measured
    before the kill, marked partial."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "gpu.json"
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--steps", "3",
                             "--reps", "1000", "--synthetic", "--modes", "eager", "--no-fit", "--no-resume-check",
                             "--no-zoo", "--no-folder", "--budget-s", "600", "--json", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # until some reps are on disk
            time.sleep(0.2)
            if out.exists() and json.loads(out.read_text())["cases"].get("kd_step_eager", {}).get("n", 0) >= 3:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = json.loads(out.read_text())  # whole: a torn write would not parse
    assert saved["partial"] is True and saved["cases"]["kd_step_eager"]["n"] >= 3
    assert saved["cases"]["nb_distill_epoch"]["n"] >= 3


def fresh_venv(tmp_path):
    """A venv at tmp_path/venv where kd_accel is not installed: torch and accelerate come from the
    system's site-packages; the editable install's finder is removed. Returns its environment
    (PATH first to its python3, no GPU)."""
    import venv

    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True)
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    (site / "sitecustomize.py").write_text(
        "import sys\nsys.meta_path[:] = [f for f in sys.meta_path\n"
        "                 if not getattr(f, '__module__', '').startswith('__editable___kd_accel')]\n")
    env = {**os.environ, "PATH": f"{env_dir / 'bin'}:{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": "",
           "VIRTUAL_ENV": str(env_dir)}
    env.pop("PYTHONPATH", None)
    return env_dir / "bin" / "python3", env


@pytest.mark.slow
def test_gpu_sh_falls_back_to_a_cpu_dry_run_from_a_bare_copy(tmp_path):
    """bash bench/gpu.sh on a machine without CUDA, from a copy of the tree, in a fresh venv where
    kd_accel is not installed (issue 20, part 3; the test first checks `import kd_accel` fails
    there): a CPU dry run of every case (tiny sizes), its JSON written, the copy's package used
    (bench/gpu.py imports the package of the tree it sits in, in its own children too).
    Every case runs, the ratios are computed and the JSON carries the machine. OUT is a folder
    (issue 25: it ended in IsADirectoryError): OUT/gpu.json and OUT/gpu.log, nothing in the
    current folder (the argument handling, a file OUT included: tests/test_trust_scripts.py).
    (One run for what were four tests: gpu.py's CPU path in-process, gpu.py from a bare copy,
    gpu.sh in a fresh venv, and this one.)"""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[1]
    tree = tmp_path / "tree"
    for part in ("kd_accel", "bench"):
        shutil.copytree(root / part, tree / part, ignore=shutil.ignore_patterns("results", "__pycache__"))
    folder, cwd = tmp_path / "out", tmp_path / "cwd"
    folder.mkdir()
    cwd.mkdir()
    python, env = fresh_venv(tmp_path)
    probe = subprocess.run([str(python), "-c", "import kd_accel"], capture_output=True, text=True, cwd=cwd, env=env)
    assert probe.returncode != 0 and "No module named 'kd_accel'" in probe.stderr  # really not installed there
    assert sys.executable != str(python)
    tiny = ["--steps", "3", "--zoo-size", "32", "--zoo-batch", "4", "--zoo-steps", "2", "--folder-images", "30",
            "--folder-size", "32", "--folder-workers", "0"]  # after gpu.sh's own dry-run sizes: these win
    proc = subprocess.run(["bash", str(tree / "bench" / "gpu.sh"), str(folder), *tiny],
                          capture_output=True, text=True, timeout=400, env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no CUDA device: a CPU dry run" in proc.stderr and "warm-up nb_distill_epoch" in proc.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["gpu.json", "gpu.log"] and not any(cwd.iterdir())
    log = (folder / "gpu.log").read_text()
    assert "no CUDA device: a CPU dry run" in log and "warm-up nb_distill_epoch" in log and "total " in log
    saved = json.loads((folder / "gpu.json").read_text())
    assert saved["partial"] is False and saved["machine"]["kd_accel_from"] == str(tree / "kd_accel")
    for case in ("nb_distill_epoch", "kd_step_eager", "kd_fit_epoch", "bare_forward", "kd_precompute"):
        assert saved["cases"][case]["n"] == 1 and saved["cases"][case]["median_s"] > 0, case
    names = [r["ratio"] for r in saved["ratios"]]
    assert "distillation epoch: notebook / kd_step_eager" in names
    assert "precompute / bare teacher forward" in names
    assert all(math.isfinite(r["value"]) and r["value"] > 0 for r in saved["ratios"])
    assert saved["errors"] == {}
    assert saved["machine"]["cpu"] and saved["machine"]["torch"] == torch.__version__
    # the zoo pair (ResNet-50 teacher, ResNet-18 student) through fit, in a process of its own
    zoo = saved["zoo"]
    assert zoo["teacher"] == "torchvision:resnet50" and zoo["images_per_s"].keys() == {"ce", "kd", "online"}
    assert all(math.isfinite(v) and v > 0 for v in [*zoo["images_per_s"].values(), *zoo["ratios"].values()])
    assert zoo["student_forward_flops"] > 0 and 0 < zoo["mfu_cached_kd"] < 1
    # SIGKILLed mid-epoch after step 7 and resumed from the step-5 checkpoint: the same weights
    assert saved["resume"]["same_weights"] is True and "step_00000005" in saved["resume"]["resumed"]
    # the image-folder pipeline (own data): synthetic JPEGs through kd_accel's workers
    assert saved["folder"]["images"] == 30 and saved["folder"]["workers"]["0"] > 0


def _bench_folder():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_folder", ROOT / "bench" / "folder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # a child process of its own that imports torchvision
def test_folder_bench_quick_runs_every_case(tmp_path):
    """bench/folder.py --quick (tiny synthetic JPEG folders, 1 rep): every case runs and is in
    the JSON with its ratios and the machine; the memory case's sizes ran in processes of their
    own and saw the DataLoader workers. Not timings: nothing here asserts a speed."""
    out = tmp_path / "folder.json"
    bench = _bench_folder()
    res = bench.main(["--quick", "--workdir", str(tmp_path / "work"), "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["partial"] is False and saved["errors"] == {} and saved["quick"] is True
    assert set(saved["cases"]) == {"pipeline", "pipeline_profile", "kd_vs_ce", "rss"} == set(res["cases"])
    assert saved["machine"]["cpu"] and saved["machine"]["torch"] == torch.__version__
    pipe = saved["cases"]["pipeline"]
    assert pipe["images_per_s"].keys() == {"kd_accel", "torchvision", "kd_accel, main 1 thread"}
    assert all(math.isfinite(v) and v > 0 for v in pipe["images_per_s"].values())
    # both sides hand the training step the same thing: a normalised float batch of the crop size
    assert pipe["batch_out"]["kd_accel"] == pipe["batch_out"]["torchvision"] == "torch.float32 [16, 3, 64, 64]"
    prof = saved["cases"]["pipeline_profile"]
    assert prof["kd_accel_ms_per_sample"] and prof["torchvision_ms_per_sample"]
    kd = saved["cases"]["kd_vs_ce"]
    assert kd["seconds"].keys() == {"kd", "ce", "kd, main 1 thread", "ce, main 1 thread"} and kd["precompute_s"] > 0
    assert all(math.isfinite(v) for v in kd["loss"].values())
    rss = saved["cases"]["rss"]
    assert set(rss["by_size"]) == {"200", "400"}
    for n, (child,) in rss["by_size"].items():  # one rep in the smoke run
        assert child["images"] == int(n)
        for phase in ("precompute", "train_epoch"):
            peak = child["phases"][phase]["peak_MB"]
            assert peak["total"]["VmRSS"] >= peak["main"]["VmRSS"] > 0 and peak["total"]["RssAnon"] > 0
        assert child["phases"]["train_epoch"]["workers_seen"] >= 1
    names = [r["ratio"] for r in saved["ratios"]]
    assert any(r.startswith("images/s kd_accel folder pipeline") for r in names)
    assert any(r.startswith("cached KD epoch / plain CE epoch") for r in names)
    assert sum(r.startswith("peak ") for r in names) == 6
    assert all(math.isfinite(r["value"]) and r["value"] > 0 for r in saved["ratios"])
    assert all(math.isfinite(v) and v > 0 for v in rss["ratios_big_over_small"].values())
