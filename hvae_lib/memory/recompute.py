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
  whole block. The paper credits it with about 18% less memory; Chapter 5 measures about that on
  the CIFAR-10 layout. The library trains with checkpointing; ``fuse_bn_swish`` is there to
  measure and to experiment with (it is not a config switch).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from hvae_lib.layers.cells import Swish
from hvae_lib.layers.norms import BatchNorm2d, _running_stats_frozen, frozen_running_stats


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


class _BNSwishFunction(torch.autograd.Function):
    """swish(BN(x)) with batch statistics, saving only x and the per-channel mean and 1/std.

    Built from PyTorch's own batch-norm and Swish kernels: forward = ``native_batch_norm`` (which
    also updates the running statistics it is given) then SiLU; backward = the affine normalisation
    recomputed from x, SiLU's backward, then ``native_batch_norm_backward``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps)
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.eps = eps
        return F.silu(y)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        scale = (weight * invstd).view(1, -1, 1, 1)  # (1, C, 1, 1)
        shift = (bias - mean * weight * invstd).view(1, -1, 1, 1)
        y = torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))  # BN's output, recomputed: (B, C, H, W)
        grad_y = torch.ops.aten.silu_backward(grad_out, y)
        del y
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_y, x, weight, None, None, mean, invstd, True, ctx.eps, [True, True, True])
        return grad_x, grad_weight, grad_bias, None, None, None, None


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
        running_mean, running_var, momentum = self.running_mean, self.running_var, self.momentum
        if not self.track_running_stats:
            pass
        elif _running_stats_frozen.get():  # a recomputation: throw-away copies take the update
            running_mean, running_var = running_mean.clone(), running_var.clone()
        else:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # a cumulative average, as nn.BatchNorm2d
                momentum = 1.0 / float(self.num_batches_tracked)
        return _BNSwishFunction.apply(x, self.weight, self.bias, running_mean, running_var, momentum or 0.0, self.eps)


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
