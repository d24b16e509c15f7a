"""Defaults: the data set's measured defaults sit under the preset, which sits under the flags."""
import pytest

from kd_accel.config import DATASET_DEFAULTS, FLAGS, Config, build_parser, parse


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
