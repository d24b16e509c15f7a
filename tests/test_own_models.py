"""Issue 18: your own teacher and student, end to end through the pipeline and the command line.

Tiny on purpose (a few dozen 28x28 or 32x32 images, timm's test_* models and torchvision's
mobilenet_v3_small): what is checked is the plumbing, not accuracy. Weights files are written
here in the formats users have (torch.save state dicts, timm's safetensors); nothing is
downloaded. The model zoo's own unit tests are in test_zoo.py."""
import json

import pytest
import torch
from safetensors.torch import save_file

import kd_accel
from conftest import cli_error, run_main, tiny_split
from kd_accel import cli, pipeline, teaching, training
from kd_accel.augment import SPECS
from kd_accel.cache import CacheMismatch
from kd_accel.config import from_flags
from kd_accel.data import Split, to_float
from kd_accel.errors import KDError
from kd_accel.models import read_checkpoint, save_model
from kd_accel.models.preprocessing import describe
from kd_accel.roles import TeacherId, inputs_for, recipe_preprocessing

TV = "torchvision:mobilenet_v3_small"
TIMM = "timm:test_efficientnet"  # BatchNormAct2d: timm's fused BN + activation


def colour_split(n=24, seed=0, split="train"):
    """CIFAR-shaped noise: uint8 [n, 3, 32, 32], labels [n]."""
    g = torch.Generator().manual_seed(seed)
    return Split("cifar10", split, torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                 torch.randint(0, 10, (n,), generator=g), 10)


def one_line(e):
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


# --- a pretrained teacher from a user's file ---------------------------------------------------

def torchvision_file(path):
    import torchvision.models as tvm

    torch.manual_seed(0)
    model = tvm.get_model("mobilenet_v3_small", weights=None, num_classes=10).eval()
    torch.save(model.state_dict(), path)  # torchvision's own format: a bare state dict
    return model


def timm_file(path):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=10).eval()
    # timm's published files: a safetensors state dict, wrapped here in DDP's "module." prefix
    save_file({f"module.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


@pytest.mark.parametrize("arch, writer, name", [(TV, torchvision_file, "mnv3.pth"), (TIMM, timm_file, "eff.safetensors")])
def test_a_teacher_given_by_weights_gives_the_logits_of_the_model_loaded_directly(arch, writer, name, accelerator,
                                                                                  tmp_path):
    """--teacher-weights FILE --teacher-epochs 0: the teacher is used as it is (evaluated, recorded,
    saved with its record), bit-identical to torchvision/timm's model with the file loaded directly;
    its cached logits are that model's on the same inputs. (--teacher-normalize data and
    --teacher-image-size 32: the data as they are; a timm file would otherwise bring its own
    preprocessing, the next test.)"""
    direct = writer(tmp_path / name)
    train, test = colour_split(24), colour_split(16, seed=1, split="test")
    cfg = from_flags(dataset="cifar10", teacher_arch=arch, teacher_weights=str(tmp_path / name), teacher_epochs=0,
                     teacher_normalize="data", teacher_image_size=32, output_dir=str(tmp_path / "run"),
                     channels_last=False)
    path, info = pipeline.resolve_teacher(accelerator, cfg, train, test)
    assert info["note"] == "used as given (--teacher-epochs 0)" and info["arch"] == arch
    x = to_float(test.images)
    with torch.no_grad():
        want = direct(x)
        assert torch.equal(kd_accel.load_model(path)(x), want)  # rebuilt from the file's metadata alone
    assert info["test_accuracy"] == 100.0 * float((want.argmax(1) == test.labels).float().mean())
    _, meta = read_checkpoint(path)
    assert meta["role"] == "teacher" and json.loads(meta["settings"])["epochs"] == 0
    soft, _, _ = teaching.resolve_soft_targets(accelerator, cfg, path, TeacherId.of(info), train)
    with torch.no_grad():
        assert torch.allclose(soft.logits(0), direct(to_float(train.images)), atol=1e-5)


def test_a_timm_teacher_brings_its_pretrained_preprocessing(accelerator, tmp_path):
    """timm:NAME.TAG, no flags: timm's pretrained_cfg for that tag (test_efficientnet.r160_in1k:
    160 px, its mean/std, bicubic); the cache holds the teacher's logits on the data resized and
    normalised that way. (Without the tag the file is taken as one's own: the data's way.)"""
    import timm
    from timm.data import resolve_data_config

    direct = timm_file(tmp_path / "eff.safetensors")
    train, test = colour_split(24), colour_split(16, seed=1, split="test")
    cfg = from_flags(dataset="cifar10", teacher_arch=TIMM + ".r160_in1k", teacher_weights=str(tmp_path / "eff.safetensors"),
                     teacher_epochs=0, output_dir=str(tmp_path / "run"), channels_last=False)
    path, info = pipeline.resolve_teacher(accelerator, cfg, train, test)
    want = resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg("test_efficientnet").to_dict())
    prep = kd_accel.load_model(path).preprocessing
    assert prep["image_size"] == list(want["input_size"][1:]) and prep["mean"] == list(want["mean"])
    assert prep["std"] == list(want["std"]) and prep["interpolation"] == want["interpolation"]
    soft, _, _ = teaching.resolve_soft_targets(accelerator, cfg, path, TeacherId.of(info), train)
    untagged = recipe_preprocessing(from_flags(dataset="cifar10", arch=TIMM, weights=cfg.teacher.weights).student, train)
    assert untagged["image_size"] == [32, 32] and untagged["source"] == "data"
    x = torch.nn.functional.interpolate(to_float(train.images), size=want["input_size"][1:], mode=want["interpolation"],
                                        align_corners=False)
    x = (x - torch.tensor(want["mean"])[:, None, None]) / torch.tensor(want["std"])[:, None, None]
    with torch.no_grad():
        assert torch.allclose(soft.logits(0), direct(x), atol=1e-4)


def test_a_classifier_for_other_classes_is_reinitialised_and_said(accelerator, tmp_path, capsys):
    import torchvision.models as tvm

    torch.save({"state_dict": tvm.get_model("mobilenet_v3_small", num_classes=1000).state_dict()}, tmp_path / "in1k.pth")
    cfg = from_flags(dataset="cifar10", teacher_arch=TV, teacher_weights=str(tmp_path / "in1k.pth"), teacher_epochs=0,
                     output_dir=str(tmp_path / "run"))
    pipeline.resolve_teacher(accelerator, cfg, colour_split(8), colour_split(8, seed=1, split="test"))
    assert "classifier classifier.3 re-initialised: the file has 1000 classes, the data 10" in capsys.readouterr().out


# --- each model's preprocessing ---------------------------------------------------------------

@pytest.fixture
def big_teacher(accelerator, tmp_path):
    """A notebook teacher that takes 36x36 inputs (--teacher-image-size 36): the student's 28x28
    views are resized for it."""
    cfg = from_flags(teacher_epochs=1, teacher_image_size=36, output_dir=str(tmp_path / "t"), batch_size=20)
    train = tiny_split(60)
    path, info = pipeline.resolve_teacher(accelerator, cfg, train, tiny_split(20, seed=1))
    return path, TeacherId.of(info)


def test_the_preprocessing_is_recorded_and_a_saved_model_rebuilds_with_it(big_teacher):
    path, teacher = big_teacher
    model = kd_accel.load_model(path)
    assert model.preprocessing["image_size"] == [36, 36] and model.input_shape == (1, 36, 36)
    assert teacher.input == "36x36 bilinear mean=None std=None"
    assert json.loads(read_checkpoint(path)[1]["arch_spec"])["spec"] == "notebook:teacher"


@pytest.mark.parametrize("mode", ["cache", "online"])
def test_the_teacher_sees_its_own_version_of_the_students_view(mode, accelerator, big_teacher, tmp_path, monkeypatch):
    """Same crop (the shift view e mod K), the teacher's size: the soft targets are the teacher's
    logits on its resized version of the student's exact view, never on the student's input."""
    path, teacher = big_teacher
    train = tiny_split(40)
    cfg = from_flags(augment="shift", views=2, teacher_mode=mode, epochs=2, batch_size=20,
                     output_dir=str(tmp_path / mode))
    soft, online, _ = teaching.resolve_soft_targets(accelerator, cfg, path, teacher, train)
    frozen = kd_accel.load_model(path)
    own_view = inputs_for(SPECS["shift"], frozen.preprocessing)
    seen = []

    def check(label, batch):
        with torch.no_grad():
            want = frozen(own_view(batch)).float()
        assert batch["x"].shape[-1] == 28 and own_view(batch).shape[-1] == 36
        seen.append(float((batch["teacher_logits"].float() - want).abs().max() / want.abs().max()))

    monkeypatch.setattr(training.HOOKS, "batch", [check])
    pipeline.train_student(accelerator, cfg, train, tiny_split(20, seed=1), soft, "student", teacher, online)
    assert len(seen) == 4 and max(seen) < 2e-3, seen  # fp16 cache rounding; online: exact


def test_a_cache_made_with_other_teacher_preprocessing_is_refused_by_name(accelerator, big_teacher, tmp_path):
    """The same weights with another input (here: another normalisation recorded) are another
    teacher: its cache is refused, naming the preprocessing."""
    path, teacher = big_teacher
    train = tiny_split(40)
    cfg = from_flags(output_dir=str(tmp_path / "a"))
    teaching.resolve_soft_targets(accelerator, cfg, path, teacher, train)
    model, meta = kd_accel.load_model(path), read_checkpoint(path)[1]
    record = json.loads(meta["arch_spec"])
    record["preprocessing"] = {**record["preprocessing"], "mean": [0.5], "std": [0.25]}
    other = tmp_path / "other_teacher.safetensors"
    save_model(model, other, "teacher", 10, record=record)
    other_id = TeacherId(teacher.weights, describe(record["preprocessing"]))
    assert other_id.weights == teacher.weights and other_id.input != teacher.input
    reuse = from_flags(output_dir=str(tmp_path / "b"), logits=str(teaching.cache_path(cfg)))
    with pytest.raises(CacheMismatch) as e:
        teaching.resolve_cache(accelerator, reuse, other, other_id, train)
    assert "teacher preprocessing differs (teacher_input: cache '36x36 bilinear mean=None std=None'" in one_line(e)


def test_known_weights_bring_their_preprocessing_and_flags_override_it(tmp_path):
    """torchvision's file under its published name: its transforms (224 px, ImageNet mean/std,
    averaged for one grey channel); --normalize data and --image-size take the data's way."""
    from kd_accel.roles import resolved_recipe

    published = tmp_path / "mobilenet_v3_small-047dcff4.pth"
    torchvision_file(published)
    train = tiny_split(8)
    cfg = from_flags(arch=TV, weights=str(published))
    prep = recipe_preprocessing(cfg.student, train)
    assert prep["image_size"] == [224, 224] and prep["source"] == "torchvision mobilenet_v3_small IMAGENET1K_V1"
    assert prep["mean"] == [pytest.approx((0.485 + 0.456 + 0.406) / 3)]
    data = recipe_preprocessing(from_flags(arch=TV, weights=str(published), normalize="data", image_size=32).student,
                                train)
    assert data["image_size"] == [32, 32] and data["mean"] is None
    # a stamp resolves both: the same file under another name (no known transforms) is another recipe
    renamed = tmp_path / "mine.pth"
    renamed.write_bytes(published.read_bytes())
    a, b = (resolved_recipe(from_flags(arch=TV, weights=str(w)).student, train) for w in (published, renamed))
    assert a["weights"] == b["weights"] and a["normalize"] != b["normalize"]


# --- saved students load back with one call ---------------------------------------------------

def test_a_zoo_student_round_trips_through_its_file(accelerator, tmp_path):
    train = tiny_split(40)
    cfg = from_flags(arch=TIMM, image_size=32, epochs=1, batch_size=20, output_dir=str(tmp_path))
    info = pipeline.train_student(accelerator, cfg, train, tiny_split(20, seed=1), None, "baseline")
    assert info["arch"] == TIMM
    model = kd_accel.load_model(tmp_path / "baseline.safetensors")
    assert model.preprocessing["image_size"] == [32, 32] and not model.training
    # the same weights in plain timm, as docs/own-models.md says: the file's tensors are a state dict
    import timm
    from safetensors.torch import load_file

    plain = timm.create_model("test_efficientnet", num_classes=10, in_chans=1)
    plain.load_state_dict(load_file(tmp_path / "baseline.safetensors"))
    x = torch.nn.functional.interpolate(to_float(train.images[:4]), size=32, mode="bilinear", antialias=False)
    with torch.no_grad():
        assert torch.equal(model(x), plain.eval()(x))
        assert torch.equal(model(x), model(inputs_for(SPECS["none"], model.preprocessing)({"images": train.images[:4]})))


# --- the command line ---------------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["--student-arch", "torchvision:mobilenet_v3_smal"], "closest: torchvision:mobilenet_v3_small"),
    (["--teacher-arch", "resnet18"], "is not SOURCE:NAME; did you mean torchvision:resnet18, timm:resnet18"),
    (["--teacher-weights", "/nonexistent.pth", "--teacher-epochs", "0"], "--teacher-weights /nonexistent.pth: not found"),
    (["--teacher-epochs", "0"], "--teacher-epochs 0 uses the teacher as --teacher-weights give it"),
    (["--epochs", "0"], "--epochs must be >= 1 for a student"),
])
def test_bad_model_flags_are_one_line_before_any_work(args, words, capsys, tmp_path, mnist_dir, reset_accelerate):
    err = cli_error(cli.distill_main, ["--data-dir", mnist_dir, "--output-dir", tmp_path / "r", *args], capsys)
    assert words in err, err
    assert not (tmp_path / "r").exists()


def test_teacher_weights_beside_a_teacher_file_is_refused(capsys, tmp_path, tiny_teacher, mnist_dir, reset_accelerate):
    torch.save({}, tmp_path / "w.pth")
    err = cli_error(cli.distill_main, ["--data-dir", mnist_dir, "--teacher", tiny_teacher, "--teacher-weights",
                                       tmp_path / "w.pth", "--output-dir", tmp_path / "r"], capsys)
    assert "--teacher-weights would be ignored" in err


def test_a_recipes_teacher_arch_that_is_the_teacher_files_own_is_no_conflict(tiny_teacher, tmp_path):
    """distill.py -c recipe.yaml (which names --teacher-arch) --teacher FILE: the same architecture
    as the file records is accepted; another is refused as ignored."""
    base = ["--teacher", str(tiny_teacher), "--output-dir", str(tmp_path / "r")]
    cfg, _ = cli.parse(cli.distill_parser(), cli.ALL, [*base, "--teacher-arch", "notebook:teacher"])
    assert cfg.teacher.arch == "notebook:teacher"
    with pytest.raises(KDError, match="--teacher-arch would be ignored"):
        cli.parse(cli.distill_parser(), cli.ALL, [*base, "--teacher-arch", "notebook:student"])


def test_list_models(capsys):
    with pytest.raises(SystemExit) as e:
        cli.distill_parser().parse_args(["--list-models", "mobilenet_v3*"])
    out = capsys.readouterr().out.split()
    assert e.value.code == 0 and "torchvision:mobilenet_v3_small" in out and all("mobilenet_v3" in n for n in out)


def test_fitnets_with_another_architecture_is_refused_before_the_teacher_trains(tmp_path, mnist_dir, capsys,
                                                                               reset_accelerate):
    err = cli_error(cli.compare_main, ["--data-dir", mnist_dir, "--limit-train", "100", "--output-dir", tmp_path,
                                       "--student-arch", TIMM, "--variants", "baseline", "fitnets", "--seeds", "0"], capsys)
    assert "FitNets hints are defined for the notebook's models only" in err and TIMM in err
    assert not (tmp_path / "teacher.safetensors").exists()


def test_a_resume_with_another_student_architecture_is_refused_by_name(tmp_path, mnist_dir):
    args = ["--data-dir", mnist_dir, "--limit-train", "100", "--limit-test", "50", "--epochs", "1",
            "--teacher-epochs", "1", "--batch-size", "50", "--no-baseline", "--output-dir", tmp_path]
    run_main(cli.distill_main, args)
    with pytest.raises(KDError) as e:
        run_main(cli.distill_main, [*args, "--resume", "latest", "--student-arch", TIMM])
    assert f"arch notebook:student -> {TIMM}" in one_line(e)


@pytest.mark.slow
def test_one_study_compares_student_architectures(tmp_path, mnist_dir):
    """compare.py arch= variants: each architecture distilled beside its own baseline, one teacher
    and one cache, the table naming each."""
    run_main(cli.compare_main, ["--data-dir", mnist_dir, "--limit-train", "100", "--limit-test", "50", "--epochs", "1",
                                "--teacher-epochs", "1", "--batch-size", "50", "--output-dir", tmp_path, "--seeds", "0",
                                "--variants", "baseline", "hinton", f"baseline:arch={TIMM}", f"hinton:arch={TIMM}"])
    results = json.loads((tmp_path / "results.json").read_text())
    names = set(results["variants"]) if "variants" in results else set(results)
    text = json.dumps(results)
    assert f"baseline arch={TIMM}" in text and f"hinton T=4 a=0.9 arch={TIMM}" in text, names
    model = kd_accel.load_model(next(tmp_path.glob("compare/hinton_T=4_a=0.9_arch=timm_test_efficientnet/seed0*")))
    assert type(model).__name__ == "EfficientNet"


def test_a_teacher_file_from_before_records_is_the_notebooks(tmp_path, accelerator):
    """Files written before architecture records said the role as "arch": they hold the
    notebook's models, taking the data as they are (FitNets accepts them)."""
    from kd_accel.models import Teacher
    from kd_accel.roles import check_fitnets

    path = tmp_path / "old_teacher.safetensors"
    save_file({k: v.contiguous() for k, v in Teacher().state_dict().items()}, str(path),
              metadata={"arch": "teacher", "num_classes": "10"})
    cfg = from_flags(teacher=str(path))
    assert pipeline.teacher_arch(cfg) == "notebook:teacher"
    check_fitnets("notebook:student", pipeline.teacher_arch(cfg))
    model = kd_accel.load_model(path)
    assert model.preprocessing is None and type(model).__name__ == "Teacher"
    _, info = pipeline.resolve_teacher(accelerator, cfg, tiny_split(20), tiny_split(10, seed=1))
    assert info["arch"] == "notebook:teacher" and info["input"] == "28x28 bilinear mean=None std=None"



def test_a_kd_accel_model_file_as_weights_brings_its_recorded_preprocessing(big_teacher):
    """--teacher-weights runs/x/teacher.safetensors (a file kd_accel saved): the preprocessing it
    records (here 36 px), not the data's."""
    path, _ = big_teacher
    prep = recipe_preprocessing(from_flags(arch="notebook:teacher", weights=str(path)).student, tiny_split(8))
    assert prep["image_size"] == [36, 36] and prep["source"] == f"recorded in {path.name}"


def test_a_zoo_student_under_bf16_from_a_top_k_k_view_cache(tmp_path, reset_accelerate):
    """The rest of the toolkit with another architecture: bf16 autocast, channels-last, a top-k
    K-view cache replayed with augmentation, the online teacher."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    train, test = tiny_split(40), tiny_split(20, seed=1)
    cfg = from_flags(arch=TIMM, image_size=32, teacher_epochs=1, epochs=2, batch_size=20, augment="shift", views=2,
                     cache_topk=3, output_dir=str(tmp_path))
    path, info = pipeline.resolve_teacher(accelerator, cfg, train, test)
    soft, online, cache = teaching.resolve_soft_targets(accelerator, cfg, path, TeacherId.of(info), train)
    assert soft.views == 2 and soft.storage == "top3" and online is None
    got = pipeline.train_student(accelerator, cfg, train, test, soft, "student", TeacherId.of(info))
    assert got["arch"] == TIMM and 0 <= got["test_accuracy"] <= 100 and len(got["epochs"]) == 2
    cfg = from_flags(arch=TIMM, image_size=32, epochs=1, batch_size=20, augment="shift", teacher_mode="online",
                     output_dir=str(tmp_path / "online"))
    _, online, _ = teaching.resolve_soft_targets(accelerator, cfg, path, TeacherId.of(info), train)
    assert pipeline.train_student(accelerator, cfg, train, test, None, "student", TeacherId.of(info),
                                  online)["test_accuracy"] >= 0


@pytest.mark.slow  # end to end: a ResNet-18 teacher from a .pth file, a run (2.7 s)
def test_a_user_with_a_pth_teacher_runs_one_command(tmp_path, mnist_dir):
    """The issue's done-criterion through the launch script's entry point, to its last line: a
    torchvision .pth given as the teacher (used as it is), a zoo student, its baseline and the
    table; then train_teacher.py --arch fine-tunes the same file."""
    import torchvision.models as tvm

    torch.manual_seed(0)
    torch.save(tvm.get_model("mobilenet_v3_small", num_classes=10).state_dict(), tmp_path / "teacher.pth")
    common = ["--data-dir", mnist_dir, "--limit-train", "100", "--limit-test", "50", "--batch-size", "50"]
    run_main(cli.distill_main, [*common, "--teacher-arch", TV, "--teacher-weights", tmp_path / "teacher.pth",
                                "--teacher-epochs", "0", "--student-arch", TIMM, "--epochs", "1",
                                "--output-dir", tmp_path / "run"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["teacher"]["note"] == "used as given (--teacher-epochs 0)" and metrics["teacher"]["arch"] == TV
    assert metrics["student"]["arch"] == metrics["baseline"]["arch"] == TIMM
    assert type(kd_accel.load_model(tmp_path / "run" / "student.safetensors")).__name__ == "EfficientNet"
    run_main(cli.train_teacher_main, [*common, "--arch", TV, "--weights", tmp_path / "teacher.pth", "--epochs", "1",
                                      "--output-dir", tmp_path / "tuned"])
    tuned = kd_accel.load_model(tmp_path / "tuned" / "teacher.safetensors")
    given = kd_accel.load_model(tmp_path / "run" / "teacher.safetensors")
    assert tuned.state_dict().keys() == given.state_dict().keys()
    assert not torch.equal(tuned.state_dict()["classifier.3.weight"], given.state_dict()["classifier.3.weight"])
