"""Issue 17, item 2: every setting that shapes a result is stamped, as a rule.

The rule: each declared setting (config.py), changed alone, either changes no weight of any phase
or is refused on resume. The stamps are derived from the declarations (pipeline.phase_settings),
so these tests sweep the declarations, not a list of flags: a new setting without an entry in
ALTERNATIVES fails the first test, and one that shapes weights without being stamped fails the
sweep."""
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_main, tiny_split
from kd_accel import cli
from kd_accel.config import GROUPS, flag_fields, from_flags, stamped_fields, with_flags
from kd_accel.errors import KDError
from kd_accel.pipeline import PHASE_GROUPS, phase_settings
from kd_accel.teaching import ignored_cache_settings

# One other valid value per setting (by flag dest). "REF:<file>" is that file of the reference run.
ALTERNATIVES = {
    "dataset": "fashion-mnist", "data_dir": "LINKED_DATA", "limit_train": 150, "limit_test": 40, "train_subset": 50,
    # image folders' (issue 19): on MNIST each is refused in one line (tests/test_folder_errors.py)
    "channels": 1, "num_workers": 0,
    # Hugging Face datasets' (issue 28): on MNIST refused in one line (tests/test_hf.py)
    "image_column": "img", "label_column": "fine_label",
    "epochs": 2, "batch_size": 25, "lr": 2e-3, "schedule": "constant", "augment": "shift",
    "teacher_epochs": 2, "teacher_batch_size": 25, "teacher_lr": 2e-3, "teacher_schedule": "constant",
    "teacher_augment": "shift",
    # function matching (issue 27): an alpha or unmixed labels without a mix, and the teacher's
    # unmixed labels, are refused on every command line (teaching.mixed_settings)
    "mix": "mixup", "mix_alpha": 0.5, "mix_labels": "none", "teacher_mix": "cutmix", "teacher_mix_alpha": 0.5,
    "teacher_mix_labels": "none",
    # optimizers and schedules (issue 27), the students' and the teacher's: under the sweep's 1 epoch
    # and cosine, --nesterov (with adam), --milestones and --warmup-epochs are refused at the start
    **{role + dest: value for role in ("", "teacher_") for dest, value in {
        "opt": "sgd", "momentum": 0.5, "nesterov": True, "weight_decay": 1e-4, "milestones": [1], "gamma": 0.5,
        "warmup_epochs": 1, "clip_grad": 1.0, "precise_bn": 2}.items()},
    # the models (issue 18): another architecture, starting weights, input size; --normalize weights
    # is refused where no known preprocessing exists (test_own_models.py stamps the case where it does)
    "arch": "notebook:teacher", "teacher_arch": "notebook:student", "weights": "REF:student.safetensors",
    "teacher_weights": "REF:teacher.safetensors", "image_size": 32, "teacher_image_size": 32, "normalize": "weights",
    "teacher_normalize": "weights",
    # builder kwargs (issue 27): the notebook's models take none, refused at the start; stamped
    # as canonical JSON (test_user_models.py refuses changed model code on resume)
    "arch_kwargs": '{"width": 3}', "teacher_arch_kwargs": '{"width": 3}',
    # the losses (issue 27): label smoothing of both recipes, the losses' own settings
    "label_smoothing": 0.1, "teacher_label_smoothing": 0.1, "logit_standardization": True, "dkd_alpha": 2.0,
    "dkd_beta": 4.0, "dkd_warmup": 5, "dist_beta": 2.0, "dist_gamma": 2.0,
    "kd_loss": "notebook-mse", "temperature": 2.0, "alpha": 0.5, "soft_targets": "subset", "teacher_mode": "online",
    "views": 2, "augment_seed": 1, "cache_dtype": "fp16", "cache_topk": 3, "hint_mode": "joint", "hint_epochs": 3,
    "hint_beta": 0.5, "baseline": False,
    "output_dir": "OTHER_DIR", "run_name": "other", "seed": 1, "teacher": "REF:teacher.safetensors",
    "logits": "REF:teacher_logits.safetensors", "out": "OTHER_DIR/cache.safetensors", "mixed_precision": "bf16",
    "grad_accum": 2, "checkpoint_every": "1", "keep_checkpoints": 1, "resume": "latest", "channels_last": False,
    "compile": True, "deterministic": True, "report_to": "tensorboard", "quiet": True,
}
# The augmented reference (one stored view: where --augment-seed went unstamped) and what changes on it.
AUGMENTED = {"augment": "shift", "views": 1}
AUGMENTED_ALTERNATIVES = {"views": 2, "augment_seed": 1, "teacher_mode": "fixed", "cache_dtype": "fp32",
                          "cache_topk": 3, "augment": "affine", "teacher_augment": "none"}


def declared_dests():
    return {dest: (group, f) for group in GROUPS for dest, f, _ in flag_fields(group)}


def test_every_declared_setting_has_an_alternative():
    """The sweep below covers each setting: a new one must say what else it could be."""
    assert set(ALTERNATIVES) == set(declared_dests())


class Acc:
    num_processes, mixed_precision = 1, "no"


def stamps(cfg, train):
    class Acc:  # the Accelerator resolves --mixed-precision
        num_processes, mixed_precision = 1, cfg.run.mixed_precision or "no"

    return {kind: phase_settings(Acc, cfg, train, student=kind != "teacher", teacher_fp="t",
                                 kd=kind in ("student", "fitnets"), hints=kind == "fitnets") for kind in PHASE_GROUPS}


def test_only_declared_exemptions_leave_every_stamp_unchanged(tmp_path):
    """A setting that changes no phase's stamp is one declared unstamped, or read only by a phase
    kind that does not read it (the hints outside FitNets are still stamped on FitNets)."""
    from kd_accel.models import build_model, save_model

    train, base = tiny_split(40), from_flags(limit_train=40)
    ref = stamps(base, train)
    for role in ("teacher", "student"):  # starting weights for --weights / --teacher-weights
        save_model(build_model(role, 10, train.input_shape), tmp_path / f"{role}.safetensors", role, 10)
    for dest, (group, f) in declared_dests().items():
        value = ALTERNATIVES[dest]
        if isinstance(value, str) and value.startswith(("REF:", "OTHER", "LINKED")):
            value = str(tmp_path / value[4:]) if dest.endswith("weights") else "elsewhere"
        cfg = with_flags(base, **{dest: value})
        if ignored_cache_settings(cfg):  # refused on every command line (e.g. --views without --augment)
            assert dest in ignored_cache_settings(cfg), dest
            continue
        try:
            changed = stamps(cfg, train)
        except KDError as e:  # --normalize weights without known weights: refused before any stamp
            assert dest.endswith("normalize") and "--normalize weights" in str(e), (dest, str(e))
            continue
        differs = [kind for kind in PHASE_GROUPS if changed[kind] != ref[kind]]
        stamped_somewhere = any(f.name in stamped_fields(g, kind) for kind in PHASE_GROUPS for g in PHASE_GROUPS[kind]
                                if g == group)
        assert bool(differs) == stamped_somewhere, (dest, differs)


def test_augment_seed_is_stamped_with_one_view():
    """The instance the issue found: K = 1 with augmentation draws its one view from --augment-seed."""
    train = tiny_split(40)
    a = phase_settings(Acc, from_flags(augment="shift", views=1), train, teacher_fp="t", kd=True)
    b = phase_settings(Acc, from_flags(augment="shift", views=1, augment_seed=5), train, teacher_fp="t", kd=True)
    assert a != b and (a["augment_seed"], b["augment_seed"]) == (0, 5)


def test_a_stamp_from_an_older_kd_accel_is_refused_by_name():
    from kd_accel.checkpointing import check_stamp

    new = phase_settings(Acc, from_flags(), tiny_split(40), teacher_fp="t", kd=True)
    old = {k: v for k, v in new.items() if k != "stamp"}
    with pytest.raises(KDError, match="stamped by an older kd_accel"):
        check_stamp("student: x", old, new, "hint")


# --- the sweep, end to end: each setting changes no weight or is refused on resume -----------------

BASE = ["--limit-train", "100", "--limit-test", "50", "--teacher-epochs", "1", "--epochs", "1", "--batch-size", "50"]
WEIGHTS = ("teacher.safetensors", "student.safetensors", "baseline.safetensors")


def flag(dest, value):
    name = "--" + dest.replace("_", "-")
    if isinstance(value, bool):
        return [name if value else "--no-" + dest.replace("_", "-")]
    if isinstance(value, list):  # nargs='+': --milestones 1 2
        return [name, *map(str, value)]
    return [name, str(value)]


def distill(args):
    run_main(cli.distill_main, args)


def weights(folder):
    return {name: load_file(str(folder / name)) for name in WEIGHTS if (folder / name).exists()}


def same_weights(a, b):
    shared = set(a) & set(b)
    assert shared, "no phase to compare"
    return all(a[n].keys() == b[n].keys() and all(torch.equal(a[n][k], b[n][k]) for k in a[n]) for n in shared)


def sweep(tmp_path, mnist_dir, monkeypatch, extra, alternatives):
    """{dest: 'refused' | 'same weights'} for each alternative against a reference run."""
    common = ["--data-dir", mnist_dir, *BASE, *extra]
    ref = tmp_path / "ref"
    distill([*common, "--output-dir", ref])
    ref_weights = weights(ref)
    linked = tmp_path / "linked"
    (linked / "MNIST").mkdir(parents=True)
    (linked / "MNIST" / "raw").symlink_to(mnist_dir / "MNIST" / "raw")
    outcome = {}
    takes = {a.dest for a in cli.distill_parser()._actions}
    for n, (dest, value) in enumerate(alternatives.items()):
        if dest not in takes:  # precompute_logits.py's --out: distill.py has no such flag
            continue
        if isinstance(value, str):  # placeholders for paths of this test's folders
            value = value.replace("LINKED_DATA", str(linked)).replace("OTHER_DIR", str(tmp_path / f"other{n}"))
            value = ref / value[4:] if value.startswith("REF:") else value
        changed = flag(dest, value)
        # on resume: a copy of the finished reference run, continued with the one change
        copy = tmp_path / f"resume{n}"
        shutil.copytree(ref, copy)
        try:
            distill([*common, "--output-dir", copy, "--resume", "latest", *changed])
        except KDError as e:
            assert dest.removeprefix("teacher_") in str(e) or dest.replace("_", "-") in str(e), (dest, str(e))
            outcome[dest] = "refused"
            continue
        except SystemExit as e:  # argparse: an invalid combination on the command line
            raise AssertionError(f"{dest}={value}: {e}") from None
        # not refused: a fresh run with the change must train the very same weights
        fresh = tmp_path / f"fresh{n}"
        if dest == "run_name":
            monkeypatch.chdir(tmp_path)
            distill([*common, *changed])
            fresh = tmp_path / "runs" / "other"
        else:
            out = [] if dest == "output_dir" else ["--output-dir", fresh]
            distill([*common, *out, *changed])
            fresh = Path(value) if dest == "output_dir" else fresh
        assert same_weights(ref_weights, weights(fresh)), f"--{dest} {value} changes weights but was not refused"
        outcome[dest] = "same weights"
    return outcome


@pytest.mark.slow
def test_each_setting_changes_no_weight_or_is_refused_on_resume(tmp_path, mnist_dir, monkeypatch):
    outcome = sweep(tmp_path, mnist_dir, monkeypatch, [], ALTERNATIVES)
    # the rule holds for every setting; and what was not refused is exactly what is declared unstamped
    unstamped = {dest for dest, (_, f) in declared_dests().items() if f.metadata.get("unstamped")}
    assert {d for d, o in outcome.items() if o == "same weights"} <= unstamped | {"hint_mode", "hint_epochs",
                                                                                   "hint_beta"}
    assert outcome["seed"] == outcome["lr"] == outcome["teacher_lr"] == "refused"


@pytest.mark.slow
def test_each_cache_setting_of_an_augmented_run_changes_no_weight_or_is_refused(tmp_path, mnist_dir, monkeypatch):
    extra = [a for dest, value in AUGMENTED.items() for a in flag(dest, value)]
    outcome = sweep(tmp_path, mnist_dir, monkeypatch, extra, AUGMENTED_ALTERNATIVES)
    assert outcome["augment_seed"] == "refused"  # the case: K = 1, another augment seed
