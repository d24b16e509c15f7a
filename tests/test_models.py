import pytest
import torch
from safetensors.torch import save_file

from kd_accel.errors import KDError
from kd_accel.hints import FitNetStudent, teacher_hint
from kd_accel.models import (Student, Teacher, build_model, count_params, load_model, read_checkpoint, save_model,
                             state_fingerprint)


def conv_params(cin, cout, k):
    return cin * k * k * cout + cout  # weights + bias


def teacher_params(c, h, w, classes=10):
    """The teacher's parameters from its layer sizes: three conv+BN (BN: weight and bias per
    channel), fc 32*(H/4)*(W/4) -> 300 and fc 300 -> classes."""
    convs = conv_params(c, 16, 5) + 2 * 16 + conv_params(16, 16, 3) + 2 * 16 + conv_params(16, 32, 3) + 2 * 32
    return convs + (32 * (h // 4) * (w // 4)) * 300 + 300 + 300 * classes + classes


def student_params(c, h, w, classes=10):
    """conv3 c->16 + BN, then fc 16*(H/2)*(W/2) -> classes."""
    return conv_params(c, 16, 3) + 2 * 16 + 16 * (h // 2) * (w // 2) * classes + classes


def test_teacher_shapes_and_exact_param_count():
    m = Teacher()
    x = torch.zeros(3, 1, 28, 28)
    assert m(x).shape == (3, 10)
    assert m.block2(m.block1(x)).shape == (3, 16, 14, 14)
    # conv5 416 + bn 32 + conv3 2320 + bn 32 + conv3 4640 + bn 64 + fc 470700 + fc 3010
    assert count_params(m) == 481_214


def test_student_shapes_and_exact_param_count():
    m = Student()
    x = torch.zeros(2, 1, 28, 28)
    assert m(x).shape == (2, 10)
    assert m.features(x).shape == (2, 16, 14, 14)
    assert count_params(m) == 160 + 32 + 31_370


def test_registry_and_class_count():
    assert build_model("teacher", 7)(torch.zeros(1, 1, 28, 28)).shape == (1, 7)


def test_three_channel_32x32_shapes_and_param_counts():
    x = torch.zeros(2, 3, 32, 32)
    t, st = build_model("teacher", 10, (3, 32, 32)), build_model("student", 10, (3, 32, 32))
    assert t(x).shape == (2, 10) and st(x).shape == (2, 10)
    assert t.block2(t.block1(x)).shape == (2, 16, 16, 16) and t.block3(t.block2(t.block1(x))).shape == (2, 32, 8, 8)
    assert st.features(x).shape == (2, 16, 16, 16)
    assert count_params(t) == teacher_params(3, 32, 32) and count_params(st) == student_params(3, 32, 32)
    assert t.input_shape == st.input_shape == (3, 32, 32)


def test_mnist_models_unchanged():
    """The notebook's counts, and the same state-dict keys and shapes as before image sizes were a
    parameter (the count formula agrees with the hard-coded MNIST numbers)."""
    t, st = build_model("teacher"), build_model("student")
    assert count_params(t) == teacher_params(1, 28, 28) == 481_214
    assert count_params(st) == student_params(1, 28, 28) == 31_562
    assert t.input_shape == (1, 28, 28)
    def shapes(m):
        return {k: tuple(v.shape) for k, v in m.state_dict().items()}

    assert shapes(t) == shapes(Teacher()) and shapes(st) == shapes(Student())
    assert tuple(t.state_dict()["head.1.weight"].shape) == (300, 32 * 7 * 7)
    assert tuple(st.state_dict()["head.1.weight"].shape) == (10, 16 * 14 * 14)
    assert build_model("student", 10, (3, 32, 32)).state_dict().keys() == st.state_dict().keys()


@pytest.mark.parametrize("shape", [(0, 28, 28), (1, 3, 28), (1, 28), "abc"])
def test_unbuildable_input_shape_refused(shape):
    with pytest.raises(KDError):
        build_model("teacher", 10, shape)


def test_three_channel_checkpoint_keeps_its_input_shape(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "t.safetensors"
    m = build_model("teacher", 10, (3, 32, 32)).eval()
    save_model(m, path, "teacher", 10)
    m2, meta = load_model(path, "teacher")
    assert meta["input_shape"] == "3,32,32" and m2.input_shape == (3, 32, 32)
    assert state_fingerprint(m.state_dict()) == state_fingerprint(m2.state_dict())
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(m(x), m2.eval()(x))
    with pytest.raises(KDError) as e:
        load_model(path, "teacher", expect_input_shape=(1, 28, 28))
    assert str(path) in str(e.value) and "3x32x32" in str(e.value) and "1x28x28" in str(e.value)


def test_checkpoint_without_input_shape_is_mnist(tmp_path):
    """Files written before "input_shape" existed hold 1x28x28 models and still load."""
    path = tmp_path / "old.safetensors"
    m = Student()
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path),
              metadata={"arch": "student", "num_classes": "10"})
    m2, meta = load_model(path, "student", expect_input_shape=(1, 28, 28))
    assert "input_shape" not in meta and m2.input_shape == (1, 28, 28)
    assert state_fingerprint(m.state_dict()) == state_fingerprint(m2.state_dict())


@pytest.mark.parametrize("bad", ["3,32", "3,32,32,1", "a,b,c", "", "3;32;32", "0,32,32", "3,2,2", "-3,32,32"])
def test_malformed_input_shape_metadata_named(tmp_path, bad):
    path = tmp_path / "t.safetensors"
    save_file({k: v.contiguous() for k, v in Teacher().state_dict().items()}, str(path),
              metadata={"arch": "teacher", "num_classes": "10", "input_shape": bad})
    with pytest.raises(KDError) as e:
        load_model(path, "teacher")
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "input_shape" in msg, msg


def test_save_model_needs_an_input_shape(tmp_path):
    with pytest.raises(KDError, match="input shape"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "l.safetensors", "student", 2)
    with pytest.raises(KDError, match="needs its record"):  # not the notebook's: only a record says what it is
        save_model(torch.nn.Linear(2, 2), tmp_path / "l.safetensors", "linear", 2, input_shape=(3, 32, 32))
    model = build_model("student", 2, (3, 32, 32))
    del model.input_shape
    save_model(model, tmp_path / "l.safetensors", "student", 2, input_shape=(3, 32, 32))
    assert read_checkpoint(tmp_path / "l.safetensors")[1]["input_shape"] == "3,32,32"


def test_fitnet_hint_shapes_on_three_channel_32x32():
    x = torch.rand(4, 3, 32, 32)
    teacher, fn = build_model("teacher", 10, (3, 32, 32)), FitNetStudent(build_model("student", 10, (3, 32, 32)))
    logits, regressed = fn(x)
    assert logits.shape == (4, 10)
    assert regressed.shape == teacher_hint(teacher)(x).shape == (4, 16, 16, 16)
    assert fn.hint_stage()(x).shape == (4, 16, 16, 16)


def test_checkpoint_round_trip_and_fingerprint(tmp_path):
    torch.manual_seed(0)
    m = Teacher()
    save_model(m, tmp_path / "t.safetensors", "teacher", 10, test_accuracy=99.1)
    m2, meta = load_model(tmp_path / "t.safetensors", "teacher")
    assert meta["test_accuracy"] == "99.1"
    assert state_fingerprint(m.state_dict()) == state_fingerprint(m2.state_dict())
    with torch.no_grad():
        m2.block3[1].running_mean[0] += 1e-3  # a BN buffer changes the teacher's outputs
    assert state_fingerprint(m.state_dict()) != state_fingerprint(m2.state_dict())


def _notebook_order(model):
    """A copy of `model` with every conv -> BN -> pool -> ReLU block put back in the notebook's
    order conv -> BN -> ReLU -> pool (the same modules, so the same weights)."""
    import copy

    from torch import nn

    ref = copy.deepcopy(model)
    for name, block in ref.named_children():
        kinds = [type(m) for m in block]
        if kinds[:4] == [nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.ReLU]:
            setattr(ref, name, nn.Sequential(block[0], block[1], block[3], block[2], *block[4:]))
    return ref


def test_pool_before_relu_is_the_notebooks_math_bit_for_bit(mnist_dir):
    """Models compute ReLU after the 2x2 max-pool (a speed change): training either order from
    the same weights on real MNIST (whose blank borders give ties in the pooling windows) gives
    the same weights and outputs bit for bit, in both memory formats."""
    import torch.nn.functional as F

    from kd_accel.data import load_split, to_float

    train = load_split("mnist", "train", mnist_dir).subset(500)
    for arch in (Student, Teacher):
        for fmt in (torch.channels_last, torch.contiguous_format):
            torch.manual_seed(0)
            fast = arch().to(memory_format=fmt)
            slow = _notebook_order(fast)
            assert [type(m).__name__ for m in slow.modules()] != [type(m).__name__ for m in fast.modules()]
            opts = [torch.optim.Adam(m.parameters(), 1e-3) for m in (fast, slow)]
            for i in range(0, 500, 100):
                x = to_float(train.images[i : i + 100]).contiguous(memory_format=fmt)
                for m, opt in zip((fast, slow), opts):
                    F.cross_entropy(m(x), train.labels[i : i + 100]).backward()
                    opt.step()
                    opt.zero_grad()
            a, b = fast.state_dict(), slow.state_dict()
            assert a.keys() == b.keys()
            assert all(torch.equal(a[k], b[k]) for k in a), (arch.__name__, fmt)
            x = to_float(train.images[:200]).contiguous(memory_format=fmt)
            assert torch.equal(fast.eval()(x), slow.eval()(x))
