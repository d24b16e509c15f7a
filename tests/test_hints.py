import torch

from kd_accel.hints import FitNetStudent, hint_objective, joint_objective, teacher_hint
from kd_accel.training import make_objective
from kd_accel.models import Student, Teacher


def test_shapes_match_between_guided_layer_and_hint():
    x = torch.rand(4, 1, 28, 28)
    teacher, fn = Teacher(), FitNetStudent(Student())
    logits, regressed = fn(x)
    assert logits.shape == (4, 10)
    assert regressed.shape == teacher_hint(teacher)(x).shape == (4, 16, 14, 14)
    assert fn.hint_stage()(x).shape == (4, 16, 14, 14)


def test_hint_stage_gradients_reach_guided_layers_only():
    torch.manual_seed(0)
    x = torch.rand(8, 1, 28, 28)
    teacher, fn = Teacher(), FitNetStudent(Student())
    hint = teacher_hint(teacher)
    out = hint_objective(hint)(fn.hint_stage()(x), {"x": x})
    out["loss"].backward()
    assert fn.student.features[0].weight.grad.abs().sum() > 0
    assert fn.regressor.weight.grad.abs().sum() > 0
    assert fn.student.head[1].weight.grad is None  # the classifier is not trained by hints
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_joint_loss_adds_weighted_hint_and_trains_everything():
    torch.manual_seed(0)
    x = torch.rand(8, 1, 28, 28)
    batch = {"x": x, "labels": torch.randint(0, 10, (8,)), "teacher_logits": torch.randn(8, 10)}
    teacher, fn = Teacher(), FitNetStudent(Student())
    parts = joint_objective(teacher_hint(teacher), make_objective("hinton", 2.0, 0.5), beta=3.0)(fn(x), batch)
    assert torch.allclose(parts["loss"], 0.5 * parts["hard"] + 0.5 * parts["soft"] + 3.0 * parts["hint"])
    parts["loss"].backward()
    assert fn.student.head[1].weight.grad.abs().sum() > 0 and fn.regressor.weight.grad.abs().sum() > 0
