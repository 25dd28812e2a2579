"""The Very Deep VAE (Child 2021, "Very Deep VAEs Generalize Autoregressive Models and Can Outperform
Them on Images"; openai/vdvae; Chapter 6).

Layout, as the official ``vae.py``:

- bottom-up: a 3x3 stem, then the encoder string's residual blocks (average pooling where a token
  says ``d``); the activation e_r at every resolution r is kept;
- top-down: learned bias inputs (zero-initialised) start the state at every resolution up to
  ``no_bias_above``, zeros above; then the decoder string's blocks, one latent layer each, top
  (lowest resolution) first; a ``RmS`` token unpools the state at S (nearest neighbour) and adds
  it; finally s * gain + bias and a 1x1 convolution to the discretised logistic mixture's
  parameters at the data's bit depth.

``layers_per_group`` k > 1 lowers the *stochastic* depth while keeping every layer and parameter,
as in the paper's Table 1 (left; Section 5.1): the layers of each resolution are taken in groups of
k consecutive layers that all read the state the group starts from, and the group adds up their
increments, s <- s + sum_j (block_j(s) - s). Their latents are then conditionally independent given
the layers above the group, so the model has one stochastic layer per group (``stochastic_depth``)
and samples a group in one parallel step. This is our reading of the paper's "equal number of
layers, but with lower stochastic depth" by grouping layers; the official code has no such switch.

There is no normalisation and no clamp of the log-sigmas; what keeps a very deep stack trainable is
the 1/sqrt(N) initialisation (:mod:`vdvae_parts`) and the training loop's gradient clipping and
skipping, which the engine provides (``optim.grad_clip``, ``optim.skip_threshold``; it stops with an
error after ``optim.max_consecutive_skips`` skips in a row where the official loop freezes silently).

Deliberate differences from the official code: NCHW images in [0, 1] (it takes NHWC in 8-bit units;
``input_mean``/``input_std`` hold its normalisation in 8-bit units); temperature scales the prior
sigmas only (as the official ``forward_uncond``), samples are rounded to the bit depth's grid; a
5-bit likelihood on the normalised 5-bit grid (the official FFHQ-256 loss spaces its 32 bins 8/255
apart but gives them the width 2/31, and its encoder sees the unquantised 8-bit image).

``official_grid`` is that official FFHQ-256 loss, for openai's released FFHQ-256 weights (what
``python -m hvae_lib.import_vdvae`` chooses for them): the model takes 8-bit images (``data.bits=8``),
its encoder reads them as they are, and the likelihood scores the target 8 floor(x_255 / 8), i.e.
(8k - 127.5) / 127.5 in [-1, 1], with bins of half-width 1/31 and edge bins below -0.999 and above
0.999 (never reached: the top target is 0.945), so its probabilities do not sum to one and its
"bits/dim" is not a 5-bit likelihood. Training from scratch keeps the normalised 5-bit grid.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hvae_lib.config import ModelConfig, model_family
from hvae_lib.config.ranges import key
from hvae_lib.models.base import HierarchicalVAE, group_temperatures
from hvae_lib.models.vdvae_arch import check_pair, parse_decoder, parse_encoder, parse_widths
from hvae_lib.models.vdvae_parts import Encoder, TopDownBlock, Unpool, conv, official_init_
from hvae_lib.probability.likelihoods import Bernoulli, DiscretizedLogisticMixture, LikelihoodHead
from hvae_lib.probability.objectives import ModelOutput


class VDVAE(HierarchicalVAE):
    """Very Deep VAE (Chapter 6). Latent layers are numbered top first; ``layer_resolutions[l]`` is the
    resolution of layer l and ``group_shapes[l]`` its (Z, r, r)."""

    def __init__(self, image_shape=(3, 32, 32), bits: int = 8, likelihood: str = "logistic_mixture", *,
                 width: int = 384, zdim: int = 16, enc_blocks: str = "32x11,32d2,16x6,16d2,8x6,8d2,4x3,4d4,1x3",
                 dec_blocks: str = "1x1,4m1,4x2,8m4,8x5,16m8,16x10,32m16,32x21", bottleneck_multiple: float = 0.25,
                 custom_width_str: str = "", no_bias_above: int = 64, num_mixtures: int = 10,
                 input_mean: float = 127.5, input_std: float = 127.5, scale_residuals: bool = True,
                 unpool: str = "nearest", official_grid: bool = False, layers_per_group: int = 1):
        super().__init__(image_shape, bits)
        c, h, w = self.image_shape
        _check_values(h, w, width, zdim, bottleneck_multiple, num_mixtures, input_std, unpool, likelihood)
        if layers_per_group < 1:
            raise ValueError(f"model.layers_per_group must be at least 1 (1: every layer reads the one before), "
                             f"got {layers_per_group}.")
        widths = parse_widths(custom_width_str, width)
        enc_specs, dec_specs = parse_encoder(enc_blocks, h), parse_decoder(dec_blocks, h)
        check_pair(enc_specs, dec_specs, enc_blocks, dec_blocks)
        self.input_mean, self.input_std = float(input_mean), float(input_std)
        if official_grid and (bits != 8 or likelihood != "logistic_mixture"):
            raise ValueError(f"model.official_grid (openai's FFHQ-256 loss) reads 8-bit images, but the data is at "
                             f"{bits} bits: set data.bits=8 (and keep the logistic mixture).")
        self.official_grid = official_grid
        self.encoder = Encoder(c, enc_specs, widths, bottleneck_multiple)

        n_dec = len(dec_specs)
        self.dec_blocks = nn.ModuleList()
        self.unpools = nn.ModuleDict()
        for spec in dec_specs:
            r = spec.resolution
            self.dec_blocks.append(TopDownBlock(widths[r], int(widths[r] * bottleneck_multiple), zdim, r))
            if spec.mixin is not None:
                self.unpools[str(len(self.dec_blocks) - 1)] = Unpool(unpool, r // spec.mixin, widths[spec.mixin], widths[r])
        self.mixins = [spec.mixin for spec in dec_specs]
        # A group starts at every layer that starts a resolution and every layers_per_group-th after it.
        position = [0] * n_dec
        for i in range(1, n_dec):
            same = dec_specs[i].resolution == dec_specs[i - 1].resolution and dec_specs[i].mixin is None
            position[i] = position[i - 1] + 1 if same else 0
        self.group_starts = [p % layers_per_group == 0 for p in position]
        self.stochastic_depth = sum(self.group_starts)  # sequential stochastic steps of the top-down pass
        resolutions = sorted({spec.resolution for spec in dec_specs})
        # Learned inputs of the top-down tower, zero at initialisation (official: decoder.bias_xs).
        self.bias_xs = nn.ParameterDict({str(r): nn.Parameter(torch.zeros(1, widths[r], r, r))
                                         for r in resolutions if r <= no_bias_above})  # (1, C_r, r, r)
        out_width = widths[h]
        self.gain = nn.Parameter(torch.ones(1, out_width, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, out_width, 1, 1))
        self.likelihood_kind, self.num_mixtures = likelihood, num_mixtures
        out = c if likelihood == "bernoulli" else DiscretizedLogisticMixture.param_channels(c, num_mixtures)
        self.out_conv = conv(out_width, out, 1)

        self.widths, self.zdim = widths, zdim
        self.layer_resolutions = [spec.resolution for spec in dec_specs]  # top (lowest resolution) first
        self.group_shapes = [(zdim, r, r) for r in self.layer_resolutions]
        self.num_groups = n_dec
        self.register_buffer("group_sizes", torch.tensor([math.prod(s) for s in self.group_shapes]), persistent=False)
        official_init_(self, scale_residuals)

    # ------------------------------------------------------------------ towers
    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> the encoder's input, (255 x - mean) / std with the dataset's statistics
        in 8-bit units (the official preprocessing)."""
        self.check_input(x)
        return (x * 255 - self.input_mean) / self.input_std

    def encode(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Bottom-up pass: gelu of the encoder activation at every resolution, {r: (B, C_r, r, r)}.

        The gelu is the first thing every posterior does to it, so it is taken once per resolution
        here instead of once per latent layer."""
        activations = self.encoder(self.normalise(x), run=self.checkpointed)
        return {r: F.gelu(a) for r, a in activations.items()}

    def top_down(self, n: int, encoder_gelu: dict[int, torch.Tensor] | None = None, num_posterior: int = 0,
                 temperature: float | Sequence[float] = 1.0, *, latents: Sequence[torch.Tensor | None] | None = None,
                 posterior_mean: bool = False, return_latents: bool = False):
        """Run the top-down tower for n images: layers ``< num_posterior`` draw z from q(z|x) (reading
        ``encoder_gelu``; z is q's mean with ``posterior_mean``), the rest from the prior at
        ``temperature`` (one number, or one per layer); a tensor in ``latents[l]`` is used as z_l
        instead of a draw (the official ``forward_samples_set_latents``), and that layer adds no KL.

        Returns (output features (B, C, H, W), [KL (B,)], log q - log p summed (B,), [posterior means]),
        and with ``return_latents`` every layer's z [(B, Z, r, r)] last.
        """
        temperatures = group_temperatures(temperature, self.num_groups)
        states: dict[int, torch.Tensor] = {}
        kls, means, zs = [], [], []
        log_ratio = torch.zeros(n, device=self.gain.device)
        for idx, block in enumerate(self.dec_blocks):
            r = block.resolution
            fixed = latents[idx] if latents is not None and idx < len(latents) else None
            posterior = idx < num_posterior and fixed is None
            if self.group_starts[idx]:
                s = states.get(r)
                if s is None:
                    bias = self.bias_xs[str(r)] if str(r) in self.bias_xs else None
                    s = bias.expand(n, -1, -1, -1) if bias is not None else self._zeros(n, r, encoder_gelu)
                if self.mixins[idx] is not None:
                    s = s + self.unpools[str(idx)](states[self.mixins[idx]])
                group_input = s  # (B, C, r, r): what every layer of this group reads
                s, kl, ratio, mean, z = self.checkpointed(block, s, encoder_gelu[r] if posterior else None,
                                                          temperatures[idx], fixed, posterior_mean, True)
            else:  # a later layer of the group: same input, its increment added to the group's sum
                out, kl, ratio, mean, z = self.checkpointed(block, group_input, encoder_gelu[r] if posterior else None,
                                                            temperatures[idx], fixed, posterior_mean, True)
                s = states[r] + (out - group_input)
            zs.append(z)
            states[r] = s
            if posterior:
                kls.append(kl)
                log_ratio = log_ratio + ratio
                means.append(mean)
        out = states[self.image_shape[1]] * self.gain + self.bias  # (B, C, H, W)
        if return_latents:
            return out, kls, log_ratio, means, zs
        return out, kls, log_ratio, means

    def encoder_features(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """gelu of the encoder activation at every resolution, which the posteriors read (:meth:`encode`)."""
        return self.encode(x)

    def _zeros(self, n: int, r: int, encoder_gelu) -> torch.Tensor:
        ref = self.gain if encoder_gelu is None else next(iter(encoder_gelu.values()))
        return torch.zeros(n, self.widths[r], r, r, dtype=ref.dtype, device=ref.device)

    def likelihood(self, features: torch.Tensor):
        """p(x|z) from the top-down output: a 1x1 convolution to the likelihood's parameters."""
        params = self.out_conv(features).float()  # (B, P, H, W)
        if self.likelihood_kind == "bernoulli":
            return Bernoulli(params)
        if self.official_grid:
            return DiscretizedLogisticMixture(params, self.image_shape[0], self.bits, half_bin=1 / 31,
                                              bottom_edge=-0.999, top_edge=0.999)
        return DiscretizedLogisticMixture(params, self.image_shape[0], self.bits)

    def loss_target(self, x: torch.Tensor) -> torch.Tensor:
        """What the likelihood scores: x itself, or with ``official_grid`` the 5-bit value in 8-bit units,
        8 floor(x_255 / 8) / 255 (openai's ``preprocess_func`` for FFHQ-256)."""
        if not self.official_grid:
            return x
        return torch.floor(torch.round(x * 255) / 8) * 8 / 255

    # ------------------------------------------------------------------ the model's contract
    def forward(self, x: torch.Tensor) -> ModelOutput:
        encoder_gelu = self.encode(x)
        features, kls, log_ratio, means = self.top_down(x.shape[0], encoder_gelu, num_posterior=self.num_groups)
        px = self.likelihood(features)
        extras = {"group_sizes": self.group_sizes, "posterior_means": means}
        return ModelOutput(px.log_prob(self.loss_target(x)), torch.stack(kls, dim=1), log_ratio, px, extras)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """n images in [0, 1]; temperature scales every prior sigma (not the pixel likelihood's spread,
        as in the official ``forward_uncond_samples``)."""
        features, _, _, _ = self.top_down(n, None, 0, temperature)
        return self.likelihood(features).sample()

    @torch.no_grad()
    def sample_conditional(self, x: torch.Tensor, num_fixed_groups: int, temperature: float = 1.0) -> torch.Tensor:
        """Images with the top ``num_fixed_groups`` latent layers drawn from q(z|x), the rest from the
        prior at ``temperature`` (0 layers: plain samples; all: a reconstruction). To keep the posterior
        down to resolution r, pass ``num_layers_through(r)``."""
        if not 0 <= num_fixed_groups <= self.num_groups:
            raise ValueError(f"num_fixed_groups must be between 0 and {self.num_groups} (this VDVAE's latent layers), "
                             f"got {num_fixed_groups}.")
        encoder_gelu = self.encode(x) if num_fixed_groups > 0 else None
        if encoder_gelu is None:
            self.check_input(x)
        features, _, _, _ = self.top_down(x.shape[0], encoder_gelu, num_fixed_groups, temperature)
        return self.likelihood(features).sample()

    def num_layers_through(self, resolution: int) -> int:
        """How many latent layers, from the top, have a resolution of at most ``resolution``."""
        return sum(1 for r in self.layer_resolutions if r <= resolution)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean image given one posterior sample of every layer."""
        return self.forward(x).likelihood.mean()


def _check_values(h, w, width, zdim, bottleneck_multiple, num_mixtures, input_std, unpool, likelihood) -> None:
    """One-sentence ValueErrors for hyperparameters outside their range (the engine turns them into ConfigErrors)."""
    if h != w:
        raise ValueError(f"VDVAE needs square images, got {h}x{w}; pad or crop the data to a square.")
    for name, value in (("model.width", width), ("model.zdim", zdim), ("model.num_mixtures", num_mixtures)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}.")
    if not 0 < bottleneck_multiple <= 1 or int(width * bottleneck_multiple) < 1:
        raise ValueError(f"model.bottleneck_multiple must be in (0, 1] and leave at least one bottleneck channel "
                         f"(width {width} x {bottleneck_multiple}), got {bottleneck_multiple}.")
    if not input_std > 0:
        raise ValueError(f"model.input_std must be positive (the data's standard deviation in 8-bit units), got {input_std}.")
    if unpool not in ("nearest", "learned"):
        raise ValueError(f"model.unpool must be 'nearest' or 'learned', got {unpool!r}.")
    if likelihood not in LikelihoodHead.KINDS:
        raise ValueError(f"Unknown likelihood {likelihood!r}; expected one of {', '.join(LikelihoodHead.KINDS)}.")


@model_family("vdvae")
@dataclass
class VDVAEConfig(ModelConfig):
    """Hyperparameters of :class:`VDVAE`; names follow the official ``hps.py`` (``enc_blocks``,
    ``dec_blocks``, ``custom_width_str``, ``no_bias_above``, ``num_mixtures``, ...)."""

    family: str = "vdvae"
    width: int = key(384, at_least=4)
    zdim: int = key(16, at_least=1)
    enc_blocks: str = key("32x11,32d2,16x6,16d2,8x6,8d2,4x3,4d4,1x3",
                          anything="an encoder string such as 32x11,32d2,... (checked by the model, Chapter 6)")
    dec_blocks: str = key("1x1,4m1,4x2,8m4,8x5,16m8,16x10,32m16,32x21",
                          anything="a decoder string such as 1x1,4m1,4x2,... (checked by the model, Chapter 6)")
    bottleneck_multiple: float = key(0.25, above=0, at_most=1)
    custom_width_str: str = key("", anything="R:W pairs")  # "R:W,...": width W at resolution R instead of `width`
    no_bias_above: int = key(64, at_least=0)  # learned bias inputs at resolutions up to this one, zeros above
    num_mixtures: int = key(10, at_least=1)
    input_mean: float = key(127.5)  # the encoder's input normalisation, in 8-bit units (official per dataset)
    input_std: float = key(127.5, above=0)
    scale_residuals: bool = True  # the 1/sqrt(N) initialisation of the last layer of residual branches
    unpool: str = key("nearest", one_of=("nearest", "learned"))  # nearest | learned (Chapter 6b's ablation, the paper's Fig. 5)
    layers_per_group: int = key(1, at_least=1)  # k > 1: groups of k layers read one state, stochastic depth / k (Chapter 6b, Table 1)
    official_grid: bool = False  # openai's FFHQ-256 loss on 8-bit input (import_vdvae sets it for FFHQ-256 weights)

    def describe_protocol(self) -> str:
        """What results.json says about the evaluation grid when it is not the library's own."""
        return ("openai's FFHQ-256 grid: targets (8 floor(x/8) - 127.5) / 127.5, bins +-1/31, encoder fed the 8-bit "
                "image (not a normalised 5-bit likelihood)") if self.official_grid else ""

    def build(self, image_shape, bits, likelihood):
        kwargs = {k: v for k, v in asdict(self).items() if k != "family"}
        return VDVAE(image_shape, bits, likelihood, **kwargs)
