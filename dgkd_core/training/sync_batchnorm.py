"""BatchNorm synchronised over data-parallel ranks: torch's SyncBatchNorm on NCCL, and for gloo
(CPU, which SyncBatchNorm refuses) `AllReduceBatchNorm2d`, which all-reduces the batch statistics
itself (dgkd_core.training.distributed, run config `distributed.sync_bn`)."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["AllReduceBatchNorm2d", "convert_sync_batchnorm"]


def convert_sync_batchnorm(module: nn.Module, backend: str | None) -> nn.Module:
    """`module` with every BatchNorm2d synchronised over the ranks: torch's SyncBatchNorm on
    NCCL; on gloo (CPU, which SyncBatchNorm refuses) `AllReduceBatchNorm2d`. Parameters and
    buffers are the same tensors, so an optimizer built before still holds them."""
    if backend == "nccl":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            setattr(module, name, AllReduceBatchNorm2d.from_batchnorm(child))
        else:
            convert_sync_batchnorm(child, backend)
    return module


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are the global batch's, summed over the ranks with
    all-reduces, as one process computes them over the whole batch: torch's SyncBatchNorm, for
    gloo (CPU, which SyncBatchNorm refuses); on GPUs SyncBatchNorm itself is used.

    input [B,C,H,W] -> same shape. Evaluation uses the running statistics, as BatchNorm2d."""

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> "AllReduceBatchNorm2d":
        out = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                  device=bn.weight.device if bn.affine else None)
        if bn.affine:
            out.weight, out.bias = bn.weight, bn.bias
        out.running_mean, out.running_var = bn.running_mean, bn.running_var
        out.num_batches_tracked = bn.num_batches_tracked
        out.train(bn.training)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        self._check_input_dim(x)
        weight = self.weight if self.affine else torch.ones(x.shape[1], dtype=x.dtype)
        bias = self.bias if self.affine else torch.zeros(x.shape[1], dtype=x.dtype)
        out, mean, var, count = _GlobalBatchNorm.apply(x, weight, bias, self.eps)
        if self.track_running_stats:
            self._update_running_stats(mean, var, count)
        return out

    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        """As F.batch_norm does: the unbiased variance, momentum (None: a cumulative average)."""
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                      else self.momentum)
            self.running_mean.mul_(1.0 - factor).add_(mean, alpha=factor)
            self.running_var.mul_(1.0 - factor).add_(var * (n / max(n - 1.0, 1.0)),
                                                     alpha=factor)


class _GlobalBatchNorm(torch.autograd.Function):
    """Batch normalisation over the images of every rank: x [B,C,H,W] (this rank's) -> (out
    [B,C,H,W], mean [C], biased var [C], global count). Sums are taken in float64, and the
    backward is BatchNorm's closed form (SyncBatchNorm's): two summed per-channel reductions,
    not autograd through the statistics, whose terms cancel badly in float32."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        import torch.distributed as dist

        dims = (0, 2, 3)
        stats = torch.cat([x.sum(dims, dtype=torch.float64),
                           torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64)])
        dist.all_reduce(stats)
        count = float(stats[-1])
        mean = stats[:-1] / count
        centred = x - mean.to(x.dtype)[None, :, None, None]
        var = centred.square().sum(dims, dtype=torch.float64)
        dist.all_reduce(var)
        var = var / count
        invstd = torch.rsqrt(var + eps).to(x.dtype)
        normed = centred * invstd[None, :, None, None]
        ctx.save_for_backward(normed, invstd, weight)
        ctx.count = count
        ctx.mark_non_differentiable(mean, var)
        out = normed * weight[None, :, None, None] + bias[None, :, None, None]
        return out, mean.to(x.dtype), var.to(x.dtype), count

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var, _grad_count):
        import torch.distributed as dist

        normed, invstd, weight = ctx.saved_tensors
        dims = (0, 2, 3)
        sum_g = grad_out.sum(dims, dtype=torch.float64)
        sum_gn = (grad_out * normed).sum(dims, dtype=torch.float64)
        grad_weight, grad_bias = sum_gn.to(weight.dtype), sum_g.to(weight.dtype)  # this rank's
        totals = torch.stack([sum_g, sum_gn])
        dist.all_reduce(totals)  # the gradient of every rank's loss reaches the statistics
        mean_g = (totals[0] / ctx.count).to(normed.dtype)[None, :, None, None]
        mean_gn = (totals[1] / ctx.count).to(normed.dtype)[None, :, None, None]
        grad_x = (grad_out - mean_g - normed * mean_gn) * (invstd * weight)[None, :, None, None]
        return grad_x, grad_weight, grad_bias, None
