"""What a hierarchy uses its latent groups for (Chapter 2; reused for NVAE and VDVAE in Chapters 3-4).

Every function here needs only the common model interface: ``model(x)`` returning a
:class:`~hvae_lib.probability.objectives.ModelOutput` with ``kl_per_group`` and ``extras["posterior_means"]``,
and ``model.sample_conditional(x, num_fixed_groups, temperature)``.

- :func:`kl_per_group`, :func:`cumulative_rate` and :func:`plot_cumulative_rate`: how many nats each
  group carries, and the cumulative rate from the top group down (VDVAE's Fig. 5).
- :func:`active_units`: Burda et al.'s (2016) count of latent units the encoder actually uses.
- :func:`fixed_top_grid` and :func:`plot_fixed_top_grid`: images with the top k groups from q(z|x)
  and the rest from the prior, which shows what each depth of the hierarchy decides (VDVAE's Fig. 4).
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from hvae_lib.analysis.plotting import show_grid


def _batches(images, batch_size: int, device) -> Iterator[torch.Tensor]:
    """(B, C, H, W) batches of a tensor (N, C, H, W) or of a dataset of (image, label) items."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    n = len(images)
    if n == 0:
        raise ValueError("The diagnostics need at least one image, got an empty collection.")
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if torch.is_tensor(images):
            batch = images[start:stop]
        else:
            batch = torch.stack([images[i][0] for i in range(start, stop)])
        yield batch.to(device)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def kl_per_group(model, images, batch_size: int = 256) -> torch.Tensor:
    """Mean KL(q(z_l | z_<l, x) || p(z_l | z_<l)) per group over the images, in nats: (L,), top first
    (Chapter 2).

    ``images`` is a tensor (N, C, H, W) in [0, 1] or a dataset of (image, label) items. The model is
    evaluated in eval mode with one posterior sample per image; its mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    total, count = None, 0
    try:
        for x in _batches(images, batch_size, _device(model)):
            kl = model(x).kl_per_group.double().sum(dim=0)  # (L,)
            total = kl if total is None else total + kl
            count += x.shape[0]
    finally:
        model.train(was_training)
    return (total / count).float().cpu()


def cumulative_rate(kl_per_group, num_dims: int | None = None) -> torch.Tensor:
    """The cumulative rate from the top group down, R_l = sum_{j <= l} KL_j: (L,) in nats per image, or
    in bits per data dimension, R_l / (num_dims ln 2), when ``num_dims`` is given (VDVAE's Fig. 5;
    Chapter 6b)."""
    kl = torch.as_tensor(kl_per_group)
    if kl.dim() != 1:
        raise ValueError(f"cumulative_rate expects the KL of each group as a vector (L,), got shape "
                         f"{tuple(kl.shape)}; average over the batch first (e.g. kl_per_group(model, images)).")
    rate = kl.cumsum(0)
    return rate if num_dims is None else rate / (num_dims * math.log(2))


def plot_cumulative_rate(kl_per_group, ax=None, title: str = "Cumulative rate"):
    """Line plot of the cumulative rate sum_{j <= l} KL_j against the group index l (top = 0), in nats
    per image (Chapter 2; VDVAE's Fig. 5)."""
    import matplotlib.pyplot as plt

    kl = torch.as_tensor(kl_per_group).float().cpu()
    if kl.dim() != 1:
        raise ValueError(f"plot_cumulative_rate expects the KL of each group as a vector (L,), got shape "
                         f"{tuple(kl.shape)}; average over the batch first (e.g. kl_per_group(model, images)).")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    ax.plot(range(len(kl)), cumulative_rate(kl).numpy(), marker="o")
    ax.set_xlabel("latent group (top = 0)")
    ax.set_ylabel("cumulative KL (nats / image)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return ax


@torch.no_grad()
def active_units(model, images, threshold: float = 0.01, batch_size: int = 256) -> tuple[torch.Tensor, int]:
    """Active latent units per group (Burda et al. 2016; Chapter 2): unit u is active when
    Var_x(E_q[u | x]) > ``threshold``; every channel x position of a group is one unit.

    Uses ``extras["posterior_means"]``; in a hierarchy the mean of a lower group is taken given one
    posterior sample of the groups above. Returns (counts per group (L,), total active units).
    """
    was_training = model.training
    model.eval()
    sums, squares, count = None, None, 0
    try:
        for x in _batches(images, batch_size, _device(model)):
            means = [m.double().flatten(1) for m in model(x).extras["posterior_means"]]  # [(B, units_l)]
            if sums is None:
                sums = [m.sum(0) for m in means]
                squares = [(m**2).sum(0) for m in means]
            else:
                sums = [s + m.sum(0) for s, m in zip(sums, means)]
                squares = [s + (m**2).sum(0) for s, m in zip(squares, means)]
            count += x.shape[0]
    finally:
        model.train(was_training)
    variances = [sq / count - (s / count) ** 2 for s, sq in zip(sums, squares)]  # per unit, over the data
    counts = torch.tensor([int((v > threshold).sum()) for v in variances])  # (L,)
    return counts, int(counts.sum())


@torch.no_grad()
def fixed_top_grid(model, x: torch.Tensor, ks: Sequence[int], temperature: float = 1.0) -> torch.Tensor:
    """Images (len(ks), B, C, H, W): row i holds, for each image of x, a sample with the top ks[i]
    groups drawn from q(z|x) and the groups below from the prior at ``temperature`` (Chapter 2).

    k = 0 gives unconditional samples, k = L reconstructions; the k at which the rows start to look
    like x says which groups decide the global structure. Pass x.repeat(n, 1, 1, 1) for n samples
    of one image.
    """
    x = x.to(_device(model))
    was_training = model.training
    model.eval()
    try:
        rows = [model.sample_conditional(x, int(k), temperature) for k in ks]
    finally:
        model.train(was_training)
    return torch.stack(rows)  # (K, B, C, H, W)


def plot_fixed_top_grid(model, x: torch.Tensor, ks: Sequence[int], temperature: float = 1.0, ax=None):
    """Draw x in the first row, then one row of :func:`fixed_top_grid` per k, labelled by k (Chapter 2)."""
    import matplotlib.pyplot as plt

    rows = fixed_top_grid(model, x, ks, temperature)  # (K, B, C, H, W)
    b, h = x.shape[0], x.shape[2]
    images = torch.cat([x.detach().cpu().unsqueeze(0), rows.cpu()]).flatten(0, 1)  # ((K + 1) * B, C, H, W)
    if ax is None:
        _, ax = plt.subplots(figsize=(1 + 0.6 * b, 0.6 * (len(ks) + 1)))
    show_grid(images, f"top k groups from q(z|x), the rest from the prior (T = {temperature})", nrow=b, ax=ax)
    for i, label in enumerate(["x"] + [f"k = {k}" for k in ks]):  # make_grid pads 2 pixels around each image
        ax.text(-2, 2 + i * (h + 2) + h / 2, label, ha="right", va="center")
    return ax
