"""Inverse autoregressive flow cells on the posterior: "NVAE w/ flow" (Chapter 4, "flows").

A group's posterior sample z0 ~ q(z0|x) = N(mu_q, sigma_q^2) is pushed through invertible maps
z_{k+1} = f_k(z_k; context) whose Jacobians are triangular, so that

    log q(z_K|x) = log q(z0|x) - sum_k log |det df_k/dz_k|,

and the KL of that group becomes the one-sample estimate log q(z_K|x) - log p(z_K) (Kingma et al.
2016, IAF; Vahdat & Kautz 2020, Sec. 3). Triangularity comes from masked convolutions: order the
latent elements pixel by pixel in raster order and, within a pixel, by channel group; an output
element may only read input elements earlier in that order. A cell and its mirror (the order
reversed) in sequence let every element depend on every other (Chapter 4, "flows").

NVlabs/NVAE's cells are volume-preserving shifts z' = z - mu(z) (log-det 0). The affine variant
z' = (z - mu) * exp(-s), log-det -sum(s), is offered as well.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from hvae_lib.layers.spectral import LastWeight
from hvae_lib.probability.gaussian import soft_clamp, sum_except_batch

LOG_SCALE_BOUND = 5.0  # NVAE soft-clamps its Gaussian parameters to (-5, 5); the flow's log-scale too


def _maths_dtype(z: torch.Tensor) -> torch.dtype:
    """float32 for the shift, scale and log-det even when autocast hands back bf16/fp16 (float64 stays)."""
    return torch.promote_types(z.dtype, torch.float32)


def autoregressive_mask(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    ar_groups: int,
    conv_groups: int = 1,
    zero_diagonal: bool = False,
    mirror: bool = False,
    mirror_channels: bool = True,
) -> torch.Tensor:
    """0/1 kernel mask (C_out, C_in / conv_groups, k, k) for the raster-then-group order (Chapter 4).

    Channels are split into ``ar_groups`` contiguous blocks (input and output alike). Output group g
    at pixel p may read inputs at pixels strictly before p in raster order, and at p itself inputs of
    groups < g (``zero_diagonal=True``) or <= g (``False``). ``mirror`` reverses the whole order, so
    the mirror mask is the forward mask flipped along all four axes; with ``mirror_channels=False``
    only the pixel order is reversed and the groups keep theirs (NVlabs' ``create_conv_mask`` flips
    the kernel's two spatial axes only), another valid autoregressive order.
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"A masked convolution needs an odd kernel_size so the centre tap is the current pixel; got {kernel_size}.")
    for name, c in (("in_channels", in_channels), ("out_channels", out_channels)):
        if c % ar_groups or c % conv_groups:
            raise ValueError(
                f"{name}={c} must be a multiple of ar_groups={ar_groups} and of groups={conv_groups} so every "
                f"channel belongs to one autoregressive group; choose channel counts that divide evenly."
            )
    k, centre = kernel_size, (kernel_size - 1) // 2
    taps = torch.arange(k)
    # Raster position of each tap relative to the centre: negative = earlier pixel, 0 = this pixel.
    spatial_rank = (taps.view(k, 1) - centre) * k + (taps.view(1, k) - centre)  # (k, k)
    out_idx = torch.arange(out_channels).view(-1, 1)  # (C_out, 1)
    in_per_conv_group = in_channels // conv_groups
    # Input channel seen by weight[o, j]: conv group of o, then j inside it.
    in_idx = (out_idx // (out_channels // conv_groups)) * in_per_conv_group + torch.arange(in_per_conv_group)  # (C_out, C_in/cg)
    group_gap = in_idx // (in_channels // ar_groups) - out_idx // (out_channels // ar_groups)  # (C_out, C_in/cg)
    if mirror:
        spatial_rank, group_gap = -spatial_rank, (-group_gap if mirror_channels else group_gap)
    same_pixel_ok = group_gap < 0 if zero_diagonal else group_gap <= 0
    mask = (spatial_rank < 0) | ((spatial_rank == 0) & same_pixel_ok[..., None, None])  # (C_out, C_in/cg, k, k)
    return mask.float()


class MaskedConv2d(nn.Conv2d):
    """'Same'-padded, stride-1 conv whose kernel is multiplied by :func:`autoregressive_mask` (Chapter 4).

    Like NVAE's ARConv2d it is weight-normalised: the effective kernel of output channel o is
    exp(log_weight_norm_o) * (w_o * m_o) / ||w_o * m_o||, initialised to ||w_o * m_o|| * init_scale.
    The mask is a buffer applied in every forward, so ``weight`` stays a plain parameter;
    :meth:`masked_weight` returns the kernel actually used (for spectral regularisation, say).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        ar_groups: int,
        zero_diagonal: bool = False,
        mirror: bool = False,
        groups: int = 1,
        dilation: int = 1,
        bias: bool = True,
        weight_norm: bool = True,
        init_scale: float = 1.0,
        mirror_channels: bool = True,
    ):
        mask = autoregressive_mask(in_channels, out_channels, kernel_size, ar_groups, groups, zero_diagonal, mirror,
                                   mirror_channels)
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, groups=groups, bias=bias)
        self.ar_groups, self.zero_diagonal, self.mirror = ar_groups, zero_diagonal, mirror
        self.register_buffer("mask", mask, persistent=False)  # derived from the arguments, not learned
        self.log_weight_norm = None
        if weight_norm:
            with torch.no_grad():
                norm = (self.weight * mask).flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # (C_out, 1, 1, 1)
                init = torch.log(norm + 1e-2) + math.log(init_scale)
            self.log_weight_norm = nn.Parameter(init)
        self.last_weight = LastWeight()  # what the forward applied, reused by the spectral regulariser

    def masked_weight(self) -> torch.Tensor:
        """The kernel used in forward: masked, then weight-normalised. (C_out, C_in / groups, k, k)."""
        weight = self.weight * self.mask
        if self.log_weight_norm is None:
            return weight
        norm = weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # (C_out, 1, 1, 1)
        return self.log_weight_norm.exp() * weight / (norm + 1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.masked_weight()
        self.last_weight.keep(weight, self.weight, *([] if self.log_weight_norm is None else [self.log_weight_norm]))
        return F.conv2d(x, weight, self.bias, 1, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ar_groups={self.ar_groups}, zero_diagonal={self.zero_diagonal}, mirror={self.mirror}"


class IAFCell(nn.Module):
    """One autoregressive flow step z' = (z - mu(z, c)) [* exp(-s(z, c))] (Chapter 4, "flows").

    mu and s at element i depend only on z at elements before i in the mask order, so dz'/dz is
    triangular with diagonal 1 (volume-preserving, NVAE's choice: log-det 0) or exp(-s) (affine:
    log-det -sum(s)). The network follows NVAE's ARInvertedResidual/CellAR: masked 3x3 conv
    expanding C_z -> hidden (zero diagonal), ELU, masked depthwise 5x5, ELU, masked 1x1 head
    whose weight norm starts at 0.1 so a fresh cell is close to the identity. The context (an
    encoder feature at z's resolution, a function of x alone) enters through an unmasked 1x1 conv
    added after the first layer, as in IAF; ``context_channels=0`` drops it, as NVAE's code does.
    """

    def __init__(
        self,
        z_channels: int,
        context_channels: int,
        hidden_channels: int | None = None,
        mirror: bool = False,
        volume_preserving: bool = True,
        kernel_size: int = 5,
        nvlabs: bool = False,
    ):
        super().__init__()
        hidden = 6 * z_channels if hidden_channels is None else hidden_channels  # NVAE expands 6x
        if hidden % z_channels:
            raise ValueError(
                f"hidden_channels={hidden} must be a multiple of z_channels={z_channels} so each latent channel "
                f"owns a block of hidden channels; use e.g. hidden_channels={6 * z_channels}."
            )
        self.z_channels, self.context_channels = z_channels, context_channels
        self.mirror, self.volume_preserving = mirror, volume_preserving
        # nvlabs=True: NVlabs' CellAR exactly (its mirror keeps the channel order; an ELU twice before the head).
        self.nvlabs, flip = nvlabs, not nvlabs
        self.expand = MaskedConv2d(z_channels, hidden, 3, z_channels, zero_diagonal=True, mirror=mirror, bias=False,
                                   mirror_channels=flip)
        self.context_proj = nn.Conv2d(context_channels, hidden, 1) if context_channels > 0 else None
        self.depthwise = MaskedConv2d(hidden, hidden, kernel_size, z_channels, mirror=mirror, groups=hidden, bias=False,
                                      mirror_channels=flip)
        head_channels = z_channels if volume_preserving else 2 * z_channels
        self.head = MaskedConv2d(hidden, head_channels, 1, z_channels, mirror=mirror, init_scale=0.1,
                                 mirror_channels=flip)
        nn.init.zeros_(self.head.bias)

    def _check(self, z: torch.Tensor, context: torch.Tensor | None) -> None:
        name = type(self).__name__
        if z.dim() != 4 or z.shape[1] != self.z_channels:
            raise ValueError(f"{name} expects z of shape (B, {self.z_channels}, H, W), got {tuple(z.shape)}.")
        if self.context_proj is None:
            if context is not None:
                raise ValueError(
                    f"{name} was built with context_channels=0, so pass context=None "
                    f"or rebuild it with context_channels={context.shape[1]}."
                )
            return
        expected = (z.shape[0], self.context_channels, *z.shape[2:])
        if context is None or tuple(context.shape) != expected:
            got = None if context is None else tuple(context.shape)
            raise ValueError(
                f"{name} expects a context of shape {expected} (an encoder feature at z's resolution), got {got}."
            )

    def shift_and_log_scale(self, z: torch.Tensor, context: torch.Tensor | None = None):
        """(mu, s), each (B, C_z, H, W) in float32 (float64 for float64 z); s is zeros when volume-preserving."""
        self._check(z, context)
        h = self.expand(z)  # (B, hidden, H, W)
        if self.context_proj is not None:
            h = h + self.context_proj(context)
        h = F.elu(self.depthwise(F.elu(h)))  # (B, hidden, H, W)
        if self.nvlabs:  # ARInvertedResidual ends in an ELU and the head (ELUConv) begins with one
            h = F.elu(h)
        params = self.head(h).to(_maths_dtype(z))  # (B, C_z or 2 C_z, H, W)
        if self.volume_preserving:
            return params, torch.zeros_like(params)
        # Head channels come in per-latent-channel pairs so that both belong to that channel's group.
        mu, raw_s = rearrange(params, "b (c two) h w -> two b c h w", two=2)
        return mu, soft_clamp(raw_s, LOG_SCALE_BOUND)

    def forward(self, z: torch.Tensor, context: torch.Tensor | None = None):
        """z' = (z - mu) * exp(-s) and log|det dz'/dz| = -sum(s), both float32: ((B, C_z, H, W), (B,))."""
        mu, s = self.shift_and_log_scale(z, context)
        z = z.to(mu.dtype)
        if self.volume_preserving:
            return z - mu, torch.zeros(z.shape[0], dtype=mu.dtype, device=z.device)
        return (z - mu) * torch.exp(-s), -sum_except_batch(s)

    @torch.no_grad()
    def inverse(self, z_new: torch.Tensor, context: torch.Tensor | None = None, max_passes: int | None = None) -> torch.Tensor:
        """z from z' by the fixed point z <- z' * exp(s(z)) + mu(z), one pass per ordered element at most.

        Pass n makes the first n elements of the order exact, so C_z*H*W passes always suffice;
        it stops as soon as a pass changes nothing (IAF: sampling is parallel, inverting is sequential).
        """
        z_new = z_new.to(_maths_dtype(z_new))
        z = torch.zeros_like(z_new)  # (B, C_z, H, W)
        for _ in range(max_passes or z_new[0].numel()):
            mu, s = self.shift_and_log_scale(z, context)
            z, previous = z_new * torch.exp(s) + mu, z
            if torch.equal(z, previous):
                break
        return z


class PairedIAF(nn.Module):
    """NVAE's PairedCellAR: an IAF cell, then its mirror; log-dets add (Chapter 4, "flows").

    The first cell's element i sees elements before i, the mirror's sees those after, so after
    the pair every latent element can depend on every other while log|det| stays a sum.
    """

    def __init__(
        self,
        z_channels: int,
        context_channels: int,
        hidden_channels: int | None = None,
        volume_preserving: bool = True,
        kernel_size: int = 5,
        nvlabs: bool = False,
    ):
        super().__init__()
        self.cell = IAFCell(z_channels, context_channels, hidden_channels, False, volume_preserving, kernel_size, nvlabs)
        self.mirror_cell = IAFCell(z_channels, context_channels, hidden_channels, True, volume_preserving, kernel_size,
                                   nvlabs)

    def forward(self, z: torch.Tensor, context: torch.Tensor | None = None):
        """(z'', log|det| of both cells): ((B, C_z, H, W), (B,)), float32."""
        z, log_det = self.cell(z, context)
        z, mirror_log_det = self.mirror_cell(z, context)
        return z, log_det + mirror_log_det

    @torch.no_grad()
    def inverse(self, z_new: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Undo the mirror cell, then the first cell (each by its fixed point)."""
        return self.cell.inverse(self.mirror_cell.inverse(z_new, context), context)
