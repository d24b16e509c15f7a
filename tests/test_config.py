"""Defaults: the data set's measured defaults sit under the preset, which sits under the flags."""
import dataclasses

import pytest

from kd_accel.checkpointing import check_stamp
from kd_accel.config import DATASET_DEFAULTS, FLAGS, Config, build_parser, parse
from kd_accel.errors import KDError


def config(*argv):
    return parse(build_parser("test", list(FLAGS)), list(argv))[0]


def test_mnist_gets_the_global_defaults():
    assert config("--dataset", "mnist").temperature == Config.temperature == 4.0


def test_fashion_mnist_gets_its_measured_temperature():
    assert DATASET_DEFAULTS["fashion-mnist"]["temperature"] != Config.temperature
    cfg = config("--dataset", "fashion-mnist")
    assert cfg.temperature == 2.0 and cfg.alpha == Config.alpha and cfg.epochs == Config.epochs


@pytest.mark.parametrize("argv,want", [
    (["--dataset", "fashion-mnist", "--temperature", "3"], 3.0),   # the flag wins
    (["--temperature", "3", "--dataset", "fashion-mnist"], 3.0),   # in any order
    (["--dataset", "fashion-mnist", "--preset", "notebook"], 1.5),  # the preset wins
])
def test_flags_and_presets_override_the_data_set(argv, want):
    assert config(*argv).temperature == want


def test_help_names_the_per_data_set_default():
    text = " ".join(build_parser("test", list(FLAGS)).format_help().split())
    assert "(default: 4.0; 2.0 for fashion-mnist)" in text


def test_old_loss_name_is_the_new_one_everywhere():
    """'seed-mse' is the old name of 'notebook-mse': accepted, and never seen past parsing, so
    tables and stamps say notebook-mse and an old stamp is not a changed setting."""
    assert config("--kd-loss", "seed-mse").kd_loss == "notebook-mse"
    assert config("--preset", "notebook").kd_loss == "notebook-mse"
    assert dataclasses.replace(Config(), kd_loss="seed-mse").kd_loss == "notebook-mse"
    with pytest.raises(SystemExit):
        config("--kd-loss", "mse")
    check_stamp("x", {"kd_loss": "seed-mse", "seed": 0}, {"kd_loss": "notebook-mse", "seed": 0}, "hint")
    with pytest.raises(KDError, match="kd_loss hinton -> notebook-mse"):
        check_stamp("x", {"kd_loss": "hinton"}, {"kd_loss": "notebook-mse"}, "hint")


def test_stamped_loss_name_is_normalised():
    from conftest import tiny_split
    from kd_accel.pipeline import phase_settings

    class Acc:
        num_processes, mixed_precision = 1, "no"

    cfg = Config()
    cfg.kd_loss = "seed-mse"  # set after construction: past Config's own normalisation
    assert phase_settings(Acc, cfg, tiny_split(8), teacher_fp="t", kd=True)["kd_loss"] == "notebook-mse"
