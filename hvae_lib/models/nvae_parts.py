"""Parts of the NVAE model (Chapter 3): the group layout, one top-down latent group, the output head.

Kept apart from :mod:`hvae_lib.models.nvae` so each file stays one concept: this one says what a
latent group *is* (its cells, prior, posterior and combiners), that one runs the towers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hvae_lib.layers.cells import GenerativeCell
from hvae_lib.layers.norms import WNConv2d
from hvae_lib.probability.gaussian import sum_except_batch
from hvae_lib.probability.likelihoods import Bernoulli, DiscretizedLogisticMixture, LikelihoodHead
from hvae_lib.probability.residual_normal import NVAENormal, residual_kl


def groups_per_scale(num_scales: int, num_groups: int, adaptive: bool, minimum: int = 1) -> list[int]:
    """Latent groups at each scale, highest resolution first (NVAE's ``--num_groups_per_scale``).

    Equal (``adaptive=False``): ``num_groups`` everywhere. Adaptive (``--ada_groups``): the highest
    resolution gets ``num_groups`` and every coarser scale half as many, never below ``minimum``.
    """
    groups, n = [], num_groups
    for _ in range(num_scales):
        groups.append(n)
        if adaptive:
            n = max(minimum, n // 2)
    return groups


def flow_cells(num_flows: int, z_channels: int, context_channels: int, nvlabs: bool = False) -> nn.ModuleList:
    """``num_flows`` paired IAF cells for one group (Chapter 4, "flows"); empty when num_flows = 0.
    ``nvlabs``: NVlabs' cells exactly (see :class:`~hvae_lib.probability.flows.IAFCell`)."""
    if num_flows == 0:
        return nn.ModuleList()
    try:
        from hvae_lib.probability.flows import PairedIAF
    except ImportError as err:  # flows.py is a separate module of the library
        raise ImportError(f"num_flows={num_flows} needs hvae_lib/probability/flows.py (PairedIAF), which failed to import "
                          f"({err}); set num_flows=0 to train NVAE without flows.") from None
    return nn.ModuleList(PairedIAF(z_channels, context_channels, 6 * z_channels, nvlabs=nvlabs) for _ in range(num_flows))


class TopDownGroup(nn.Module):
    """One latent group of the top-down tower (Chapter 3, Fig. 2 of the paper).

    In order: ``cells`` (generative cells; none for the top group), the prior p(z_l | z_<l) =
    ``prior(s)`` (ELU-Conv1x1; the top group's prior is N(0, I) instead), the encoder feature
    ``enc_combiner(e_l, s)`` = e_l + Conv1x1(s) that makes the posterior depend on z_<l too, the
    posterior's raw corrections ``posterior(feature)`` (Conv3x3), optional flows, and
    ``dec_combiner([s, z])`` (Conv1x1) that feeds z back into the state; ``up`` (an up cell) ends
    a scale.
    """

    def __init__(self, c_dec: int, c_enc: int, z_channels: int, num_cells: int, is_top: bool, upsample: bool,
                 num_flows: int = 0, flow_context: bool = False, use_se: bool = True, nvlabs_flows: bool = False):
        super().__init__()
        self.is_top = is_top
        self.cells = nn.ModuleList(GenerativeCell(c_dec, use_se=use_se) for _ in range(0 if is_top else num_cells))
        self.prior = None if is_top else nn.Sequential(nn.ELU(), WNConv2d(c_dec, 2 * z_channels, 1))
        self.enc_combiner = None if is_top else WNConv2d(c_dec, c_enc, 1)
        self.posterior = WNConv2d(c_enc, 2 * z_channels, 3)
        self.flows = flow_cells(num_flows, z_channels, c_enc if flow_context else 0, nvlabs_flows)
        self.flow_context = flow_context
        self.dec_combiner = WNConv2d(c_dec + z_channels, c_dec, 1)
        self.up = GenerativeCell(c_dec, upsample=True, use_se=use_se) if upsample else None

    def encoder_feature(self, enc: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The feature the posterior reads: e_l + Conv1x1(s) (the top group reads e_top alone)."""
        return enc if self.enc_combiner is None else enc + self.enc_combiner(s)

    def apply_flows(self, z: torch.Tensor, feature: torch.Tensor):
        """z after the flows and the summed log|det| (B,), float32 (float64 for float64 z)."""
        log_det = torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)
        context = feature if self.flow_context else None
        for flow in self.flows:
            z, ld = flow(z, context)
            z, log_det = z.to(log_det.dtype), log_det + ld.to(log_det.dtype)
        return z, log_det

    def combine(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.dec_combiner(torch.cat([s, z.to(s.dtype)], dim=1))  # (B, C_dec, H, W)


def posterior_group(group: TopDownGroup, s: torch.Tensor, enc: torch.Tensor, residual_normal: bool = True,
                    kl_function=residual_kl, *, top_prior_sigma: float = 1.0, posterior_mean: bool = False,
                    return_z: bool = False):
    """One latent group of the top-down tower with z_l drawn from the posterior (Chapter 3 writes it
    as an exercise): the prior p(z_l | z_<l) from the state s (N(0, top_prior_sigma^2 I) for the top
    group: 1 in the paper, 1.01 in NVlabs' code), the posterior's feature e_l + Conv1x1(s), the
    residual normal q = N(mu_p + dmu, (sigma_p dsigma)^2) (the encoder's q alone at the top, or
    everywhere with ``residual_normal=False``), z ~ q (q's mean with ``posterior_mean``) through the
    group's flows, and the state with z merged in.

    Returns (state (B, C, h, w), KL (B,), log q(z) - log p(z) (B,), posterior mean (B, Z, h, w)), and z
    (B, Z, h, w) last with ``return_z``: the KL is analytic (``kl_function`` of (dmu, dsigma,
    sigma_p)), or the one-sample log ratio when the group has flows. Float32 maths (float64 for a
    float64 model), whatever the autocast dtype of s.
    """
    dtype = torch.promote_types(s.dtype, torch.float32)
    prior_params = None if group.is_top else group.prior(s)  # (B, 2Z, h, w) raw
    feature = group.encoder_feature(enc, s)
    delta = group.posterior(feature)  # (B, 2Z, h, w) raw
    residual = residual_normal and not group.is_top
    q = NVAENormal.residual(prior_params, delta) if residual else NVAENormal.from_params(delta)
    p = (NVAENormal.standard(q.mu.shape, s.device, top_prior_sigma, dtype) if group.is_top
         else NVAENormal.from_params(prior_params))
    z0 = q.mu if posterior_mean else q.rsample()  # (B, Z, h, w)
    z, log_det = group.apply_flows(z0, feature)
    log_q_minus_log_p = sum_except_batch(q.log_prob(z0)) - log_det - sum_except_batch(p.log_prob(z))
    kl = log_q_minus_log_p if len(group.flows) else sum_except_batch(q.kl(p, kl_function))
    out = (group.combine(s, z), kl, log_q_minus_log_p, q.mu)
    return (*out, z) if return_z else out


class OutputHead(nn.Module):
    """Decoder features -> p(x|z): ELU-Conv3x3 (NVAE's ``image_conditional``), cropped to the image.

    ``crop`` = (top, left, H, W) of the real image inside the padded canvas; ``kind`` as in
    :class:`~hvae_lib.probability.likelihoods.LikelihoodHead`.
    """

    def __init__(self, in_channels: int, image_channels: int, kind: str, bits: int, num_mix: int,
                 crop: tuple[int, int, int, int], top_edge: float | None = None):
        super().__init__()
        if kind not in LikelihoodHead.KINDS:
            raise ValueError(f"Unknown likelihood {kind!r}; expected one of {', '.join(LikelihoodHead.KINDS)}.")
        self.kind, self.image_channels, self.bits, self.crop = kind, image_channels, bits, crop
        self.top_edge = top_edge  # None: the proper top bin; NVlabs' code: 0.99 in [-1, 1] (see NVAE)
        out = image_channels if kind == "bernoulli" else DiscretizedLogisticMixture.param_channels(image_channels, num_mix)
        self.conv = nn.Sequential(nn.ELU(), WNConv2d(in_channels, out, 3))

    def forward(self, features: torch.Tensor, temperature: float = 1.0):
        top, left, h, w = self.crop
        params = self.conv(features)[:, :, top:top + h, left:left + w]  # (B, P, H, W)
        params = params.to(torch.promote_types(params.dtype, torch.float32))
        if self.kind == "bernoulli":
            # A Bernoulli at temperature t: p^(1/t) renormalised, i.e. logits / t (t < 1 sharpens).
            return Bernoulli(params / temperature if temperature != 1.0 else params)
        return DiscretizedLogisticMixture(params, self.image_channels, self.bits, dtype=params.dtype,
                                          top_edge=self.top_edge)


def pad_to_canvas(x: torch.Tensor, canvas: tuple[int, int], value: float | None = None) -> torch.Tensor:
    """Pad images (B, C, H, W) centrally to the canvas size (28x28 -> 32x32 for NVAE): with the
    constant ``value``, or by reflection when it is None (zeros where the padding is too wide to reflect)."""
    dh, dw = canvas[0] - x.shape[2], canvas[1] - x.shape[3]
    if dh == 0 and dw == 0:
        return x
    pads = (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2)
    if value is not None:
        return F.pad(x, pads, mode="constant", value=value)
    reflectable = max(pads[:2]) < x.shape[3] and max(pads[2:]) < x.shape[2]
    return F.pad(x, pads, mode="reflect" if reflectable else "constant")
