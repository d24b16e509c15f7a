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
from .losses import KD_LOSSES, ce_loss, loss_name
from .reporting import progress_bar
from .tracking import PhaseLog

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn

    from .checkpointing import Checkpointer
    from .data import DataSource, TrainData

@dataclass(frozen=True)
class TrainSpec:
    """What one training run is, all that fit reads of the configuration: epochs, the batch size
    (per process and per micro-batch: a step sees batch_size * grad_accum * processes samples),
    the lr and its schedule, the seed of the data order, and the memory format."""

    epochs: int
    batch_size: int
    lr: float
    schedule: str = "constant"
    seed: int = 0
    channels_last: bool = True

    @classmethod
    def of(cls, recipe: Any, run: Any) -> TrainSpec:
        """From a recipe (config.Recipe: the teacher's or the students') and the run (config.Run)."""
        return cls(recipe.epochs, recipe.batch_size, recipe.lr, recipe.schedule, run.seed, run.channels_last)


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


def hard_label_objective(logits: torch.Tensor, batch: dict) -> dict:
    return ce_loss(logits, batch["labels"])


def kd_objective(logits: torch.Tensor, batch: dict, kind: str, temperature: float, alpha: float) -> dict:
    return KD_LOSSES[kind](logits, batch["labels"], batch["teacher_logits"], temperature, alpha,
                           label_mask=batch.get("label_mask"))


def make_objective(kind: str, temperature: float | None = None, alpha: float | None = None) -> Objective:
    """'ce' for hard labels only; 'hinton' or 'notebook-mse' for distillation from the cache."""
    if kind == "ce":
        return hard_label_objective
    return partial(kd_objective, kind=loss_name(kind), temperature=temperature, alpha=alpha)


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


def adam(params: Any, lr: float, device: torch.device | str) -> torch.optim.Adam:
    """Adam, fused on CUDA: one kernel per step for every parameter, and under fp16 GradScaler's
    overflow check stays on the device instead of a host read every step. Elsewhere torch's
    default (foreach), whose updates CPU runs have always used (bit-identity with earlier runs);
    fused and foreach agree within float rounding (tests/test_training.py)."""
    return torch.optim.Adam(params, lr=lr, fused=torch.device(device).type == "cuda")


def lr_lambda(schedule: str, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base lr at a step: 'constant' (the notebook) or 'cosine' to zero."""
    if schedule == "constant":
        return lambda step: 1.0
    if schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    raise KDError(f"unknown lr schedule {schedule!r}")


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
    optimizer = adam(model.parameters(), spec.lr, accelerator.device)
    # Counted in optimizer steps on the un-sharded loader: the prepared scheduler steps once
    # per process on each optimizer step and not at all on accumulation micro-steps.
    total_steps = spec.epochs * math.ceil(len(loader) / accelerator.gradient_accumulation_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(spec.schedule, total_steps))
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
        with progress_bar(accelerator, f"{label} epoch {epoch + 1}/{spec.epochs}", len(loader)) as advance:
            advance(position)
            for batch in batches:
                batch = data.complete(batch)  # the index-keyed columns a streamed source gathers here
                with accelerator.accumulate(model):
                    x = batch["x"] = inputs(batch).contiguous(memory_format=memory_format)
                    parts = objective(model(x), batch)
                    for hook in hooks.batch:
                        hook(label, batch)
                    accelerator.backward(parts["loss"])
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
                advance()
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
    return accelerator.unwrap_model(model), {"epochs": history, "train_time_s": train_time}
