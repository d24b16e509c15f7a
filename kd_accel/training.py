"""The training loop: plain PyTorch, wrapped by Accelerate.

One loop trains the teacher, the distilled student and the baseline; they differ only in the
loss function, which receives the batch (images, labels, idx and, for distillation, the
teacher logits gathered from the cache by the same sample index).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

import torch

from .data import to_float
from .distributed import sync_batchnorm
from .errors import KDError
from .evaluation import evaluate
from .losses import KD_LOSSES, batch_inputs, batch_mix, ce_loss, loss_name
# adam and lr_lambda live in optim.py; imported here too, where earlier code and tests find them
from .optim import (  # noqa: F401
    adam, bn_layers, first_batches, lr_lambda, make_optimizer, precise_bn, schedule_of, slow_bn_momentum,
)
from .reporting import progress_bar
from .tracking import PhaseLog

if TYPE_CHECKING:
    from collections.abc import Iterator

    from accelerate import Accelerator
    from torch import nn

    from .checkpointing import Checkpointer
    from .data import DataSource, TrainData

@dataclass(frozen=True)
class TrainSpec:
    """What one training run is, all that fit reads of the configuration: epochs, the batch size
    (per process and per micro-batch: a step sees batch_size * grad_accum * processes samples),
    the lr and its schedule, the seed of the data order, and the memory format; then the
    optimizer, the schedule's shape (warm-up, milestones in epochs), gradient clipping and
    precise BN (config.Recipe's settings of the same names; kd_accel/optim.py)."""

    epochs: int
    batch_size: int
    lr: float
    schedule: str = "constant"
    seed: int = 0
    channels_last: bool = True
    opt: str = "adam"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_epochs: int = 0
    clip_grad: float | None = None
    precise_bn: int = 0

    @classmethod
    def of(cls, recipe: Any, run: Any) -> TrainSpec:
        """From a recipe (config.Recipe: the teacher's or the students') and the run (config.Run)."""
        optim = {name: getattr(recipe, name) for name in OPTIM_SETTINGS}
        return cls(recipe.epochs, recipe.batch_size, recipe.lr, recipe.schedule, run.seed, run.channels_last,
                   **optim, milestones=tuple(recipe.milestones or ()))


# the Recipe settings TrainSpec takes as they are (milestones: as a tuple)
OPTIM_SETTINGS = ("opt", "momentum", "nesterov", "weight_decay", "gamma", "warmup_epochs", "clip_grad", "precise_bn")


@dataclass
class Hooks:
    """Callables fit runs: step(label, global_step) after each optimizer step (the tests' fault
    injection: an exception, or a SIGKILL in tests/scripts/fault.py), batch(label, batch) after
    each micro-batch's loss, the batch holding what the step used ("x" the model's input,
    augmented; "idx"; "teacher_logits" when distilling: the consistency tests run the teacher on
    batch["x"] there); view(view) after each view of a precompute is computed and saved
    (teaching.precompute_views: the tests interrupt a precompute there to check that it resumes
    at the next view)."""

    step: list = field(default_factory=list)
    batch: list = field(default_factory=list)
    view: list = field(default_factory=list)


# what a loss function is here: (logits [B, C], the batch) -> {"loss": ..., and its parts}
Objective = Callable[[torch.Tensor, dict], dict]

# The hooks of a fit given none: empty, except where a test or tests/scripts/fault.py (wrapping a
# launch script in its own process, with no other way in) adds to them.
HOOKS = Hooks()
# Optimizer steps between the loop's host syncs (non-finite check, tracker flush).
LOG_EVERY = 50


def hard_label_objective(logits: torch.Tensor, batch: dict, label_smoothing: float = 0.0) -> dict:
    """Cross-entropy on the batch's labels (losses.hard_term: smoothed, mixed when the batch
    carries a mix partner, masked by its label_mask)."""
    return ce_loss(logits, batch["labels"], batch.get("label_mask"), label_smoothing, batch_mix(batch))


def kd_objective(logits: torch.Tensor, batch: dict, kind: str, temperature: float, alpha: float,
                 label_smoothing: float = 0.0, **settings: Any) -> dict:
    """KD loss `kind` of the batch's teacher_logits [B, C]; `settings`: the loss's own
    (losses.LOSS_SETTINGS, e.g. dkd_beta); the batch adds its label mask, mix and epoch."""
    return KD_LOSSES[kind](logits, batch["labels"], batch["teacher_logits"], temperature, alpha,
                           label_smoothing=label_smoothing, **settings, **batch_inputs(kind, batch, settings))


def make_objective(kind: str, temperature: float | None = None, alpha: float | None = None,
                   label_smoothing: float = 0.0, **settings: Any) -> Objective:
    """'ce' for hard labels only; a KD_LOSSES name (hinton, notebook-mse, dkd, dist) for
    distillation, with its own settings by name (losses.loss_settings of a config.Distillation)."""
    if kind == "ce" and not label_smoothing:
        return hard_label_objective  # the very function of the runs before label smoothing
    if kind == "ce":
        return partial(hard_label_objective, label_smoothing=label_smoothing)
    return partial(kd_objective, kind=loss_name(kind), temperature=temperature, alpha=alpha,
                   label_smoothing=label_smoothing, **settings)


def online_objective(teacher: nn.Module, objective: Objective,
                     inputs: Callable[[dict], torch.Tensor] | None = None) -> Objective:
    """Consistent teaching without a cache (Beyer et al. 2022): the frozen teacher (eval mode,
    never DDP-wrapped) runs on the student's own view of this step, and its logits [B, classes]
    stand in for the cached ones. One teacher forward per step. The view is batch["x"]
    [B, C, H, W], the student's input, or, for a teacher that expects another size or
    normalisation, inputs(batch): the same view made the teacher's way."""
    def run(logits: torch.Tensor, batch: dict) -> dict:
        with torch.no_grad():
            batch["teacher_logits"] = teacher(inputs(batch) if inputs else batch["x"]).float()
        return objective(logits, batch)

    return run


class NonFiniteWatch:
    """Remembers, on the device, the first step whose loss parts were not finite, so the loop
    needs no host sync per step; `check()` (at log and checkpoint points) raises on it."""

    def __init__(self, label: str):
        self.label, self.names, self.record = label, None, None

    def update(self, step: int, parts: dict[str, torch.Tensor]) -> None:
        vals = torch.stack([v.detach().float() for v in parts.values()])
        if self.record is None:
            self.names = list(parts)
            self.record = torch.full((len(vals) + 1,), -1.0, device=vals.device)
        bad = (~torch.isfinite(vals).all()) & (self.record[0] < 0)
        # torch.full, not new_tensor([step]): a fill on the device, where new_tensor would copy
        # from pageable host memory (a stream sync per step on a GPU)
        row = torch.cat([torch.full((1,), float(step), device=vals.device), vals])
        self.record = torch.where(bad, row, self.record)

    def check(self) -> None:
        if self.record is not None and self.record[0].item() >= 0:
            r = self.record.tolist()
            parts = ", ".join(f"{n}={v}" for n, v in zip(self.names, r[1:]))
            raise KDError(f"{self.label}: non-finite loss at step {int(r[0])} ({parts}); stopped, nothing saved")


def check_finite_weights(model: nn.Module, label: str, step: int) -> None:
    """Raise unless every parameter and buffer of `model` is finite. The loss watch cannot see an
    update that breaks the weights on the last step (that loss was computed before it), so this
    runs before weights are saved or evaluated: once per epoch and per checkpoint, one host sync."""
    tensors = [(n, t) for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_floating_point()]
    finite = torch.stack([torch.isfinite(t).all() for _, t in tensors])
    if not bool(finite.all()):
        bad = [n for (n, _), ok in zip(tensors, finite.tolist()) if not ok]
        raise KDError(f"{label}: non-finite weights after step {step} ({len(bad)} tensors, e.g. {bad[0]}); "
                      "stopped, nothing saved")


def fit(accelerator: Accelerator, model: nn.Module, data: TrainData, test_split: DataSource | None, spec: TrainSpec,
        objective: Objective, label: str, checkpoints: Checkpointer | None = None,
        inputs: Callable[[dict], torch.Tensor] | None = None, hooks: Hooks | None = None
        ) -> tuple[nn.Module, dict[str, Any]]:
    """Train `model` on `data` (a data source's training data: DataSource.train_data) as `spec`
    says; evaluate on `test_split` after each epoch (None: not at all). `checkpoints` (a
    checkpointing.Checkpointer) saves and resumes the phase `label`; `hooks` are run as the
    loop goes (default: HOOKS). Returns (model, history).

    inputs(batch) -> the model's float input (default: images scaled to [0, 1]); with
    augmentation it builds each sample's view from the batch's "aug_params" (the epoch's
    columns, which `data` sets before the epoch's first batch, so a resumed epoch gets the same).

    The canonical Accelerate order: data and model -> optimizer/scheduler -> prepare -> loop."""
    hooks = HOOKS if hooks is None else hooks
    # The whole (small) data set and cache live on the training device: a batch is one gather
    # there, with no host-to-device copy per step. On CPU this is a no-op (a memory-mapped
    # cache stays mapped).
    # Forget the previous phase's model/optimizer/loaders: save_state would otherwise write the
    # teacher into the student's checkpoints, and load_state would restore them out of order.
    accelerator.free_memory()
    loader = data.loader(accelerator, spec.batch_size, spec.seed)
    eval_inputs, inputs = inputs, inputs or (lambda batch: to_float(batch["images"]))
    if accelerator.num_processes > 1:
        # R processes x B/R == 1 process x B, BN included; torch's SyncBatchNorm on NCCL
        model = sync_batchnorm(model, torch.distributed.get_backend())
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)  # faster conv/BN kernels on CPU (other float rounding)
    optimizer = make_optimizer(model, spec, accelerator.device)
    # Counted in optimizer steps on the un-sharded loader: the prepared scheduler steps once
    # per process on each optimizer step and not at all on accumulation micro-steps. Warm-up and
    # milestones, in epochs, are converted the same way.
    steps_per_epoch = math.ceil(len(loader) / accelerator.gradient_accumulation_steps)
    multiplier = schedule_of(spec, steps_per_epoch, accelerator.num_processes)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    log_every = LOG_EVERY
    history, epoch0, pos0, global_step, elapsed0, carried = [], 0, 0, 0, 0.0, {}
    # the phase's settings are stamped on every checkpoint and must match on resume: no phase
    # continues another's weights or another recipe (checkpointing.Checkpointer)
    resume = checkpoints.restore(accelerator, label) if checkpoints else None
    if resume:
        resume, p = resume
        history, epoch0, pos0, global_step = p["history"], p["epoch"], p["position"], p["global_step"]
        elapsed0, carried = p["elapsed_s"], p["sums"]
        accelerator.print(f"{label}: resumed from {resume} (epoch {epoch0 + 1}, batch {pos0})", flush=True)

    bn_hint(accelerator, model, spec, label)
    watch = NonFiniteWatch(label)
    log = PhaseLog(accelerator, label)  # --report-to: per-step values flushed at the sync points below
    start = time.perf_counter()

    def checkpoint(epoch, position, sums, steps):
        watch.check()  # never save weights a NaN has already touched
        log.flush()  # what a resume from here continues is logged up to here
        check_finite_weights(model, label, global_step)
        progress = {"phase": label, "epoch": epoch, "position": position, "global_step": global_step,
                    "history": history, "elapsed_s": elapsed0 + time.perf_counter() - start,
                    "sums": {k: float(v) for k, v in sums.items()} | {"_steps": steps}}
        checkpoints.save(accelerator, global_step, progress)

    for epoch in range(epoch0, spec.epochs):
        model.train()
        data.set_epoch(epoch)  # [N, ...] columns of this epoch, gathered by the same sample index
        loader.set_epoch(epoch)  # the permutation is a function of (seed, epoch): resumable
        position = pos0 if epoch == epoch0 else 0
        batches = loader
        if position:
            batches = accelerator.skip_first_batches(loader, position)
            batches.set_epoch(epoch)
        # loss parts summed on the device: no .item() (host sync) inside the step
        sums = {k: torch.tensor(v, device=accelerator.device) for k, v in carried.items() if k != "_steps"}
        steps = carried.get("_steps", 0) if epoch == epoch0 else 0
        carried = {}
        epoch_start, seen = time.perf_counter(), 0
        with progress_bar(accelerator, f"{label} epoch {epoch + 1}/{spec.epochs}", len(loader), position) as advance:
            for batch in batches:
                batch = data.complete(batch)  # the index-keyed columns a streamed source gathers here
                with accelerator.accumulate(model):
                    x = batch["x"] = inputs(batch).contiguous(memory_format=memory_format)
                    batch["epoch"] = epoch  # 0-based: for losses with a warm-up of their own (DKD)
                    parts = objective(model(x), batch)
                    for hook in hooks.batch:
                        hook(label, batch)
                    accelerator.backward(parts["loss"])
                    if spec.clip_grad and accelerator.sync_gradients:  # once per step, on the summed micro-batches
                        accelerator.clip_grad_norm_(model.parameters(), spec.clip_grad)
                    lr = optimizer.param_groups[0]["lr"]  # the lr this step uses (a float: no sync)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                position += 1
                steps += 1
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v.detach()
                watch.update(global_step + 1, parts)
                log.micro(parts)
                seen += len(batch["labels"])  # a shape: no sync
                # the epoch's running mean loss, read (a host sync) only when a line or redraw is due
                advance(images=len(batch["labels"]) * accelerator.num_processes, loss=lambda: sums["loss"] / steps)
                if not accelerator.sync_gradients:
                    continue
                global_step += 1
                log.step(global_step, lr)
                if global_step % log_every == 0:
                    watch.check()
                    log.flush()
                for hook in hooks.step:
                    hook(label, global_step)
                if checkpoints and checkpoints.due_at_step(global_step, position, len(loader)):
                    checkpoint(epoch, position, sums, steps)
        watch.check()
        check_finite_weights(model, label, global_step)  # before evaluating or returning them
        if spec.precise_bn and (test_split is not None or epoch == spec.epochs - 1):
            # before this epoch's evaluation, and before the last epoch's checkpoint and the
            # returned model: a resumed run continues from the same statistics
            bn_batches = epoch_inputs(loader, data, epoch, spec.precise_bn,
                                      lambda b: inputs(b).contiguous(memory_format=memory_format))
            # a measurement, not a training step: its train-mode dropout and its DataLoader
            # iterator's seed draw from the global generators, so they run on a fork of them and
            # the next epoch trains as it would without precise BN (the same weights)
            device = accelerator.device
            with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
                precise_bn(accelerator, accelerator.unwrap_model(model, keep_torch_compile=False), bn_batches)
        means = {k: (v / max(steps, 1)).item() for k, v in sums.items()}
        epoch_time = time.perf_counter() - epoch_start  # training only (synced by .item() above), not evaluation
        log.flush()
        entry = {"epoch": epoch + 1, **{f"loss_{k}": v for k, v in means.items()}}
        if test_split is not None:  # None: a model without a classifier (FitNets' hint stage)
            entry["test_accuracy"] = evaluate(accelerator, model, test_split, inputs=eval_inputs)
        history.append(entry)
        log.epoch(global_step, **{k: entry[k] for k in ("test_accuracy",) if k in entry}, epoch_time_s=epoch_time,
                  samples_per_s=seen * accelerator.num_processes / max(epoch_time, 1e-9))
        parts_txt = " ".join(f"{k}={v:.4f}" for k, v in means.items())
        acc_txt = f" test_acc={entry['test_accuracy']:.2f}%" if "test_accuracy" in entry else ""
        accelerator.print(f"{label} epoch {epoch + 1}/{spec.epochs}: {parts_txt}{acc_txt}", flush=True)
        if checkpoints and checkpoints.due_at_epoch_end(epoch, spec.epochs):
            checkpoint(epoch + 1, 0, {}, 0)
    train_time = elapsed0 + time.perf_counter() - start
    chance_warning(accelerator, model, spec, label, history, test_split)
    return accelerator.unwrap_model(model, keep_torch_compile=False), {"epochs": history, "train_time_s": train_time}


def epoch_inputs(loader: Any, data: TrainData, epoch: int, n: int,
                 inputs: Callable[[dict], torch.Tensor]) -> Iterator[torch.Tensor]:
    """The model's inputs of the first `n` training batches of `epoch` (prepared `loader`: this
    process's shard), as the epoch's steps made them, whether it ran through or was resumed."""
    loader.set_epoch(epoch)
    for batch in first_batches(loader, n):
        yield inputs(data.complete(batch))


def _flag(label: str, *names: str) -> str:
    """The flags that set `names` for this phase: the teacher's are --teacher-* in distill.py and
    compare.py, and plain in train_teacher.py."""
    plain = ", ".join(f"--{n}" for n in names)
    if label != "teacher":
        return plain
    return ", ".join(f"--teacher-{n}" for n in names) + f" (train_teacher.py: {plain})"


def _precise_bn_flag(label: str) -> str:
    return _flag(label, "precise-bn N")


def bn_hint(accelerator: Accelerator, model: nn.Module, spec: TrainSpec, label: str) -> None:
    """At a phase's start, one line where BatchNorm statistics will lag the weights
    (optim.SLOW_BN_MOMENTUM) and precise BN is off."""
    momentum = None if spec.precise_bn else slow_bn_momentum(model)
    if momentum is not None:
        accelerator.print(f"{label}: BatchNorm momentum {momentum:g}: its running statistics follow the weights over "
                          f"~{1 / momentum:.0f} steps, so early evaluations may not reflect them; "
                          f"{_precise_bn_flag(label)} re-estimates them before each evaluation", flush=True)


def chance_warning(accelerator: Accelerator, model: nn.Module, spec: TrainSpec, label: str, history: list[dict],
                   test_split: DataSource | None) -> None:
    """After the last epoch, one line when the phase ends below twice chance, naming the likelier
    cause: a training loss that did not fall (last epoch's mean >= the first's, or not finite:
    the run diverged, whatever its model), else a BatchNorm model's statistics (precise BN off)."""
    acc = history[-1].get("test_accuracy") if history and test_split is not None else None
    if acc is None or acc >= 200.0 / test_split.num_classes:
        return
    first, last = history[0].get("loss_loss"), history[-1].get("loss_loss")
    start = f"{label}: final test accuracy {acc:.2f}% is below twice chance"
    if first is not None and last is not None and (not math.isfinite(last) or (len(history) > 1 and last >= first)):
        accelerator.print(f"{start} and its training loss did not fall ({first:.4g} in epoch {history[0]['epoch']}, "
                          f"{last:.4g} in epoch {history[-1]['epoch']}): it diverged or did not learn; a lower or "
                          f"warmed-up learning rate or gradient clipping may help ({_flag(label, 'lr', 'warmup-epochs', 'clip-grad')})",
                          flush=True)
    elif bn_layers(model) and not spec.precise_bn:
        accelerator.print(f"{start} while its training loss fell; its BatchNorm statistics may not match its "
                          f"weights: {_precise_bn_flag(label)} re-estimates them", flush=True)
