"""Objective wrappers that decide how much each latent group's KL costs (Chapters 2 and 4).

The ELBO weighs every group's KL by exactly 1. Training deep hierarchies usually starts gentler:

- **KL warm-up** (Sønderby et al. 2016; NVAE): the KL weight beta ramps linearly from a small value
  to 1, so the decoder learns to use z before the KL pushes q towards the prior.
- **Free bits** (Kingma et al. 2016): a group's KL below ``lambda`` nats is not penalised, which
  keeps groups from collapsing to the prior early on.
- **KL balancing** (NVAE, while beta < 1): each group's KL is reweighted in proportion to its mean
  absolute KL over the batch, divided by a prior weight that grows with the group's size, so no
  group is left unused.

Only the exact ELBO (beta = 1, no free bits, no balancing) is a bound on log p(x); evaluation
always reports that one.
"""
from __future__ import annotations

import torch


def kl_warmup_beta(step: int, warmup_steps: int, start: float = 1e-4) -> float:
    """beta(step): linear from ``start`` to 1 over ``warmup_steps`` (1 when warm-up is off)."""
    if step >= warmup_steps:  # exactly 1 (the formula rounds to 1 - 1e-16), which also ends balancing
        return 1.0
    return float(min(1.0, start + (1 - start) * step / warmup_steps))


def free_bits(kl_per_group: torch.Tensor, threshold: float) -> torch.Tensor:
    """max(threshold, batch-mean KL of a group), per group: (B, L) -> (L,) in nats.

    The batch mean is taken before the max, as in Kingma et al. (2016), so a group is free only
    while its *average* rate is below the threshold.
    """
    mean_kl = kl_per_group.mean(dim=0)  # (L,)
    return torch.clamp(mean_kl, min=threshold) if threshold > 0 else mean_kl


def kl_balance_coeffs(kl_per_group: torch.Tensor, group_sizes: torch.Tensor) -> torch.Tensor:
    """NVAE's balancing coefficients gamma_l, (L,), detached, with mean 1 (so sum equals L) (Chapter 4).

    gamma_l ∝ (mean_B |KL_l| + 0.01) / alpha_l, the absolute value averaged over the batch as in the
    official ``kl_balancer`` (a one-sample KL with flows can be negative), with alpha_l the group's
    prior weight (``group_sizes`` / its minimum; NVAE passes ``kl_balance_alpha``), so a group
    carrying little information gets a small coefficient and is not squeezed further.
    """
    mean_kl = kl_per_group.detach().abs().mean(dim=0) + 0.01  # (L,)
    alpha = group_sizes.to(mean_kl) / group_sizes.to(mean_kl).min()
    coeffs = mean_kl / alpha
    coeffs = coeffs / coeffs.mean()
    return coeffs


def kl_objective(
    kl_per_group: torch.Tensor,
    beta: float = 1.0,
    free_bits_threshold: float = 0.0,
    balance: bool = False,
    group_sizes: torch.Tensor | None = None,
) -> torch.Tensor:
    """The KL part of the training loss, per image averaged over the batch: a scalar in nats.

    With the defaults this is exactly the ELBO's KL, ``kl_per_group.sum(1).mean()``.
    """
    per_group = free_bits(kl_per_group, free_bits_threshold)  # (L,)
    if balance and beta < 1.0:
        if group_sizes is None:
            group_sizes = torch.ones_like(per_group)
        per_group = per_group * kl_balance_coeffs(kl_per_group, group_sizes)
    return beta * per_group.sum()
