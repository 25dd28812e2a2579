"""Diagonal Gaussians for latent variables (Chapter 1; the residual normal is Chapter 4).

All maths runs in float32 even under autocast: log-sigma, log-probabilities and KL terms are
where half precision loses the most (see the training engine's mixed-precision notes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LOG_2PI = math.log(2 * math.pi)


def soft_clamp(x: torch.Tensor, bound: float) -> torch.Tensor:
    """Smoothly squash ``x`` into (-bound, bound): ``bound * tanh(x / bound)`` (NVAE's soft clamp)."""
    return bound * torch.tanh(x / bound)


@dataclass
class DiagonalGaussian:
    """N(mu, diag(sigma^2)) parameterised by ``log_sigma``; every tensor has the latent's shape.

    Build one from raw network outputs with :meth:`from_params`, which bounds ``log_sigma`` so
    sigma can neither vanish nor explode (Chapter 1, "keeping the KL finite").
    """

    mu: torch.Tensor
    log_sigma: torch.Tensor

    @classmethod
    def from_params(cls, params: torch.Tensor, dim: int = 1, log_sigma_bound: float = 7.0) -> "DiagonalGaussian":
        """Split ``params`` in two along ``dim`` into (mu, raw log-sigma) and soft-clamp the latter."""
        mu, raw_log_sigma = params.float().chunk(2, dim=dim)
        return cls(mu, soft_clamp(raw_log_sigma, log_sigma_bound))

    @classmethod
    def standard(cls, shape, device=None) -> "DiagonalGaussian":
        """N(0, I) of the given shape."""
        zeros = torch.zeros(shape, device=device)
        return cls(zeros, zeros.clone())

    @property
    def sigma(self) -> torch.Tensor:
        return self.log_sigma.exp()

    def rsample(self, temperature: float = 1.0) -> torch.Tensor:
        """Reparameterised draw z = mu + t * sigma * eps, eps ~ N(0, I) (Chapter 1)."""
        eps = torch.randn_like(self.mu)
        return self.mu + temperature * self.sigma * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Elementwise log N(z; mu, sigma^2) = -0.5 * (log 2pi + 2 log sigma + ((z - mu) / sigma)^2)."""
        scaled = (z.float() - self.mu) * torch.exp(-self.log_sigma)
        return -0.5 * (LOG_2PI + 2 * self.log_sigma + scaled**2)

    def kl(self, other: "DiagonalGaussian") -> torch.Tensor:
        """Elementwise analytic KL(self || other) in nats (Chapter 1, exercise 1):

        log(s_p / s_q) + (s_q^2 + (mu_q - mu_p)^2) / (2 s_p^2) - 1/2.
        """
        inv_var_p = torch.exp(-2 * other.log_sigma)
        var_ratio = torch.exp(2 * (self.log_sigma - other.log_sigma))
        return 0.5 * (var_ratio + (self.mu - other.mu) ** 2 * inv_var_p - 1) - (self.log_sigma - other.log_sigma)

    def detach(self) -> "DiagonalGaussian":
        return DiagonalGaussian(self.mu.detach(), self.log_sigma.detach())


def sum_except_batch(x: torch.Tensor) -> torch.Tensor:
    """Sum every dimension but the first: (B, ...) -> (B,)."""
    return x.reshape(x.shape[0], -1).sum(dim=1)
