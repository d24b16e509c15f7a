"""Issue 27, items 1 and 6: optimizers, schedules, gradient clipping and precise BN
(kd_accel/optim.py), each against torch's or timm's own implementation or a hand computation."""
import json
from functools import partial

import pytest
import torch
from safetensors import safe_open
from torch import nn

from conftest import cli_error, run_main, tiny_split, write_image_folder
from kd_accel import cli
from kd_accel.data import TensorData, to_float
from kd_accel.data.loading import EpochPermutation
from kd_accel.data.streamed import load_folder
from kd_accel.errors import run_cli
from kd_accel.models import Student, Teacher
from kd_accel.optim import make_optimizer, param_groups, precise_bn, schedule_of
from kd_accel.pipeline import columns
from kd_accel.training import TrainSpec, bn_hint, chance_warning, fit
from test_folder_errors import images


def lrs_of(scheduler_factory, steps):
    """The lr of each of `steps` optimizer steps under a torch scheduler (base lr 1)."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = scheduler_factory(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def ours(spec, steps_per_epoch):
    return lrs_of(lambda o: torch.optim.lr_scheduler.LambdaLR(o, schedule_of(spec, steps_per_epoch)),
                  spec.epochs * steps_per_epoch)


def test_warmup_cosine_and_step_milestones_follow_torchs_schedulers():
    """Warm-up W steps (LinearLR from 1/(W+1)), then CosineAnnealingLR over the rest, or
    MultiStepLR at the milestone epochs (as steps): torch's SequentialLR, step by step."""
    lr = torch.optim.lr_scheduler
    spe, epochs, warm = 7, 6, 2  # 7 optimizer steps per epoch
    w, total = warm * spe, epochs * spe
    cosine = TrainSpec(epochs, 10, 1.0, "cosine", warmup_epochs=warm)
    def warm_then(o, after):
        return lr.SequentialLR(o, [lr.LinearLR(o, 1 / (w + 1), total_iters=w), after], milestones=[w])

    torch_cosine = lrs_of(lambda o: warm_then(o, lr.CosineAnnealingLR(o, T_max=total - w)), total)
    assert ours(cosine, spe) == pytest.approx(torch_cosine, rel=1e-9, abs=1e-12)
    step = TrainSpec(epochs, 10, 1.0, "step", warmup_epochs=warm, milestones=(3, 5), gamma=0.2)
    torch_step = lrs_of(lambda o: warm_then(o, lr.MultiStepLR(o, [3 * spe - w, 5 * spe - w], gamma=0.2)), total)
    assert ours(step, spe) == pytest.approx(torch_step, rel=1e-12)
    # without warm-up: MultiStepLR alone, and the plain cosine of earlier versions
    assert ours(TrainSpec(epochs, 10, 1.0, "step", milestones=(1,)), spe) == pytest.approx(
        lrs_of(lambda o: lr.MultiStepLR(o, [spe]), total), rel=1e-12)
    assert ours(TrainSpec(epochs, 10, 1.0, "cosine"), spe) == pytest.approx(
        lrs_of(lambda o: lr.CosineAnnealingLR(o, T_max=total), total), rel=1e-9, abs=1e-12)


def test_weight_decay_groups_are_timms_and_defaults_build_the_old_adam():
    """No decay on biases and norms (timm's param_groups_weight_decay) for the notebook's, a
    torchvision and a timm model; each optimizer gets its settings; the defaults are exactly
    torch.optim.Adam(model.parameters(), lr) as before."""
    import timm
    import torchvision
    from timm.optim import param_groups_weight_decay

    models = Student(), torchvision.models.resnet18(num_classes=10), timm.create_model("resnet10t", num_classes=10)
    for model in models:
        want = [([id(p) for p in g["params"]], g["weight_decay"]) for g in param_groups_weight_decay(model, 5e-4)]
        assert [([id(p) for p in g["params"]], g["weight_decay"]) for g in param_groups(model, 5e-4)] == want
        sgd = make_optimizer(model, TrainSpec(1, 1, 0.1, opt="sgd", momentum=0.8, nesterov=True, weight_decay=5e-4),
                             "cpu")
        assert type(sgd) is torch.optim.SGD
        assert [([id(p) for p in g["params"]], g["weight_decay"]) for g in sgd.param_groups] == want
        assert all(g["momentum"] == 0.8 and g["nesterov"] and g["lr"] == 0.1 for g in sgd.param_groups)
        no_decay = {id(p) for g in sgd.param_groups if g["weight_decay"] == 0 for p in g["params"]}
        assert all(id(p) in no_decay for n, p in model.named_parameters() if p.ndim == 1 or n.endswith(".bias"))
    model = Student()
    adamw = make_optimizer(model, TrainSpec(1, 1, 0.1, opt="adamw"), "cpu")
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["weight_decay"] == 0.0  # not torch's 0.01
    old = torch.optim.Adam(model.parameters(), lr=1e-3, fused=False)
    new = make_optimizer(model, TrainSpec(1, 1, 1e-3), "cpu")
    assert type(new) is torch.optim.Adam and len(new.param_groups) == 1
    assert new.param_groups[0]["params"] == old.param_groups[0]["params"] and new.defaults == old.defaults


def test_clip_grad_bounds_each_step_and_fit_tells_the_loss_its_epoch(accelerator):
    """SGD without momentum moves the weights by lr x the clipped gradient: its norm is at most
    --clip-grad, though the loss (x 1e4) would make it far larger; batch["epoch"] is 0-based."""
    train = tiny_split(20)
    epochs = []

    def objective(logits, batch):
        epochs.append(batch["epoch"])
        return {"loss": 1e4 * nn.functional.cross_entropy(logits, batch["labels"])}

    def step_norm(clip):
        torch.manual_seed(0)
        model = Student()
        before = [p.detach().clone() for p in model.parameters()]
        spec = TrainSpec(1, 20, 0.5, opt="sgd", momentum=0.0, clip_grad=clip)
        model, _ = fit(accelerator, model, TensorData(columns(train)), None, spec, objective, "clip")
        return torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]).norm().item() / 0.5

    assert step_norm(2.0) == pytest.approx(2.0, rel=1e-4)
    assert step_norm(None) > 100
    epochs.clear()
    fit(accelerator, Student(), TensorData(columns(train)), None, TrainSpec(2, 10, 1e-3), objective, "epochs")
    assert epochs == [0, 0, 1, 1]


def bn_stats(model):
    return [(m.running_mean.clone(), m.running_var.clone()) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_precise_bn_is_the_cumulative_mean_of_batch_statistics(accelerator, capsys, tmp_path):
    """By hand on a tiny model: running mean/var = the mean over the batches of each batch's mean
    and unbiased variance; momentum, batch count and mode restored. In fit: the first N batches of
    the last epoch's order, on the returned model. A slow BN (momentum 0.01) without precise BN
    is said at the start, and a final accuracy under twice chance at the end: blamed on a
    training loss that did not fall when it did not, else on BatchNorm."""
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3, momentum=0.01)
    model = nn.Sequential(conv, bn).eval()
    bn.num_batches_tracked.fill_(7)
    batches = [torch.randn(4, 1, 6, 6) + i for i in range(3)]
    assert precise_bn(accelerator, model, iter(batches)) == 3
    with torch.no_grad():
        feats = [conv(x) for x in batches]
    assert torch.allclose(bn.running_mean, torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0), atol=1e-6)
    assert torch.allclose(bn.running_var, torch.stack([f.transpose(0, 1).flatten(1).var(1) for f in feats]).mean(0),
                          atol=1e-5)
    assert bn.momentum == 0.01 and int(bn.num_batches_tracked) == 7 and not model.training

    train = tiny_split(60)
    spec = TrainSpec(2, 20, 1e-3, precise_bn=2)
    trained, _ = fit(accelerator, Teacher(), TensorData(columns(train)), None, spec, ce, "bn")
    order = EpochPermutation(len(train), spec.seed).permutation(epoch=1)
    got = bn_stats(trained)
    first_two = [train.images[order[i:i + 20]] for i in (0, 20)]
    precise_bn(accelerator, trained, [to_float(x).contiguous(memory_format=torch.channels_last) for x in first_two])
    assert all(torch.allclose(a, b, atol=1e-5) for g, w in zip(got, bn_stats(trained)) for a, b in zip(g, w))

    # a measurement, not a step: a model with dropout, evaluated (so re-estimated) after epoch 1,
    # trains the same weights with precise BN as without (its pass runs on a fork of the RNG)
    # in memory and from a folder (whose pass also draws a DataLoader's base seed from the RNG)
    def with_dropout(n, data, test, side=28):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                            nn.Linear(4 * (side - 2) ** 2, 10))
        return fit(accelerator, net, data, test, TrainSpec(2, 20, 1e-3, precise_bn=n), ce, "bn")[0].state_dict()

    write_image_folder(tmp_path / "train", images(60, size=12), torch.arange(60) % 10)
    write_image_folder(tmp_path / "val", images(20, seed=1, size=12), torch.arange(20) % 10)
    size = {"image_size": (12, 12)}
    folder = load_folder(tmp_path, "train", channels=1, workers=0).at(size)
    val = load_folder(tmp_path, "test", 1, 0, folder.index.classes).at(size)
    for data, test, side in [(TensorData(columns(train)), tiny_split(20), 28), (folder.train_data(), val, 12)]:
        on, off = with_dropout(2, data, test, side), with_dropout(0, data, test, side)
        assert all(torch.equal(on[k], off[k]) for k in on if "running" not in k)
        assert not torch.equal(on["1.running_var"], off["1.running_var"])

    capsys.readouterr()
    bn_hint(accelerator, model, TrainSpec(1, 1, 1e-3), "student")
    bn_hint(accelerator, model, TrainSpec(1, 1, 1e-3, precise_bn=5), "student")  # on: nothing to say
    fell = [{"epoch": 1, "loss_loss": 2.1}, {"epoch": 3, "loss_loss": 0.4}]
    rose = [{"epoch": 1, "loss_loss": 48.8}, {"epoch": 5, "loss_loss": 69.7}]  # DKD under SGD, issue 27's study
    spec, ten = TrainSpec(1, 1, 1e-3), tiny_split(10)
    chance_warning(accelerator, model, spec, "teacher", [*fell[:1], {**fell[1], "test_accuracy": 9.85}], ten)
    chance_warning(accelerator, model, spec, "teacher", [*fell[:1], {**fell[1], "test_accuracy": 74.0}], ten)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "momentum 0.01" in lines[0] and "--precise-bn N" in lines[0]
    assert "9.85%" in lines[1] and "--teacher-precise-bn N" in lines[1] and "loss fell" in lines[1]

    # a loss that did not fall (rose, or NaN) is named as the cause, with or without BatchNorm; a
    # model without BatchNorm whose loss fell, or one with precise BN on, is not blamed on BN
    plain = nn.Sequential(nn.Flatten(), nn.Linear(36, 10))
    nan = [rose[0], {"epoch": 2, "loss_loss": float("nan")}]
    for m, hist, sp in [(model, rose, spec), (plain, rose, spec), (plain, nan, spec), (plain, fell, spec),
                        (model, fell, TrainSpec(1, 1, 1e-3, precise_bn=5)), (model, rose[1:], spec)]:
        chance_warning(accelerator, m, sp, "student", [*hist[:-1], {**hist[-1], "test_accuracy": 10.0}], ten)
        print("--")
    said = capsys.readouterr().out.split("--\n")[:-1]
    assert ["did not fall (48.8 in epoch 1, 69.7 in epoch 5)" in x for x in said] == [1, 1, 0, 0, 0, 0]
    assert "nan in epoch 2" in said[2] and "--lr, --warmup-epochs, --clip-grad" in said[0]
    assert said[3] == said[4] == "" and "BatchNorm" in said[5]  # one epoch: no trend to read, BN is named


def test_resumed_mid_epoch_the_recipe_trains_the_same_weights(accelerator, tmp_path):
    """SGD + weight decay, warm-up, a milestone, clipping and precise BN before each evaluation:
    crashed mid-epoch and resumed, the same weights, BN statistics and accuracies bit for bit."""
    from kd_accel.checkpointing import Checkpointer
    from kd_accel.config import from_flags, with_flags
    from kd_accel.training import Hooks

    class Crash(Exception):
        pass

    def crash(label, step):
        # 8 steps an epoch: mid-epoch 3, after the checkpoint at step 21; precise BN then takes the
        # same batches of the last epoch as the run that went through
        if step == 22:
            raise Crash

    train, test = tiny_split(64), tiny_split(20, seed=1)
    cfg = from_flags(epochs=3, batch_size=8, opt="sgd", weight_decay=5e-4, schedule="step", milestones=[2],
                     warmup_epochs=1, precise_bn=2, clip_grad=1.0, checkpoint_every="3", output_dir=str(tmp_path))

    def run(c, folder, hooks=None):
        torch.manual_seed(0)
        model, hist = fit(accelerator, Student(), TensorData(columns(train)), test, TrainSpec.of(c.student, c.run), ce,
                          "s", Checkpointer.of(c.run, folder, {"recipe": "x"}), hooks=hooks)
        return {k: v.clone() for k, v in model.state_dict().items()}, [e["test_accuracy"] for e in hist["epochs"]]

    whole = run(cfg, tmp_path / "whole")
    with pytest.raises(Crash):
        run(cfg, tmp_path / "ckpt", Hooks(step=[crash]))
    resumed = run(with_flags(cfg, resume="latest"), tmp_path / "ckpt")
    assert whole[1] == resumed[1] and all(torch.equal(whole[0][k], resumed[0][k]) for k in whole[0])


def ce(logits, batch):
    return {"loss": nn.functional.cross_entropy(logits, batch["labels"])}


@pytest.mark.parametrize("argv,words", [
    (["--milestones", "2"], "--milestones 2 is for --schedule step; the schedule is cosine"),
    (["--schedule", "step"], "--schedule step needs --milestones EPOCH"),
    (["--schedule", "step", "--milestones", "5", "5"], "--milestones 5 5: epochs strictly increasing, each within 1.."),
    (["--schedule", "step", "--milestones", "21"], "--milestones 21: epochs strictly increasing, each within 1..20"),
    (["--teacher-schedule", "step", "--teacher-milestones", "0"], "--teacher-milestones must be >= 1, got 0"),
    (["--nesterov"], "--nesterov is Nesterov momentum of --opt sgd with --momentum > 0; here --opt adam"),
    (["--teacher-warmup-epochs", "5"], "--teacher-warmup-epochs 5 must be less than --teacher-epochs 5"),
])
def test_bad_optimizer_settings_are_one_line_before_any_work(argv, words, capsys, tmp_path):
    err = cli_error(cli.distill_main, ["--output-dir", tmp_path / "run", *argv], capsys)
    assert words in err
    assert not (tmp_path / "run").exists()


def test_sgd_step_schedule_warmup_precise_bn_and_clipping_end_to_end(mnist_dir, tmp_path):
    """The issue's recipe shape on 200 images, 2 epochs: stamped, saved, evaluated."""
    out = tmp_path / "run"
    run_main(partial(run_cli, cli.distill_main), [
        "--data-dir", mnist_dir, "--output-dir", out, "--limit-train", "200", "--limit-test", "100",
        "--batch-size", "50", "--epochs", "2", "--teacher-epochs", "1", "--no-baseline",
        "--opt", "sgd", "--weight-decay", "5e-4", "--schedule", "step", "--milestones", "1", "--warmup-epochs", "1",
        "--precise-bn", "2", "--clip-grad", "5",
        "--teacher-opt", "adamw", "--teacher-weight-decay", "0.05", "--teacher-precise-bn", "1"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["student"]["test_accuracy"] <= 100 and len(metrics["student"]["epochs"]) == 2
    with safe_open(str(out / "student.safetensors"), "pt") as f:
        stamp = json.loads(f.metadata()["settings"])
    assert (stamp["opt"], stamp["milestones"], stamp["warmup_epochs"], stamp["precise_bn"], stamp["clip_grad"]) == \
        ("sgd", [1], 1, 2, 5.0)
