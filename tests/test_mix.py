"""Function matching from the cache (issue 27, item 3): --mix mixup/cutmix draws each view's
partner, weight and box as a pure function of (seed, view, index), stores them beside the view's
crop in the K-view cache, and the student replays the very mixed image the teacher saw, from
memory and from an image folder (whose workers decode the partners), across a resume; a cache
of another mix is refused by name. --mix none is today's pipeline (tests/test_views.py,
tests/test_augment.py)."""
import pytest
import torch
from safetensors.torch import load_file

from kd_accel import cli, teaching, training
from kd_accel.augment import make_inputs, recipe_spec, stream_seed
from kd_accel.config import from_flags, with_flags
from kd_accel.data import load_split
from kd_accel.data.loading import IndexedTensors
from kd_accel.data.mixing import LEVELS, MixSpec, draw_mix, label_share, pairing, partners
from kd_accel.data.streamed import DrawnMixes
from kd_accel.errors import KDError
from kd_accel.models import load_model

from conftest import fp16_close, frozen_teacher, run_main, tiny_split, write_image_folder


def test_mix_parameters_are_a_pure_function_of_seed_view_and_index():
    """Any batch, in any order, in a worker or not, gets the rows drawn for the whole set; the
    partners pair the samples (no sample its own partner); views and seeds differ; lambda is
    Beta(alpha, alpha); the teacher's recipe does not follow the students' mix."""
    n, idx = 101, torch.tensor([57, 3, 100, 3, 12])
    for spec in (MixSpec("mixup"), MixSpec("cutmix", 0.4)):
        whole = draw_mix(spec, 7, 2, torch.arange(n), n)
        assert torch.equal(draw_mix(spec, 7, 2, idx, n), whole[idx])
        assert torch.equal(DrawnMixes(7, spec, n).params([2] * 5, idx.numpy()), whole[idx].to(torch.int32))
        assert not torch.equal(draw_mix(spec, 7, 3, idx, n), whole[idx])
        assert not torch.equal(draw_mix(spec, 8, 2, idx, n), whole[idx])
        p = partners(whole)
        assert torch.equal(p, pairing(7, 2, n)) and (p != torch.arange(n)).all()
        assert (p[p] == torch.arange(n)).sum() == n - 1  # n odd: one sample mixes with a partner one way
        if spec.name == "mixup":
            assert (whole[:, 3:] == 0).all()  # no box: a blend everywhere
        else:
            assert (whole[:, 2] == LEVELS).all() and (whole[:, 5:] >= whole[:, 3:5]).all()
    for alpha in (1.0, 0.2):
        lam = draw_mix(MixSpec("mixup", alpha), 0, 0, torch.arange(4000), 4000)[:, 2].double() / LEVELS
        assert abs(lam.mean() - 0.5) < 0.02 and abs(lam.var() - 1 / (4 * (2 * alpha + 1))) < 0.01, alpha
    cfg = from_flags(mix="cutmix", mix_alpha=0.5)
    assert recipe_spec(cfg.student).mix == MixSpec("cutmix", 0.5) and cfg.teacher.mix == "none"


def test_mixup_and_cutmix_pixels_against_a_mix_made_by_hand():
    """The in-memory batch gathers each sample's partner (image, label, own parameters); the step's
    input is w * own + (1 - w) * partner (mixup) or the partner's box pasted (cutmix), written
    out by hand for one pair; the own label's share is w, or the kept area."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8, generator=g)
    mixup = torch.tensor([[0, 1, 16384, 0, 0, 0, 0], [0, 0, 40000, 0, 0, 0, 0]], dtype=torch.int32)
    # cutmix: rows 7..20, columns 14..27 of sample 0 are sample 1's (fractions 0.25, 0.5, 0.75, 1 of 28)
    box = [LEVELS // 4, LEVELS // 2, 3 * LEVELS // 4, LEVELS]
    cutmix = torch.tensor([[0, 1, LEVELS, *box], [0, 0, LEVELS, 0, 0, 0, 0]], dtype=torch.int32)
    a, b = images[0].double() / 255, images[1].double() / 255
    for mix in (mixup, cutmix):
        data = IndexedTensors(images=images, labels=torch.tensor([3, 8]), mix=mix)
        batch = data.__getitems__([0, 1])
        assert torch.equal(batch["mix_labels"], torch.tensor([8, 3])) and torch.equal(batch["partner_images"],
                                                                                      images[[1, 0]])
        x = make_inputs(recipe_spec(from_flags().student))(batch)[0, 0].double()
        if mix is mixup:
            lam = 16384 / LEVELS
            assert torch.allclose(x, lam * a[0] + (1 - lam) * b[0], atol=1e-6)
            assert batch["mix_lam"][0].item() == pytest.approx(lam)
        else:
            want = a[0].clone()
            want[7:21, 14:28] = b[0, 7:21, 14:28]
            assert torch.equal(x.float(), want.float())
            assert batch["mix_lam"][0].item() == pytest.approx(1 - 14 * 14 / 28 ** 2)
            assert torch.equal(label_share(mix[1:], 28, 28), torch.ones(1))  # an empty box keeps all


def test_a_cache_made_with_another_mix_is_refused_by_name(accelerator, tiny_teacher, tmp_path):
    """Another kind, another alpha, or no mix: refused naming the mix; mix settings that would
    do nothing are refused in one line before any work."""
    train, fp = tiny_split(30), None
    made = from_flags(mix="mixup", views=2, output_dir=str(tmp_path))
    from kd_accel.models import state_fingerprint

    fp = state_fingerprint(load_model(tiny_teacher)[0].state_dict())
    soft, hit, path = teaching.resolve_cache(accelerator, made, tiny_teacher, fp, train)
    assert path.name == "teacher_logits.mixup.2views.safetensors" and soft.params(0).shape == (30, 7)
    assert soft.params(0).dtype == torch.uint16 and soft.meta["mix"] == "mixup(alpha=1)"
    for change, words in [(dict(mix="cutmix"), "mix differs \\(mix: cache 'mixup\\(alpha=1\\)', run 'cutmix"),
                          (dict(mix_alpha=0.5), "mix differs"), (dict(mix="none", augment="shift"), "mix differs")]:
        with pytest.raises(KDError, match=words):
            teaching.resolve_cache(accelerator, with_flags(made, logits=str(path), **change), tiny_teacher, fp, train)
    for argv, words in [(["--mix-alpha", "0.5"], "--mix-alpha 0.5 is the alpha of --mix mixup or cutmix"),
                        (["--mix-labels", "none"], "--mix-labels none is for mixed images"),
                        (["--mix", "mixup", "--teacher-mix-labels", "none"], "would leave the teacher no loss"),
                        (["--mix", "cutmix", "--train-subset", "50"], "--mix cutmix with --train-subset")]:
        with pytest.raises(KDError, match=words):
            cli.parse(cli.distill_parser(), cli.ALL, argv)


def test_students_without_a_cache_draw_their_own_mix_each_epoch(accelerator, tiny_teacher, tmp_path, monkeypatch):
    """Online: the student's batch of epoch e carries its own stream's mix of view e, and the
    teacher runs on that mixed input. --mix-labels none zeroes a distilled student's label mask
    (no hard term) and leaves the baseline's labels mixed."""
    from kd_accel import pipeline

    train = tiny_split(40)
    cfg = from_flags(mix="cutmix", teacher_mode="online", epochs=2, batch_size=20, output_dir=str(tmp_path))
    soft, online, _ = teaching.resolve_soft_targets(accelerator, cfg, tiny_teacher, "fp", train)
    teacher, diffs = frozen_teacher(tiny_teacher), []

    def check(label, batch):
        want = draw_mix(MixSpec("cutmix"), stream_seed("student", 0), len(diffs) // 2, batch["idx"], 40)
        assert torch.equal(batch["mix"].long(), want) and "mix_labels" in batch and "mix_lam" in batch
        with torch.no_grad():
            diffs.append(float((teacher(batch["x"]) - batch["teacher_logits"]).abs().max()))

    monkeypatch.setattr(training.HOOKS, "batch", [check])
    pipeline.train_student(accelerator, cfg, train, tiny_split(20, seed=1), soft, "student", "fp", online)
    assert len(diffs) == 4 and max(diffs) < 1e-5
    unlabelled = with_flags(cfg, mix_labels="none", teacher_mode="cache")
    assert not pipeline.student_data(unlabelled, train, torch.zeros(40, 10))[0].columns["label_mask"].any()
    assert "label_mask" not in pipeline.student_data(unlabelled, train)[0].columns  # the baseline


class Crash(Exception):
    pass


def distill(args, out, check, crash_at=None):
    """distill.py in-process with `check` on every student batch; a crash after optimizer step
    `crash_at` of the student."""
    def crash(label, step):
        if label == "student" and step == crash_at:
            raise Crash(step)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training.HOOKS, "batch", [check])
        mp.setattr(training.HOOKS, "step", [crash])
        run_main(cli.distill_main, [*args, "--output-dir", out, "--no-baseline", "--seed", "1"])


class Replay:
    """A batch hook on the student: the teacher on its input gives the logits it is taught; its
    mix and crop parameters are the stored view e mod 2 of its samples (step counted from
    `step`, `per_epoch` steps an epoch); its input is mixed (not the views alone)."""

    def __init__(self, teacher_file, cache, spec, step=0, per_epoch=2):
        self.teacher, self.cache, self.spec = frozen_teacher(teacher_file), cache, spec
        self.step, self.per_epoch, self.seen, self.stored = step, per_epoch, [], None

    def __call__(self, label, batch):
        if label != "student":
            return
        self.stored = load_file(self.cache)["params"] if self.stored is None else self.stored
        view = self.stored[self.step // self.per_epoch % 2][batch["idx"].cpu()]
        with torch.no_grad():
            assert fp16_close(batch["teacher_logits"], self.teacher(batch["x"]).float()), self.step
        assert torch.equal(batch["mix"].long(), view[:, 5:].long()), self.step
        crops = batch.get("crops", batch.get("aug_params"))
        assert torch.equal(crops.to(view.dtype), view[:, :5]), self.step
        unmixed = make_inputs(self.spec)({k: batch[k] for k in ("images", "aug_params") if k in batch})
        assert (unmixed - batch["x"]).abs().amax() > 0.1, self.step
        self.seen.append({k: batch[k].clone() for k in ("x", "idx", "mix", "partner_pos", "partner_images")})
        self.step += 1


def test_the_teacher_on_the_replayed_mixed_batch_gives_the_cached_logits_in_memory_across_a_resume(
        mnist_dir, tiny_teacher, tmp_path):
    """MNIST's first 200 images, shifts + mixup, a 2-view cache, batch 100 (2 steps an epoch),
    3 epochs: every student batch is the teacher's mixed view e mod 2 (the teacher on it gives
    the cached logits); stopped after step 3 (mid-epoch 2) and resumed from the checkpoint at
    step 2, the resumed run replays the same mixed batch 3 and goes on consistently."""
    out = tmp_path / "run"
    args = ["--data-dir", mnist_dir, "--limit-train", "200", "--limit-test", "50", "--teacher", tiny_teacher,
            "--augment", "shift", "--mix", "mixup", "--views", "2", "--epochs", "3", "--batch-size", "100",
            "--checkpoint-every", "2"]
    cache, spec = out / "teacher_logits.shift.mixup.2views.safetensors", recipe_spec(from_flags(augment="shift").student)
    first, resumed = Replay(tiny_teacher, cache, spec), Replay(tiny_teacher, cache, spec, step=2)
    with pytest.raises(Crash):
        distill(args, out, first, crash_at=3)
    distill([*args, "--resume", "latest"], out, resumed)
    assert len(first.seen) == 3 and len(resumed.seen) == 4
    assert all(torch.equal(first.seen[2][k], resumed.seen[0][k]) for k in first.seen[2])  # step 3 again
    assert load_file(cache)["params"].shape == (2, 200, 12)  # dx, dy, flip, angle, scale; then the mix


def test_a_folder_student_replays_the_teachers_mixed_views(mnist_dir, tiny_teacher, tmp_path):
    """An image folder (MNIST's first 100 images as PNG), RandomResizedCrop + cutmix, 2 views,
    2 decoding workers: the cache stores crops then mixes; every student batch carries the
    stored view e mod 2, each sample's partner is in its batch (the epoch keeps pairs together:
    nothing decoded twice), and the teacher on the student's input gives the cached logits."""
    train = load_split("mnist", "train", mnist_dir)
    write_image_folder(tmp_path / "f" / "train", train.images[:100], train.labels[:100])
    write_image_folder(tmp_path / "f" / "val", train.images[100:150], train.labels[100:150])
    out = tmp_path / "run"
    check = Replay(tiny_teacher, out / "teacher_logits.rrc.cutmix.2views.safetensors",
                   recipe_spec(from_flags(augment="rrc").student))
    distill(["--dataset", "imagefolder", "--channels", "1", "--num-workers", "2", "--data-dir", tmp_path / "f",
             "--image-size", "28", "--augment", "rrc", "--mix", "cutmix", "--views", "2", "--epochs", "2",
             "--batch-size", "50", "--teacher", tiny_teacher], out, check)
    assert check.stored.dtype == torch.uint16 and check.stored.shape == (2, 100, 12) and len(check.seen) == 4
    assert (check.stored[:, :, 7] == LEVELS).all()  # cutmix: the own image's weight outside the box is 1
    for batch in check.seen:
        assert len(batch["partner_images"]) == 0 and (batch["partner_pos"] < len(batch["idx"])).all()
    assert sorted(check.seen[0]["idx"].tolist() + check.seen[1]["idx"].tolist()) == list(range(100))


@pytest.mark.slow
def test_sgd_and_mixup_train_the_same_student_on_one_and_two_processes(mnist_dir, tiny_teacher, tmp_path):
    """Issue 27: 1 process x batch 40 == 2 processes x 20 with SGD (momentum, weight decay, a
    warm-up and a step), mixup views replayed from the cache and mixed hard labels: the cache is
    the same rows and the student the same weights within float rounding (NCHW: see
    tests/scripts/train_check.py on channels-last kernels per batch size)."""
    from conftest import run_script
    from test_scaleout import noise_only

    common = ["--data-dir", mnist_dir, "--teacher", tiny_teacher, "--limit-train", "400", "--limit-test", "100",
              "--epochs", "2", "--augment", "shift", "--mix", "mixup", "--opt", "sgd", "--lr", "0.05",
              "--weight-decay", "5e-4", "--warmup-epochs", "1", "--schedule", "step", "--milestones", "2",
              "--no-channels-last", "--no-baseline", "--quiet"]
    runs = {n: tmp_path / f"p{n}" for n in (1, 2)}
    run_main(cli.distill_main, [*common, "--batch-size", 40, "--output-dir", runs[1]])  # in this process: no 2-3 s start
    run_script("distill.py", *common, "--batch-size", 20, "--output-dir", runs[2], nproc=2)
    caches = [load_file(next(out.glob("teacher_logits*.safetensors"))) for out in runs.values()]
    assert torch.equal(caches[0]["params"], caches[1]["params"])  # the same crops and mixes
    assert torch.allclose(caches[0]["logits"].float(), caches[1]["logits"].float(), atol=1e-3)
    one, two = (load_file(out / "student.safetensors") for out in runs.values())
    assert one.keys() == two.keys()
    for k in one:
        if not noise_only(k, one):
            assert torch.allclose(one[k].float(), two[k].float(), atol=1e-4, rtol=1e-3), (k, (one[k] - two[k]).abs().max())
