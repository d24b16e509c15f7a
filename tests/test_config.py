"""Configuration: each setting declared once (a dataclass field whose metadata is its flag), the
data set's measured defaults under the preset, under the flags; config.py needs nothing else
from the package."""
import ast
import dataclasses
from pathlib import Path

import pytest

from kd_accel.checkpointing import check_stamp
from kd_accel.cli import ALL, build_parser, parse
from kd_accel.config import DATASET_DEFAULTS, GROUPS, TEACHER, Config, Distillation, Recipe, flag_fields
from kd_accel.errors import KDError


def config(*argv):
    return parse(build_parser("test", ALL), ALL, list(argv))[0]


def test_mnist_gets_the_global_defaults():
    assert config("--dataset", "mnist").kd.temperature == Distillation().temperature == 4.0


def test_fashion_mnist_gets_its_measured_temperature():
    assert DATASET_DEFAULTS["fashion-mnist"]["temperature"] != Distillation().temperature
    cfg = config("--dataset", "fashion-mnist")
    assert cfg.kd.temperature == 2.0 and cfg.kd.alpha == Distillation().alpha and cfg.student.epochs == Recipe().epochs


@pytest.mark.parametrize("argv,want", [
    (["--dataset", "fashion-mnist", "--temperature", "3"], 3.0),   # the flag wins
    (["--temperature", "3", "--dataset", "fashion-mnist"], 3.0),   # in any order
    (["--dataset", "fashion-mnist", "--preset", "notebook"], 1.5),  # the preset wins
])
def test_flags_and_presets_override_the_data_set(argv, want):
    assert config(*argv).kd.temperature == want


def test_help_names_the_per_data_set_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # no wrapping inside "fashion-mnist"
    text = " ".join(build_parser("test", ALL).format_help().split())
    assert "(default: 4.0; 2.0 for fashion-mnist)" in text
    assert "the teacher's augmentation of the training images (default: --augment)" in text


def test_every_setting_is_one_flag_declared_once():
    """Each field of each group is exactly one flag, its help from the field's metadata; the
    teacher's recipe is a second Recipe under --teacher-*, with its own defaults."""
    parser = build_parser("test", ALL)
    flags = {a.dest: a for a in parser._actions if a.dest not in ("help", "preset", "list_models", "config")}
    declared = [dest for group in GROUPS for dest, _, _ in flag_fields(group)]
    assert len(declared) == len(set(declared)) == len(flags) and set(declared) == set(flags)
    for group in GROUPS:
        for dest, f, _ in flag_fields(group):
            assert flags[dest].help.startswith(f.metadata["help"]) or flags[dest].help.startswith("the teacher's")
    cfg = config("--epochs", "7", "--teacher-epochs", "3", "--teacher-lr", "0.01")
    assert (cfg.student.epochs, cfg.teacher.epochs, cfg.teacher.lr, cfg.student.lr) == (7, 3, 0.01, Recipe().lr)
    assert config().teacher.epochs == TEACHER.epochs == 5


def test_teacher_follows_the_students_augmentation_unless_told():
    assert config("--augment", "shift").teacher.augment == "shift"
    assert config("--augment", "shift", "--teacher-augment", "none").teacher.augment == "none"
    assert config("--dataset", "cifar10").teacher.augment == "crop-flip"


def test_train_teacher_flags_are_the_teachers_recipe():
    from kd_accel.cli import TEACHER_GROUPS, build_parser as bp

    parser = bp("t", TEACHER_GROUPS, defaults={"augment": "none"},
                only=["dataset", "epochs", "lr", "augment", "output_dir", "seed"])
    cfg, _ = parse(parser, TEACHER_GROUPS, ["--epochs", "9", "--augment", "shift"])
    assert cfg.teacher.epochs == 9 and cfg.teacher.augment == "shift" and cfg.student == Recipe()
    with pytest.raises(SystemExit):
        parse(parser, TEACHER_GROUPS, ["--temperature", "2"])  # not a flag of train_teacher.py


@pytest.mark.parametrize("argv,words", [
    (["--temperature", "0"], "--temperature must be between 0.01 and 1000, got 0"),
    (["--alpha", "1.5"], "--alpha must be between 0 and 1, got 1.5"),
    (["--lr", "0"], "--lr must be > 0, got 0"),
    (["--teacher-lr", "100"], "--teacher-lr must be at most 10, got 100"),
    (["--teacher-epochs", "0"], "--teacher-epochs 0 uses the teacher as --teacher-weights give it, untrained: give --teacher-weights FILE, or epochs >= 1"),
    (["--views", "0"], "--views must be >= 1, got 0"),
    (["--hint-beta", "nan"], "--hint-beta must be a finite number, got nan"),
    (["--views", "5"], "--views 5 needs --augment: the views of an un-augmented image are all the same"),
    # cache settings a run would otherwise ignore in silence
    (["--augment", "shift", "--teacher-mode", "online", "--views", "5"],
     "--views 5 is the K of --teacher-mode cache; --teacher-mode online reads no cache"),
    (["--augment", "shift", "--teacher-mode", "fixed", "--views", "5"],
     "--views 5 is the K of --teacher-mode cache; --teacher-mode fixed reads one clean view"),
    (["--teacher-mode", "online", "--cache-topk", "3"], "--cache-topk 3 shapes a cache; --teacher-mode online reads none"),
    (["--teacher-mode", "online", "--cache-dtype", "fp16"],
     "--cache-dtype fp16 shapes a cache; --teacher-mode online reads none"),
])
def test_bounds_are_declared_with_the_setting(argv, words):
    with pytest.raises(KDError) as e:
        config(*argv)
    assert str(e.value) == words


def test_config_module_imports_nothing_from_the_package():
    src = Path(__file__).resolve().parents[1] / "kd_accel" / "config.py"
    tree = ast.parse(src.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("kd_accel"), node.module
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("kd_accel") for a in node.names)


def test_old_loss_name_is_the_new_one_everywhere():
    """'seed-mse' is the old name of 'notebook-mse': accepted, and never seen past parsing, so
    tables and stamps say notebook-mse and an old stamp is not a changed setting."""
    assert config("--kd-loss", "seed-mse").kd.kd_loss == "notebook-mse"
    assert config("--preset", "notebook").kd.kd_loss == "notebook-mse"
    with pytest.raises(SystemExit):
        config("--kd-loss", "mse")
    check_stamp("x", {"kd_loss": "seed-mse", "seed": 0}, {"kd_loss": "notebook-mse", "seed": 0}, "hint")
    with pytest.raises(KDError, match="kd_loss hinton -> notebook-mse"):
        check_stamp("x", {"kd_loss": "hinton"}, {"kd_loss": "notebook-mse"}, "hint")


def test_stamped_and_trained_loss_name_is_normalised():
    """A Config built in code with the old name: the stamp and the objective use the new one."""
    from conftest import tiny_split
    from kd_accel.losses import notebook_mse_loss
    from kd_accel.pipeline import phase_settings
    from kd_accel.training import make_objective

    class Acc:
        num_processes, mixed_precision = 1, "no"

    cfg = Config(kd=dataclasses.replace(Distillation(), kd_loss="seed-mse"))
    assert phase_settings(Acc, cfg, tiny_split(8), teacher_fp="t", kd=True)["kd_loss"] == "notebook-mse"
    assert make_objective(cfg.kd.kd_loss, 2.0, 0.5).keywords["kind"] == "notebook-mse"
    assert notebook_mse_loss is not None
