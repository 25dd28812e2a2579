"""A linear-Gaussian latent variable model whose log p(x) is known in closed form (Chapter 1).

p(z) = N(0, I_Z), p(x|z) = N(W z + b, s^2 I_D), so p(x) = N(b, W W^T + s^2 I_D). With a
deliberately imperfect encoder q(z|x) = N(A x + c, diag(r^2)) the ELBO is strictly below log p(x)
and the importance-weighted bound climbs towards it as K grows: the test bench for Chapter 1's
bounds. It follows the same interface as the image models (a "likelihood" with ``log_prob``).
"""
from __future__ import annotations

import torch
from torch import nn

from .distributions import DiagonalGaussian, sum_except_batch
from .models.base import LatentVariableModel, ModelOutput


class _Gaussian:
    def __init__(self, mean: torch.Tensor, log_sigma: float):
        self.dist = DiagonalGaussian(mean, torch.full_like(mean, log_sigma))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return sum_except_batch(self.dist.log_prob(x))


class LinearGaussianModel(LatentVariableModel):
    """Vectors x of size D (shaped (B, D, 1, 1) to fit the image interface) from a Z-dim latent."""

    def __init__(self, data_dim: int = 4, latent_dim: int = 2, noise_log_sigma: float = -0.5, seed: int = 0,
                 posterior_error: float = 0.25):
        super().__init__((data_dim, 1, 1), bits=0)
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(data_dim, latent_dim, generator=g))  # (D, Z)
        self.b = nn.Parameter(torch.randn(data_dim, generator=g) * 0.5)  # (D,)
        self.noise_log_sigma = noise_log_sigma
        # The exact posterior is N(A* (x - b), S*) with S* = (I + W^T W / s^2)^-1, A* = S* W^T / s^2.
        # The encoder starts from it, deliberately off: shrunk means and inflated sigmas (a broad
        # proposal keeps importance sampling well behaved), so the ELBO has a gap to close.
        noise_var = torch.exp(torch.tensor(2 * noise_log_sigma))
        post_cov = torch.linalg.inv(torch.eye(latent_dim) + self.W.detach().T @ self.W.detach() / noise_var)
        A = post_cov @ self.W.detach().T / noise_var * (1 - posterior_error)  # (Z, D)
        self.A = nn.Parameter(A)
        self.c = nn.Parameter(-A @ self.b.detach())
        self.q_log_sigma = nn.Parameter(0.5 * torch.log(torch.diagonal(post_cov)) + 2 * posterior_error)

    def exact_log_px(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; b, W W^T + s^2 I), per example: (B,)."""
        x = x.flatten(1)  # (B, D)
        cov = self.W @ self.W.T + torch.exp(torch.tensor(2 * self.noise_log_sigma)) * torch.eye(x.shape[1])
        return torch.distributions.MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        mu = x.flatten(1) @ self.A.T + self.c  # (B, Z)
        return DiagonalGaussian(mu, self.q_log_sigma.expand_as(mu))

    def decode(self, z: torch.Tensor) -> _Gaussian:
        mean = (z @ self.W.T + self.b)[:, :, None, None]  # (B, D, 1, 1)
        return _Gaussian(mean, self.noise_log_sigma)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        q = self.encode(x)
        p = DiagonalGaussian.standard(q.mu.shape)
        z = q.rsample()  # (B, Z)
        px = self.decode(z)
        kl = q.kl(p).sum(1, keepdim=True)  # (B, 1)
        return ModelOutput(px.log_prob(x), kl, sum_except_batch(q.log_prob(z) - p.log_prob(z)), px)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        z = torch.randn(n, self.W.shape[1]) * temperature
        return self.decode(z).dist.rsample()
