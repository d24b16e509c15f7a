"""Batch-norm statistics shared across processes, so R processes with batch B/R train exactly
like one process with batch B.

torch.nn.SyncBatchNorm only runs on GPUs; this one works on any backend (gloo on CPU too).
It is swapped in by the training code, never by the models, and keeps BatchNorm2d's parameter
and buffer names, so checkpoints are interchangeable."""
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn


class SyncBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x):
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        # per-channel sum, sum of squares and count on this rank: [2C+1], then summed over ranks.
        # The autograd-aware all_reduce sends the gradients of the global statistics back.
        local = torch.cat([xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3)),
                           xf.new_tensor([xf.numel() // c])])
        total = dist_fn.all_reduce(local)
        n = total[-1]
        mean = total[:c] / n
        var = (total[c : 2 * c] / n - mean * mean).clamp_min(0)  # biased, as BN normalizes with
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
                self.num_batches_tracked.add_(1)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def sync_batchnorm(model):
    """Replace every BatchNorm2d in `model` by SyncBatchNorm2d (same weights and buffers)."""
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            new = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(model, name, new.to(child.weight.device if child.affine else "cpu"))
        else:
            sync_batchnorm(child)
    return model
