"""NVAE's Gaussians and the residual normal posterior (Chapter 4, "the residual normal").

NVAE never lets the encoder predict q(z_l | z_<l, x) from scratch: it predicts a *correction* of
the prior, q = N(mu_p + dmu, (sigma_p dsigma)^2). The KL then depends only on the correction,

    KL(q || p) = 0.5 * (dmu^2 / sigma_p^2 + dsigma^2 - log dsigma^2 - 1),

which is 0 when the encoder outputs (dmu, dsigma) = (0, 1) whatever the prior does: when the
prior moves, the posterior moves with it instead of paying KL to follow.

Parameterisation exactly as the official code (NVlabs/NVAE ``distributions.Normal``): raw network
outputs are soft-clamped, mu = 5 tanh(mu_raw / 5) and log_sigma = 5 tanh(log_sigma_raw / 5), and
sigma = exp(log_sigma) + 0.01. The residual q is built from the *sums* of raw outputs, so
mu_q = clamp(mu_p_raw + dmu_raw) and sigma_q = exp(clamp(log_sigma_p_raw + dlog_sigma_raw)) + 0.01;
(dmu, dsigma) in the KL above are the effective ones, mu_q - mu_p and sigma_q / sigma_p, so the
closed form is exact. All maths runs in float32 (float64 stays float64).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hvae_lib.probability.gaussian import DiagonalGaussian, soft_clamp


def _maths(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 at least: autocast's bf16/fp16 become float32, float64 stays."""
    return t.to(torch.promote_types(t.dtype, torch.float32))

CLAMP = 5.0  # soft-clamp bound of mu and log sigma
SIGMA_FLOOR = 0.01  # added to exp(log_sigma), as the official code does
LOG_2PI = math.log(2 * math.pi)


def residual_kl(delta_mu: torch.Tensor, delta_sigma: torch.Tensor, sigma_p: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mu_p + dmu, (sigma_p dsigma)^2) || N(mu_p, sigma_p^2)) in nats (Chapter 4):
    0.5 * (dmu^2 / sigma_p^2 + dsigma^2 - log dsigma^2 - 1)."""
    return 0.5 * ((delta_mu / sigma_p) ** 2 + delta_sigma**2 - 2 * torch.log(delta_sigma) - 1)


@dataclass
class NVAENormal:
    """N(mu, sigma^2), diagonal, float32, parameterised by sigma (NVAE's ``Normal``, Chapter 4)."""

    mu: torch.Tensor
    sigma: torch.Tensor

    @classmethod
    def from_raw(cls, mu_raw: torch.Tensor, log_sigma_raw: torch.Tensor, temperature: float = 1.0) -> "NVAENormal":
        """mu = 5 tanh(mu_raw / 5), sigma = t * (exp(5 tanh(log_sigma_raw / 5)) + 0.01)."""
        mu = soft_clamp(_maths(mu_raw), CLAMP)
        sigma = torch.exp(soft_clamp(_maths(log_sigma_raw), CLAMP)) + SIGMA_FLOOR
        return cls(mu, sigma * temperature if temperature != 1.0 else sigma)

    @classmethod
    def from_params(cls, params: torch.Tensor, temperature: float = 1.0) -> "NVAENormal":
        """Split raw ``params`` (B, 2Z, H, W) into (mu_raw, log_sigma_raw) along channels."""
        mu_raw, log_sigma_raw = _maths(params).chunk(2, dim=1)
        return cls.from_raw(mu_raw, log_sigma_raw, temperature)

    @classmethod
    def residual(cls, prior_params: torch.Tensor, delta_params: torch.Tensor) -> "NVAENormal":
        """The residual posterior q from the prior's raw params and the encoder's raw corrections,
        both (B, 2Z, H, W): q = N(mu_p + dmu, (sigma_p dsigma)^2) in raw (pre-clamp) coordinates."""
        return cls.from_params(_maths(prior_params) + _maths(delta_params))

    @classmethod
    def standard(cls, shape, device=None, temperature: float = 1.0, dtype=None) -> "NVAENormal":
        """N(0, t^2 I): the top group's prior at temperature t, the paper's N(0, I). (The official
        code builds it as Normal(0, log_sigma=0), so its sigma floor makes it N(0, 1.01^2 t^2): pass
        t * 1.01 for that.)"""
        return cls(torch.zeros(shape, device=device, dtype=dtype),
                   torch.full(shape, float(temperature), device=device, dtype=dtype))

    def rsample(self) -> torch.Tensor:
        """Reparameterised draw mu + sigma * eps (temperature is already inside sigma)."""
        return self.mu + self.sigma * torch.randn_like(self.mu)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Elementwise log N(z; mu, sigma^2) = -0.5 ((z - mu) / sigma)^2 - log sigma - 0.5 log 2pi."""
        scaled = (z.to(self.mu.dtype) - self.mu) / self.sigma
        return -0.5 * scaled**2 - torch.log(self.sigma) - 0.5 * LOG_2PI

    def kl(self, prior: "NVAENormal", kl_function=residual_kl) -> torch.Tensor:
        """Elementwise analytic KL(self || prior) in residual form, ``kl_function(dmu, dsigma, sigma_p)``
        with the effective dmu = mu_q - mu_p, dsigma = sigma_q / sigma_p (:func:`residual_kl`)."""
        return kl_function(self.mu - prior.mu, self.sigma / prior.sigma, prior.sigma)

    def to_diagonal(self) -> DiagonalGaussian:
        """The same Gaussian as the library's :class:`DiagonalGaussian` (log-sigma parameterised)."""
        return DiagonalGaussian(self.mu, torch.log(self.sigma))
