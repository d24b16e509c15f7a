import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# The MNIST files shipped beside the repo (read-only in CI); override with KD_ACCEL_TEST_DATA.
# the deployment report's latency timing (kd_accel/deploy.py) adds 1-2.5 s to every run; the tests
# that check it (tests/test_export.py) set their own budget
os.environ.setdefault("KD_ACCEL_LATENCY_S", "0")
DATA_DIR = Path(os.environ.get("KD_ACCEL_TEST_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def mnist_dir():
    raw = DATA_DIR / "MNIST" / "raw"
    if not (raw / "train-images-idx3-ubyte").exists() and not (raw / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"MNIST files not found under {raw}: set KD_ACCEL_TEST_DATA")
    return DATA_DIR


def reset_accelerate_state():
    """Forget the process-wide Accelerator state, so the next Accelerator (a test's, or one a
    CLI main builds in-process) starts clean."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def run_main(main, args):
    """A CLI main in-process (paths and numbers as they come), Accelerate's state clean around it."""
    reset_accelerate_state()
    try:
        return main([str(a) for a in args])
    finally:
        reset_accelerate_state()


def cli_error(main, argv, capsys):
    """Run a CLI main as its launch script does (through run_cli); its stderr, checked to be one
    `kd_accel: error:` line with exit 2 and no traceback on either stream."""
    from kd_accel.errors import run_cli

    with pytest.raises(SystemExit) as e:
        run_cli(main, [str(a) for a in argv])
    out = capsys.readouterr()
    err = out.err.strip()
    assert e.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("kd_accel: error:"), err
    assert "Traceback" not in out.err + out.out
    return err


@pytest.fixture
def reset_accelerate():
    reset_accelerate_state()
    yield
    reset_accelerate_state()


@pytest.fixture(scope="session")
def tiny_teacher(mnist_dir, tmp_path_factory):
    """One teacher trained once per session (the first 300 real MNIST images, 1 epoch of 6 steps:
    about 14% test accuracy, its BatchNorm statistics not yet settled), for the tests that need
    some trained teacher file, not a good one.
    Shared: pass it as --teacher, copy it, never write over it."""
    from kd_accel.cli import train_teacher_main

    out = tmp_path_factory.mktemp("tiny_teacher")
    reset_accelerate_state()
    try:
        train_teacher_main(["--data-dir", str(mnist_dir), "--output-dir", str(out), "--limit-train", "300",
                            "--limit-test", "200", "--epochs", "1", "--batch-size", "50"])
    finally:
        reset_accelerate_state()
    return out / "teacher.safetensors"


@pytest.fixture
def accelerator(reset_accelerate):
    from accelerate import Accelerator

    yield Accelerator(cpu=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_cmd(path, args, nproc):
    """Plain python for one process; `accelerate launch` with the repo's two-CPU-process config
    (and ACCELERATE_USE_CPU=1, which it needs) for several. Returns (cmd, extra env)."""
    if nproc == 1:
        return [sys.executable, str(path), *map(str, args)], {}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs" / "cpu_2proc.yaml"),
           "--num_processes", str(nproc), "--main_process_port", str(free_port()), str(path), *map(str, args)]
    return cmd, {"ACCELERATE_USE_CPU": "1"}


def run_script(script, *args, nproc=1, check=True, env=None, timeout=600):
    """Run launch/<script> as a user would: plain python, or accelerate launch with N CPU procs."""
    cmd, extra = launch_cmd(ROOT / "launch" / script, args, nproc)
    env = {**os.environ, **(env or {}), **extra, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


IN_ONE = ROOT / "tests" / "scripts" / "in_one.py"


def start_in_one_process(runs, env=None):
    """Start tests/scripts/in_one.py on `runs`, [(launch script, [args])]: each run as `python
    launch/<script> ARGS` runs it, one after another in one process (one interpreter start, 2-3 s
    of imports, for them all). Returns the Popen; in_one_results reads it."""
    argv = [arg for n, (script, args) in enumerate(runs)
            for arg in ["++"] * (n > 0) + [str(ROOT / "launch" / script), *map(command_line_arg, args)]]
    return subprocess.Popen([sys.executable, str(IN_ONE), *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="backslashreplace",
                            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"})


def command_line_arg(arg):
    """str(arg); bytes (a name that is not UTF-8) as Python gives them in sys.argv, which Popen
    encodes back to the same bytes."""
    return os.fsdecode(arg) if isinstance(arg, bytes) else str(arg)


def in_one_results(proc, timeout=600):
    """What each run of start_in_one_process's process did: [CompletedProcess(args=None,
    returncode, stdout, stderr)], in the order given (split at in_one.py's `== exit CODE` lines)."""
    out, err = proc.communicate(timeout=timeout)
    outs, errs = out.split("== exit "), err.split("== exit ")
    assert len(outs) == len(errs) > 1, (out, err)
    tails = [[o.partition("\n") for o in outs[1:]], [e.partition("\n") for e in errs[1:]]]  # (code, \n, next run's)
    codes = [int(code) if code != "None" else 0 for code, _, _ in tails[0]]
    assert codes == [int(code) if code != "None" else 0 for code, _, _ in tails[1]] and proc.returncode == codes[-1], (
        out, err)
    stdouts = [outs[0], *(rest for _, _, rest in tails[0][:-1])]
    stderrs = [errs[0], *(rest for _, _, rest in tails[1][:-1])]
    return [subprocess.CompletedProcess(None, code, o, e) for code, o, e in zip(codes, stdouts, stderrs)]


def tiny_split(n=64, num_classes=10, seed=0):
    """A synthetic MNIST-shaped split: uint8 images [n,1,28,28], labels [n]."""
    from kd_accel.data import Split

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return Split("mnist", "train", images, labels, num_classes)


def fp16_close(got, want):
    """Cached fp16 logits vs the teacher's fp32 ones: within fp16 rounding (relative 2^-11)."""
    return bool(((got.float() - want).abs() <= 1e-3 + 1e-3 * want.abs()).all())


def frozen_teacher(teacher_file):
    """A saved teacher as the pipeline runs it: eval mode, frozen, channels-last."""
    from kd_accel.models import load_model

    model, _ = load_model(teacher_file, "teacher")
    return model.eval().requires_grad_(False).to(memory_format=torch.channels_last)


def replay_check(teacher_file):
    """(hook, close): a Hooks.batch hook that runs the teacher on each student batch's input and
    appends whether it gives the logits the student was taught (fp16_close) to `close`."""
    teacher, close = frozen_teacher(teacher_file), []

    def check(label, batch):
        with torch.no_grad():
            close.append(fp16_close(batch["teacher_logits"], teacher(batch["x"]).float()))

    return check, close


def encode_image(img: torch.Tensor, fmt: str = "png", quality: int = 95) -> bytes:
    """The bytes of image uint8 [C, H, W] (C = 1 or 3) as a PNG file (fmt "png": lossless) or a
    JPEG file at `quality` (any other fmt), written by PIL: torchvision 0.29 deprecated its
    encoders, and PIL's JPEG (the same libjpeg-turbo settings) is byte for byte theirs."""
    import io

    from PIL import Image

    pixels = img.permute(1, 2, 0).numpy()  # [H, W, C]; PIL takes grey as [H, W]
    buf = io.BytesIO()
    options = {"format": "PNG"} if fmt == "png" else {"format": "JPEG", "quality": quality}
    Image.fromarray(pixels[..., 0] if img.shape[0] == 1 else pixels).save(buf, **options)
    return buf.getvalue()


def write_image_folder(root, images, labels, fmt="png", start=0):
    """An ImageFolder of images uint8 [N, C, H, W] with labels [N]: root/<class c{label}>/
    {start + i:05d}.{fmt}, written by encode_image (PNG lossless, JPEG quality 95).
    Returns the paths in torchvision's ImageFolder order (sorted classes, then sorted names)."""
    root = Path(root)
    paths = []
    for i, (img, label) in enumerate(zip(images, labels.tolist())):
        folder = root / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{start + i:05d}.{fmt}"
        path.write_bytes(encode_image(img, fmt))
        paths.append(path)
    return sorted(paths, key=lambda p: (p.parent.name, p.name))


def folder_order(labels):
    """The permutation taking samples 0..N-1 written by write_image_folder (one call, class folders
    c0..c9) to the folder's sample order: class first, then index."""
    import torch

    return torch.as_tensor(sorted(range(len(labels)), key=lambda i: (f"c{int(labels[i])}", i)))


def precompute_killed_and_resumed(accelerator, cfg, teacher, train, folder, monkeypatch, capsys, crash_after):
    """A K-view precompute (teaching.precompute) into folder/whole.safetensors; the same one into
    folder/c.safetensors stopped after view `crash_after` (nothing written), then run again.
    Returns (whole, resumed, the views the second run computed, what it printed)."""
    from kd_accel import teaching, training
    from kd_accel.errors import KDError

    whole, out = folder / "whole.safetensors", folder / "c.safetensors"
    teaching.precompute(accelerator, cfg, teacher, train, whole)

    def crash(view):
        if view == crash_after:
            raise KDError(f"simulated crash after view {crash_after}")

    monkeypatch.setattr(training.HOOKS, "view", [crash])
    with pytest.raises(KDError, match="simulated crash"):
        teaching.precompute(accelerator, cfg, teacher, train, out)
    assert not out.exists()
    computed = []
    monkeypatch.setattr(training.HOOKS, "view", [computed.append])
    capsys.readouterr()
    teaching.precompute(accelerator, cfg, teacher, train, out)
    return whole, out, computed, capsys.readouterr().out
