"""Multi-seed comparison, temperature inspection, limited labels."""
import json
import re

import pytest
import torch

from kd_accel.config import from_flags, with_flags
from kd_accel.data import balanced_subset
from kd_accel.errors import KDError, run_cli
from kd_accel.pipeline import student_data
from kd_accel.study import curve_variants, grid_matrix, markdown_table, parse_variant, summarize, temperature_stats

from conftest import tiny_split


def test_variant_parsing():
    cfg = from_flags()
    assert parse_variant("baseline", cfg).distilled is False
    v = parse_variant("hinton:T=2,alpha=0.9", cfg)
    assert (v.kd_loss, v.temperature, v.alpha) == ("hinton", 2.0, 0.9)
    nb = parse_variant("notebook-mse", cfg)
    assert (nb.name, nb.kd_loss, nb.temperature, nb.alpha) == ("notebook-mse T=1.5 a=0.6", "notebook-mse", 1.5, 0.6)
    assert parse_variant("seed-mse", cfg) == nb  # the old name: the same variant, under the new name
    assert parse_variant("seed-mse:T=2", cfg).name == "notebook-mse T=2 a=0.6"
    assert parse_variant("hinton", cfg).temperature == cfg.kd.temperature
    for bad in ("hinton:T=0", "hinton:beta=1", "fitnet", "hinton:alpha=2"):
        with pytest.raises(KDError):
            parse_variant(bad, cfg)


@pytest.mark.parametrize("spec,words", [
    ("hinton:K=20", "K=20': --views 20 needs --augment"),
    ("hinton:augment=shift,teacher=online,K=20", "--teacher-mode online reads no cache"),
    ("hinton:augment=shift,teacher=fixed,K=20", "--teacher-mode fixed reads one clean view"),
    ("hinton:teacher=online,topk=3", "--cache-topk 3 shapes a cache; --teacher-mode online reads none"),
])
def test_a_variant_setting_it_would_ignore_is_refused(spec, words):
    """K= and topk= are refused where the variant reads no K-view cache or no cache at all, as
    --views and --cache-topk are on the command line; where they apply they are kept."""
    cfg = from_flags()
    with pytest.raises(KDError, match=re.escape(words)):
        parse_variant(spec, cfg)
    assert parse_variant("hinton:augment=shift,teacher=cache,K=20", cfg).views == 20
    assert parse_variant("hinton:topk=3", cfg).topk == 3
    # the run's own --augment makes K= apply to a variant that does not name one
    assert parse_variant("hinton:K=4", from_flags(augment="shift")).views == 4


def test_summarize_pairs_by_seed():
    runs = {"baseline": {0: {"test_accuracy": 98.0, "train_time_s": 1}, 1: {"test_accuracy": 98.2, "train_time_s": 1}},
            "kd": {0: {"test_accuracy": 98.1, "train_time_s": 2}, 1: {"test_accuracy": 98.5, "train_time_s": 2}}}
    s = summarize(runs)
    assert s["kd"]["gain"]["mean"] == pytest.approx(0.2)  # (0.1 + 0.3) / 2
    assert s["kd"]["mean"] == pytest.approx(98.3) and "gain" not in s["baseline"]


def test_grid_matrix_places_cells_and_marks_significance():
    def run(*accs):
        return {s: {"test_accuracy": a, "train_time_s": 1} for s, a in enumerate(accs)}

    cfg = from_flags()
    variants = [parse_variant(v, cfg) for v in ("baseline", "hinton:T=1,alpha=0.5", "hinton:T=4,alpha=0.9",
                                                   "notebook-mse", "hinton:T=1,alpha=0.9,augment=shift")]
    accs = [(98.0, 98.2, 98.1), (98.1, 98.3, 98.2), (97.9, 98.4, 98.0), (97.0, 97.0, 97.0), (99.0, 99.0, 99.1)]
    runs = {v.name: run(*a) for v, a in zip(variants, accs)}  # hinton T=1: +0.1 every seed
    table = grid_matrix(summarize(runs), variants)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0] == "| T \\ α | 0.5 | 0.9 |"
    assert rows[1].startswith("| 1 | **+0.100 (<0.001)** | - |"), rows[1]  # constant gain: p = 0; augmented: not a cell
    assert rows[2].startswith("| 4 | - | ") and "**" not in rows[2], rows[2]  # mixed signs: not significant
    assert "notebook-mse" not in table
    assert "| < 0.001 |" in markdown_table(summarize(runs))
    assert grid_matrix(summarize(runs), variants[:2]) == ""


def test_variants_are_records_named_as_published():
    """The display names are those of the published tables and checkpoint folders; the records
    carry the values (nothing parses a name back)."""
    cfg = from_flags()
    v = parse_variant("hinton:T=4,alpha=0.9,augment=shift,teacher=cache,K=20", cfg)
    assert (v.kind, v.temperature, v.alpha, v.augment, v.teacher_mode, v.views) == ("hinton", 4.0, 0.9, "shift", "cache", 20)
    assert v.name == "hinton T=4 a=0.9 augment=shift teacher=cache K=20"
    vcfg = v.apply(cfg)
    assert (vcfg.student.augment, vcfg.kd.teacher_mode, vcfg.kd.views, vcfg.kd.temperature) == ("shift", "cache", 20, 4.0)
    assert cfg.student.augment == "none"  # the run's own config is untouched
    b = parse_variant("baseline:augment=shift", cfg)
    assert b.name == "baseline augment=shift" and not b.distilled and b.apply(cfg).student.augment == "shift"
    f = parse_variant("fitnets:mode=joint,beta=0.5", cfg)
    assert f.name == "fitnets (joint beta=0.5) T=4 a=0.9" and f.apply(cfg).kd.hint_mode == "joint"
    t = parse_variant("hinton:topk=3", cfg)
    assert t.name == "hinton T=4 a=0.9 topk=3" and t.apply(cfg).kd.cache_topk == 3
    for bad in ("baseline:T=2", "baseline:teacher=cache", "hinton:augment=blur", "hinton:teacher=sometimes",
                "hinton:K=0", "hinton:topk=0", "baseline:topk=3"):
        with pytest.raises(KDError):
            parse_variant(bad, cfg)


def test_curve_plot_keeps_baseline_and_best():
    runs = {"baseline": {0: {"test_accuracy": 90.0}}}
    runs.update({f"v{i}": {0: {"test_accuracy": 90.0 + i}} for i in range(8)})
    assert curve_variants(runs) == ["baseline", "v3", "v4", "v5", "v6", "v7"]
    small = {k: runs[k] for k in ("baseline", "v0", "v1")}
    assert curve_variants(small) == ["baseline", "v0", "v1"]


def test_balanced_subset_is_deterministic_and_balanced():
    labels = torch.arange(1000) % 10
    a, b = balanced_subset(labels, 105), balanced_subset(labels, 105)
    assert torch.equal(a, b) and len(a) == 105 and len(set(a.tolist())) == 105
    assert torch.bincount(labels[a]).tolist() == [11] * 5 + [10] * 5
    assert not torch.equal(a, balanced_subset(labels, 105, seed=1))
    with pytest.raises(KDError):
        balanced_subset(labels, 0)


def test_limited_labels_columns():
    train = tiny_split(200)
    logits = torch.randn(200, 10)
    cfg = from_flags(train_subset=20)
    cols = student_data(cfg, train, None)[0].columns  # baseline: the subset only
    assert len(cols["labels"]) == 20
    cols = student_data(cfg, train, logits)[0].columns  # distilled: soft on all, hard on the subset
    assert len(cols["labels"]) == 200 and int(cols["label_mask"].sum()) == 20
    cols = student_data(with_flags(cfg, soft_targets="subset"), train, logits)[0].columns
    assert len(cols["teacher_logits"]) == 20
    keep = balanced_subset(train.labels, 20)
    assert torch.equal(cols["teacher_logits"], logits[keep])
    # augmented: each epoch's view parameters follow the same subset, drawn by original sample index
    data = student_data(with_flags(cfg, augment="shift"), train, None)[0]
    full = student_data(with_flags(cfg, augment="shift", train_subset=None), train, None)[0].per_epoch
    assert len(data.columns["labels"]) == 20 and torch.equal(data.per_epoch(3)["aug_params"], full(3)["aug_params"][keep])


def test_masked_hard_loss_ignores_unlabelled():
    from kd_accel.losses import hinton_kd_loss

    s, t = torch.randn(6, 10), torch.randn(6, 10)
    y = torch.randint(0, 10, (6,))
    mask = torch.tensor([1, 1, 0, 0, 0, 1], dtype=torch.bool)
    out = hinton_kd_loss(s, y, t, 2.0, 0.5, label_mask=mask)
    assert torch.allclose(out["hard"], torch.nn.functional.cross_entropy(s[mask], y[mask]))
    none = hinton_kd_loss(s, y, t, 2.0, 0.5, label_mask=torch.zeros(6, dtype=torch.bool))
    assert none["hard"].item() == 0.0 and torch.isfinite(none["loss"])


def test_temperature_flattens():
    rows = temperature_stats(torch.tensor([[5.0, 0.0, -1.0], [0.0, 3.0, 1.0]]), [1, 2, 8])
    ent = [r["mean_entropy"] for r in rows]
    mx = [r["mean_max_prob"] for r in rows]
    assert ent == sorted(ent) and mx == sorted(mx, reverse=True)
    p = torch.softmax(torch.tensor([5.0, 0.0, -1.0]), 0)
    q = torch.softmax(torch.tensor([0.0, 3.0, 1.0]), 0)
    assert rows[0]["mean_max_prob"] == pytest.approx(float((p.max() + q.max()) / 2), rel=1e-6)


@pytest.mark.slow  # end to end: a comparison, its table and plot, inspect (4 s)
def test_compare_and_inspect_end_to_end(tmp_path, mnist_dir, tiny_teacher, capsys, reset_accelerate):
    """compare.py and inspect_logits.py in-process, on the session's shared teacher (each launch
    script also runs as a real process in test_cli.py)."""
    from kd_accel.cli import compare_main, inspect_main

    out = tmp_path / "cmp"
    run_cli(compare_main, ["--data-dir", str(mnist_dir), "--output-dir", str(out), "--teacher", str(tiny_teacher),
                           "--limit-train", "300", "--limit-test", "100", "--epochs", "1", "--seeds", "0", "1",
                           "--variants", "hinton:T=2,alpha=0.5", "seed-mse", "fitnets:hint_epochs=1",
                           "fitnets:mode=joint,beta=0.5"])
    stdout = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    d = from_flags().kd  # fitnets uses the run's default T and alpha
    fit2, fitj = (f"fitnets ({how}) T={d.temperature:g} a={d.alpha:g}" for how in ("1 hint epochs", "joint beta=0.5"))
    # the old loss name is accepted and reported under the new one
    assert set(res["summary"]) == {"baseline", "hinton T=2 a=0.5", "notebook-mse T=1.5 a=0.6", fit2, fitj}
    assert "seed-mse" not in (out / "results.md").read_text() + json.dumps(res["summary"])
    two_stage = res["runs"][fit2]["0"]
    assert len(two_stage["hint_epochs"]) == 1 and two_stage["hint_epochs"][0]["loss_hint"] > 0
    for name, row in res["summary"].items():
        assert row["n"] == 2 and len(row["accuracies"]) == 2
        if name != "baseline":
            g = row["gain"]
            assert g["low"] <= g["mean"] <= g["high"]
    assert "| baseline | 2 |" in (out / "results.md").read_text() and "gain over baseline" in stdout
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    # the cache was made once and shared by all the student runs
    assert stdout.count("precomputing") == 1

    run_cli(inspect_main, [str(out / "teacher_logits.safetensors"), "--temperatures", "1", "4",
                           "--plot", str(tmp_path / "t.png")])
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert [float(line[0]) for line in lines] == [1.0, 4.0]
    assert float(lines[0][1]) < float(lines[1][1])  # entropy grows with T
    assert (tmp_path / "t.png").exists()
    with pytest.raises(SystemExit) as e:
        run_cli(inspect_main, [str(tmp_path / "t.png")])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("kd_accel: error:")
