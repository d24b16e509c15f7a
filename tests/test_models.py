import torch

from kd_accel.models import Student, Teacher, build_model, count_params, load_model, save_model, state_fingerprint


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

    train = load_split("mnist", "train", mnist_dir).subset(1000)
    for arch in (Student, Teacher):
        for fmt in (torch.channels_last, torch.contiguous_format):
            torch.manual_seed(0)
            fast = arch().to(memory_format=fmt)
            slow = _notebook_order(fast)
            assert [type(m).__name__ for m in slow.modules()] != [type(m).__name__ for m in fast.modules()]
            opts = [torch.optim.Adam(m.parameters(), 1e-3) for m in (fast, slow)]
            for i in range(0, 1000, 100):
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
