"""The ELBO, its units, and the importance-weighted bound (Chapter 1).

Every model returns a :class:`ModelOutput`, the terms of the ELBO for a batch; the functions here turn it into
numbers. Units: *nats* per image, *nats/dim* (divided by the number of data dimensions C*H*W) and
*bits/dim* (nats/dim / ln 2). A bits/dim figure is only comparable at the same bit depth: a uniform
model of 8-bit data scores exactly 8, of 5-bit data exactly 5.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass
class ModelOutput:
    """One forward pass on a batch of B images.

    ``kl_per_group`` is analytic where the model allows it (a single-sample Monte Carlo estimate with
    flows); ``log_q_minus_log_p`` is log q(z|x) - log p(z) at the sampled z, summed over groups, which
    the importance-weighted bound needs.
    """

    log_px_z: torch.Tensor  # (B,) nats
    kl_per_group: torch.Tensor  # (B, L) nats
    log_q_minus_log_p: torch.Tensor  # (B,) nats
    likelihood: Any  # the p(x|z) distribution, for reconstructions
    extras: dict | None = None  # model-specific diagnostics (posterior means, ...)


def nats_to_bpd(nats_per_image: torch.Tensor | float, num_dims: int):
    """Bits per dimension = nats / (D ln 2), for D = C * H * W data dimensions."""
    return nats_per_image / (num_dims * math.log(2))


@dataclass
class ELBO:
    """The evidence lower bound of a batch and its two parts, averaged over the batch, in nats."""

    elbo: torch.Tensor  # (B,) per image: log p(x|z) - KL
    recon: torch.Tensor  # scalar: E_q[-log p(x|z)], the reconstruction term
    kl: torch.Tensor  # scalar: total KL(q(z|x) || p(z))
    kl_per_group: torch.Tensor  # (L,) KL of each latent group
    num_dims: int

    @property
    def loss(self) -> torch.Tensor:
        """The negative ELBO per image, averaged over the batch (what the optimiser minimises)."""
        return -self.elbo.mean()

    @property
    def bpd(self) -> torch.Tensor:
        return nats_to_bpd(-self.elbo.mean(), self.num_dims)


def elbo(out: ModelOutput, num_dims: int) -> ELBO:
    """ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)), one-sample estimate of the first term."""
    kl_per_image = out.kl_per_group.sum(dim=1)  # (B,)
    return ELBO(
        elbo=out.log_px_z - kl_per_image,
        recon=-out.log_px_z.mean(),
        kl=kl_per_image.mean(),
        kl_per_group=out.kl_per_group.mean(dim=0),
        num_dims=num_dims,
    )


@torch.no_grad()
def importance_weighted_bound(model: Callable[[torch.Tensor], ModelOutput], x: torch.Tensor, k: int, chunk_size: int = 16) -> torch.Tensor:
    """log p(x) >= log (1/K) sum_k p(x, z_k) / q(z_k | x), z_k ~ q(z | x)  (Burda et al. 2016).

    Returns the bound per image in nats, (B,). Samples are drawn ``chunk_size`` at a time, so memory
    grows with ``B * chunk_size``, not with K. K = 1 gives a one-sample ELBO estimate; the bound
    rises towards log p(x) as K grows.
    """
    if k < 1:
        raise ValueError(f"The importance-weighted bound needs k >= 1 samples, got k={k}.")
    batch = x.shape[0]
    log_weights = []
    for start in range(0, k, chunk_size):
        n = min(chunk_size, k - start)
        xs = x.repeat(n, *([1] * (x.dim() - 1)))  # (n * B, C, H, W), sample-major
        out = model(xs)
        log_w = out.log_px_z - out.log_q_minus_log_p  # (n * B,)
        log_weights.append(log_w.view(n, batch))
    log_weights = torch.cat(log_weights, dim=0)  # (K, B)
    return torch.logsumexp(log_weights, dim=0) - math.log(k)
