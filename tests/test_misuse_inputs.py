"""Issue 17, a careless or hostile user: repeated seeds and colliding variant names in
compare.py, absurd --temperatures, seeds numpy cannot take, CIFAR-10 batches pickled with newer
protocols, and a model file or a folder given as a logits cache. Each is refused in one line
before any work starts (or, for the pickles, read as torchvision reads them)."""
import pickle

import numpy as np
import pytest
import torch

from conftest import cli_error, in_one_results, start_in_one_process
from kd_accel import cli
from kd_accel.cache import CacheKey, save_cache
from kd_accel.data import load_split
from kd_accel.errors import KDError, run_cli
from test_cifar import LABEL_NAMES, TRAIN_FILES, make_batch

SEED_HIGH = 2**32 - 1  # numpy's seeding takes 0..2**32-1


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a script gets as far as setting up its run (training, precompute)."""
    def setup(*a, **k):
        raise AssertionError("the script started work before refusing its input")
    monkeypatch.setattr(cli, "setup", setup)


@pytest.fixture(scope="module")
def script_errors(tmp_path_factory, mnist_dir, tiny_teacher):
    """The refusals of the `_by_the_script` tests below as a user meets them, each launch script
    run as a real process would (its imports and its run_cli wrapper), the three runs in one
    process (tests/scripts/in_one.py: one interpreter start, 2-3 s, for them all).
    Returns (their folder, {run: its CompletedProcess})."""
    tmp = tmp_path_factory.mktemp("script_errors")
    (tmp / "a_folder").mkdir()
    runs = {
        "seed": ("train_teacher.py", ["--data-dir", mnist_dir, "--output-dir", tmp / "seed", "--seed", -1]),
        "folder": ("inspect_logits.py", [tmp / "a_folder"]),
        "model": ("distill.py", ["--data-dir", mnist_dir, "--output-dir", tmp / "model", "--limit-train", 100,
                                 "--limit-test", 100, "--teacher-epochs", 1, "--logits", tiny_teacher]),
    }
    return tmp, dict(zip(runs, in_one_results(start_in_one_process(list(runs.values())))))


def one_process_script_error(proc):
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stderr
    assert len(err.splitlines()) == 1 and err.startswith("kd_accel: error:"), err
    return err


# ---- 5: compare.py's seeds and variant names ---------------------------------------------------

@pytest.mark.parametrize("seeds,words", [
    (["0", "0"], "--seeds lists 0 more than once"),
    (["1", "2", "1", "2"], "--seeds lists 1, 2 more than once"),
    (["0", "-1"], f"--seeds must be between 0 and {SEED_HIGH}, got -1"),
    (["0", str(2**32)], f"--seeds must be between 0 and {SEED_HIGH}, got {2**32}"),
])
def test_compare_refuses_bad_seeds_before_work(seeds, words, tmp_path, mnist_dir, capsys, no_work, reset_accelerate):
    out = tmp_path / "run"
    err = cli_error(cli.compare_main, ["--data-dir", mnist_dir, "--output-dir", out, "--seeds", *seeds], capsys)
    assert words in err, err
    assert not out.exists()


@pytest.mark.parametrize("variants,words", [
    (["hinton:T=4.0000001", "hinton:T=4"], "would share one row, 'hinton T=4 a=0.9'"),
    (["baseline", "hinton:alpha=0.90000001", "hinton:alpha=0.9"], "would share one row, 'hinton T=4 a=0.9'"),
    (["fitnets:beta=1", "fitnets:beta=2"], "would share one row"),  # two-stage: beta is not in the name
    (["hinton", "hinton:T=4,alpha=0.9"], "are the same variant, 'hinton T=4 a=0.9'; list it once"),
    (["seed-mse", "notebook-mse"], "are the same variant"),
])
def test_compare_refuses_variants_with_one_name(variants, words, tmp_path, mnist_dir, capsys, no_work,
                                                reset_accelerate):
    out = tmp_path / "run"
    err = cli_error(cli.compare_main, ["--data-dir", mnist_dir, "--output-dir", out, "--variants", *variants], capsys)
    assert words in err and repr(variants[-2]) in err and repr(variants[-1]) in err, err
    assert not out.exists()


# ---- 6: inspect_logits.py --temperatures ------------------------------------------------------

@pytest.fixture
def tiny_cache(tmp_path):
    path = tmp_path / "cache.safetensors"
    logits = torch.randn(20, 10, generator=torch.Generator().manual_seed(0)) * 5
    save_cache(path, logits, torch.arange(20) % 10, CacheKey("mnist", "train", 20, 10, "t", "d"))
    return path


@pytest.mark.parametrize("t,words", [
    ("1e-40", "--temperatures must be between 0.01 and 1000, got 1e-40"),
    ("1e300", "--temperatures must be between 0.01 and 1000, got 1e+300"),
    ("inf", "--temperatures must be a finite number, got inf"),
    ("nan", "--temperatures must be a finite number, got nan"),
    ("-2", "--temperatures must be between 0.01 and 1000, got -2"),
])
def test_inspect_refuses_absurd_temperatures(t, words, tiny_cache, capsys):
    err = cli_error(cli.inspect_main, [tiny_cache, "--temperatures", "1", t], capsys)
    assert words in err, err


def test_inspect_still_reads_temperatures_within_bounds(tiny_cache, capsys):
    run_cli(cli.inspect_main, [str(tiny_cache), "--temperatures", "0.01", "1", "1000"])
    out = capsys.readouterr().out
    assert "nan" not in out and "20 samples x 10 classes" in out, out


# ---- 8: seeds numpy cannot take ---------------------------------------------------------------

@pytest.mark.parametrize("seed", ["-1", str(2**32), str(2**70)])
@pytest.mark.parametrize("main", [cli.distill_main, cli.train_teacher_main])
def test_seed_outside_numpys_range_refused(main, seed, tmp_path, mnist_dir, capsys, no_work, reset_accelerate):
    out = tmp_path / "run"
    err = cli_error(main, ["--data-dir", mnist_dir, "--output-dir", out, "--seed", seed], capsys)
    assert f"--seed must be between 0 and {SEED_HIGH}, got {seed}" in err, err
    assert not out.exists()


@pytest.mark.slow  # a real process (startup ~3 s, shared: script_errors); the in-process tests cover the check
def test_negative_seed_refused_by_the_script(script_errors):
    tmp, procs = script_errors
    err = one_process_script_error(procs["seed"])
    assert "--seed must be between 0" in err, err
    assert not (tmp / "seed").exists()


# ---- 11: CIFAR-10 batches pickled with protocols 4 and 5 ----------------------------------------

def write_cifar_protocol(folder, protocol):
    """The real layout (five training batches, the test batch, batches.meta), pickled by numpy 2
    with `protocol`."""
    folder.mkdir(parents=True)
    batches = {name: make_batch(7, i, name) for i, name in enumerate(TRAIN_FILES, 1)}
    batches["test_batch"] = make_batch(9, 99, "testing batch 1")
    batches["batches.meta"] = {"num_cases_per_batch": 7, "label_names": LABEL_NAMES, "num_vis": 3072}
    for name, obj in batches.items():
        (folder / name).write_bytes(pickle.dumps(obj, protocol=protocol))


@pytest.mark.parametrize("protocol", [4, 5])
def test_newer_pickle_protocols_read_as_torchvision_reads_them(protocol, tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    write_cifar_protocol(tmp_path / "cifar-10-batches-py", protocol)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # synthetic files: no md5
    for train, split in ((True, "train"), (False, "test")):
        ref = tv_cifar.CIFAR10(str(tmp_path), train=train, download=False)
        ours = load_split("cifar10", split, tmp_path)
        assert torch.equal(ours.images.permute(0, 2, 3, 1), torch.from_numpy(ref.data))  # torchvision keeps HWC
        assert ours.labels.tolist() == ref.targets and len(ref.targets) == (35 if train else 9)


class FromBuffer:
    """Pickles as a call of numpy's protocol-5 array rebuilder with arguments of our choosing."""

    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        from numpy._core.numeric import _frombuffer
        return _frombuffer, self.args


@pytest.mark.parametrize("args", [("not bytes", np.dtype(np.uint8), (9,), "C"),
                                  (b"\0" * 8, np.dtype(object), (1,), "C")])
def test_protocol5_rebuilder_takes_only_plain_bytes(args, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_protocol(folder, 5)
    (folder / "test_batch").write_bytes(pickle.dumps({**make_batch(9, 1, "t"), "data": FromBuffer(*args)}, protocol=5))
    with pytest.raises(KDError, match="refused to unpickle numpy _frombuffer"):
        load_split("cifar10", "test", tmp_path)


# ---- 13: a model file or a folder given as a logits cache --------------------------------------

def test_inspect_names_a_model_file(tiny_teacher, capsys):
    err = cli_error(cli.inspect_main, [tiny_teacher], capsys)
    assert f"{tiny_teacher} holds a 'teacher' model, not a teacher-logits cache" in err, err


def test_inspect_names_a_folder(tmp_path, capsys):
    err = cli_error(cli.inspect_main, [tmp_path], capsys)
    assert f"logits cache {tmp_path} is a folder, not a cache file" in err, err


@pytest.mark.slow  # a real process (startup ~3 s, shared: script_errors); the in-process tests cover the check
def test_inspect_script_names_a_folder(script_errors):
    err = one_process_script_error(script_errors[1]["folder"])
    assert "is a folder, not a cache file" in err, err


@pytest.mark.parametrize("given,words", [("model", "holds a 'teacher' model, not a teacher-logits cache"),
                                         ("folder", "is a folder; give the logits cache file")])
def test_distill_refuses_a_non_cache_logits_before_training(given, words, tiny_teacher, tmp_path, mnist_dir, capsys,
                                                            no_work, reset_accelerate):
    logits = tiny_teacher if given == "model" else tmp_path
    out = tmp_path / "run"
    err = cli_error(cli.distill_main, ["--data-dir", mnist_dir, "--output-dir", out, "--logits", logits], capsys)
    assert "--logits" in err and words in err, err
    assert not out.exists()


@pytest.mark.slow  # a real process (startup ~3 s, shared: script_errors); the in-process tests cover the check
def test_distill_script_refuses_a_model_as_logits(script_errors):
    tmp, procs = script_errors
    err = one_process_script_error(procs["model"])
    assert "holds a 'teacher' model, not a teacher-logits cache" in err, err
    assert not (tmp / "model").exists()
