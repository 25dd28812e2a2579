"""A linear-Gaussian latent variable model whose log p(x) is known in closed form (Chapter 1).

p(z) = N(0, I_Z), p(x|z) = N(W z + b, s^2 I_D), so p(x) = N(b, W W^T + s^2 I_D) and the exact
posterior is p(z|x) = N(S W^T (x - b) / s^2, S) with S = Lambda^-1, Lambda = I + W^T W / s^2.

The encoder q(z|x) = N(A x + c, diag(r^2)) is diagonal, so it cannot represent the correlations of
S: even the best diagonal encoder (the exact posterior mean and r_i^2 = 1 / Lambda_ii, which
minimises KL(q || p(z|x)) over diagonal Gaussians) leaves the ELBO a gap of
KL = 0.5 (sum_i log Lambda_ii - log det Lambda) nats, zero only when Lambda is diagonal.
``posterior_error`` moves the encoder away from that optimum (shrunk means, inflated sigmas), so
the importance-weighted bound has a gap to close: the test bench for Chapter 1's bounds. The model
follows the same interface as the image models (a "likelihood" with ``log_prob``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from hvae_lib.models.base import LatentVariableModel
from hvae_lib.probability.gaussian import LOG_2PI, DiagonalGaussian, sum_except_batch
from hvae_lib.probability.objectives import ModelOutput


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
        # The encoder starts from the best diagonal one (exact posterior mean, variances
        # 1 / Lambda_ii), deliberately off by posterior_error: shrunk means and inflated sigmas (a
        # broad proposal keeps importance sampling well behaved), so the ELBO has a gap to close.
        precision = self.posterior_precision()  # (Z, Z)
        A = torch.linalg.solve(precision, self.W.detach().T) / self.noise_var * (1 - posterior_error)  # (Z, D)
        self.A = nn.Parameter(A)
        self.c = nn.Parameter(-A @ self.b.detach())
        self.q_log_sigma = nn.Parameter(-0.5 * torch.log(torch.diagonal(precision)) + 2 * posterior_error)

    @property
    def noise_var(self) -> torch.Tensor:
        return torch.exp(torch.tensor(2.0 * self.noise_log_sigma))

    def posterior_precision(self) -> torch.Tensor:
        """Lambda = I + W^T W / s^2, the precision of the exact posterior p(z|x) (the same for every x): (Z, Z)."""
        W = self.W.detach()
        return torch.eye(W.shape[1]) + W.T @ W / self.noise_var

    def exact_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p(z|x) = N(mean, cov): mean (B, Z) = Lambda^-1 W^T (x - b) / s^2, cov (Z, Z) = Lambda^-1."""
        cov = torch.linalg.inv(self.posterior_precision())
        mean = (x.flatten(1) - self.b.detach()) @ self.W.detach() @ cov / self.noise_var  # cov is symmetric
        return mean, cov

    def exact_log_px(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; b, W W^T + s^2 I), per example: (B,)."""
        x = x.flatten(1)  # (B, D)
        cov = self.W @ self.W.T + self.noise_var * torch.eye(x.shape[1])
        return torch.distributions.MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)

    @torch.no_grad()
    def exact_elbo(self, x: torch.Tensor) -> torch.Tensor:
        """The ELBO without sampling, per example (B,): E_q[log p(x|z)] - KL(q || N(0, I)) with

        E_q[log p(x|z)] = log N(x; W mu_q + b, s^2 I) - tr(W diag(r^2) W^T) / (2 s^2).
        It equals exact_log_px(x) - KL(q(z|x) || p(z|x)).
        """
        q = self.encode(x)
        mean_x = q.mu @ self.W.T + self.b  # (B, D)
        d = mean_x.shape[1]  # D
        log_lik = -0.5 * (d * (LOG_2PI + math.log(self.noise_var)) + ((x.flatten(1) - mean_x) ** 2).sum(1) / self.noise_var)
        spread = ((self.W**2) @ q.sigma[0] ** 2).sum() / (2 * self.noise_var)  # tr(W diag(r^2) W^T) / (2 s^2)
        return log_lik - spread - q.kl(DiagonalGaussian.standard(q.mu.shape)).sum(1)

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
