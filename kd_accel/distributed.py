"""Batch-norm statistics shared across processes, so R processes with batch B/R train exactly
like one process with batch B.

torch.nn.SyncBatchNorm only runs on GPUs and is what NCCL runs get; this one works on any
backend (gloo on CPU too). Either is swapped in by the training code, never by the models, and
keeps BatchNorm2d's parameter and buffer names, so checkpoints are interchangeable."""
from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch import nn

from .errors import KDError


class _AllReduceSum(torch.autograd.Function):
    """The sum over ranks of a tensor, whose gradient is the sum over ranks of its gradients (each
    rank's loss depends on every rank's statistics). What torch.distributed.nn.functional.all_reduce
    did, op for op (a contiguous clone all-reduced; backward the same on the gradient): torch 2.14
    deprecates it (a FutureWarning on every call) for functional collectives, which are private."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(grad)


def _syncing(bn):
    return bn.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _sync_normalise(bn, x):
    """BatchNorm's training-mode output for x [B, C, H, W] with the statistics of the whole global
    batch, updating the running statistics as BatchNorm does."""
    c = x.shape[1]
    xf = x.float()
    # per-channel sum, sum of squares and count on this rank: [2C+1], then summed over ranks.
    # The autograd-aware all_reduce sends the gradients of the global statistics back.
    # the count made on the device (torch.full: no host tensor copied over on every forward)
    count = torch.full((1,), xf.numel() // c, dtype=xf.dtype, device=xf.device)
    local = torch.cat([xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3)), count])
    total = _AllReduceSum.apply(local)
    n = total[-1]
    mean = total[:c] / n
    var = (total[c : 2 * c] / n - mean * mean).clamp_min(0)  # biased, as BN normalizes with
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            bn.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
    y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + bn.eps)[None, :, None, None]
    if bn.affine:
        y = y * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    return y.to(x.dtype)


class SyncBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _sync_normalise(self, x) if _syncing(self) else super().forward(x)


def _check_known_batchnorms(model, *known):
    """Refuse, in one line, a batch norm of a class without a synchronised version here."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and type(m) not in known:
            raise KDError(f"{type(m).__name__} at {name or 'the model'} has no batch norm synchronised across "
                          "processes here (BatchNorm2d and timm's BatchNormAct2d do); train this model in one process")


@functools.lru_cache(maxsize=None)  # one synced class: a model synced twice is still recognised
def _timm_bn_act():
    """timm's BatchNormAct2d (BN, then dropout and activation in one module) and its synced
    kind; (None, None) without timm."""
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:
        return None, None

    class SyncBatchNormAct2d(BatchNormAct2d):
        def forward(self, x):
            if not _syncing(self):
                return super().forward(x)
            return self.act(self.drop(_sync_normalise(self, x)))

    return BatchNormAct2d, SyncBatchNormAct2d


def sync_batchnorm(model: nn.Module, backend: str = "gloo") -> nn.Module:
    """Every batch norm of `model` synchronised across processes: BatchNorm2d and timm's
    BatchNormAct2d (same parameters, buffers and names, so checkpoints are interchangeable).
    On NCCL, torch's SyncBatchNorm (timm's converter where timm's fused layers are present):
    GPU kernels, no host round trip; elsewhere (gloo, CPU) kd_accel's own layers, in place.
    Any other batch norm is refused in one line: left alone, it would train differently with
    every process count."""
    bn_act, sync_bn_act = _timm_bn_act()
    _check_known_batchnorms(model, nn.BatchNorm2d, SyncBatchNorm2d, nn.SyncBatchNorm, *filter(None, (bn_act, sync_bn_act)))
    if backend == "nccl":
        if bn_act is not None and any(type(m) is bn_act for m in model.modules()):
            from timm.layers import convert_sync_batchnorm
            return convert_sync_batchnorm(model)
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = SyncBatchNorm2d
        elif bn_act is not None and type(m) is bn_act:
            m.__class__ = sync_bn_act
    return model
