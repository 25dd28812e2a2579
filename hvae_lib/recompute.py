"""Trading compute for memory in the backward pass (Chapter 5, "gradient checkpointing").

Two ways to keep fewer activations between the forward and the backward pass:

- **Gradient checkpointing** (ours, :func:`checkpoint_block`): a block keeps only its input; in the
  backward pass it runs its forward again to rebuild what its own backward needs. One extra forward
  of every checkpointed block. BatchNorm in train mode normalises with the batch's statistics, so
  the recomputation gives exactly the same outputs — but it would also update the running
  statistics a second time; :func:`~hvae_lib.layers.norms.frozen_running_stats` stops that.
- **NVAE's BN-Swish recomputation** (:class:`BNSwish`, NVlabs/NVAE's ``SyncBatchNormSwish``):
  BatchNorm followed by Swish normally saves two tensors of the same size, BN's input (for BN's
  backward) and BN's output (for Swish's backward). The fused op saves only the input and
  recomputes the normalised tensor in the backward pass: one elementwise pass, far cheaper than a
  whole block. The paper credits it with about 18% less memory.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers.cells import Swish
from .layers.norms import BatchNorm2d, _running_stats_frozen, frozen_running_stats


def _recompute_contexts():
    # forward: nothing special; the recomputation in backward: BN running statistics left alone.
    return nullcontext(), frozen_running_stats()


def checkpoint_block(block: nn.Module, *args):
    """``block(*args)`` with its activations recomputed in the backward pass instead of stored
    (non-reentrant ``torch.utils.checkpoint``), BatchNorm running statistics updated once.

    The same call as :meth:`hvae_lib.models.nvae.NVAE.checkpointed` makes when
    ``grad_checkpointing`` is on. The RNG state is replayed, so random ops recompute identically.
    """
    return checkpoint(block, *args, use_reentrant=False, context_fn=_recompute_contexts)


def _maths_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)  # float32 under autocast, float64 stays


def _per_channel(v: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, 1, 1)  # (1, C, 1, 1)


class _BNSwishFunction(torch.autograd.Function):
    """swish(BN(x)) with batch statistics, saving only x (and per-channel statistics)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        xf = x.to(_maths_dtype(x))  # (B, C, H, W); no copy for float32 input
        mean = xf.mean(dim=(0, 2, 3))  # (C,)
        var = xf.var(dim=(0, 2, 3), unbiased=False)  # (C,) biased, as BN normalises with
        invstd = torch.rsqrt(var + eps)
        y = (xf - _per_channel(mean)) * _per_channel(invstd * weight) + _per_channel(bias)
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.mark_non_differentiable(mean, var)
        return F.silu(y).to(x.dtype), mean, var

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        x_hat = (x.to(mean.dtype) - _per_channel(mean)) * _per_channel(invstd)  # recomputed, (B, C, H, W)
        y = x_hat * _per_channel(weight) + _per_channel(bias)
        s = torch.sigmoid(y)
        grad_y = grad_out.to(mean.dtype) * s * (1 + y * (1 - s))  # swish'(y) = s (1 + y (1 - s))
        n = x.numel() // x.shape[1]  # values per channel
        grad_bias = grad_y.sum(dim=(0, 2, 3))  # (C,)
        grad_weight = (grad_y * x_hat).sum(dim=(0, 2, 3))  # (C,)
        # BN's input gradient: gamma / sigma * (g - mean(g) - x_hat * mean(g * x_hat)), per channel.
        grad_x = _per_channel(weight * invstd) * (grad_y - _per_channel(grad_bias / n) - x_hat * _per_channel(grad_weight / n))
        return grad_x.to(x.dtype), grad_weight, grad_bias, None


class BNSwish(BatchNorm2d):
    """swish(BatchNorm2d(x)) in one op that saves only BN's input (NVAE's memory trick, Chapter 5).

    Same parameters, buffers and running-statistics update as :class:`BatchNorm2d` (momentum 0.05,
    ``None`` for a cumulative average, :func:`frozen_running_stats` respected), so a model's
    ``state_dict`` is unchanged by :func:`fuse_bn_swish`. Eval mode (running statistics) computes
    the two ops plainly: nothing needs saving there when no gradient is taken.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.silu(super().forward(x))
        out, mean, var = _BNSwishFunction.apply(x, self.weight, self.bias, self.eps)
        if self.track_running_stats and not _running_stats_frozen.get():
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                n = x.numel() // x.shape[1]
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_((var * n / max(n - 1, 1)).to(self.running_var.dtype), factor)  # unbiased, as nn.BatchNorm2d
        return out


def fuse_bn_swish(module: nn.Module) -> int:
    """Fuse every BatchNorm2d directly followed by a Swish inside an ``nn.Sequential`` of ``module``
    into one :class:`BNSwish`, in place; returns how many pairs were fused.

    The BN layer keeps its identity (its class becomes :class:`BNSwish`), so optimisers, the BN
    regulariser and anything else holding it are unaffected; the Swish becomes ``nn.Identity``.
    """
    fused = 0
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if type(seq[i]) is BatchNorm2d and isinstance(seq[i + 1], Swish):
                seq[i].__class__ = BNSwish
                seq[i + 1] = nn.Identity()
                fused += 1
    return fused
