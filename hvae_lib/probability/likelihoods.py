"""Image likelihoods p(x | z): Bernoulli for binary images, a discretised logistic mixture for
8-bit (or any bit depth) images (Chapter 1, "image likelihoods and bits/dim").

Contract shared by every model: images arrive in [0, 1] as exact multiples of 1 / (2^bits - 1).
A likelihood head turns decoder features (B, param_channels, H, W) into a distribution whose
``log_prob(x)`` returns one number per image, in nats, already summed over pixels and channels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from hvae_lib.probability.gaussian import sum_except_batch


class Bernoulli:
    """Independent Bernoulli pixels with the given logits, shape (B, C, H, W)."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits.float()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """sum_i x_i log p_i + (1 - x_i) log(1 - p_i), per image: (B,)."""
        return -sum_except_batch(F.binary_cross_entropy_with_logits(self.logits, x.float(), reduction="none"))

    def sample(self, temperature: float = 1.0) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(self.logits))

    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)


class DiscretizedLogisticMixture:
    """PixelCNN++'s discretised mixture of logistics, bit-depth aware.

    ``params`` is (B, M * (1 + 3 * C) , H, W) for C channels and M components holding, per pixel,
    M mixture logits, then for every component C means, C log-scales and, for RGB, the three
    autoregressive coefficients (alpha, beta, gamma) that let green depend on red and blue on both
    (Salimans et al. 2017; NVAE's colour likelihood). A pixel value k / (2^bits - 1) owns the bin of
    width 2 / (2^bits - 1) around it in [-1, 1]; the two edge bins extend to -inf and +inf so the
    2^bits probabilities sum to one.

    All maths runs in ``dtype``, float32 by default whatever the dtype of ``params`` (autocast
    hands them over in bf16 or fp16); a lower ``dtype`` exists only to measure what that would
    cost (Chapter 5 does: in bf16 the bin edges and the per-pixel terms lose enough precision to
    shift bits/dim in the second decimal).
    """

    def __init__(self, params: torch.Tensor, channels: int, bits: int = 8, log_scale_min: float = -7.0,
                 dtype: torch.dtype = torch.float32, top_edge: float | None = None, half_bin: float | None = None,
                 bottom_edge: float | None = None):
        self.channels, self.bits, self.dtype = channels, bits, dtype
        # The grid's defaults; the papers' code differs in two places, which an imported model needs:
        # NVlabs' NVAE scores x > 0.99 as the top bin (so the 8-bit value 254 too), openai's FFHQ-256
        # loss bins its 5-bit targets (8k - 127.5) / 127.5 by +-1/31 with edges at -+0.999.
        self.half_bin = 1.0 / (2**bits - 1) if half_bin is None else half_bin
        self.edges = (-1 + self.half_bin / 2 if bottom_edge is None else bottom_edge,
                      1 - self.half_bin / 2 if top_edge is None else top_edge)
        params = params.to(dtype)
        m = params.shape[1] // (1 + 3 * channels)  # M
        self.num_mix = m
        self.logit_probs = params[:, :m]  # (B, M, H, W)
        rest = rearrange(params[:, m:], "b (k m c) h w -> b k c m h w", k=3, m=m, c=channels)
        self.means = rest[:, 0]  # (B, C, M, H, W)
        self.log_scales = torch.clamp(rest[:, 1], min=log_scale_min)
        self.coeffs = torch.tanh(rest[:, 2])  # only the first min(3, C) coefficients are used

    @staticmethod
    def param_channels(channels: int, num_mix: int) -> int:
        return num_mix * (1 + 3 * channels)

    def _component_means(self, x: torch.Tensor) -> torch.Tensor:
        """Means with the autoregressive colour mixing applied, given x in [-1, 1]: (B, C, M, H, W)."""
        if self.channels != 3:
            return self.means
        x = x.unsqueeze(2)  # (B, C, 1, H, W)
        m0 = self.means[:, 0]
        m1 = self.means[:, 1] + self.coeffs[:, 0] * x[:, 0]
        m2 = self.means[:, 2] + self.coeffs[:, 1] * x[:, 0] + self.coeffs[:, 2] * x[:, 1]
        return torch.stack([m0, m1, m2], dim=1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log P(x) in nats per image, (B,), for x in [0, 1] on the 2^bits grid."""
        x = x.to(self.dtype) * 2 - 1  # (B, C, H, W) in [-1, 1]
        means = self._component_means(x)
        xc = x.unsqueeze(2) - means  # (B, C, M, H, W)
        inv_s = torch.exp(-self.log_scales)
        half_bin = self.half_bin
        plus, minus = inv_s * (xc + half_bin), inv_s * (xc - half_bin)
        log_cdf_plus = plus - F.softplus(plus)  # log sigmoid(plus), for the bottom edge bin
        log_one_minus_cdf_min = -F.softplus(minus)  # log(1 - sigmoid(minus)), for the top edge bin
        cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
        mid = inv_s * xc
        # Far in a tail the difference of sigmoids underflows; use the density times the bin width.
        log_pdf_mid = mid - self.log_scales - 2 * F.softplus(mid) + math.log(2 * half_bin)
        log_delta = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid)
        edge_lo, edge_hi = self.edges  # by default half a bin inside the two edge values
        xb = x.unsqueeze(2).expand_as(xc)
        log_probs = torch.where(xb < edge_lo, log_cdf_plus, torch.where(xb > edge_hi, log_one_minus_cdf_min, log_delta))
        log_probs = log_probs.sum(dim=1) + F.log_softmax(self.logit_probs, dim=1)  # (B, M, H, W)
        return sum_except_batch(torch.logsumexp(log_probs, dim=1))

    def sample(self, temperature: float = 1.0) -> torch.Tensor:
        """Draw images in [0, 1] quantised to the bit depth (Gumbel-max picks the component)."""
        gumbel = -torch.log(-torch.log(torch.rand_like(self.logit_probs).clamp(1e-5, 1 - 1e-5)))
        sel = F.one_hot((self.logit_probs + gumbel).argmax(1), self.num_mix)  # (B, H, W, M)
        sel = rearrange(sel, "b h w m -> b 1 m h w").float()
        means = (self.means * sel).sum(2)  # (B, C, H, W)
        log_scales = (self.log_scales * sel).sum(2)
        coeffs = (self.coeffs * sel).sum(2)
        u = torch.rand_like(means).clamp(1e-5, 1 - 1e-5)
        x = means + temperature * log_scales.exp() * (torch.log(u) - torch.log1p(-u))
        if self.channels == 3:
            x0 = x[:, 0].clamp(-1, 1)
            x1 = (x[:, 1] + coeffs[:, 0] * x0).clamp(-1, 1)
            x2 = (x[:, 2] + coeffs[:, 1] * x0 + coeffs[:, 2] * x1).clamp(-1, 1)
            x = torch.stack([x0, x1, x2], 1)
        return quantize((x.clamp(-1, 1) + 1) / 2, self.bits)

    def mean(self) -> torch.Tensor:
        """A mean image in [0, 1] for reconstructions, as NVAE's ``DiscMixLogistic.mean``: the
        mixture-weighted means m_c and coefficients (a, b, g) per pixel, then the colour chain of
        :meth:`sample` without the noise: x_R = m_R, x_G = m_G + a x_R, x_B = m_B + b x_R + g x_G
        (each clamped to [-1, 1])."""
        probs = torch.softmax(self.logit_probs, 1).unsqueeze(1)  # (B, 1, M, H, W)
        x = (self.means * probs).sum(2)  # (B, C, H, W) in [-1, 1]
        if self.channels == 3:
            coeffs = (self.coeffs * probs).sum(2)  # (B, C, H, W): a, b, g
            x0 = x[:, 0].clamp(-1, 1)
            x1 = (x[:, 1] + coeffs[:, 0] * x0).clamp(-1, 1)
            x2 = (x[:, 2] + coeffs[:, 1] * x0 + coeffs[:, 2] * x1).clamp(-1, 1)
            x = torch.stack([x0, x1, x2], 1)
        return (x.clamp(-1, 1) + 1) / 2


def quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Round values in [0, 1] to the nearest of the 2^bits levels."""
    levels = 2**bits - 1
    return torch.round(x * levels) / levels


class LikelihoodHead(nn.Module):
    """A 1x1 conv from decoder features to the likelihood's parameters, and the distribution.

    ``kind`` is "bernoulli" (binary images) or "logistic_mixture" (any bit depth).
    """

    KINDS = ("bernoulli", "logistic_mixture")

    def __init__(self, in_channels: int, image_channels: int, kind: str, bits: int = 8, num_mix: int = 10):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"Unknown likelihood {kind!r}; expected one of {', '.join(self.KINDS)}.")
        self.kind, self.image_channels, self.bits, self.num_mix = kind, image_channels, bits, num_mix
        out = image_channels if kind == "bernoulli" else DiscretizedLogisticMixture.param_channels(image_channels, num_mix)
        self.proj = nn.Conv2d(in_channels, out, kernel_size=1)

    def forward(self, features: torch.Tensor):
        params = self.proj(features)
        if self.kind == "bernoulli":
            return Bernoulli(params)
        return DiscretizedLogisticMixture(params, self.image_channels, self.bits)
