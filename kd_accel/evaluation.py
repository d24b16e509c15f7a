"""Evaluation and teacher-logit prediction, exact under any number of processes.

Both shard the set with accelerator.prepare and collect with gather_for_metrics, which drops
the samples Accelerate duplicates to even out the last batch: every sample counts once."""
import torch

from .data import make_loader, to_float
from .reporting import progress_bar

# Rows per forward pass when nothing is trained (evaluation, precompute). On a CPU a batch of 200
# keeps the teacher's activations in cache: measured 2-2.4x faster than 1000 on a 2-core AMD
# EPYC (docs/performance.md), and the same logits bit for bit there as with 1000 (tests/
# test_bench.py checks it). On an accelerator larger batches mean fewer launches.
CPU_INFERENCE_BATCH = 200
DEVICE_INFERENCE_BATCH = 1000


def inference_batch(device):
    return CPU_INFERENCE_BATCH if torch.device(device).type == "cpu" else DEVICE_INFERENCE_BATCH


def on_device(accelerator, columns):
    """The (small, in-memory) columns moved to the device once, as fit does with the training
    set: a batch is then one gather there, not a host-to-device copy per batch."""
    return {k: v.to(accelerator.device) for k, v in columns.items()}


@torch.no_grad()
def evaluate(accelerator, model, split, batch_size=None, inputs=None):
    """Top-1 accuracy in percent of `model` (prepared or not) on `split`. inputs(batch) -> the
    model's input (default: the images as the split normalises them)."""
    batch_size = batch_size or inference_batch(accelerator.device)
    loader = accelerator.prepare(make_loader(on_device(accelerator, {"images": split.images, "labels": split.labels}),
                                             batch_size, shuffle=False))
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


@torch.inference_mode()
def predict_logits(accelerator, model, split, batch_size=None, inputs=None, extra=None, desc="teacher logits"):
    """Logits [N, C] (fp32, CPU) of a frozen model on every sample, row i = sample i.

    inputs(batch) -> the model's input (default: the images scaled to [0, 1]); `extra` columns
    [N, ...] ride along by sample index (one view's augmentation parameters).
    Each rank runs its shard; the gathered rows are placed by their sample index, and a mask
    checks that every row was written (so a sharding bug cannot leave zeros in the cache)."""
    batch_size = batch_size or inference_batch(accelerator.device)
    inputs = inputs or (lambda batch: to_float(batch["images"], split.norm))
    loader = accelerator.prepare(make_loader(on_device(accelerator, {"images": split.images, **(extra or {})}),
                                             batch_size, shuffle=False))
    model.eval()
    # rows placed on the device, copied to the host once at the end (not a sync per batch)
    out = torch.empty(len(split), split.num_classes, dtype=torch.float32, device=accelerator.device)
    seen = torch.zeros(len(split), dtype=torch.bool, device=accelerator.device)
    with progress_bar(accelerator, desc, len(loader)) as advance:
        for batch in loader:
            logits = model(inputs(batch)).float()
            idx, logits = accelerator.gather_for_metrics((batch["idx"], logits))
            idx = idx.to(out.device)
            out[idx] = logits
            seen[idx] = True
            advance()
    if not bool(seen.all()):
        raise RuntimeError(f"precompute missed {int((~seen).sum())} samples")
    return out.cpu()
