"""The augmentation-consistent teacher cache: K stored views, replayed exactly for the student.

Consistency is checked end to end: the teacher run on the student's actual batch reproduces
the cached logits (fp16 rounding), with 1 and 2 processes and after a resume mid-epoch."""
import json

import pytest
import torch
from safetensors.torch import load_file

from kd_accel import pipeline, teaching, training
from kd_accel.augment import SPECS, apply, draw_params, stream_seed
from kd_accel.cache import read_metadata
from kd_accel.config import from_flags, with_flags
from kd_accel.data import to_float
from kd_accel.errors import KDError
from kd_accel.models import load_model, state_fingerprint

from conftest import ROOT, fp16_close, launch_cmd, precompute_killed_and_resumed, tiny_split

SHIFT = dict(augment="shift", views=3, limit_train=None)


def frozen(teacher_file):
    model, _ = load_model(teacher_file, "teacher")
    return model.eval().requires_grad_(False).to(memory_format=torch.channels_last)


def fingerprint(teacher_file):
    return state_fingerprint(load_model(teacher_file)[0].state_dict())


def test_cache_views_hold_the_teachers_logits_on_each_stored_view(accelerator, tiny_teacher, tmp_path):
    train = tiny_split(90)
    cfg = from_flags(**SHIFT)
    out = tmp_path / "c.safetensors"
    teaching.precompute(accelerator, cfg, tiny_teacher, train, out)
    t = load_file(out)
    assert t["logits"].shape == (3, 90, 10) and t["logits"].dtype == torch.float16  # fp16 by default for views
    assert t["params"].shape == (3, 90, 5)
    meta = read_metadata(out)
    assert meta["augment"] == SPECS["shift"].describe() and meta["views"] == "3" and meta["augment_seed"] == "0"
    teacher = frozen(tiny_teacher)
    stream = stream_seed("cache", 0)
    for v in range(3):
        params = draw_params(SPECS["shift"], stream, v, torch.arange(90))  # rebuilt from (seed, view, index) alone
        assert torch.equal(t["params"][v], params)
        with torch.no_grad():
            want = teacher(to_float(apply(SPECS["shift"], train.images, params)))
        assert fp16_close(t["logits"][v], want), v
    assert not torch.equal(t["params"][0], t["params"][1])  # the views differ


def test_student_replays_view_e_mod_k(accelerator, tiny_teacher, tmp_path, monkeypatch):
    """In-process: each student batch's input is the stored view e mod K of its samples, and its
    soft targets are the teacher's logits on exactly that input."""
    train = tiny_split(60)
    cfg = from_flags(**SHIFT, epochs=4, batch_size=20, output_dir=str(tmp_path))
    soft, hit, _ = teaching.resolve_cache(accelerator, cfg, tiny_teacher, fingerprint(tiny_teacher), train)
    assert not hit and soft.views == 3
    teacher, stored, seen = frozen(tiny_teacher), load_file(teaching.cache_path(cfg)), []

    def check(label, batch):
        with torch.no_grad():
            want = teacher(batch["x"]).float()
        assert fp16_close(batch["teacher_logits"], want)
        seen.append((batch["idx"].clone(), batch["aug_params"].clone()))

    monkeypatch.setattr(training.HOOKS, "batch", [check])
    pipeline.train_student(accelerator, cfg, train, tiny_split(20, seed=1), soft, "student", "fp")
    assert len(seen) == 4 * 3  # 4 epochs x 3 batches
    for step, (idx, params) in enumerate(seen):
        epoch = step // 3
        assert torch.equal(params, stored["params"][epoch % 3][idx]), step  # epoch 3 replays view 0


def test_fixed_mode_is_inconsistent_and_online_is_consistent(accelerator, tiny_teacher, tmp_path, monkeypatch):
    """fixed: the augmented student gets the clean image's logits (not the teacher's on its view);
    online: the teacher runs on the student's own view."""
    train = tiny_split(40)
    teacher, diffs = frozen(tiny_teacher), {}
    for mode in ("fixed", "online"):
        cfg = from_flags(augment="shift", teacher_mode=mode, epochs=1, batch_size=20,
                                  output_dir=str(tmp_path / mode))
        soft, online, info = teaching.resolve_soft_targets(accelerator, cfg, tiny_teacher, fingerprint(tiny_teacher),
                                                           train)
        assert info["mode"] == mode and (online is None) == (mode == "fixed")
        got = []

        def check(label, batch):
            with torch.no_grad():
                got.append(float((teacher(batch["x"]).float() - batch["teacher_logits"].float()).abs().max()))

        monkeypatch.setattr(training.HOOKS, "batch", [check])
        pipeline.train_student(accelerator, cfg, train, tiny_split(20, seed=1), soft, "student", "fp", online)
        diffs[mode] = max(got)
    assert diffs["online"] < 1e-5 and diffs["fixed"] > 1e-3, diffs  # noise images: small but real differences


def test_precompute_resumes_at_the_first_missing_view(accelerator, tiny_teacher, tmp_path, monkeypatch, capsys):
    train = tiny_split(50)
    cfg = from_flags(**SHIFT)
    whole, out, computed, printed = precompute_killed_and_resumed(accelerator, cfg, tiny_teacher, train, tmp_path,
                                                                  monkeypatch, capsys, crash_after=1)
    assert computed == [2] and "2 of 3 views kept from an interrupted precompute" in printed
    a, b = load_file(whole), load_file(out)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the resumed cache is the uninterrupted one
    assert not any(p.name.startswith(".c.safetensors.views") for p in tmp_path.iterdir())  # parts cleaned up


def test_a_cache_for_other_views_is_refused_by_name(accelerator, tiny_teacher, tmp_path):
    train = tiny_split(30)
    fp = fingerprint(tiny_teacher)
    made = from_flags(**SHIFT, output_dir=str(tmp_path))
    teaching.resolve_cache(accelerator, made, tiny_teacher, fp, train)
    given = str(teaching.cache_path(made))
    for change, words in [(dict(views=5), "3 views"), (dict(augment="affine"), "augment"),
                          (dict(augment_seed=1), "augment_seed")]:
        cfg = with_flags(made, logits=given, **change)
        with pytest.raises(KDError, match=words):
            teaching.resolve_cache(accelerator, cfg, tiny_teacher, fp, train)
    # fewer views than the cache holds: fine, the first K are used
    soft, hit, _ = teaching.resolve_cache(accelerator, with_flags(made, logits=given, views=2), tiny_teacher,
                                          fp, train)
    assert hit and soft.views >= 2


def test_student_without_augmentation_is_unchanged(accelerator, tmp_path):
    """--augment none: no augmentation column, the clean one-view cache, old stamps."""
    train = tiny_split(40)
    cfg = from_flags(epochs=1)
    data = pipeline.student_data(cfg, train, torch.zeros(40, 10))[0]
    cols, per_epoch = data.columns, data.per_epoch
    assert per_epoch is None and set(cols) == {"images", "labels", "teacher_logits"}
    s = pipeline.phase_settings(accelerator, cfg, train, kd=True, teacher_fp="t")
    assert (s["augment"], s["views"], s["teacher_mode"], s["cache_dtype"]) == ("none", 1, "cache", "fp32")
    assert teaching.cache_path(cfg).name == "teacher_logits.safetensors"


def run_views_check(mnist_dir, teacher, out, nproc, *extra):
    import os
    import subprocess

    cmd, env = launch_cmd(ROOT / "tests" / "scripts" / "views_check.py",
                          ["--data-dir", mnist_dir, "--teacher", teacher, "--out", out, *extra], nproc)
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, cwd=ROOT, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_consistency_end_to_end_with_processes_and_resume(mnist_dir, tiny_teacher, tmp_path, nproc):
    out = tmp_path / "run"
    first = run_views_check(mnist_dir, tiny_teacher, out, nproc, "--stop-at", "5")  # mid-epoch 1 of 3
    assert first.returncode != 0 and "simulated crash at step 5" in first.stderr, first.stderr[-2000:]
    second = run_views_check(mnist_dir, tiny_teacher, out, nproc, "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout
    total = 0
    for rank in range(nproc):
        for suffix in ("", "_resumed"):
            seen = json.loads((out / f"views_rank{rank}{suffix}.json").read_text())
            # within fp16 rounding of the largest logit
            assert seen["batches"] > 0 and seen["max_abs_diff"] <= 1e-3 + 1e-3 * seen["max_logit"], seen
            total += seen["batches"]
    # 300 samples, batch 25 per process, 3 epochs: 12 / nproc steps an epoch; crash after step 5,
    # resume from the checkpoint at step 4 (every 4 steps) and finish
    steps_per_epoch = 12 // nproc
    assert total == nproc * (5 + 3 * steps_per_epoch - 4), total
    m = json.loads((out / "metrics.json").read_text())
    assert m["cache"]["views"] == 2 and m["cache"]["mode"] == "cache"


def test_top_k_soft_targets_get_their_own_cache_and_storage_is_checked(accelerator, tiny_teacher, tmp_path):
    train = tiny_split(30)
    fp = fingerprint(tiny_teacher)
    full_cfg = from_flags(output_dir=str(tmp_path))
    top_cfg = with_flags(full_cfg, cache_topk=3)
    assert teaching.cache_path(top_cfg).name == "teacher_logits.top3.safetensors" != teaching.cache_path(full_cfg).name
    full, _, _ = teaching.resolve_cache(accelerator, full_cfg, tiny_teacher, fp, train)
    top, hit, _ = teaching.resolve_cache(accelerator, top_cfg, tiny_teacher, fp, train)
    assert (full.storage, top.storage, hit) == ("full", "top3", False)
    # the expanded top-3 log-probabilities keep the teacher's top 3 (within fp32 rounding)
    logp = torch.log_softmax(full.logits(0).float(), -1)
    top3 = logp.topk(3, -1)
    assert torch.allclose(top.logits(0).gather(-1, top3.indices), top3.values, atol=1e-5)
    with pytest.raises(KDError, match="storage differs"):  # a full cache given where top-k is asked
        teaching.resolve_cache(accelerator, with_flags(top_cfg, logits=str(teaching.cache_path(full_cfg))),
                               tiny_teacher, fp, train)


def test_inspect_reads_any_stored_view(accelerator, tiny_teacher, tmp_path, capsys):
    from kd_accel.cli import inspect_main
    from kd_accel.errors import run_cli

    out = tmp_path / "c.safetensors"
    teaching.precompute(accelerator, from_flags(**SHIFT), tiny_teacher, tiny_split(40), out)
    capsys.readouterr()
    run_cli(inspect_main, [str(out), "--view", "2", "--temperatures", "1"])
    assert "view 2 of 3 (shift(pad=2" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        run_cli(inspect_main, [str(out), "--view", "3"])
    assert e.value.code == 2 and "view 3 is out of range" in capsys.readouterr().err


def test_a_bad_top_k_is_refused_before_the_teacher_runs(accelerator, tiny_teacher, tmp_path, monkeypatch):
    def ran(*a, **k):
        raise AssertionError("the teacher ran before --cache-topk was checked")

    monkeypatch.setattr(teaching, "predict_rows", ran)
    for k in (10, 0):  # k = C stores as much as full logits; 0 stores nothing
        with pytest.raises(KDError, match="top-k must be between 1 and 9"):
            teaching.precompute(accelerator, from_flags(augment="shift", views=3, cache_topk=k), tiny_teacher,
                                tiny_split(20), tmp_path / "c.safetensors")


def test_a_cache_kept_in_another_dtype_is_refused_by_name(accelerator, tiny_teacher, tmp_path):
    train, fp = tiny_split(30), fingerprint(tiny_teacher)
    made = from_flags(output_dir=str(tmp_path))  # one clean view: fp32 by default
    teaching.resolve_cache(accelerator, made, tiny_teacher, fp, train)
    asked = with_flags(made, logits=str(teaching.cache_path(made)), cache_dtype="fp16")
    with pytest.raises(KDError, match="dtype differs \\(dtype: cache 'fp32', run 'fp16'\\)"):
        teaching.resolve_cache(accelerator, asked, tiny_teacher, fp, train)
    # the run folder's own cache is recomputed in the dtype asked for
    soft, hit, _ = teaching.resolve_cache(accelerator, with_flags(made, cache_dtype="fp16"), tiny_teacher, fp, train)
    assert (hit, soft.dtype) == (False, "fp16")


def test_cache_storage_dtype_shapes_the_students_stamp(accelerator):
    """fp16 and fp32 logits round differently: a student resumed on the other storage is not the
    same run, so the storage is stamped, resolved: naming the default is no change."""
    train = tiny_split(40)

    def stamp(**flags):
        return pipeline.phase_settings(accelerator, from_flags(epochs=2, **flags), train, kd=True, teacher_fp="t")

    clean, shifted = stamp(), stamp(augment="shift")
    assert (clean["cache_dtype"], shifted["cache_dtype"]) == ("fp32", "fp16")
    assert stamp(cache_dtype="fp32") == clean  # the clean view's default, named
    assert stamp(augment="shift", cache_dtype="fp16") == shifted  # the K views' default, named
    assert stamp(cache_dtype="fp16")["cache_dtype"] == "fp16" and stamp(cache_dtype="fp16") != clean
    assert stamp(augment="shift", cache_dtype="fp32") != shifted
    # no cache is read online: its storage cannot matter
    assert stamp(augment="shift", teacher_mode="online", cache_dtype="fp32") == stamp(augment="shift", teacher_mode="online")
