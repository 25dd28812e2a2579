"""NVAE's normalisation layers: BatchNorm with momentum 0.05, its max-|gamma| regulariser, and
weight-normalised convolutions (Chapter 3, "taming the batch norm"; Chapter 4, "spectral
regularisation").

BN momentum: PyTorch's momentum m is the weight of the newest batch in the running statistics.
NVAE uses 0.05 instead of the default 0.1: the running estimates average about twice as many
batches (half the noise variance) but trail weight changes about twice as long (Chapter 3 measures
both). It adds the regulariser below and re-estimates the statistics before sampling
(see :mod:`hvae_lib.layers.bn_readjust`).
"""
import contextvars
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from hvae_lib.layers.spectral import LastWeight
from hvae_lib.layers.sync_bn import sync_batch_norm, sync_world_size

BN_MOMENTUM = 0.05
BN_EPS = 1e-5

# True while a gradient-checkpointed block is being recomputed in the backward pass.
_running_stats_frozen = contextvars.ContextVar("hvae_bn_running_stats_frozen", default=False)


@contextmanager
def frozen_running_stats():
    """Within the block, BatchNorm2d layers in train mode normalise with batch statistics as usual
    but leave their running statistics alone (a checkpointed block recomputed in the backward pass
    must not count its batch twice), and weight-normalised convs do not replace the weight they
    published for the spectral regulariser."""
    token = _running_stats_frozen.set(True)
    try:
        yield
    finally:
        _running_stats_frozen.reset(token)


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d with NVAE's momentum 0.05 that respects :func:`frozen_running_stats`, and
    that, in train mode under torch.distributed with more than one process, normalises with the
    moments of the global batch as the official code's SyncBatchNorm does (:mod:`.sync_bn`)."""

    def __init__(self, channels: int, momentum: float = BN_MOMENTUM, eps: float = BN_EPS):
        super().__init__(channels, eps=eps, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and sync_world_size() > 1:
            return sync_batch_norm(x, self, update_running_stats=not _running_stats_frozen.get())
        if self.training and _running_stats_frozen.get():
            # Throw-away copies take the update, so the op (and what autograd saves) is unchanged.
            mean, var = self.running_mean.clone(), self.running_var.clone()
            return F.batch_norm(x, mean, var, self.weight, self.bias, True, self.momentum or 0.0, self.eps)
        return super().forward(x)


def batchnorm_layers(module: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm layer under ``module``, in module order."""
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def bn_regularizer(layers: list[_BatchNorm]) -> torch.Tensor:
    """NVAE's BN regulariser: sum over affine BN layers of max_c |gamma_c| (Chapter 4).

    It stops any single channel's scale from growing large, which would amplify the mismatch
    between batch statistics (training) and running statistics (evaluation). Layers of equal
    width are stacked, so the cost is a few operations per width, not per layer.
    """
    by_width: dict[int, list[torch.Tensor]] = {}
    for layer in layers:
        if layer.affine:
            by_width.setdefault(layer.weight.numel(), []).append(layer.weight)
    if not by_width:
        return torch.zeros(())
    terms = [torch.stack(gammas).float().abs().amax(dim=1).sum() for gammas in by_width.values()]  # (N_w, C) each
    return torch.stack(terms).sum()


class WNConv2d(nn.Conv2d):
    """Weight-normalised convolution: W = exp(log_g) * V / (||V|| + 1e-5), one norm per output
    channel (Salimans & Kingma 2016; NVAE's ``Conv2D``, Chapter 3).

    ``log_weight_norm`` (C_out, 1, 1, 1) starts at log(||V|| + 0.01), so at initialisation W is
    V up to that small offset. Padding defaults to "same" for odd kernels.

    W is formed once per forward as V times a per-channel scale, so autograd keeps only W (for
    the convolution) and (C_out, 1, 1, 1) tensors beside the parameters; the forward publishes
    W for the spectral regulariser (:func:`~hvae_lib.layers.spectral.forward_weight`), which
    reuses it instead of normalising V again, as the official code does.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, padding: int | None = None,
                 groups: int = 1, bias: bool = True):
        padding = kernel_size // 2 if padding is None else padding
        super().__init__(c_in, c_out, kernel_size, stride=stride, padding=padding, groups=groups, bias=bias)
        init = torch.linalg.vector_norm(self.weight.detach(), dim=(1, 2, 3), keepdim=True)  # (C_out, 1, 1, 1)
        self.log_weight_norm = nn.Parameter(torch.log(init + 1e-2))
        self.last_weight = LastWeight()

    def weight_scale(self) -> torch.Tensor:
        """exp(log_g) / (||V|| + 1e-5), (C_out, 1, 1, 1): what multiplies V."""
        norm = torch.linalg.vector_norm(self.weight, dim=(1, 2, 3), keepdim=True)  # (C_out, 1, 1, 1)
        return self.log_weight_norm.exp() / (norm + 1e-5)

    def effective_weight(self) -> torch.Tensor:
        """The weight the convolution applies: exp(log_g) * V / (||V|| + 1e-5)."""
        return self.weight * self.weight_scale()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.effective_weight()
        if not _running_stats_frozen.get():  # a checkpoint's recomputation is not a new forward
            self.last_weight.keep(weight, self.weight, self.log_weight_norm)
        return self._conv_forward(x, weight, self.bias)
