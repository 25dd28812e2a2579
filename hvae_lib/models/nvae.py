"""NVAE: a deep hierarchical VAE with a bidirectional encoder (Vahdat & Kautz 2020; Chapters 3-4).

Layout, as in NVlabs/NVAE (``model.AutoEncoder``):

- bottom-up: stem Conv3x3 -> pre-processing cells (each block ends in a down cell) -> for each
  scale (highest resolution first) and each latent group, ``num_cell_per_cond_enc`` encoder cells
  whose output e_l is kept for that group; a down cell between scales; ELU-Conv1x1-ELU on the top;
- top-down, shared by inference and generation: a learned constant h_0, then per group (coarsest
  first) generative cells, prior p(z_l | z_<l), residual normal posterior q(z_l | z_<l, x) from
  e_l + Conv1x1(state), optional IAF flows, and a Conv1x1 that merges z_l into the state; an up
  cell between scales; post-processing cells; ELU-Conv3x3 to the likelihood's parameters.

Images whose side the total downsampling factor 2^(num_preprocess_blocks + num_latent_scales - 1)
does not divide (28x28 with factor 8, as in the official MNIST model) are padded to the next
multiple (32x32) and the likelihood is cropped back, so log p(x|z) covers exactly the real pixels,
as the official ``reconstruction_loss(..., crop=True)`` does. Binary images are padded with
background (0), which is what the official MNIST pipeline's ``Pad(2)`` feeds the network; others
by reflection.

``official_numerics`` reproduces two details of NVlabs' code that the paper does not have, so that a
released checkpoint scores exactly as it did there (``python -m hvae_lib.import_nvae`` sets it):
the top group's prior is N(0, (1.01 t)^2), because the official ``Normal(0, log_sigma=0)`` adds its
sigma floor of 0.01, and the logistic mixture's top edge bin begins at 0.99 in [-1, 1], so the
8-bit value 254 (0.992) is scored as the upper tail P(x >= 253.5) rather than its own bin; and its
flow cells' mirror reverses the pixel order but not the channel order, with an ELU applied twice
before each cell's head (:class:`~hvae_lib.probability.flows.IAFCell`, ``nvlabs``). Off by
default: trained from scratch, the prior is the paper's N(0, I), the likelihood normalised and the
mirror cell the exact reverse of the first.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from hvae_lib.config import ModelConfig, model_family
from hvae_lib.config.ranges import key
from hvae_lib.layers.cells import EncoderCell, postprocess_cells, preprocess_cells
from hvae_lib.layers.norms import WNConv2d, batchnorm_layers, bn_regularizer, frozen_running_stats
from hvae_lib.layers.spectral import SpectralRegularizer
from hvae_lib.models.base import HierarchicalVAE, group_temperatures
from hvae_lib.models.nvae_parts import OutputHead, TopDownGroup, groups_per_scale, pad_to_canvas, posterior_group
from hvae_lib.probability.kl_control import kl_warmup_beta
from hvae_lib.probability.objectives import ModelOutput
from hvae_lib.probability.residual_normal import NVAENormal, residual_kl


def _checkpoint_contexts():
    # forward: nothing special; recomputation in backward: do not update BN running stats twice.
    return nullcontext(), frozen_running_stats()


def _round_up(n: int, factor: int) -> int:
    return -(-n // factor) * factor


class NVAE(HierarchicalVAE):
    """Nouveau VAE (Chapters 3-4): bidirectional encoder, residual normal posteriors, depthwise
    generative cells, spectral and BN regularisation, optional IAF flows on the posterior.

    Groups are numbered top (coarsest) first; ``kl_per_group`` is analytic per group, or the
    one-sample estimate log q(z|x) - log p(z) when flows are on.
    """

    def __init__(self, image_shape=(1, 28, 28), bits: int = 8, likelihood: str = "logistic_mixture", *,
                 num_latent_scales: int = 2, num_groups_per_scale: int = 2, ada_groups: bool = False,
                 min_groups_per_scale: int = 1, num_latent_per_group: int = 8, num_channels_enc: int = 16,
                 num_channels_dec: int = 16, num_cell_per_cond_enc: int = 1, num_cell_per_cond_dec: int = 1,
                 num_preprocess_blocks: int = 1, num_preprocess_cells: int = 2, num_postprocess_blocks: int = 1,
                 num_postprocess_cells: int = 2, num_mix: int = 10, num_flows: int = 0, flow_context: bool = False,
                 use_se: bool = True, weight_decay_norm: float = 1e-2, weight_decay_norm_init: float = 10.0,
                 weight_decay_norm_anneal_steps: int = 0, residual_normal: bool = True, official_numerics: bool = False):
        super().__init__(image_shape, bits)
        c, h, w = self.image_shape
        if num_preprocess_blocks != num_postprocess_blocks or num_preprocess_cells < 1 or num_postprocess_cells < 1:
            raise ValueError(
                f"NVAE's post-processing must undo its pre-processing: got num_preprocess_blocks={num_preprocess_blocks}, "
                f"num_postprocess_blocks={num_postprocess_blocks} (must be equal) and cells per block "
                f"{num_preprocess_cells}/{num_postprocess_cells} (must be >= 1).")
        if min(num_latent_scales, num_groups_per_scale, min_groups_per_scale, num_latent_per_group) < 1:
            raise ValueError("NVAE needs at least one latent scale, group and latent channel: num_latent_scales, "
                             "num_groups_per_scale, min_groups_per_scale and num_latent_per_group must be >= 1.")
        factor = 2 ** (num_preprocess_blocks + num_latent_scales - 1)  # total downsampling
        self.canvas = (_round_up(h, factor), _round_up(w, factor))  # 28x28 -> 32x32 when factor is 8
        self.groups_per_scale = groups_per_scale(num_latent_scales, num_groups_per_scale, ada_groups, min_groups_per_scale)
        self.num_groups, self.num_flows = sum(self.groups_per_scale), num_flows
        self.weight_decay_norm, self.weight_decay_norm_init = weight_decay_norm, weight_decay_norm_init
        self.weight_decay_norm_anneal_steps = weight_decay_norm_anneal_steps
        # residual_normal=False is Chapter 4's ablation: q = N(mu, sigma^2) from the encoder alone.
        self.residual_normal = residual_normal
        # NVlabs' code (what an imported checkpoint was trained and evaluated with), where it differs from
        # ours (see the module docstring): the top prior, the mixture's top bin, the flows' mirror order.
        self.official_numerics = official_numerics
        self.top_prior_sigma = 1.0 + 0.01 * official_numerics
        # The elementwise KL(q || p) as a function of (dmu, dsigma, sigma_p); Chapter 4 swaps in the student's.
        self.kl_function = residual_kl
        # A posterior group's step, posterior_group(group, s, e_l) when None; Chapter 3 trains with the student's.
        self.group_function = None
        z_ch, pre, scales = num_latent_per_group, num_preprocess_blocks, num_latent_scales

        # Bottom-up: stem, pre-processing, then per scale and group the encoder cells.
        self.stem = WNConv2d(c, num_channels_enc, 3)
        self.preprocess, c_enc = preprocess_cells(num_channels_enc, pre, num_preprocess_cells, use_se)
        self.enc_scales, self.enc_down = nn.ModuleList(), nn.ModuleList()
        for s, n_groups in enumerate(self.groups_per_scale):
            self.enc_scales.append(nn.ModuleList(
                nn.ModuleList(EncoderCell(c_enc, use_se=use_se) for _ in range(num_cell_per_cond_enc))
                for _ in range(n_groups)))
            if s < scales - 1:
                self.enc_down.append(EncoderCell(c_enc, downsample=True, use_se=use_se))
                c_enc *= 2
        self.enc_top = nn.Sequential(nn.ELU(), WNConv2d(c_enc, c_enc, 1), nn.ELU())

        # Top-down: a learned constant, then the groups, coarsest scale first.
        top_hw = (self.canvas[0] // factor, self.canvas[1] // factor)
        c_dec = num_channels_dec * 2 ** (pre + scales - 1)
        self.prior_ftr0 = nn.Parameter(torch.rand(c_dec, *top_hw))  # (C, h0, w0)
        self.groups, shapes, hw = nn.ModuleList(), [], top_hw
        for d in range(scales):
            n_groups = self.groups_per_scale[scales - 1 - d]
            c_enc_d = num_channels_enc * 2 ** (pre + scales - 1 - d)
            for g in range(n_groups):
                upsample = g == n_groups - 1 and d < scales - 1
                self.groups.append(TopDownGroup(c_dec, c_enc_d, z_ch, num_cell_per_cond_dec, is_top=d == 0 and g == 0,
                                                upsample=upsample, num_flows=num_flows, flow_context=flow_context,
                                                use_se=use_se, nvlabs_flows=official_numerics))
                shapes.append((z_ch, *hw))
            if d < scales - 1:
                c_dec, hw = c_dec // 2, (hw[0] * 2, hw[1] * 2)
        self.group_shapes = shapes  # (Z, h, w) of every group, top first
        self.register_buffer("group_sizes", torch.tensor([math.prod(s) for s in shapes]), persistent=False)
        # The official KL balancer's prior weights ('square'): h*w of the group / groups at its scale.
        per_scale = [n for n in reversed(self.groups_per_scale) for _ in range(n)]
        alpha = torch.tensor([h_ * w_ / n for (_, h_, w_), n in zip(shapes, per_scale)], dtype=torch.float32)
        self.register_buffer("kl_balance_alpha", alpha / alpha.min(), persistent=False)
        self.postprocess, c_out = postprocess_cells(c_dec, num_postprocess_blocks, num_postprocess_cells, use_se)
        crop = ((self.canvas[0] - h) // 2, (self.canvas[1] - w) // 2, h, w)
        self.head = OutputHead(c_out, c, likelihood, bits, num_mix, crop, top_edge=0.99 if official_numerics else None)

        # Regularisers over every conv and every BN layer of the model (Chapter 4).
        self.spectral = SpectralRegularizer([m for m in self.modules() if isinstance(m, nn.Conv2d)])
        self._bn_layers = batchnorm_layers(self)
        # Channels-last (NHWC) kernels: ~2.5x faster depthwise convs on CPU, tensor-core friendly on GPU.
        self.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ towers
    def checkpointed(self, block: nn.Module, *args):
        """``block(*args)``, recomputed in backward when ``grad_checkpointing`` is on; BatchNorm's
        running statistics are updated once (in the forward), not again in the recomputation."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False, context_fn=_checkpoint_contexts)
        return block(*args)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Bottom-up pass: the encoder feature every group's posterior reads, top group first."""
        self.check_input(x)
        background = -1.0 if self.bits == 1 else None  # binary images: pixel value 0, i.e. -1 in [-1, 1]
        x = pad_to_canvas(2 * x - 1, self.canvas, background).contiguous(memory_format=torch.channels_last)  # in [-1, 1]
        h = self.stem(x)  # (B, C_enc, H', W')
        for cell in self.preprocess:
            h = self.checkpointed(cell, h)
        features = []
        for s, scale in enumerate(self.enc_scales):
            for cells in scale:
                for cell in cells:
                    h = self.checkpointed(cell, h)
                features.append(h)  # e_l, highest resolution first
            if s < len(self.enc_down):
                h = self.checkpointed(self.enc_down[s], h)
        top = self.enc_top(features.pop())
        return [top] + features[::-1]

    def top_down(self, n: int, features: list[torch.Tensor] | None = None, num_posterior: int = 0,
                 temperature: float | Sequence[float] = 1.0, *, latents: Sequence[torch.Tensor | None] | None = None,
                 posterior_mean: bool = False, return_latents: bool = False):
        """Run the generative tower for n images: groups ``< num_posterior`` draw z from q(z|x)
        (reading ``features``; z0 is q's mean with ``posterior_mean``, then the flows), the rest from
        the prior at ``temperature`` (one number, or one per group); a tensor in ``latents[l]`` is
        used as z_l (after the flows) instead of a draw, and that group adds no KL.

        Returns (decoder features, KL per posterior group [(B,)], log q - log p summed (B,),
        posterior means [(B, Z, h, w)]), and with ``return_latents`` every group's z last.
        """
        device = self.prior_ftr0.device
        temperatures = group_temperatures(temperature, self.num_groups)
        s = self.prior_ftr0.unsqueeze(0).expand(n, -1, -1, -1).contiguous(memory_format=torch.channels_last)  # (B, C, h0, w0)
        dtype = torch.promote_types(self.prior_ftr0.dtype, torch.float32)
        kl, means, log_ratio, zs = [], [], torch.zeros(n, device=device, dtype=dtype), []
        if num_posterior and self.group_function is not None and (self.num_flows or not self.residual_normal
                                                                    or self.kl_function is not residual_kl
                                                                    or self.official_numerics or posterior_mean):
            raise ValueError("NVAE.group_function replaces posterior_group only for the residual normal without "
                             "flows, with the library's KL and numerics and sampled posteriors; set "
                             "group_function = None for this model.")
        for idx, group in enumerate(self.groups):
            for cell in group.cells:
                s = self.checkpointed(cell, s)
            fixed = latents[idx] if latents is not None and idx < len(latents) else None
            if idx < num_posterior and fixed is None:
                if self.group_function is None:
                    s, kl_l, log_q_minus_log_p, mean, z = posterior_group(
                        group, s, features[idx], self.residual_normal, self.kl_function,
                        top_prior_sigma=self.top_prior_sigma, posterior_mean=posterior_mean, return_z=True)
                else:  # Chapter 3: the student's group step
                    s, kl_l, log_q_minus_log_p, mean = self.group_function(group, s, features[idx])
                    z = None
                kl.append(kl_l)
                log_ratio = log_ratio + log_q_minus_log_p
                means.append(mean)
            else:
                t = temperatures[idx]
                if group.is_top:
                    p = NVAENormal.standard((n, *self.group_shapes[idx]), device, t * self.top_prior_sigma, dtype)
                else:
                    p = NVAENormal.from_params(group.prior(s), t)  # (B, 2Z, h, w) raw
                z = p.rsample() if fixed is None else fixed.to(dtype)
                s = group.combine(s, z)
            zs.append(z)
            if group.up is not None:
                s = self.checkpointed(group.up, s)
        for cell in self.postprocess:
            s = self.checkpointed(cell, s)
        if return_latents:
            return s, kl, log_ratio, means, zs
        return s, kl, log_ratio, means

    def encoder_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder features e_l the posteriors read (:meth:`encode`)."""
        return self.encode(x)

    def likelihood(self, features: torch.Tensor, temperature: float = 1.0):
        """p(x|z) from the generative tower's output (the likelihood's spread times ``temperature``)."""
        return self.head(features, temperature)

    # ------------------------------------------------------------------ the model's contract
    def forward(self, x: torch.Tensor) -> ModelOutput:
        features = self.encode(x)
        s, kl, log_ratio, means = self.top_down(x.shape[0], features, num_posterior=self.num_groups)
        px = self.head(s)
        extras = {"group_sizes": self.group_sizes, "posterior_means": means, "kl_balance_alpha": self.kl_balance_alpha}
        return ModelOutput(px.log_prob(x), torch.stack(kl, dim=1), log_ratio, px, extras)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, likelihood_temperature: float = 1.0) -> torch.Tensor:
        """n images in [0, 1]; ``temperature`` t scales every prior sigma (the top N(0, I) too).

        ``likelihood_temperature`` scales the likelihood's spread (logistic scales x t, Bernoulli
        logits / t); 1 by default, as the official evaluation draws the pixels from p(x|z) at t = 1
        whatever the prior's temperature.
        """
        s, _, _, _ = self.top_down(n, None, 0, temperature)
        return self.head(s, likelihood_temperature).sample(likelihood_temperature)

    @torch.no_grad()
    def sample_conditional(self, x: torch.Tensor, num_fixed_groups: int, temperature: float = 1.0,
                           likelihood_temperature: float = 1.0) -> torch.Tensor:
        """Images with the top ``num_fixed_groups`` groups drawn from q(z|x), the rest from the prior
        at ``temperature`` (0: plain samples; all groups: a reconstruction); the likelihood at
        ``likelihood_temperature`` as in :meth:`sample`."""
        if not 0 <= num_fixed_groups <= self.num_groups:
            raise ValueError(f"num_fixed_groups must be between 0 and {self.num_groups} (this NVAE's latent groups), "
                             f"got {num_fixed_groups}.")
        features = self.encode(x) if num_fixed_groups > 0 else None
        if features is None:
            self.check_input(x)
        s, _, _, _ = self.top_down(x.shape[0], features, num_fixed_groups, temperature)
        return self.head(s, likelihood_temperature).sample(likelihood_temperature)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean image given one posterior sample of every group."""
        return self.forward(x).likelihood.mean()

    # ------------------------------------------------------------------ regularisation (Chapter 4)
    def norm_coefficient(self, step: int) -> float:
        """lambda of the spectral and BN regularisers at ``step``: ``weight_decay_norm``, or, with
        annealing, exp((1 - beta) log lambda_init + beta log lambda) with beta the KL warm-up weight."""
        if self.weight_decay_norm_anneal_steps <= 0:
            return self.weight_decay_norm
        beta = kl_warmup_beta(step, self.weight_decay_norm_anneal_steps)
        return math.exp((1 - beta) * math.log(self.weight_decay_norm_init) + beta * math.log(self.weight_decay_norm))

    def regularization(self, step: int) -> torch.Tensor:
        """lambda * (sum_i s_i + sum_BN max|gamma|): spectral + BN regularisers, one shared lambda
        as in the official training loop. Updates the power-iteration vectors."""
        lam = self.norm_coefficient(step)
        if lam == 0:
            return torch.zeros((), device=self.prior_ftr0.device)
        return lam * (self.spectral() + bn_regularizer(self._bn_layers).to(self.prior_ftr0.device))


@model_family("nvae")
@dataclass
class NVAEConfig(ModelConfig):
    """Hyperparameters of :class:`NVAE` (names follow the official ``train.py`` flags; ``num_flows``
    is ``--num_nf``, ``num_mix`` is ``--num_mixture_dec``)."""

    family: str = "nvae"
    num_latent_scales: int = key(2, at_least=1)
    num_groups_per_scale: int = key(2, at_least=1)
    ada_groups: bool = False
    min_groups_per_scale: int = key(1, at_least=1)
    num_latent_per_group: int = key(8, at_least=1)
    num_channels_enc: int = key(16, at_least=1)
    num_channels_dec: int = key(16, at_least=1)
    num_cell_per_cond_enc: int = key(1, at_least=1)
    num_cell_per_cond_dec: int = key(1, at_least=1)
    num_preprocess_blocks: int = key(1, at_least=0)
    num_preprocess_cells: int = key(2, at_least=1)
    num_postprocess_blocks: int = key(1, at_least=0)  # equal to num_preprocess_blocks (the model checks)
    num_postprocess_cells: int = key(2, at_least=1)
    num_mix: int = key(10, at_least=1)
    num_flows: int = key(0, at_least=0)
    flow_context: bool = False  # the official flow cells ignore the encoder feature they are given
    use_se: bool = True
    weight_decay_norm: float = key(1e-2, at_least=0)  # lambda of the spectral + BN regularisers
    weight_decay_norm_init: float = key(10.0, at_least=0)  # lambda at the start when annealed
    weight_decay_norm_anneal_steps: int = key(0, at_least=0)  # 0: constant lambda; else anneal with a KL warm-up of this length
    residual_normal: bool = True  # False: q from the encoder alone, not relative to the prior (Chapter 4's ablation)
    official_numerics: bool = False  # NVlabs' top prior N(0, 1.01^2), top mixture bin and flow cells (set by import_nvae)

    def describe_protocol(self) -> str:
        """What results.json says about the evaluation when it is not the library's own."""
        return ("NVlabs' NVAE numerics: top prior N(0, 1.01^2), mixture top bin from x > 0.99 (8-bit 254 scored "
                "as the upper tail), NVlabs' flow cells") if self.official_numerics else ""

    def build(self, image_shape, bits, likelihood):
        kwargs = {k: v for k, v in asdict(self).items() if k != "family"}
        return NVAE(image_shape, bits, likelihood, **kwargs)
