"""Each distillation loss's cached training step against a plain cross-entropy step, side by side
(issue 27's aim: <= 1.05x).

    python bench/losses.py [--data-dir ../shared/data] [--images 10000] [--zoo-images 2000] [--reps 5]
                           [--fit-reps 3] [--threads 1] [--suites notebook,zoo] [--json bench/results/losses.json]
    python bench/losses.py --quick      (a few hundred images, 1 rep: the code paths, not a timing)

Two suites, each run in this one process:

- notebook: the notebook student on the first --images MNIST training images (in memory), batch
  100, Adam (the default recipe);
- zoo: torchvision's mobilenet_v3_small at 32x32 on --zoo-images synthetic RGB images of 100
  classes (a step the loss is a smaller part of).

In each, one case per loss: `ce` (the baseline's hard labels), `hinton`, `dkd`, `dist`,
`hinton+ls` (--logit-standardization) from a full cache, and `dkd-top5` from a top-5 cache (its
teacher row rebuilt from the stored top 5 and statistics in every step: soft_targets.topk_objective).
Every case is built by the pipeline's own path: the cache written by cache.save_cache and opened
by open_cache (memory-mapped), phases.student_data choosing the objective as a run does
(soft_targets.source_of), the model built by roles.build from the same seed. The teacher's
logits are random (their values do not change the arithmetic).

Two measurements of the same cases:

- steps (the headline): each case's training step as training.fit runs it (the prepared model,
  optimizer, scheduler and loader, the batch's inputs, forward, loss, backward, Adam, the loss
  parts summed and watched on the device), the cases' steps interleaved one by one, their order
  rotated every step, each step timed alone: a burst of other load on a shared machine lands on
  every case alike. A rep is one epoch's steps of each case (after 3 untimed steps each); a
  loss's ratio is the median over reps of its summed step time / ce's. Beside it, the loss
  alone: each case's objective, forward and backward, on one batch of its own and logits of the
  suite's shape, 300 calls interleaved the same way (what the loss adds to a step).
- fit epochs (a cross-check): one whole training.fit epoch per case (no evaluation), timed by
  fit itself (train_time_s: its steps, not the Accelerator's set-up), after an untimed warm-up
  epoch, the cases alternated rep by rep (order reversed every other rep). Whole epochs are
  seconds apart, so on a busy machine their ratios are noisier than the steps'.

The machine line (bench/machine.py) heads the table; the JSON holds every rep.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from machine import describe, machine_info  # noqa: E402
from precompute import commit  # noqa: E402

AIM = 1.05
ZOO_STUDENT = "torchvision:mobilenet_v3_small"
LOSS_CALLS = 300  # calls of each case's loss alone
TOPK = 5
# case -> (the distillation flags, the cache it reads: None (hard labels), "full" or "top5")
CASES = {
    "ce": ({}, None),
    "hinton": ({"kd_loss": "hinton"}, "full"),
    "dkd": ({"kd_loss": "dkd"}, "full"),
    "dist": ({"kd_loss": "dist"}, "full"),
    "hinton+ls": ({"kd_loss": "hinton", "logit_standardization": True}, "full"),
    f"dkd-top{TOPK}": ({"kd_loss": "dkd"}, f"top{TOPK}"),
}


def synthetic_split(n: int, classes: int, side: int, seed: int = 0) -> Any:
    """An in-memory RGB split: uint8 [n, 3, side, side] noise, labels [n] in [0, classes)."""
    from kd_accel.data import Split

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)
    return Split("synthetic", "train", images, torch.randint(0, classes, (n,), generator=g), classes)


def open_caches(train: Any, workdir: Path) -> dict[str, Any]:
    """{"full": the one-view fp32 cache, "top5": its top-5 cache} of random logits [N, C] x 5,
    written and opened as a run does (memory-mapped SoftTargets)."""
    from kd_accel.cache import open_cache, save_cache
    from kd_accel.teaching import cache_key

    logits = torch.randn(len(train), train.num_classes, generator=torch.Generator().manual_seed(1)) * 5
    key = cache_key(train, "0" * 32)
    caches = {}
    for name, topk in (("full", None), (f"top{TOPK}", TOPK)):
        path = workdir / f"{train.dataset}-{name}.safetensors"
        save_cache(path, logits, train.labels, key, "fp32", topk=topk)
        caches[name] = open_cache(path, key)
    return caches


class Suite:
    """One student architecture and data set: `case(name)` the pieces a run of that case trains
    with, `epoch(name)` one fit epoch of it from the same seed (fit's train_time_s)."""

    def __init__(self, name: str, train: Any, arch: str | None, workdir: Path):
        from kd_accel.config import from_flags
        from kd_accel.pipeline import make_accelerator

        self.name, self.train, self.arch = name, train, arch
        self.base = {"epochs": 1, "batch_size": 100, "quiet": True, **({"arch": arch} if arch else {})}
        self.accelerator = make_accelerator(from_flags(**self.base), cpu=True, say_threads=False)
        self.accelerator.print = lambda *a, **k: None  # fit's epoch line
        self.caches = open_caches(train, workdir)

    def case(self, case: str) -> tuple[Any, ...]:
        """(model, training data, objective, inputs, TrainSpec) of `case`, as phases.train_student
        builds them (seeded)."""
        from accelerate.utils import set_seed

        from kd_accel.augment import get_spec
        from kd_accel.config import from_flags
        from kd_accel.phases import student_data
        from kd_accel.roles import build, inputs_for
        from kd_accel.training import TrainSpec

        flags, cache = CASES[case]
        cfg = from_flags(**self.base, **flags)
        set_seed(cfg.run.seed)
        model, record = build(cfg.student, self.train, case, lambda *a, **k: None)
        data, objective = student_data(cfg, self.train, self.caches[cache] if cache else None)
        return model, data, objective, inputs_for(get_spec("none"), record["preprocessing"]), \
            TrainSpec.of(cfg.student, cfg.run)

    def epoch(self, case: str) -> float:
        from kd_accel.training import fit

        model, data, objective, inputs, spec = self.case(case)
        return fit(self.accelerator, model, data, None, spec, objective, case, inputs=inputs)[1]["train_time_s"]

    def runners(self) -> dict[str, StepRunner]:
        return {case: StepRunner(self.accelerator, case, *self.case(case)) for case in CASES}


class StepRunner:
    """One case trained step by step as training.fit's loop does it (one process, no gradient
    accumulation, no checkpoints): the same prepared objects, the same work per step; a new
    epoch's order when the loader runs out."""

    def __init__(self, accelerator: Any, label: str, model: Any, data: Any, objective: Any, inputs: Any,
                 spec: Any):
        from kd_accel.training import NonFiniteWatch, make_optimizer, schedule_of

        self.accelerator, self.data, self.objective, self.inputs = accelerator, data, objective, inputs
        self.format = torch.channels_last if spec.channels_last else torch.contiguous_format
        loader = data.loader(accelerator, spec.batch_size, spec.seed)
        model = model.to(memory_format=self.format)
        optimizer = make_optimizer(model, spec, accelerator.device)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_of(spec, len(loader)))
        self.model, self.optimizer, self.loader, self.scheduler = accelerator.prepare(model, optimizer, loader,
                                                                                      scheduler)
        self.model.train()
        self.watch, self.sums, self.steps, self.epoch, self.batches = NonFiniteWatch(label), {}, 0, -1, iter(())

    def next_batch(self) -> dict:
        batch = next(self.batches, None)
        if batch is None:
            self.epoch += 1
            self.data.set_epoch(self.epoch)
            self.loader.set_epoch(self.epoch)
            self.batches = iter(self.loader)
            batch = next(self.batches)
        return self.data.complete(batch)

    def step(self) -> None:
        batch = self.next_batch()
        x = batch["x"] = self.inputs(batch).contiguous(memory_format=self.format)
        batch["epoch"] = self.epoch
        parts = self.objective(self.model(x), batch)
        self.accelerator.backward(parts["loss"])
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        for k, v in parts.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach()
        self.watch.update(self.steps, parts)

    def check(self) -> None:
        """Raise on a non-finite loss (what fit checks at its sync points)."""
        self.watch.check()


def interleaved(runners: dict[str, StepRunner], steps: int) -> dict[str, float]:
    """{case: seconds of its `steps` steps}, the cases' steps run in turn, the order rotated by
    one each step (every case in every position equally often), each step timed alone."""
    names, total = list(runners), dict.fromkeys(runners, 0.0)
    for s in range(steps):
        k = s % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            runners[name].step()
            total[name] += time.perf_counter() - start
    for runner in runners.values():
        runner.check()
    return total


def loss_alone(runners: dict[str, StepRunner], calls: int, classes: int) -> dict[str, float]:
    """{case: ms of its objective's forward and backward alone}, on one batch of its own (its
    labels and teacher columns, top-k rebuilt where it reads a top-k cache) and logits of the
    suite's shape, the cases interleaved as in `interleaved`: what the loss itself adds to a step."""
    names, total = list(runners), dict.fromkeys(runners, 0.0)
    batches = {name: {**r.next_batch(), "epoch": 0} for name, r in runners.items()}
    logits = torch.randn(len(batches["ce"]["labels"]), classes)  # [B, C], as the model's
    for s in range(calls):
        k = s % len(names)
        for name in names[k:] + names[:k]:
            x = logits.clone().requires_grad_()
            start = time.perf_counter()
            runners[name].objective(x, dict(batches[name]))["loss"].backward()
            total[name] += time.perf_counter() - start
    return {name: 1000 * t / calls for name, t in total.items()}


def make_suites(a: argparse.Namespace, workdir: Path) -> list[Suite]:
    from kd_accel.data import load_split

    suites = []
    for name in a.suites.split(","):
        if name == "notebook":
            suites.append(Suite(name, load_split("mnist", "train", a.data_dir).subset(a.images), None, workdir))
        elif name == "zoo":
            suites.append(Suite(name, synthetic_split(a.zoo_images, 100, 32), ZOO_STUDENT, workdir))
        else:
            raise SystemExit(f"unknown suite {name!r}: choose from notebook, zoo")
    return suites


def summarise(reps: list[dict[str, float]], steps: int) -> dict[str, dict[str, float]]:
    """{case: median s per step, median of the per-rep ratios to that rep's ce, the aim met}."""
    out = {}
    for case in reps[0]:
        ratio = statistics.median(r[case] / r["ce"] for r in reps)
        out[case] = {"ms_per_step": 1000 * statistics.median(r[case] for r in reps) / steps, "ratio_to_ce": ratio,
                     "met": case == "ce" or ratio <= AIM}
    return out


def print_table(result: dict[str, Any], info: dict[str, Any]) -> None:
    print(f"\n{describe(info)}\ncommit {result['commit']}, {result['threads']} thread(s); "
          f"load average {result['loadavg_end']:.2f} at the end\n")
    print(f"| suite | case | interleaved steps: ms/step (median) | / ce (median of {result['reps']} reps) | aim "
          f"| fit epochs: / ce (median of {result['fit_reps']} reps) | the loss alone: ms (fwd + bwd) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for suite, s in result["summary"].items():
        fits = result["fit_summary"].get(suite, {})
        for case, c in s.items():
            aim = "" if case == "ce" else f"<= {AIM}: {'met' if c['met'] else 'missed'}"
            fit_ratio = f"{fits[case]['ratio_to_ce']:.3f}x" if case in fits else "-"
            print(f"| {suite} | {case} | {c['ms_per_step']:.1f} | {c['ratio_to_ce']:.3f}x | {aim} | {fit_ratio} "
                  f"| {result['loss_ms'][suite][case]:.3f} |")


def measure_steps(suite: Suite, reps: int, result: dict[str, Any]) -> None:
    runners = suite.runners()
    steps = result["steps"][suite.name]
    interleaved(runners, 3)  # warm-up: first kernels, first cache reads
    loss_alone(runners, 20, suite.train.num_classes)
    result["loss_ms"][suite.name] = got = loss_alone(runners, LOSS_CALLS, suite.train.num_classes)
    print(f"{suite.name}: the loss alone, forward and backward: " + ", ".join(f"{c} {got[c]:.3f} ms" for c in CASES),
          flush=True)
    for rep in range(reps):
        got = interleaved(runners, steps)
        result["cases"].setdefault(suite.name, []).append(got)
        print(f"rep {rep + 1}: {suite.name} steps: " + ", ".join(f"{c} {got[c]:.3f} s ({got[c] / got['ce']:.3f}x)"
                                                                 for c in CASES), flush=True)


def measure_fit(suite: Suite, reps: int, result: dict[str, Any]) -> None:
    for case in CASES:  # warm-up
        suite.epoch(case)
    for rep in range(reps):
        order = list(CASES)[::-1 if rep % 2 else 1]
        got = {case: suite.epoch(case) for case in order}
        result["fit_epochs"].setdefault(suite.name, []).append({c: got[c] for c in CASES})
        print(f"rep {rep + 1}: {suite.name} fit epochs: " + ", ".join(f"{c} {got[c]:.3f} s ({got[c] / got['ce']:.3f}x)"
                                                                      for c in CASES), flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import os

    from kd_accel.io import write_json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--images", type=int, default=10000, help="MNIST images of the notebook suite (one epoch: a rep)")
    p.add_argument("--zoo-images", type=int, default=2000, help="synthetic images of the zoo suite (one epoch: a rep)")
    p.add_argument("--reps", type=int, default=5, help="reps of the interleaved steps")
    p.add_argument("--fit-reps", type=int, default=3, help="reps of whole fit epochs (0: none)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--suites", default="notebook,zoo")
    p.add_argument("--quick", action="store_true", help="200 images a suite, 1 rep of each: the code paths only")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.images, a.zoo_images, a.reps, a.fit_reps = 200, 200, 1, 1
    with tempfile.TemporaryDirectory() as tmp:
        suites = make_suites(a, Path(tmp))
        torch.set_num_threads(a.threads)  # after make_accelerator, which sets the cores' count
        info = machine_info()
        print(describe(info), flush=True)
        result = {"machine": info, "commit": commit(), "threads": a.threads, "reps": a.reps, "fit_reps": a.fit_reps,
                  "quick": a.quick, "images": {"notebook": a.images, "zoo": a.zoo_images}, "aim": AIM,
                  "steps": {s.name: -(-len(s.train) // 100) for s in suites}, "cases": {}, "fit_epochs": {},
                  "loss_ms": {}}
        torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # dynamo's one-off import, outside every timer
        for suite in suites:
            measure_steps(suite, a.reps, result)
            if a.fit_reps:
                measure_fit(suite, a.fit_reps, result)
    result["summary"] = {name: summarise(reps, result["steps"][name]) for name, reps in result["cases"].items()}
    result["fit_summary"] = {name: summarise(reps, result["steps"][name])
                             for name, reps in result["fit_epochs"].items()}
    result["loadavg_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print_table(result, info)
    if a.json:
        write_json(a.json, result)
    return result


if __name__ == "__main__":
    main()
