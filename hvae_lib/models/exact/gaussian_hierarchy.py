"""Hierarchies of 2-D Gaussian layers and multimodal targets: Proposition 2 made visible (Chapter 7).

Proposition 2 (Child 2021): N-layer VAEs are universal approximators of N-dimensional latent
densities. Chapter 7 shows the idea in two dimensions, where densities can be drawn and integrated
on a grid. A hierarchy of L layers, every layer a 2-D latent,

    p(z_1) = N(m, diag(s^2)),   p(z_l | z_{l-1}) = N(z_{l-1} + mu_l(z_{l-1}), diag(sigma_l(z_{l-1})^2)),

has the marginal p(z_L) = integral of p(z_1) prod_l p(z_l | z_{l-1}) dz_{1..L-1}: one Gaussian for
L = 1, a continuous mixture of Gaussians from L = 2 on, and with each layer a new nonlinear map
and a new blur. ``mu_l`` and ``log sigma_l`` are small MLPs (residual in the mean, as VDVAE's
top-down blocks); sigma_l >= ``min_sigma`` keeps every conditional a proper blur, which also keeps
the grid quadrature below accurate.

Two ways to evaluate the marginal, which must agree:

- Monte Carlo: log p(x) ~= log (1/K) sum_k p(x | z^k_{L-1}), z^k ~ p(z_{L-1}) drawn ancestrally
  (a lower bound in expectation, tight as K grows; :meth:`GaussianHierarchy.log_prob_mc`, also
  the training objective of :func:`fit_hierarchy`);
- the grid: p(z_l) on a G x G grid from p(z_{l-1}) on the same grid by the midpoint rule,
  p_l(y) = sum_i p_{l-1}(g_i) h^2 N(y; m(g_i), sigma(g_i)) (:func:`marginal_step`; Chapter 7's
  exercise), and at the last layer evaluated at the points themselves (:meth:`GaussianHierarchy.log_prob_grid`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from hvae_lib.probability.gaussian import LOG_2PI

# ----------------------------------------------------------------------------- targets

@dataclass
class GaussianMixture2D:
    """An equal-weight mixture of isotropic 2-D Gaussians with centres ``means`` (M, 2) and one ``std``."""

    means: torch.Tensor
    std: float

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log (1/M) sum_m N(x; mean_m, std^2 I), (B,) for x (B, 2)."""
        sq = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)  # (B, M)
        log_n = -0.5 * sq / self.std**2 - math.log(2 * math.pi * self.std**2)
        return torch.logsumexp(log_n, dim=1) - math.log(len(self.means))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        which = torch.randint(0, len(self.means), (n,), generator=generator)
        return self.means[which] + self.std * torch.randn(n, 2, generator=generator)  # (n, 2)


def ring_of_gaussians(num_modes: int = 8, radius: float = 2.0, std: float = 0.2) -> GaussianMixture2D:
    """``num_modes`` Gaussians evenly spaced on a circle: the classic multimodal 2-D target."""
    angle = 2 * math.pi * torch.arange(num_modes) / num_modes
    return GaussianMixture2D(radius * torch.stack([angle.cos(), angle.sin()], 1), std)


def two_moons(std: float = 0.12, per_moon: int = 64, scale: float = 1.6) -> GaussianMixture2D:
    """Two interleaved half circles (scikit-learn's moons, centred and scaled), blurred by ``std``:
    a mixture of 2 * ``per_moon`` Gaussians along the arcs, so its density is exact."""
    t = torch.linspace(0, math.pi, per_moon)
    upper = torch.stack([t.cos(), t.sin()], 1)  # (per_moon, 2)
    lower = torch.stack([1 - t.cos(), 0.5 - t.sin()], 1)
    centres = torch.cat([upper, lower]) - torch.tensor([0.5, 0.25])
    return GaussianMixture2D(scale * centres, std)


# ----------------------------------------------------------------------------- the hierarchy

class GaussianHierarchy(nn.Module):
    """L layers of 2-D Gaussian latents; the density of interest is the marginal of z_L (Chapter 7)."""

    def __init__(self, num_layers: int, hidden: int = 32, min_sigma: float = 0.15, init_sigma: float = 0.5):
        super().__init__()
        if num_layers < 1 or hidden < 1 or not 0 < min_sigma < init_sigma:
            raise ValueError(f"GaussianHierarchy needs num_layers >= 1, hidden >= 1 and 0 < min_sigma < init_sigma; "
                             f"got {num_layers}, {hidden}, {min_sigma}, {init_sigma}.")
        self.num_layers, self.min_sigma = num_layers, min_sigma
        self.top_mu = nn.Parameter(torch.zeros(2))
        self.top_raw_sigma = nn.Parameter(torch.full((2,), self._raw(1.0)))
        self.nets = nn.ModuleList(
            nn.Sequential(nn.Linear(2, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 4))
            for _ in range(num_layers - 1))
        with torch.no_grad():  # every layer starts as z_l = z_{l-1} + N(0, init_sigma^2): a random walk
            for net in self.nets:
                net[-1].weight.zero_()
                net[-1].bias.copy_(torch.tensor([0.0, 0.0, self._raw(init_sigma), self._raw(init_sigma)]))

    def _raw(self, sigma: float) -> float:  # inverse of sigma = min_sigma + softplus(raw)
        return math.log(math.expm1(sigma - self.min_sigma))

    def _sigma(self, raw: torch.Tensor) -> torch.Tensor:
        return self.min_sigma + nn.functional.softplus(raw)

    def top(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, sigma) of p(z_1), each (2,)."""
        return self.top_mu, self._sigma(self.top_raw_sigma)

    def conditional(self, layer: int, z_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, sigma), each (N, 2), of p(z_layer | z_{layer-1} = z_prev) for layer = 2..L (1-based)."""
        if not 2 <= layer <= self.num_layers:
            raise ValueError(f"layer must be between 2 and {self.num_layers} (layer 1 is the top, see top()), got {layer}.")
        out = self.nets[layer - 2](z_prev)  # (N, 4)
        return z_prev + out[:, :2], self._sigma(out[:, 2:])

    def sample(self, n: int, upto: int | None = None) -> torch.Tensor:
        """Ancestral samples of z_upto (default z_L), (n, 2); reparameterised, so differentiable."""
        upto = self.num_layers if upto is None else upto
        mu, sigma = self.top()
        z = mu + sigma * torch.randn(n, 2, device=mu.device)
        for layer in range(2, upto + 1):
            mu, sigma = self.conditional(layer, z)
            z = mu + sigma * torch.randn_like(mu)
        return z

    def log_prob_mc(self, x: torch.Tensor, k: int = 1024, chunk: int = 4096) -> torch.Tensor:
        """log p(z_L = x) ~= log (1/K) sum_k N(x; mean(z^k), sigma(z^k)), z^k ~ p(z_{L-1}): (B,).

        Exact for L = 1. For L >= 2 a lower bound in expectation (Jensen) that tightens as K grows.
        """
        _check_points(x)
        if self.num_layers == 1:
            mu, sigma = self.top()
            return _log_normal(x[:, None], mu[None, None], sigma[None, None])[:, 0]
        totals = []
        for start in range(0, k, chunk):
            z = self.sample(min(chunk, k - start), upto=self.num_layers - 1)  # (k', 2)
            mu, sigma = self.conditional(self.num_layers, z)
            totals.append(torch.logsumexp(_log_normal(x[:, None], mu[None], sigma[None]), dim=1))  # (B,)
        return torch.logsumexp(torch.stack(totals), dim=0) - math.log(k)

    # ------------------------------------------------------------------ the grid
    def grid_marginals(self, axis: torch.Tensor, step: Callable | None = None) -> list[torch.Tensor]:
        """Densities of z_1 .. z_L on the product grid axis x axis, each (G, G) indexed [i, j] =
        density at (axis[i], axis[j]); layers after the first by ``step`` (default :func:`marginal_step`,
        any function with its signature, such as Chapter 7's exercise)."""
        step = marginal_step if step is None else step
        points = grid_points(axis)  # (G*G, 2)
        mu, sigma = self.top()
        density = _log_normal(points[:, None], mu[None, None], sigma[None, None])[:, 0].exp().reshape(len(axis), -1)
        out = [density]
        for layer in range(2, self.num_layers + 1):
            mu, sigma = self.conditional(layer, points)
            density = step(density, axis, mu.reshape(*density.shape, 2), sigma.reshape(*density.shape, 2))
            out.append(density)
        return out

    def log_prob_grid(self, x: torch.Tensor, axis: torch.Tensor, chunk: int = 512) -> torch.Tensor:
        """log p(z_L = x), (B,): z_{L-1}'s density on the grid, the last conditional at the points."""
        _check_points(x)
        if self.num_layers == 1:
            return self.log_prob_mc(x)
        prev = self.grid_marginals(axis)[-2].flatten()  # (G*G,) density of z_{L-1}
        h = float(axis[1] - axis[0])
        log_w = (prev * h * h).clamp_min(1e-30).log()  # (N,) quadrature weights
        mu, sigma = self.conditional(self.num_layers, grid_points(axis))
        parts = [torch.logsumexp(log_w + _log_normal(x[i:i + chunk, None], mu[None], sigma[None]), dim=1)
                 for i in range(0, len(x), chunk)]
        return torch.cat(parts)


def _check_points(x: torch.Tensor) -> None:
    if x.dim() != 2 or x.shape[1] != 2:
        raise ValueError(f"GaussianHierarchy scores 2-D points of shape (B, 2), got a tensor of shape {tuple(x.shape)}.")


def _log_normal(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log N(x; mu, diag(sigma^2)) summed over the last (coordinate) axis, broadcasting the others."""
    return (-0.5 * ((x - mu) / sigma) ** 2 - sigma.log() - 0.5 * LOG_2PI).sum(-1)


def grid_axis(limit: float = 4.0, size: int = 64) -> torch.Tensor:
    """``size`` cell centres evenly spaced over [-limit, limit]: cell width h = 2 limit / size."""
    h = 2 * limit / size
    return -limit + h / 2 + h * torch.arange(size, dtype=torch.float32)


def grid_points(axis: torch.Tensor) -> torch.Tensor:
    """The product grid as points (G*G, 2), point [i * G + j] = (axis[i], axis[j])."""
    a, b = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([a.flatten(), b.flatten()], 1)


def marginal_step(density: torch.Tensor, axis: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """One step of the hierarchical marginal on a grid (Chapter 7, exercise 3):

    p_l(y) = sum_i p_{l-1}(g_i) h^2 N(y; mu_i, diag(sigma_i^2)), for every grid point y.

    density (G, G): p_{l-1} at the grid points; axis (G,): the grid's coordinates (spacing h);
    mu, sigma (G, G, 2): the conditional p(z_l | z_{l-1} = g_i) at every grid point g_i. Returns
    (G, G). A diagonal Gaussian factorises over the two coordinates, so the double sum is the
    matrix product A^T diag(w) B of (G*G, G) tables: G^3 work per coordinate, not G^4.
    """
    g = len(axis)
    if density.shape != (g, g) or mu.shape != (g, g, 2) or sigma.shape != (g, g, 2):
        raise ValueError(f"marginal_step expects density (G, G) and mu, sigma (G, G, 2) for an axis of G = {g} points; "
                         f"got {tuple(density.shape)}, {tuple(mu.shape)}, {tuple(sigma.shape)}.")
    h = float(axis[1] - axis[0])
    w = (density * h * h).reshape(-1)  # (N,) with N = G*G source cells
    m, s = mu.reshape(-1, 2), sigma.reshape(-1, 2)  # (N, 2)
    gauss = lambda c: torch.exp(-0.5 * ((axis[None, :] - m[:, c:c + 1]) / s[:, c:c + 1]) ** 2) / (s[:, c:c + 1] * math.sqrt(2 * math.pi))
    a, b = gauss(0), gauss(1)  # (N, G): first and second coordinate of every target point
    return (a * w[:, None]).T @ b  # (G, G)


def fit_hierarchy(model: GaussianHierarchy, target: GaussianMixture2D, steps: int, axis: torch.Tensor | None = None,
                  batch_size: int = 128, lr: float = 1e-2, seed: int = 0) -> list[float]:
    """Maximise the log-likelihood of fresh target samples, log p(z_L = x) with the intermediate
    layers on the grid ``axis`` (default :func:`grid_axis`), by Adam with a cosine decay of the
    learning rate to zero; returns the losses (mean negative log-likelihood per step, nats)."""
    axis = grid_axis() if axis is None else axis
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    losses = []
    for step in range(steps):
        x = target.sample(batch_size, generator=g)  # (B, 2)
        loss = -model.log_prob_grid(x, axis).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(loss.item())
    return losses


def kl_on_grid(target: GaussianMixture2D, log_density: torch.Tensor, axis: torch.Tensor) -> float:
    """KL(target || model) = sum_g p_t(g) (log p_t(g) - log p_model(g)) h^2 over the grid points of
    ``axis``, given the model's log-density there (G*G,): deterministic, no sampling noise."""
    h = float(axis[1] - axis[0])
    log_t = target.log_prob(grid_points(axis))  # (G*G,)
    return float((log_t.exp() * (log_t - log_density)).sum() * h * h)
