"""The D-layer VAE of the Very Deep VAE paper's Proposition 1, on D binary pixels (Chapter 7).

Proposition 1 (Child 2021): a VAE with as many stochastic layers as data dimensions can represent
any autoregressive model. The construction, made exact for binary pixels:

- one binary latent per layer, z_i in {0, 1}, i = 0..D-1 (layer i holds latent i);
- encoder: copy pixel i into latent i, q(z_i | z_<i, x) = 1[z_i = x_i] (a delta posterior);
- prior: p(z_i | z_<i) = the autoregressive model's conditional, applied to the latents;
- decoder: return z, p(x | z) = 1[x = z].

Then log p(x | z) = 0 at z = x, and the KL of layer i is the KL from a point mass to a Bernoulli,
KL(1[z_i = x_i] || p(z_i | x_<i)) = -log p(x_i | x_<i): the AR model's cross-entropy at pixel i.
The ELBO is sum_i log p(x_i | x_<i) = log p_AR(x), for every image, and it is tight: the posterior
is exact because p(z | x) is the same point mass.

Why binary latents with a delta posterior rather than Gaussians: the proposition is exact only if
the latents can hold a pixel *exactly* and the prior can put the AR model's probabilities on them.
Gaussian layers (VDVAE's) reach that only in a limit (sigma -> 0 and a decoder that thresholds),
where KL and reconstruction terms both diverge while their sum converges; binary latents make
every term finite and the equality hold to float precision. (A continuous alternative that is also
exact: q(z_i | x) uniform on [x_i, x_i + 1), a prior with piecewise-constant density
p(floor(z_i) | floor(z_<i)), and the decoder x_i = floor(z_i); it computes the same numbers.)

``learned=True`` replaces the copy by networks: a factorised encoder q(z | x) = prod_i
Bernoulli(z_i; sigmoid(e_i(x))) (it contains the copy as a limit, since the copy does not depend
on z_<i) and a factorised decoder p(x | z) = prod_i Bernoulli(x_i; sigmoid(d_i(z))), VDVAE's
"independent p(x|z)". The prior stays the AR model over z. With D <= 16 every one of the 2^D
latent vectors can be enumerated, so :meth:`DLayerVAE.exact_elbo` and :meth:`DLayerVAE.log_marginal`
are exact, and so are their gradients: no sampling noise hides what the learned encoder does.

Vectors, not images: x is (B, D) in {0, 1} as for :class:`~hvae_lib.models.exact.binary_ar.BinaryAR`.
``forward`` returns the course's :class:`~hvae_lib.probability.objectives.ModelOutput`, so Chapter 1's
:func:`~hvae_lib.probability.objectives.elbo` and importance-weighted bound apply unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hvae_lib.models.exact.binary_ar import BinaryAR, all_binary_vectors
from hvae_lib.probability.likelihoods import Bernoulli
from hvae_lib.probability.objectives import ModelOutput

MAX_EXACT_DIMS = 16  # 2^16 latent vectors: the (B, 2^D) tables of the exact ELBO stay small


def bernoulli_kl(q_probs: torch.Tensor, p_logits: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(Bernoulli(q) || Bernoulli(sigmoid(l))) in nats (Chapter 7, exercise 1):

    q log(q / p) + (1 - q) log((1 - q) / (1 - p)), with 0 log 0 = 0, so a point mass q in {0, 1}
    gives exactly -log p(x_i) of the value it sits on.
    """
    q, p_logits = _at_least_float32(q_probs), _at_least_float32(p_logits)
    log_p1, log_p0 = F.logsigmoid(p_logits), F.logsigmoid(-p_logits)
    return torch.xlogy(q, q) + torch.xlogy(1 - q, 1 - q) - q * log_p1 - (1 - q) * log_p0


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


def _mlp(num_dims: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(num_dims, hidden), nn.SiLU(), nn.Linear(hidden, num_dims))


class CopyDecoder:
    """p(x | z) = 1[x = z]: log-probability 0 where x equals z, -inf anywhere else."""

    def __init__(self, z: torch.Tensor):
        self.z = z

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        same = (x.float() == self.z).all(dim=1)  # (B,)
        return torch.where(same, 0.0, float("-inf"))

    def sample(self, temperature: float = 1.0) -> torch.Tensor:
        return self.z.clone()

    def mean(self) -> torch.Tensor:
        return self.z.clone()


@dataclass
class ExactTerms:
    """Exact (enumerated) terms of the ELBO per image, each (B,) in nats, and the KL per layer (B, D)."""

    elbo: torch.Tensor  # E_q[log p(x|z)] - KL(q(z|x) || p(z))
    recon: torch.Tensor  # E_q[log p(x|z)] (0 for the copy decoder)
    kl: torch.Tensor  # KL(q(z|x) || p(z)) = sum of kl_per_layer
    kl_per_layer: torch.Tensor  # (B, D): E_q(z_<i|x)[KL(q(z_i|x) || p(z_i|z_<i))]
    log_px: torch.Tensor  # log p(x) = log sum_z p(z) p(x|z)


class DLayerVAE(nn.Module):
    """A VAE with D stochastic layers of one binary latent each, prior = an AR model (Chapter 7).

    ``prior`` is a :class:`BinaryAR` over the latents (layer i's prior is its conditional i; the
    module is used, not copied). ``learned=False`` is Proposition 1's copy encoder and copy decoder;
    ``learned=True`` adds an MLP encoder and decoder with ``hidden`` units.
    """

    def __init__(self, prior: BinaryAR, learned: bool = False, hidden: int = 64):
        super().__init__()
        if not isinstance(prior, BinaryAR):
            raise TypeError(f"DLayerVAE's prior must be a hvae_lib.models.exact.binary_ar.BinaryAR, got {type(prior).__name__}.")
        self.prior, self.learned, self.num_dims = prior, learned, prior.num_dims
        if learned:
            self.encoder, self.decoder = _mlp(self.num_dims, hidden), _mlp(self.num_dims, hidden)

    @property
    def num_layers(self) -> int:
        return self.num_dims

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.num_dims:
            raise ValueError(f"DLayerVAE was built for vectors of {self.num_dims} binary pixels, shape (B, {self.num_dims}); "
                             f"got {tuple(x.shape)} (flatten images with x.flatten(1)).")

    def posterior_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the learned encoder's q(z_i = 1 | x), (B, D)."""
        if not self.learned:
            raise ValueError("The copy encoder has no logits: its posterior is the point mass z = x.")
        return self.encoder(2 * x.float() - 1)

    def decode(self, z: torch.Tensor):
        """p(x | z): the point mass at z (copy decoder) or independent Bernoulli pixels."""
        if not self.learned:
            return CopyDecoder(z.float())
        logits = self.decoder(2 * z.float() - 1)  # (B, D)
        return Bernoulli(logits[:, :, None, None])  # its log_prob sums over (D, 1, 1): one number per image

    # ------------------------------------------------------------------ one sample of z, as every course model
    def forward(self, x: torch.Tensor) -> ModelOutput:
        """Draw z ~ q(z|x) once; KL of each layer analytic given the drawn z_<i (as in Chapters 2-4).

        With the copy encoder the draw is z = x, so the single-sample ELBO is exact: log p_AR(x).
        """
        self.check_input(x)
        x = _at_least_float32(x)
        if self.learned:
            lq = self.posterior_logits(x)  # (B, D)
            z = torch.bernoulli(torch.sigmoid(lq))  # (B, D); no gradient through the draw (exact_elbo trains)
            q_probs = torch.sigmoid(lq)
            log_q = -F.binary_cross_entropy_with_logits(lq, z, reduction="none").sum(1)  # (B,)
            px = self.decode(z)
            log_px_z = px.log_prob(x[:, :, None, None])
        else:
            z, q_probs, log_q = x, x, torch.zeros(x.shape[0], device=x.device)
            px = self.decode(z)
            log_px_z = px.log_prob(x)
        prior_logits = self.prior(z)  # (B, D): layer i's prior p(z_i | z_<i)
        kl_per_layer = bernoulli_kl(q_probs, prior_logits)  # (B, D)
        log_p = self.prior.log_prob(z)
        return ModelOutput(log_px_z, kl_per_layer, log_q - log_p, px, {"z": z})

    # ------------------------------------------------------------------ exact, by enumerating all 2^D latents
    def exact_elbo(self, x: torch.Tensor) -> ExactTerms:
        """The ELBO and log p(x) computed exactly, per image (differentiable; Chapter 7).

        Copy encoder: the single point z = x. Learned encoder: sums over all 2^D latent vectors z_k,
        ELBO = sum_k q(z_k|x) [log p(x|z_k) + log p(z_k) - log q(z_k|x)], log p(x) = logsumexp_k
        [log p(x|z_k) + log p(z_k)]; every table is (B, 2^D), built with matrix products.
        """
        self.check_input(x)
        x = _at_least_float32(x)
        if not self.learned:
            kl_per_layer = bernoulli_kl(x, self.prior(x))  # (B, D)
            zeros = torch.zeros(x.shape[0], device=x.device)
            return ExactTerms(-kl_per_layer.sum(1), zeros, kl_per_layer.sum(1), kl_per_layer, self.prior.log_prob(x))
        if self.num_dims > MAX_EXACT_DIMS:
            raise ValueError(f"exact_elbo enumerates 2^D latents and supports D <= {MAX_EXACT_DIMS}, got D={self.num_dims}; "
                             "use forward() (one sample) or the importance-weighted bound instead.")
        Z = all_binary_vectors(self.num_dims).to(x.device)  # (K, D), K = 2^D
        lq = self.posterior_logits(x)  # (B, D)
        lq1, lq0 = F.logsigmoid(lq), F.logsigmoid(-lq)  # log q(z_i = 1 | x), log q(z_i = 0 | x)
        log_q = lq1 @ Z.T + lq0 @ (1 - Z).T  # (B, K)
        prior_logits = self.prior(Z)  # (K, D)
        lp1, lp0 = F.logsigmoid(prior_logits), F.logsigmoid(-prior_logits)
        log_pz = (Z * lp1 + (1 - Z) * lp0).sum(1)  # (K,)
        dec_logits = self.decoder(2 * Z - 1)  # (K, D)
        log_px_z = x @ F.logsigmoid(dec_logits).T + (1 - x) @ F.logsigmoid(-dec_logits).T  # (B, K)
        q = log_q.exp()  # (B, K), rows sum to one
        recon = (q * log_px_z).sum(1)  # (B,)
        # KL of layer i = E_q[q1 (lq1 - lp1(z_<i)) + q0 (lq0 - lp0(z_<i))]: the prior's expectations are (B, K) @ (K, D).
        q1, q0 = lq1.exp(), lq0.exp()
        kl_per_layer = q1 * lq1 + q0 * lq0 - q1 * (q @ lp1) - q0 * (q @ lp0)  # (B, D)
        kl = kl_per_layer.sum(1)
        log_px = torch.logsumexp(log_px_z + log_pz, dim=1)  # (B,)
        return ExactTerms(recon - kl, recon, kl, kl_per_layer, log_px)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) = log sum_z p(z) p(x|z), (B,) (the AR log-likelihood for the copy model)."""
        return self.exact_elbo(x).log_px

    @torch.no_grad()
    def latent_effects(self, x: torch.Tensor) -> torch.Tensor:
        """What each latent controls, (D, D): entry [i, j] is the mean over the images x of
        |E[x_j | z with z_i = 1] - E[x_j | z with z_i = 0]|, z the posterior's most likely latents.
        The copy model gives the identity: latent i holds pixel i and nothing else (Chapter 7)."""
        self.check_input(x)
        z = (torch.sigmoid(self.posterior_logits(x)) > 0.5).float() if self.learned else x.float()  # (B, D)
        rows = []
        for i in range(self.num_dims):
            on, off = z.clone(), z.clone()
            on[:, i], off[:, i] = 1.0, 0.0
            diff = self.decode(on).mean().reshape(len(z), -1) - self.decode(off).mean().reshape(len(z), -1)  # (B, D)
            rows.append(diff.abs().mean(0))
        return torch.stack(rows)

    @torch.no_grad()
    def sample_from_uniforms(self, u_latent: torch.Tensor, u_pixel: torch.Tensor):
        """Ancestral sampling driven by given uniforms, (B, D) each (Chapter 7, exercise 3):

        z layer by layer, z_i = 1 if u_latent_i < p(z_i = 1 | z_<i) (D sequential passes of the prior
        network, accumulating log p(z)); then x = z (copy decoder) or x_j = 1 if u_pixel_j < p(x_j = 1 | z)
        (learned decoder). Returns (x (B, D), z (B, D), log p(z) (B,) in nats).
        """
        self.prior.check_input(u_latent)
        z = torch.zeros_like(u_latent, dtype=torch.float32)  # (B, D), filled layer by layer
        log_pz = torch.zeros(len(u_latent), device=u_latent.device)
        for i in range(self.num_dims):
            logit = self.prior(z)[:, i]  # layer i's prior given z_<i
            z[:, i] = (u_latent[:, i] < torch.sigmoid(logit)).float()
            log_pz += torch.where(z[:, i] == 1, F.logsigmoid(logit), F.logsigmoid(-logit))
        x = (u_pixel < torch.sigmoid(self.decoder(2 * z - 1))).float() if self.learned else z.clone()
        return x, z, log_pz

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """n vectors: z layer by layer from the prior (D sequential passes of the AR network), then p(x|z)."""
        z = self.prior.sample(n)  # (n, D)
        px = self.decode(z)
        return px.sample().reshape(n, self.num_dims)
