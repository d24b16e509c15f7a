"""Recipe files (--config FILE.yaml, <run>/recipe.yaml), last- and best-epoch accuracies, and
compare.py's variants over every declared setting."""
import io
import re
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console
from safetensors.torch import load_file

from conftest import ROOT, cli_error, run_main
from kd_accel import cli, losses, recipes
from kd_accel.config import from_flags
from kd_accel.errors import KDError
from kd_accel.reporting import epoch_accuracies, summary_table
from kd_accel.study import markdown_table, parse_variant, summarize

RECIPES = sorted((ROOT / "configs" / "recipes").glob("*.yaml"))
# what a shipped recipe leaves to the command line: the data's folder, a teacher's weights file
NEEDS = {"imagenet_r34_r18_kd.yaml": ["--data-dir", "{folder}", "--teacher-weights", "{weights}"],
         "function_matching_folder.yaml": ["--data-dir", "{folder}"]}


def write(path, text):
    path.write_text(text)
    return path


def parsed(argv, parser=cli.distill_parser, groups=cli.ALL):
    return cli.parse(parser(), groups, [str(a) for a in argv])


def test_a_recipe_run_is_re_run_bit_for_bit_from_its_recipe_yaml(tmp_path, mnist_dir, tiny_teacher):
    """A tiny run writes recipe.yaml; `--config <run>/recipe.yaml --output-dir other` alone makes
    the same student weights; its metrics record the last and the best epoch."""
    first, second = tmp_path / "first", tmp_path / "second"
    run_main(cli.distill_main, ["--data-dir", mnist_dir, "--teacher", tiny_teacher, "--output-dir", first,
                                "--limit-train", "200", "--limit-test", "100", "--epochs", "1", "--batch-size", "50",
                                "--lr", "0.003", "--no-baseline", "--kd-loss", "seed-mse"])
    recipe = first / "recipe.yaml"
    assert recipe.read_text().startswith(recipes.HEADER)
    saved = yaml.safe_load(recipe.read_text())
    assert (saved["lr"], saved["kd-loss"], saved["limit-train"], saved["baseline"]) == (0.003, "notebook-mse", 200, False)
    assert not {"output-dir", "run-name", "resume", "config"} & set(saved)  # where it ran, not what
    run_main(cli.distill_main, ["--config", recipe, "--output-dir", second])
    a, b = load_file(first / "student.safetensors"), load_file(second / "student.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert (second / "recipe.yaml").read_text() == recipe.read_text()  # the same recipe, resolved again
    student = __import__("json").loads((second / "metrics.json").read_text())["student"]
    assert (student["last_epoch"], student["best_epoch"]) == (1, 1)
    assert student["best_test_accuracy"] == student["test_accuracy"]


def test_layers_flags_over_the_file_over_preset_over_data_set_defaults(tmp_path):
    f = write(tmp_path / "r.yaml", "dataset: fashion-mnist\npreset: notebook\nteacher-epochs: 3\nbatch_size: 64\n"
                                   "alpha: 0.5\nschedule: step\nmilestones: [2, 4]\nlr: 5e-4\nmixed-precision: 'no'\n")
    cfg, args = parsed(["-c", f, "--alpha", "0.7"])
    assert (cfg.data.dataset, cfg.teacher.epochs, cfg.student.batch_size, cfg.student.milestones) == \
        ("fashion-mnist", 3, 64, [2, 4])
    assert cfg.student.lr == 5e-4 and cfg.run.mixed_precision == "no"  # YAML's '5e-4' is text: read as --lr reads it
    assert cfg.kd.alpha == 0.7  # the command line over the file
    assert (cfg.kd.kd_loss, cfg.kd.temperature) == ("notebook-mse", 1.5)  # the file's preset over its data set's T=2
    cfg, _ = parsed(["--config", f, "--dataset", "mnist", "--preset", "default"])  # flags choose the layers too
    assert (cfg.kd.kd_loss, cfg.kd.temperature, cfg.student.batch_size) == ("hinton", 4.0, 64)
    cfg, _ = parsed(["--config", write(tmp_path / "d.yaml", "dataset: fashion-mnist\n")])
    assert cfg.kd.temperature == 2.0  # the file's data set brings its defaults
    # train_teacher.py's --epochs are the teacher's: checked against the teacher's bounds
    cfg, _ = parsed(["-c", write(tmp_path / "t.yaml", "epochs: 7\nweights: null\n")], cli.teacher_parser,
                    cli.TEACHER_GROUPS)
    assert cfg.teacher.epochs == 7


@pytest.mark.parametrize("text,words", [
    ("teacher-epoch: 3\n", "unknown setting 'teacher-epoch'; did you mean teacher-epochs"),
    ("lr: -1\n", "lr must be > 0, got -1"),
    ("batch-size: 6.5\n", "batch-size: invalid int value 6.5"),
    ("kd-loss: mse\n", "kd-loss: invalid choice 'mse' (choose from"),
    ("mixed-precision: no\n", "mixed-precision: got the YAML boolean False"),
    ("baseline: maybe\n", "baseline: must be true or false, got 'maybe'"),
    ("epochs: null\n", "epochs: needs a value (its default is 20), got null"),
    ("seeds: [1]\n", "unknown setting 'seeds'"),  # compare.py's, not distill.py's
    ("lr: 0.1\nlr: 0.2\n", "not valid YAML: 'lr' is given twice at line 2"),
    ("lr: 0.1\nlr_: 1\n", "unknown setting 'lr_'"),
    ("batch-size: 10\nbatch_size: 20\n", "'batch-size' and 'batch_size' both set --batch-size"),
    ("- lr\n- 0.1\n", "must be a YAML mapping of flag names to values"),
    ("lr: [0.1\n", "not valid YAML"),
    ("milestones: []\n", "milestones: needs at least one value"),
])
def test_a_bad_recipe_file_is_one_line_naming_the_file_and_key(text, words, tmp_path, capsys):
    f = write(tmp_path / "r.yaml", text)
    err = cli_error(cli.distill_main, ["--config", f], capsys)
    assert words in err and str(f) in err, err


def test_a_missing_recipe_file_and_one_that_is_not_a_recipe_are_refused(tmp_path, mnist_dir, capsys):
    assert "cannot read it" in cli_error(cli.distill_main, ["-c", tmp_path / "none.yaml"], capsys)
    run = tmp_path / "run"
    write(run.mkdir() or run / "recipe.yaml", "lr: 0.1\n")  # a user's file where the run writes its recipe
    err = cli_error(cli.distill_main, ["--data-dir", mnist_dir, "--output-dir", run], capsys)
    assert "exists and is not a kd_accel recipe file" in err, err


@pytest.mark.parametrize("script", ["distill.py", "train_teacher.py", "precompute_logits.py", "compare.py"])
def test_every_setting_of_every_script_survives_its_recipe(script, tmp_path):
    """recipe_of -> YAML -> --config gives back every value, non-defaults included: a setting
    declared later passes through the file with nothing added (its type reads str() of its value)."""
    make = cli.PARSERS[script]
    groups = cli.TEACHER_GROUPS if script == "train_teacher.py" else cli.ALL
    given = {"--lr": "1e-05", "--seed": "4294967295", "--mixed-precision": "no", "--checkpoint-every": "100",
             "--schedule": "step", "--milestones": ["2", "3"], "--no-channels-last": None, "--compile": None}
    argv = [str(x) for flag, value in given.items() if flag[2:].removeprefix("no-") in recipes.by_key(make())
            for x in (flag, *([] if value is None else [value] if isinstance(value, str) else value))]
    parser = make()
    cfg, args = cli.parse(parser, groups, argv)
    recipes.write_recipe(tmp_path / "r.yaml", script[:-3], recipes.recipe_of(parser, args))
    cfg2, args2 = cli.parse(make(), groups, ["--config", str(tmp_path / "r.yaml")])
    assert cfg2 == cfg and {**args2, "config": None} == args
    assert len(argv) >= 6  # the script's non-defaults were given


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_parses(recipe, tmp_path, monkeypatch):
    """Each file of configs/recipes/ through distill.py's real parser and checks (nothing runs),
    from the repository root as its comment says; its comment names what it aims at."""
    monkeypatch.chdir(ROOT)
    (tmp_path / "folder").mkdir()
    extra = [a.format(folder=tmp_path / "folder", weights=write(tmp_path / "w.pth", "")) for a in NEEDS.get(recipe.name, [])]
    head = recipe.read_text().split("\n\n")[0]
    assert head.startswith("# ") and re.search(r"\d\d\.\d", head) and "epoch" in head, head
    try:
        cli.parse(cli.distill_parser(), cli.ALL, ["--config", str(recipe.relative_to(ROOT)), *extra])
    except KDError as e:
        pytest.fail(f"{recipe.name}: {e}")


def recipe_world(tmp_path):
    """{recipe: extra flags} that run each shipped recipe for one short epoch on tiny data here:
    synthetic CIFAR-100 files, a 3-channel PNG folder and a ResNet-34 .pth in torchvision's format,
    MNIST's first images; the schedules' milestones brought within one epoch. Only sizes and
    lengths change: each recipe's models, optimizer, schedule kind, loss and teacher mode run."""
    import torchvision

    from conftest import write_image_folder
    from test_cifar import write_pickle
    from test_cifar100 import COARSE, FINE, make_split

    cifar = tmp_path / "cifar" / "cifar-100-python"
    cifar.mkdir(parents=True)
    for name, obj in {"train": make_split(16, 1, "training"), "test": make_split(8, 2, "testing"),
                      "meta": {"fine_label_names": FINE, "coarse_label_names": COARSE}}.items():
        write_pickle(cifar / name, obj)
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 16), ("val", 8)):
        write_image_folder(tmp_path / "folder" / split, torch.randint(0, 256, (n, 3, 40, 48), dtype=torch.uint8,
                                                                      generator=g), torch.arange(n) % 2)
    torch.save(torchvision.models.resnet34(num_classes=2).state_dict(), tmp_path / "r34.pth")
    short = ["--epochs", "1", "--batch-size", "8", "--no-baseline"]
    cifar_run = [*short, "--data-dir", tmp_path / "cifar", "--teacher-epochs", "1", "--milestones", "1",
                 "--teacher-milestones", "1", "--teacher-batch-size", "8"]
    folder_run = [*short, "--data-dir", tmp_path / "folder", "--image-size", "32", "--num-workers", "0"]
    return {"cifar100_r56_r20_dist.yaml": cifar_run, "cifar100_r56_r20_dkd.yaml": cifar_run,
            "cifar100_r56_r20_kd.yaml": cifar_run, "cifar100_r56_r20_lskd.yaml": cifar_run,
            "hinton_mnist.yaml": [*short, "--teacher-epochs", "1", "--limit-train", "300", "--limit-test", "100",
                                  "--warmup-epochs", "0"],
            "imagenet_r34_r18_kd.yaml": [*folder_run, "--teacher-weights", tmp_path / "r34.pth",
                                         "--teacher-image-size", "32", "--milestones", "1"],
            "function_matching_folder.yaml": [*folder_run, "--teacher-epochs", "1", "--warmup-epochs", "0",
                                              "--teacher-image-size", "32"]}


@pytest.mark.slow  # seven short runs, ResNet-56 and ResNet-34 among them (about 20 s)
def test_every_shipped_recipe_runs(tmp_path, mnist_dir, monkeypatch):
    """Each file of configs/recipes/ runs through distill.py, shortened by flags (which win over the
    file) to one epoch on tiny data: its student trains and is saved with the recipe's settings."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("KD_ACCEL_DATA_DIR", str(mnist_dir))
    world = recipe_world(tmp_path)
    assert sorted(world) == [p.name for p in RECIPES]  # a new recipe needs its tiny run here
    for recipe in RECIPES:
        out = tmp_path / "runs" / recipe.stem
        run_main(cli.distill_main, ["--config", recipe.relative_to(ROOT), *world[recipe.name], "--output-dir", out])
        ran = yaml.safe_load((out / "recipe.yaml").read_text())
        written = yaml.safe_load(recipe.read_text())
        for key in ("arch", "kd-loss", "opt", "schedule", "teacher-mode", "mix", "temperature"):
            if key in written:
                assert ran[key] == written[key], (recipe.name, key)
        assert load_file(out / "student.safetensors"), recipe.name


# --- last and best epoch ----------------------------------------------------------------------

def history(*accs):
    return {"epochs": [{"epoch": i + 1, "test_accuracy": a} for i, a in enumerate(accs)], "train_time_s": 1.0,
            "test_accuracy": accs[-1], "params": 10}


def test_the_last_epoch_is_the_result_and_the_best_is_recorded_beside_it():
    assert epoch_accuracies(history(90.0, 95.0, 95.0, 93.0)) == \
        {"last_epoch": 4, "best_test_accuracy": 95.0, "best_epoch": 2}  # the first of equals
    assert epoch_accuracies({"test_accuracy": 99.0}) == {}  # a teacher reused from its file: no history
    student = {**history(90.0, 95.0, 93.0), **epoch_accuracies(history(90.0, 95.0, 93.0))}
    metrics = {"dataset": "mnist", "run_dir": "r", "teacher": {"test_accuracy": 99.0, "params": 5}, "student": student,
               "baseline": None, "cache": {"mode": "online"}}
    out = io.StringIO()
    Console(file=out, width=200).print(summary_table(metrics))
    text = out.getvalue()
    assert "best epoch" in text and "95.00% (epoch 2)" in text and "93.00%" in text and "last epoch's" in text, text
    runs = {"baseline": {0: history(90.0, 91.0), 1: history(92.0, 91.0)}, "kd": {0: history(93.0, 92.0),
                                                                                1: history(92.5, 94.0)}}
    s = summarize(runs)
    assert s["kd"]["mean"] == 93.0 and s["kd"]["best_epoch_mean"] == 93.5 and s["kd"]["gain"]["mean"] == 2.0
    table = markdown_table(s)
    assert "best-epoch acc (mean) |" in table and "| 93.500 |" in table and "last epoch's" in table, table
    assert "best-epoch" not in markdown_table(summarize({"b": {0: {"test_accuracy": 1.0, "train_time_s": 1}}}))


# --- compare.py's variants: any declared setting ----------------------------------------------

def test_variants_take_every_declared_setting_by_its_flag_name(monkeypatch):
    cfg = from_flags()
    v = parse_variant("hinton:opt=sgd,weight-decay=5e-4,schedule=step,milestones=3 6,nesterov=true", cfg)
    assert v.name == "hinton T=4 a=0.9 opt=sgd weight-decay=0.0005 schedule=step milestones=3,6 nesterov=true"
    s = v.apply(cfg).student
    assert (s.opt, s.weight_decay, s.milestones, s.nesterov) == ("sgd", 5e-4, [3, 6], True)
    assert cfg.student.opt == "adam"  # the run's own config is untouched
    assert parse_variant("baseline:label-smoothing=0.1", cfg).apply(cfg).student.label_smoothing == 0.1
    assert parse_variant("baseline:mix=mixup", cfg).apply(cfg).student.mix == "mixup"
    assert parse_variant("dkd:T=4,dkd-beta=2", cfg).apply(cfg).kd.dkd_beta == 2.0  # a new loss is a head
    assert parse_variant("hinton:loss=dkd", cfg).apply(cfg).kd.kd_loss == "dkd"
    # flag names of the settings with keys of their own reach them, and name the variant the same
    assert parse_variant("hinton:teacher-mode=online", cfg) == parse_variant("hinton:teacher=online", cfg)
    # the old syntax, unchanged
    assert parse_variant("hinton:T=2,alpha=0.5", cfg).name == "hinton T=2 a=0.5"
    assert parse_variant("seed-mse", cfg).name == "notebook-mse T=1.5 a=0.6"
    # the heads come from losses.KD_LOSSES: a loss registered there is a variant at once
    monkeypatch.setitem(losses.KD_LOSSES, "my-loss", losses.KD_LOSSES["hinton"])
    assert parse_variant("my-loss:T=3", cfg).apply(cfg).kd.kd_loss == "my-loss"


@pytest.mark.parametrize("spec,words", [
    ("hinton:opt=lbfgs", "opt: invalid choice 'lbfgs' (choose from adam, adamw, sgd)"),
    ("hinton:weight-decay=-1", "weight-decay must be >= 0, got -1"),
    ("hinton:nesterov=perhaps", "nesterov: must be true or false"),
    ("hinton:epochs=2.5", "epochs: invalid int value '2.5'"),
    ("hinton:wieght-decay=0.1", "unknown setting wieght-decay; did you mean weight-decay"),
    ("baseline:dkd-beta=2", "dkd-beta is a distillation setting; a baseline takes student settings only"),
    ("hinton:baseline=false", "unknown setting baseline"),
    ("hinton:T=4,temperature=3", "temperature sets what an earlier key set"),
    ("fitnets:loss=dkd", "loss= chooses the loss of a KD variant"),
    ("hinton:loss=mse", "loss is one of"),
    ("mse:T=4", "begins with one of baseline, hinton, notebook-mse"),
])
def test_a_bad_variant_setting_is_refused_naming_it(spec, words):
    with pytest.raises(KDError, match=re.escape(words)):
        parse_variant(spec, from_flags())


def test_compare_checks_each_variant_as_a_command_line(tmp_path, mnist_dir, capsys):
    """A variant's settings that bounds alone cannot check (schedule=step without milestones) are
    refused before any work, naming the variant."""
    err = cli_error(cli.compare_main, ["--data-dir", mnist_dir, "--output-dir", tmp_path / "c", "--variants",
                                       "baseline:schedule=step"], capsys)
    assert "variant 'baseline schedule=step': --schedule step needs --milestones" in err, err
    assert not (tmp_path / "c").exists()
