"""BatchNorm over the global batch of every process: NVAE's synchronised BatchNorm for runs under
``torchrun`` (Chapter 3 explains BatchNorm), written for any backend (torch's ``nn.SyncBatchNorm``
needs CUDA).

Under ``torchrun`` each process sees its share of the batch (32 images of the paper's 256 for
CIFAR-10 on 8 GPUs). Plain BatchNorm would normalise with the statistics of those 32; the official
code synchronises, so every layer normalises with the mean and variance of all 256. Here:

- forward: each process computes its per-channel mean m_r and biased variance v_r over its
  n_r = B_r * H * W values; one all-gather gives every process all of them, and the global moments
  follow exactly (Chan et al.'s parallel combination): N = sum n_r, mu = sum n_r m_r / N,
  var = sum n_r (v_r + (m_r - mu)^2) / N. Then y = (x - mu) / sqrt(var + eps) * gamma + beta,
  and the running statistics take mu and the unbiased var * N / (N - 1), identically everywhere.
- backward: with x_hat = (x - mu) / sqrt(var + eps) and dy the incoming gradient, one all-reduce
  sums sum(dy) and sum(dy * x_hat) over every process, and
  dx = gamma / sqrt(var + eps) * (dy - sum(dy) / N - x_hat * sum(dy x_hat) / N);
  gamma's and beta's gradients stay local (DistributedDataParallel averages them like any other).

Autograd keeps x, gamma, mu and 1 / sqrt(var + eps), as a plain BatchNorm does. Under gradient
checkpointing the recomputation runs the same collectives in the same order on every process and,
inside :func:`~hvae_lib.layers.norms.frozen_running_stats`, leaves the running statistics alone.
"""
from __future__ import annotations

import contextvars
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn.functional as F

_local_only = contextvars.ContextVar("hvae_bn_local_only", default=False)


@contextmanager
def local_batch_norm():
    """Within the block BatchNorm normalises each process's own batch (BN re-estimation before
    sampling, or anything one process runs alone, which would otherwise wait for the others)."""
    token = _local_only.set(True)
    try:
        yield
    finally:
        _local_only.reset(token)


def sync_world_size() -> int:
    """How many processes a BatchNorm in train mode synchronises over: the default process group's
    size under torch.distributed, else 1 (and 1 inside :func:`local_batch_norm`)."""
    if _local_only.get() or not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size()


@torch.no_grad()
def global_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel (mean, biased variance) over the batches of every process, and the total count N.
    x: (B, C, H, W); float32 results of shape (C,), (C,) and () (no gradient: the backward below
    accounts for the moments' dependence on x)."""
    channels, count = x.shape[1], x.numel() // x.shape[1]
    var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), correction=0)  # (C,) each, this process
    local = torch.cat([mean, var, mean.new_tensor([count])])  # (2C + 1,)
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    table = torch.stack(gathered)  # (world, 2C + 1)
    means, variances, counts = table[:, :channels], table[:, channels:-1], table[:, -1:]  # (world, C), (world, 1)
    total = counts.sum()
    mu = (counts * means).sum(0) / total
    var = (counts * (variances + (means - mu) ** 2)).sum(0) / total
    return mu, var, total


class _SyncBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, eps, count):
        ctx.save_for_backward(x, weight, mean, torch.rsqrt(var + eps), count)
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)  # (B, C, H, W), the given moments

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mean, invstd, count = ctx.saved_tensors
        dy = grad_out.float()
        x_hat = (x.float() - mean[:, None, None]) * invstd[:, None, None]  # (B, C, H, W)
        sums = torch.cat([dy.sum(dim=(0, 2, 3)), (dy * x_hat).sum(dim=(0, 2, 3))])  # (2C,) this process
        grad_weight = sums[len(mean):].clone() if weight is not None else None
        grad_bias = sums[:len(mean)].clone() if weight is not None else None
        dist.all_reduce(sums)  # every process's sums: the gradient through the shared moments
        sum_dy, sum_dy_xhat = sums[:len(mean)] / count, sums[len(mean):] / count
        scale = invstd if weight is None else invstd * weight.float()
        grad_x = scale[:, None, None] * (dy - sum_dy[:, None, None] - x_hat * sum_dy_xhat[:, None, None])
        return (grad_x.to(x.dtype), None if weight is None else grad_weight.to(weight.dtype),
                None if weight is None else grad_bias.to(weight.dtype), None, None, None, None)


def sync_batch_norm(x: torch.Tensor, bn, update_running_stats: bool = True) -> torch.Tensor:
    """``bn`` (a BatchNorm2d in train mode) applied with the moments of the global batch (see the
    module docstring); its running statistics are updated unless ``update_running_stats`` is False."""
    mean, var, count = global_moments(x)
    if bn.track_running_stats and update_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            unbiased = var * count / (count - 1).clamp_min(1)
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
            bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), factor)
    weight, bias = (bn.weight, bn.bias) if bn.affine else (None, None)
    return _SyncBatchNorm.apply(x, weight, bias, mean, var, bn.eps, count)

