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
