"""The convolutional Ladder VAE of Chapter 2 (Sønderby et al. 2016).

Two passes share one set of latent groups, numbered top (lowest resolution) first:

- bottom-up (deterministic): a stem, then residual blocks; after each group's blocks the feature
  d_l is kept, and a Conv3x3 turns it into the bottom-up estimate N(mu_l, sigma_l) of z_l;
- top-down (shared by the prior and the posterior): the top group has prior N(0, I) and posterior
  the bottom-up estimate; every lower group reads its prior p(z_l | z_<l) = N(mu_t, sigma_t) off
  the top-down state, its posterior is the precision-weighted merge of the two (``merge=
  "precision"``, the paper) or a Conv3x3 of [state, d_l] (``merge="learned"``, as later conv
  LVAEs and NVAE do); z_l enters the state through a Conv1x1, then residual blocks follow.

Images whose side is not a multiple of the total downsampling (28x28 Fashion-MNIST with three
scales) are reflection-padded to the next multiple (32x32) and the decoder output is cropped back
before the likelihood, so log p(x|z) covers exactly the real pixels.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hvae_lib.config import ModelConfig, model_family
from hvae_lib.config.ranges import key
from hvae_lib.models.base import HierarchicalVAE, group_temperatures
from hvae_lib.probability.gaussian import DiagonalGaussian, sum_except_batch
from hvae_lib.probability.likelihoods import LikelihoodHead
from hvae_lib.probability.objectives import ModelOutput

MERGES = ("precision", "learned")


def precision_weighted_merge(bottom_up: DiagonalGaussian, top_down: DiagonalGaussian) -> DiagonalGaussian:
    """The normalised product N(mu_l, sigma_l) N(mu_t, sigma_t) / Z = N(mu, sigma) (Chapter 2):

    sigma^2 = 1 / (sigma_l^-2 + sigma_t^-2), mu = (mu_l sigma_l^-2 + mu_t sigma_t^-2) sigma^2.
    Computed from log-sigmas in float32: log sigma = -0.5 logaddexp(-2 log sigma_l, -2 log sigma_t),
    and the weights of the two means are sigmoids of the log-sigma difference (they sum to one).
    """
    ls_l, ls_t = bottom_up.log_sigma.float(), top_down.log_sigma.float()
    w_l = torch.sigmoid(2 * (ls_t - ls_l))  # sigma_l^-2 / (sigma_l^-2 + sigma_t^-2)
    w_t = torch.sigmoid(2 * (ls_l - ls_t))
    mu = w_l * bottom_up.mu.float() + w_t * top_down.mu.float()
    return DiagonalGaussian(mu, -0.5 * torch.logaddexp(-2 * ls_l, -2 * ls_t))


class ResBlock(nn.Module):
    """x + Conv3x3(SiLU(Conv3x3(SiLU(x)))), the residual block of both passes (Chapter 2); the second
    conv's weights are multiplied by ``scale`` at initialisation (1/sqrt(N) in the Ladder VAE).

    Both biases start at zero, as every conv bias of openai/vdvae does (``get_conv(zero_bias=True)``):
    PyTorch's default biases are not scaled by 1/sqrt(N), so N blocks would add N independent
    constant offsets to the stream, whose variance grows with N whatever the weights' scale.
    """

    def __init__(self, channels: int, scale: float = 1.0):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():
            self.conv2.weight.mul_(scale)
            self.conv1.bias.zero_()
            self.conv2.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class LadderVAE(HierarchicalVAE):
    """Convolutional Ladder VAE (Chapter 2): L groups z_1 (top) .. z_L over several resolutions.

    ``groups_per_scale`` lists the groups at each scale from the top (lowest resolution) down; the
    stem downsamples ``initial_downsamples`` times, and each further scale doubles the resolution,
    so the bottom scale is canvas / 2^initial_downsamples. Every group has ``z_channels`` latent
    channels at its scale's resolution; all hidden features have ``channels`` channels.

    No normalisation layers (as VDVAE): BatchNorm would make a sample depend on batch statistics
    (NVAE has to re-estimate them before sampling), would update its running statistics twice
    under gradient checkpointing, and would couple the images of a batch, which the per-image KL
    and importance-weighted bounds assume independent. Three initialisations keep the untrained
    network tame instead (Chapter 2, "How the Ladder VAE starts"):

    - every residual branch's last conv is scaled by 1/sqrt(N), N = 2 * L * blocks_per_group, the
      blocks of both passes, and the blocks' biases start at zero (as all of VDVAE's). VDVAE scales
      each pass by its own block count (and its z projection too), a factor sqrt(2) larger here;
      either keeps the variance the blocks add to the residual stream bounded as blocks are added,
      where unscaled branches (or non-zero biases, which the scale does not reach) make it grow
      with depth;
    - every prior head is zero, so p(z_l | z_<l) starts as N(0, I) whatever the state, like the top
      prior (VDVAE zero-initialises its prior's last conv the same way);
    - the posterior heads start small (weights times 0.1, zero bias; lower bottom-up estimates of
      the precision merge start at sigma = e^2, which the merge all but ignores), so q starts near p
      and every group's KL starts near zero.

    ``merge_fn`` is the function the precision merge calls, ``precision_weighted_merge`` unless
    replaced (Chapter 2 trains with the student's own); it is not part of the saved state.
    """

    merge_fn = staticmethod(precision_weighted_merge)

    def __init__(self, image_shape=(1, 28, 28), bits: int = 8, likelihood: str = "logistic_mixture", *,
                 groups_per_scale: tuple[int, ...] = (2, 2, 2), z_channels: int = 4, channels: int = 20,
                 blocks_per_group: int = 1, initial_downsamples: int = 2, merge: str = "precision",
                 num_mix: int = 5):
        super().__init__(image_shape, bits)
        c, h, w = self.image_shape
        if merge not in MERGES:
            raise ValueError(f"merge must be one of {', '.join(MERGES)}, got {merge!r}.")
        if not groups_per_scale or min(groups_per_scale) < 1 or blocks_per_group < 1 or initial_downsamples < 0:
            raise ValueError(f"LadderVAE needs groups_per_scale of positive counts, blocks_per_group >= 1 and "
                             f"initial_downsamples >= 0; got {tuple(groups_per_scale)}, {blocks_per_group}, "
                             f"{initial_downsamples}.")
        self.merge, self.groups_per_scale = merge, tuple(groups_per_scale)
        num_scales, self.num_groups = len(self.groups_per_scale), sum(self.groups_per_scale)
        factor = 2 ** (initial_downsamples + num_scales - 1)
        self.canvas = (math.ceil(h / factor) * factor, math.ceil(w / factor) * factor)
        self.scale_of = [s for s, n in enumerate(self.groups_per_scale) for _ in range(n)]  # top first
        self.group_shapes = [(z_channels, self.canvas[0] * 2**s // factor, self.canvas[1] * 2**s // factor)
                             for s in self.scale_of]
        self.register_buffer("group_sizes", torch.tensor([math.prod(s) for s in self.group_shapes]), persistent=False)
        scale = (2 * self.num_groups * blocks_per_group) ** -0.5

        def blocks():
            return nn.ModuleList(ResBlock(channels, scale) for _ in range(blocks_per_group))

        def gaussian_head(c_in):  # features -> (mu, raw log sigma) of one group
            return nn.Conv2d(c_in, 2 * z_channels, 3, padding=1)

        # Bottom-up: stem at the canvas, strided convs, then blocks per group (lists indexed top first).
        stem = [nn.Conv2d(c, channels, 3, padding=1)]
        for _ in range(initial_downsamples):
            stem += [nn.SiLU(), nn.Conv2d(channels, channels, 3, stride=2, padding=1)]
        self.stem = nn.Sequential(*stem)
        self.bu_blocks = nn.ModuleList(blocks() for _ in range(self.num_groups))
        self.bu_heads = nn.ModuleList(gaussian_head(channels) for _ in range(self.num_groups if merge == "precision" else 1))
        # Top-down: priors and learned merges for groups 1..L-1 (index l - 1), z projections, blocks.
        self.priors = nn.ModuleList(gaussian_head(channels) for _ in range(self.num_groups - 1))
        for prior in self.priors:  # every prior starts as N(0, I)
            nn.init.zeros_(prior.weight)
            nn.init.zeros_(prior.bias)
        self.merges = nn.ModuleList(gaussian_head(2 * channels) for _ in range(self.num_groups - 1 if merge == "learned" else 0))
        with torch.no_grad():  # every posterior starts near its prior, so the KL starts near 0 as in Chapter 1
            for l, head in enumerate([*self.bu_heads, *self.merges]):
                head.weight.mul_(0.1)
                head.bias.zero_()
                if 0 < l < len(self.bu_heads):  # sigma_l = e^2: a lower group's estimate says nothing yet
                    head.bias[z_channels:] = 2.0
        self.z_proj = nn.ModuleList(nn.Conv2d(z_channels, channels, 1) for _ in range(self.num_groups))
        self.td_blocks = nn.ModuleList(blocks() for _ in range(self.num_groups))
        tail = []
        for _ in range(initial_downsamples):
            tail += [nn.SiLU(), nn.ConvTranspose2d(channels, channels, 3, stride=2, padding=1, output_padding=1)]
        self.tail = nn.Sequential(*tail, nn.SiLU())
        self.head = LikelihoodHead(channels, c, likelihood, bits=bits, num_mix=num_mix)

    # ------------------------------------------------------------------ the two passes
    def bottom_up(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Deterministic features d_l, (B, C, h_l, w_l) each, top group first."""
        self.check_input(x)
        h = self.stem(self._pad(2 * x - 1))  # (B, C, H', W') centred in [-1, 1]
        features = [None] * self.num_groups
        for l in reversed(range(self.num_groups)):
            if l < self.num_groups - 1 and self.scale_of[l] != self.scale_of[l + 1]:
                h = F.avg_pool2d(h, 2)
            for block in self.bu_blocks[l]:
                h = self.checkpointed(block, h)
            features[l] = h
        return features

    def estimate(self, l: int, feature: torch.Tensor) -> DiagonalGaussian:
        """The bottom-up estimate N(mu_l, sigma_l) of group l (every group with the precision merge,
        only the top group with the learned one)."""
        return DiagonalGaussian.from_params(self.bu_heads[l](feature))

    def top_down(self, n: int, features: list[torch.Tensor] | None = None, num_posterior: int = 0,
                 temperature: float | Sequence[float] = 1.0, latents: list[torch.Tensor | None] | None = None, *,
                 posterior_mean: bool = False, return_latents: bool = False):
        """Run the top-down path for n images: groups ``< num_posterior`` draw z from q(z|x) (needs
        ``features``; z is q's mean with ``posterior_mean``), the rest from the prior with every sigma
        times ``temperature`` (one number, or one per group); a tensor in ``latents[l]`` is used as
        z_l instead of a draw.

        Returns (decoder features (B, C, H', W'), KL per posterior group [(B,)], log q - log p summed
        over the posterior groups (B,), posterior means [(B, Z, h, w)]), and with ``return_latents``
        every group's z [(B, Z, h, w)] last.
        """
        device = self.group_sizes.device
        temperatures = group_temperatures(temperature, self.num_groups)
        kl, means, log_ratio, s, zs = [], [], torch.zeros(n, device=device), None, []
        for l in range(self.num_groups):
            if l == 0:
                p = DiagonalGaussian.standard((n, *self.group_shapes[0]), device=device)
            else:
                if self.scale_of[l] != self.scale_of[l - 1]:
                    s = F.interpolate(s, scale_factor=2, mode="nearest")
                p = DiagonalGaussian.from_params(self.priors[l - 1](s))  # (B, Z, h, w) each
            fixed = latents[l] if latents is not None and l < len(latents) else None
            if l < num_posterior:
                if l == 0:
                    q = self.estimate(0, features[0])
                elif self.merge == "precision":
                    q = self.merge_fn(self.estimate(l, features[l]), p)
                else:
                    q = DiagonalGaussian.from_params(self.merges[l - 1](torch.cat([s, features[l]], dim=1)))
                z = (q.mu if posterior_mean else q.rsample()) if fixed is None else fixed.float()
                kl.append(sum_except_batch(q.kl(p)))  # (B,) analytic, nats
                log_ratio = log_ratio + sum_except_batch(q.log_prob(z) - p.log_prob(z))
                means.append(q.mu)
            else:
                z = p.rsample(temperatures[l]) if fixed is None else fixed.float()
            zs.append(z)
            s = self.z_proj[l](z) if s is None else s + self.z_proj[l](z)  # (B, C, h, w)
            for block in self.td_blocks[l]:
                s = self.checkpointed(block, s)
        if return_latents:
            return self.tail(s), kl, log_ratio, means, zs
        return self.tail(s), kl, log_ratio, means

    def encoder_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The bottom-up features d_l the posteriors read (:meth:`bottom_up`)."""
        return self.bottom_up(x)

    def likelihood(self, features: torch.Tensor):
        """p(x|z) from the decoder features, cropped from the canvas back to the image."""
        _, h, w = self.image_shape
        top, left = (self.canvas[0] - h) // 2, (self.canvas[1] - w) // 2
        return self.head(features[:, :, top:top + h, left:left + w])

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        dh, dw = self.canvas[0] - x.shape[2], self.canvas[1] - x.shape[3]
        if dh == 0 and dw == 0:
            return x
        return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), mode="reflect")

    # ------------------------------------------------------------------ the model's contract
    def forward(self, x: torch.Tensor) -> ModelOutput:
        features = self.bottom_up(x)
        s, kl, log_ratio, means = self.top_down(x.shape[0], features, self.num_groups)
        px = self.likelihood(s)
        extras = {"posterior_means": means, "group_sizes": self.group_sizes}
        return ModelOutput(px.log_prob(x), torch.stack(kl, dim=1), log_ratio, px, extras)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """n images in [0, 1] from the prior; temperature t scales every prior sigma, N(0, I)'s too."""
        s, _, _, _ = self.top_down(n, None, 0, temperature)
        return self.likelihood(s).sample()

    @torch.no_grad()
    def sample_conditional(self, x: torch.Tensor, num_fixed_groups: int, temperature: float = 1.0) -> torch.Tensor:
        """Images with the top ``num_fixed_groups`` groups drawn from q(z|x) and the rest from the
        prior at ``temperature`` (0: plain samples; L: a reconstruction)."""
        if not 0 <= num_fixed_groups <= self.num_groups:
            raise ValueError(f"num_fixed_groups must be between 0 and {self.num_groups} (this LadderVAE's latent "
                             f"groups), got {num_fixed_groups}.")
        self.check_input(x)
        features = self.bottom_up(x) if num_fixed_groups > 0 else None
        s, _, _, _ = self.top_down(x.shape[0], features, num_fixed_groups, temperature)
        return self.likelihood(s).sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean image given one posterior sample of every group."""
        return self.forward(x).likelihood.mean()


@model_family("lvae")
@dataclass
class LVAEConfig(ModelConfig):
    """Hyperparameters of :class:`LadderVAE` (the model key ``model.*`` of a preset)."""

    family: str = "lvae"
    groups_per_scale: tuple[int, ...] = key((2, 2, 2), at_least=1)  # top (lowest resolution) scale first
    z_channels: int = key(4, at_least=1)
    channels: int = key(20, at_least=1)
    blocks_per_group: int = key(1, at_least=1)  # residual blocks per group, in each of the two passes
    initial_downsamples: int = key(2, at_least=0)
    merge: str = key("precision", one_of=MERGES)
    num_mix: int = key(5, at_least=1)

    def build(self, image_shape, bits, likelihood):
        return LadderVAE(image_shape, bits, likelihood, groups_per_scale=self.groups_per_scale,
                         z_channels=self.z_channels, channels=self.channels, blocks_per_group=self.blocks_per_group,
                         initial_downsamples=self.initial_downsamples, merge=self.merge, num_mix=self.num_mix)
