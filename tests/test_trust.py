"""Issue 17, items 3 and 10: a run uses its own K of a bigger cache and says so; settings bounded
by the data (top-k, the labelled subset) are refused before the teacher trains; and compare.py
never writes NaN into results.json."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_main as run, tiny_split
from kd_accel import cli, phases, pipeline, study, teaching, training
from kd_accel.config import from_flags
from kd_accel.errors import KDError
from kd_accel.models import load_model, state_fingerprint

TINY = ["--limit-train", "300", "--limit-test", "50", "--batch-size", "50"]


def fingerprint(teacher_file):
    return state_fingerprint(load_model(teacher_file)[0].state_dict())


def test_a_run_reads_its_own_k_of_a_cache_holding_more(accelerator, tiny_teacher, tmp_path, monkeypatch):
    """--views 2 with a 3-view cache: epochs replay views 0, 1, 0, 1 (not view 2)."""
    train, test = tiny_split(60), tiny_split(20, seed=1)
    made = from_flags(augment="shift", views=3, epochs=3, batch_size=20, output_dir=str(tmp_path))
    teaching.resolve_cache(accelerator, made, tiny_teacher, fingerprint(tiny_teacher), train)
    path = teaching.cache_path(made)
    cfg = from_flags(augment="shift", views=2, epochs=4, batch_size=20, logits=str(path), output_dir=str(tmp_path))
    soft, hit, _ = teaching.resolve_cache(accelerator, cfg, tiny_teacher, fingerprint(tiny_teacher), train)
    assert hit and soft.views == 3
    stored, seen = load_file(path), []
    monkeypatch.setattr(training.HOOKS, "batch", [lambda label, b: seen.append((b["idx"].clone(), b["aug_params"].clone()))])
    pipeline.train_student(accelerator, cfg, train, test, soft, "student", "fp")
    assert len(seen) == 4 * 3
    for step, (idx, params) in enumerate(seen):
        assert torch.equal(params, stored["params"][(step // 3) % 2][idx]), step


def test_metrics_and_config_record_the_runs_k(tmp_path, mnist_dir, tiny_teacher):
    out = tmp_path / "run"
    args = ["--data-dir", mnist_dir, "--teacher", tiny_teacher, *TINY, "--augment", "shift", "--epochs", "1"]
    run(cli.precompute_main, [*args, "--views", "3", "--out", tmp_path / "c.safetensors"])
    run(cli.distill_main, [*args, "--views", "2", "--logits", tmp_path / "c.safetensors", "--output-dir", out,
                            "--no-baseline"])
    cache = json.loads((out / "metrics.json").read_text())["cache"]
    assert (cache["views"], cache["cache_views"]) == (2, 3)
    assert json.loads((out / "config.json").read_text())["kd"]["views"] == 2


def never(*_, **__):
    raise AssertionError("work started before the settings were checked")


@pytest.mark.parametrize("flags,words", [(["--cache-topk", "10"], "--cache-topk 10: top-k must be between 1 and 9"),
                                         (["--train-subset", "100000"], "--train-subset must be between 1 and 300")])
def test_data_bound_settings_are_refused_before_the_teacher_trains(flags, words, tmp_path, mnist_dir, monkeypatch):
    monkeypatch.setattr(phases, "train_teacher", never)
    with pytest.raises(KDError, match=words):
        run(cli.distill_main, ["--data-dir", mnist_dir, *TINY, "--output-dir", tmp_path / "run", *flags])


def test_compare_checks_every_variant_before_the_first_runs(tmp_path, mnist_dir, monkeypatch):
    monkeypatch.setattr(phases, "train_teacher", never)
    monkeypatch.setattr(study, "train_student", never)  # where compare.py calls it
    with pytest.raises(KDError, match=r"variant 'hinton T=4 a=0.9 topk=10': --cache-topk 10"):
        run(cli.compare_main, ["--data-dir", mnist_dir, *TINY, "--output-dir", tmp_path / "run", "--seeds", "0",
                               "--variants", "baseline", "hinton", "hinton:topk=10"])


def test_one_seed_writes_no_nan(tmp_path, mnist_dir, tiny_teacher):
    """JSON has no NaN: a gain over one seed has no interval and no p-value (null, '-' in the table)."""
    out = tmp_path / "run"
    run(cli.compare_main, ["--data-dir", mnist_dir, "--teacher", tiny_teacher, *TINY, "--epochs", "1",
                           "--output-dir", out, "--seeds", "0", "--variants", "baseline", "hinton"])
    text = (out / "results.json").read_text()
    assert "NaN" not in text
    gain = json.loads(text)["summary"]["hinton T=4 a=0.9"]["gain"]
    assert gain["p"] is None and gain["low"] is None and math.isfinite(gain["mean"])
