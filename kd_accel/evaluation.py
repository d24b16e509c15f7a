"""Evaluation and teacher-logit prediction, exact under any number of processes.

Both shard the set with accelerator.prepare and collect with gather_for_metrics, which drops
the samples Accelerate duplicates to even out the last batch: every sample counts once."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .data import to_float
from .reporting import progress_bar

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from accelerate import Accelerator

    from .data import DataSource, ViewPlan

# Rows per forward pass when nothing is trained (evaluation, precompute). On a CPU a batch of 200
# keeps the teacher's activations in cache: measured 2-2.4x faster than 1000 on a 2-core AMD
# EPYC (docs/performance.md), and the same logits bit for bit there as with 1000 (on an AVX-512/AMX
# Xeon the same within float rounding, 4e-8: tests/test_bench.py checks it). On an accelerator
# larger batches mean fewer launches.
CPU_INFERENCE_BATCH = 200
DEVICE_INFERENCE_BATCH = 1000


def inference_batch(device: torch.device | str) -> int:
    """Rows per forward pass on `device` when nothing is trained."""
    return CPU_INFERENCE_BATCH if torch.device(device).type == "cpu" else DEVICE_INFERENCE_BATCH


@torch.no_grad()
def evaluate(accelerator: Accelerator, model: torch.nn.Module, split: DataSource, batch_size: int | None = None,
             inputs: Callable[[dict], torch.Tensor] | None = None) -> float:
    """Top-1 accuracy in percent of `model` (prepared or not) on `split` (either kind of data
    source, decoded for this model: split.at(preprocessing)). inputs(batch) -> the model's input
    (default: the images as the split normalises them)."""
    loader = split.inference_loader(accelerator, batch_size or inference_batch(accelerator.device))
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=accelerator.device)
    total = 0
    for batch in loader:
        preds = model(inputs(batch) if inputs else to_float(batch["images"], split.norm)).argmax(dim=-1)
        preds, labels = accelerator.gather_for_metrics((preds, batch["labels"]))
        correct += (preds == labels).sum()
        total += len(labels)
    assert total == len(split), f"evaluated {total} samples of {len(split)}"
    return 100.0 * correct.item() / total


class _HostRows:
    """A batch's gathered rows copied to the host without waiting for them: on CUDA into pinned
    memory behind an event (the next batch's forward is queued before the host waits for these
    rows, so the copy and the host's writing overlap the GPU's work); on the CPU the tensors
    themselves; elsewhere a plain copy."""

    def __init__(self, tensors: Sequence[torch.Tensor]):
        cuda = any(t.device.type == "cuda" for t in tensors)
        self.tensors = tuple(t.to("cpu", non_blocking=cuda) for t in tensors)
        self.event = None
        if cuda:
            self.event = torch.cuda.Event()
            self.event.record()

    def wait(self) -> tuple[torch.Tensor, ...]:
        if self.event is not None:
            self.event.synchronize()
        return self.tensors


@torch.inference_mode()
def predict_rows(accelerator: Accelerator, model: torch.nn.Module, loader: Any, n: int,
                 inputs: Callable[[dict], torch.Tensor], write: Callable[..., None], desc: str = "teacher logits",
                 extra: Sequence[str] = (), host: bool = False) -> None:
    """Run a frozen model over every batch of `loader` (prepared: each rank its shard) and hand
    the gathered rows to write(idx [B'], logits [B', C] fp32, *extra columns [B', ...]) on every
    rank, placed by sample index (gather_for_metrics drops the rows Accelerate repeats to even
    out the last batch). A mask checks that every one of the n rows came, so a sharding bug
    cannot leave unwritten rows in a cache. `host`: the rows are handed over on the host, one
    batch behind the forward (_HostRows: no per-batch wait for the device); otherwise on the
    device as they come."""
    model.eval()
    seen = torch.zeros(n, dtype=torch.bool, device=accelerator.device)
    pending = None
    with progress_bar(accelerator, desc, len(loader), rows=n) as advance:
        for batch in loader:
            logits = model(inputs(batch)).float()
            # gloo gathers no uint16: the extra columns (a view's crops) travel as int32
            cols = tuple(batch[k].to(torch.int32) if batch[k].dtype == torch.uint16 else batch[k] for k in extra)
            idx, logits, *cols = accelerator.gather_for_metrics((batch["idx"], logits, *cols))
            idx = idx.to(seen.device)
            seen[idx] = True
            if not host:
                write(idx, logits, *cols)
            else:
                if pending is not None:
                    write(*pending.wait())
                pending = _HostRows((idx, logits, *cols))
            advance(images=len(idx))  # the gathered rows: every process's
    if pending is not None:
        write(*pending.wait())
    if not bool(seen.all()):
        raise RuntimeError(f"precompute missed {int((~seen).sum())} samples")


def predict_logits(accelerator: Accelerator, model: torch.nn.Module, split: DataSource, batch_size: int | None = None,
                   inputs: Callable[[dict], torch.Tensor] | None = None, views: ViewPlan | None = None,
                   view: int = 0, desc: str = "teacher logits") -> torch.Tensor:
    """Logits [N, C] (fp32, CPU) of a frozen model on every sample of an in-memory split, row
    i = sample i, as view `view` of `views` (None: the images as they are). inputs(batch) -> the
    model's input (default: the images scaled to [0, 1])."""
    inputs = inputs or (lambda batch: to_float(batch["images"], split.norm))
    loader = split.inference_loader(accelerator, batch_size or inference_batch(accelerator.device), views, view)
    # rows placed on the device, copied to the host once at the end (not a sync per batch)
    out = torch.empty(len(split), split.num_classes, dtype=torch.float32, device=accelerator.device)

    def write(idx: torch.Tensor, logits: torch.Tensor) -> None:
        out[idx] = logits

    predict_rows(accelerator, model, loader, len(split), inputs, write, desc)
    return out.cpu()
