"""Issue 27 item 4: one's own model code as --arch / --teacher-arch ("path/to/file.py:callable",
"module.path:callable") with --arch-kwargs; the saved model records spec, kwargs and the source's
sha256, so load_model rebuilds it, a changed source is warned of on load and refused on resume.
Also the model code shipped in configs/recipes/ (the CIFAR ResNets, Hinton's MNIST nets)."""
import hashlib
import importlib.util

import pytest
import torch
from torch import nn

import kd_accel
from conftest import ROOT, cli_error, run_main, tiny_split
from kd_accel import cli
from kd_accel.config import Recipe, from_flags
from kd_accel.errors import KDError
from kd_accel.models import (arch_identity, arch_spec, build_from_spec, build_zoo_model, check_arch, load_model,
                             parse_arch, save_model)
from kd_accel.preflight import check_model
from kd_accel.roles import check_fitnets
from kd_accel.study import parse_variant

RECIPES = ROOT / "configs" / "recipes"
HINTON = f"{RECIPES / 'hinton_mnist.py'}"
CIFAR = f"{RECIPES / 'cifar_resnet.py'}"

# model code as a user writes it: a builder with a width, and callables of each kind of signature
NETS = '''
from torch import nn


def make(num_classes, input_shape, width=4):
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, width), nn.ReLU(), nn.Linear(width, num_classes))


def got(args):
    model = nn.Linear(1, 1)
    model.got = args  # what the callable was given
    return model


def takes_all(num_classes, in_channels, input_shape):
    return got((num_classes, in_channels, input_shape))


def catch_all(**kwargs):
    return got(kwargs)


def seven(input_shape):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], 7))


def fails(num_classes):
    raise ValueError("no such depth")


def not_a_module(num_classes):
    return {"fc": num_classes}


NUMBER = 3
'''


def one_line(call, *args, **kwargs):
    with pytest.raises(KDError) as e:
        call(*args, **kwargs)
    msg = str(e.value)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


@pytest.fixture
def nets(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return path


def test_bad_model_code_is_one_line_naming_the_spec(tmp_path, nets):
    (tmp_path / "broken.py").write_text("def make(:\n")
    (tmp_path / "imports.py").write_text("import kd_accel_no_such_package\n")
    cases = [  # (spec, kwargs, what the line says)
        (f"{tmp_path}/broken.py:make", None, "broken.py fails to import: SyntaxError"),
        (f"{tmp_path}/imports.py:make", None, "fails to import: ModuleNotFoundError: No module named "
                                              "'kd_accel_no_such_package'"),
        (f"{nets}:mak", None, "has no 'mak'; did you mean make"),
        (f"{nets}:NUMBER", None, "NUMBER is a int, not a callable"),
        (f"{tmp_path}/absent.py:make", None, "model code " + f"{tmp_path}/absent.py not found"),
        (f"{nets}:make", "[1]", "--arch-kwargs '[1]' is not a JSON object"),
        (f"{nets}:make", "{width: 3}", "--arch-kwargs '{width: 3}' is not JSON"),
        (f"{nets}:make", '{"num_classes": 3}', "--arch-kwargs sets num_classes: kd_accel passes"),
        ("notebook:student", '{"width": 3}', "--arch-kwargs: notebook:student takes no keyword arguments"),
        ("kd_accel_no_such_module:make", None, "unknown model source 'kd_accel_no_such_module'"),
        ("kd_accel.models.kd_accel_no_such:make", None, "no module named 'kd_accel.models.kd_accel_no_such'"),
    ]
    for spec, kwargs, words in cases:
        msg = one_line(check_arch, spec, kwargs)
        assert words in msg and (spec in msg or "--arch-kwargs" in msg), (spec, msg)
    assert "timm:test_resnet with --arch-kwargs {\"bogus\":1}: ResNet.__init__() got an unexpected keyword argument" \
        in one_line(build_zoo_model, "timm:test_resnet", 10, 3, None, '{"bogus": 1}')
    # what only the call shows: raised, or gave no module (built before any work: preflight.check_model)
    assert "fails(num_classes=10) raised ValueError: no such depth" in one_line(build_zoo_model, f"{nets}:fails", 10, 1)
    assert "returned a dict, not a torch.nn.Module" in one_line(build_zoo_model, f"{nets}:not_a_module", 10, 1)
    assert "not a tensor of logits [1, 10] for the data's 10 classes" in \
        one_line(check_model, Recipe(arch=f"{nets}:seven"), tiny_split(8), "student")
    # a misspelt source stays what it was: not taken for a module
    assert "did you mean torchvision?" in one_line(parse_arch, "torchvison:resnet18")
    # FitNets is the notebook's; a compare variant takes model code
    assert "FitNets hints are defined for the notebook's models only" in \
        one_line(check_fitnets, f"{nets}:make", "notebook:teacher")
    assert parse_variant(f"baseline:arch={nets}:make", from_flags()).arch == f"{nets}:make"


def test_the_callable_gets_the_data_s_counts_it_names(nets):
    model, _ = build_zoo_model(f"{nets}:make", 10, 1, (28, 28))
    assert model[1].in_features == 784 and model[3].out_features == 10
    # named parameters get num_classes, in_channels, input_shape; **kwargs alone gets num_classes
    assert build_zoo_model(f"{nets}:takes_all", 10, 3, (32, 32))[0].got == (10, 3, (3, 32, 32))
    assert build_zoo_model(f"{nets}:catch_all", 10, 3, (32, 32), {"depth": 2})[0].got == {"depth": 2, "num_classes": 10}
    # a module path works as a file does: torchvision's builders take num_classes through **kwargs
    model, _ = build_zoo_model("torchvision.models:mobilenet_v3_small", 7, 3)
    assert model.classifier[-1].out_features == 7
    check_model(Recipe(arch=f"{nets}:make", arch_kwargs='{"width": 5}'), tiny_split(8), "student")  # 10 logits
    # the zoo's builders take kwargs too, recorded only where given (earlier records are unchanged)
    record = arch_spec("timm:test_resnet", 10, (3, 32, 32), None, '{"drop_rate": 0.25}')
    assert record["kwargs"] == {"drop_rate": 0.25} and build_from_spec(record)[0].drop_rate == 0.25
    assert "kwargs" not in arch_spec("timm:test_resnet", 10, (3, 32, 32), None, "{}")


def test_kwargs_and_source_round_trip_through_a_model_file(tmp_path, nets, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the spec as a user gives it: relative to the working directory
    record = arch_spec("nets.py:make", 10, (1, 28, 28), None, '{ "width": 6 }')
    assert record["spec"] == "nets.py:make" and record["kwargs"] == {"width": 6}
    assert record["code"] == {"file": str(nets), "sha256": hashlib.sha256(nets.read_bytes()).hexdigest()}
    torch.manual_seed(0)
    model, _ = build_from_spec(record)
    save_model(model, tmp_path / "student.safetensors", "student", 10, record=record)
    loaded = kd_accel.load_model(tmp_path / "student.safetensors")
    assert loaded[1].out_features == 6 and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                                                  loaded.state_dict().values()))
    assert capsys.readouterr().err == ""
    # the source changed: said in one line on load, and the stamped identity is another
    before = arch_identity(record)
    nets.write_text(NETS + "\n# changed\n")
    monkeypatch.chdir(ROOT)  # the recorded absolute path finds it from anywhere
    kd_accel.load_model(tmp_path / "student.safetensors")
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "nets.py:make: the model code" in err and "changed since the model was saved" in err, err
    monkeypatch.chdir(tmp_path)
    after = arch_identity(arch_spec("nets.py:make", 10, (1, 28, 28), None, '{"width": 6}'))
    assert before != after and before.startswith("nets.py:make (source sha256 ")
    # the source moved away: the spec's own path, relative to the working directory, is used
    moved = tmp_path / "moved"
    moved.mkdir()
    nets.rename(moved / "nets.py")
    monkeypatch.chdir(moved)
    assert kd_accel.load_model(tmp_path / "student.safetensors")[1].out_features == 6
    monkeypatch.chdir(ROOT)
    assert "nets.py not found (recorded as" in one_line(load_model, tmp_path / "student.safetensors")


def test_distill_with_model_code_rebuilds_and_refuses_changed_code_on_resume(tmp_path, nets, mnist_dir, capsys,
                                                                             reset_accelerate):
    common = ["--data-dir", mnist_dir, "--limit-train", "200", "--limit-test", "100", "--teacher-epochs", "1",
              "--epochs", "1", "--batch-size", "50", "--no-baseline", "--arch", f"{nets}:make",
              "--arch-kwargs", '{"width": 8}', "--teacher-arch", f"{HINTON}:teacher"]
    run = tmp_path / "run"
    run_main(cli.distill_main, [*common, "--output-dir", run])
    teacher = kd_accel.load_model(run / "teacher.safetensors")
    student = kd_accel.load_model(run / "student.safetensors")
    assert [m.out_features for m in teacher if isinstance(m, nn.Linear)] == [1200, 1200, 10]
    assert student[1].out_features == 8
    # a teacher file rebuilt from its record teaches another student
    run_main(cli.distill_main, [*common[:-2], "--teacher", run / "teacher.safetensors", "--output-dir", tmp_path / "b"])
    assert (tmp_path / "b" / "student.safetensors").exists()
    # the student's code changed: a resume is refused naming arch
    nets.write_text(NETS + "\n# changed\n")
    capsys.readouterr()
    err = cli_error(cli.distill_main, [*common, "--output-dir", run, "--resume", "latest"], capsys)
    assert "other settings: arch nets.py:make (source sha256 " in err, err


def test_bad_model_code_on_the_command_line_is_one_line_before_any_work(tmp_path, nets, mnist_dir, capsys,
                                                                        reset_accelerate):
    for args, words in [(["--arch", f"{nets}:mak"], "did you mean make"),
                        (["--teacher-arch", f"{nets}:make", "--teacher-arch-kwargs", "3"],
                         "--teacher-arch-kwargs '3' is not a JSON object"),
                        (["--student-arch", f"{nets}:fails"], "raised ValueError: no such depth")]:
        err = cli_error(cli.distill_main, ["--data-dir", mnist_dir, "--limit-train", "100", "--output-dir",
                                           tmp_path / "r", *args], capsys)
        assert words in err, err
        assert not (tmp_path / "r" / "teacher.safetensors").exists()


# --- the model code shipped in configs/recipes ---------------------------------------------------

def load_file(path):
    spec = importlib.util.spec_from_file_location("shipped", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cifar_resnet_params(depth, widths, num_classes, in_channels=3):
    """Layer arithmetic: a 3x3 stem without bias + BN; per stage, n BasicBlocks of two 3x3 convs
    + 2 BN, the first block projecting (1x1 conv + BN) where the channels or stride change; a
    linear head with bias."""
    n = (depth - 2) // 6
    total = 9 * in_channels * widths[0] + 2 * widths[0]
    cin = widths[0]
    for i, c in enumerate(widths[1:]):
        total += 9 * cin * c + 2 * c + 9 * c * c + 2 * c + (cin * c + 2 * c if i > 0 or cin != c else 0)
        total += (n - 1) * 2 * (9 * c * c + 2 * c)
        cin = c
    return total + widths[3] * num_classes + num_classes


def test_cifar_resnets_have_the_published_sizes():
    nets = load_file(CIFAR)
    # CRD's (Tian et al. 2020) table of the CIFAR-100 models, in millions of parameters
    published = {"resnet20": 0.28, "resnet56": 0.86, "resnet110": 1.74, "resnet8x4": 1.23, "resnet32x4": 7.43}
    shapes = {"resnet8": 8, "resnet14": 14, "resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56,
              "resnet110": 110, "resnet8x4": 8, "resnet32x4": 32}
    for name, depth in shapes.items():
        widths = (32, 64, 128, 256) if name.endswith("x4") else (16, 16, 32, 64)
        count = sum(p.numel() for p in getattr(nets, name)(num_classes=100).parameters())
        assert count == cifar_resnet_params(depth, widths, 100), name
        if name in published:
            assert round(count / 1e6, 2) == published[name], (name, count)
    assert cifar_resnet_params(20, (16, 16, 32, 64), 100) == 278_324  # resnet20, 100 classes
    assert cifar_resnet_params(56, (16, 16, 32, 64), 100) == 861_620
    model = nets.resnet(depth=20, num_classes=100, in_channels=1)  # --arch-kwargs '{"depth": 20}'; grey inputs
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 100)
    with pytest.raises(ValueError, match="not 6n"):
        nets.resnet(depth=21)


def test_hinton_nets_are_the_paper_s():
    nets = load_file(HINTON)
    teacher, student = nets.teacher(), nets.student()
    linear = [(m.in_features, m.out_features) for m in teacher if isinstance(m, nn.Linear)]
    assert linear == [(784, 1200), (1200, 1200), (1200, 10)]
    assert [m.p for m in teacher if isinstance(m, nn.Dropout)] == [0.2, 0.5, 0.5]
    assert [(m.in_features, m.out_features) for m in student if isinstance(m, nn.Linear)] == [(784, 800), (800, 800),
                                                                                              (800, 10)]
    assert not any(isinstance(m, nn.Dropout) for m in student)
    assert sum(p.numel() for p in teacher.parameters()) == 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 10 + 10
    # the weight constraint (off by default): each hidden unit's incoming weights within the radius
    # once a forward has run after an update, the output layer's left as they are
    constrained = nets.teacher(max_norm=3.5)
    constrained.load_state_dict(teacher.state_dict())
    layers = [m for m in constrained if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for m in layers:
            m.weight.mul_(20)  # rows of norm ~11.5: over the radius
        out_weight = layers[-1].weight.clone()
        rows = layers[0].weight[:3].clone()
    constrained(torch.rand(2, 1, 28, 28)).sum().backward()
    assert [round(float(m.weight.detach().norm(dim=1).max()), 4) for m in layers[:2]] == [3.5, 3.5]
    assert torch.allclose(layers[0].weight[:3], rows * 3.5 / rows.norm(dim=1, keepdim=True))  # scaled, not clipped
    assert torch.equal(layers[-1].weight, out_weight)
    assert not any(m._forward_pre_hooks for m in teacher.modules())
    for bad in (0, -1.0, float("nan"), float("inf")):  # refused, not read as "off" or applied
        with pytest.raises(ValueError, match="max_norm must be a finite positive L2 norm"):
            nets.teacher(max_norm=bad)
