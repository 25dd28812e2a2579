"""What each resolution of a multi-resolution hierarchy decides (Chapter 7; the Very Deep VAE paper's Fig. 4).

Two measurements on a trained :class:`~hvae_lib.models.vdvae.VDVAE`:

- :func:`posterior_down_to_each_resolution` decodes an image with the latent layers at resolutions
  up to r drawn from the posterior q(z_l | z_<l, x) and the layers below (finer than r) drawn from
  the prior p(z_l | z_<l), for every resolution r of the model (and for none: plain samples). Draw
  j of every row uses the same random numbers (seed + j), so two rows differ only in which layers
  read the image;
- :func:`kl_by_resolution` sums the KL of the latent layers at each resolution,
  KL_r = sum_{l : res(l) = r} E_x KL(q(z_l | z_<l, x) || p(z_l | z_<l)), and its share KL_r / sum_r KL_r.

The official code draws the same figure in ``train_helpers.py``/``vae.py`` (``forward_get_latents``,
then ``forward_samples_set_latents`` with the latents of the top layers and the prior below); here
the posterior latents are drawn afresh inside one top-down pass instead of being stored and replayed,
which gives the same distribution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hvae_lib.analysis.diagnostics import kl_per_group

PIXELS = ("mean", "sample")


def latent_resolutions(model) -> list[int]:
    """The resolution of every latent layer, top first (a group (Z, h, w) has resolution h)."""
    shapes = getattr(model, "group_shapes", None)
    if not shapes:
        raise ValueError(f"{type(model).__name__} has no group_shapes; the resolution study needs a hierarchical "
                         f"model whose latent layers have spatial shapes (Z, h, w), such as VDVAE or NVAE.")
    return [int(shape[1]) for shape in shapes]


def _check_top_down(model) -> list[int]:
    """The model's distinct resolutions, coarsest first, after checking that it can be decoded layer by layer."""
    for name in ("encode", "top_down", "likelihood", "layer_resolutions"):
        if not hasattr(model, name):
            raise ValueError(f"{type(model).__name__} has no {name}(); decoding with the posterior down to a resolution "
                             f"needs a VDVAE (hvae_lib.models.vdvae), whose top-down pass takes the number of "
                             f"posterior layers.")
    resolutions = list(model.layer_resolutions)
    if resolutions != sorted(resolutions):
        raise ValueError(f"The latent layers' resolutions {resolutions} do not rise from the top down, so 'every layer "
                         f"up to resolution r' is not a set of top layers; use a decoder string whose resolutions "
                         f"never go back down.")
    return sorted(set(resolutions))


@torch.no_grad()
def posterior_down_to_each_resolution(model, x: torch.Tensor, draws: int, seed: int = 0, temperature: float = 1.0,
                                      pixels: str = "mean") -> tuple[list[int], torch.Tensor]:
    """Decode ``x`` with the posterior at the top layers and the prior below, for every resolution cut.

    Row 0 takes no layer from the posterior (plain samples); row k (k >= 1) takes every layer whose
    resolution is at most the k-th smallest resolution r_k from q(z|x) and the rest from the prior at
    ``temperature``; the last row is the posterior everywhere (a reconstruction). ``pixels`` is
    ``"mean"`` (the likelihood's mean image) or ``"sample"`` (pixels drawn from it, as ``model.sample``).

    Returns (cuts, images): ``cuts`` = [0, r_1, ..., r_K] (0: no posterior layer) and ``images`` of shape
    (K + 1, draws, B, C, H, W). Draw j of every row is made after ``torch.manual_seed(seed + j)``, so
    row 0 equals ``model.sample(B)`` and the last row (with ``pixels="mean"``) ``model.reconstruct(x)``
    after the same seed. The global random state is left as it was.
    """
    levels = _check_top_down(model)
    model.check_input(x)
    if draws < 1:
        raise ValueError(f"draws must be at least 1 (the number of prior draws per row), got {draws}.")
    if pixels not in PIXELS:
        raise ValueError(f"pixels must be one of {', '.join(PIXELS)}, got {pixels!r}.")
    was_training = model.training
    model.eval()
    try:
        encoder_gelu = model.encode(x)  # deterministic: once for every row and draw
        cuts = [0, *levels]
        rows = []
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            for r in cuts:
                num_posterior = model.num_layers_through(r)
                row = []
                for j in range(draws):
                    torch.manual_seed(seed + j)
                    features, _, _, _ = model.top_down(x.shape[0], encoder_gelu if num_posterior else None,
                                                       num_posterior, temperature)
                    px = model.likelihood(features)
                    row.append(px.mean() if pixels == "mean" else px.sample())  # (B, C, H, W)
                rows.append(torch.stack(row))  # (draws, B, C, H, W)
    finally:
        model.train(was_training)
    return cuts, torch.stack(rows)  # (K + 1, draws, B, C, H, W)


def spread_across_draws(images: torch.Tensor) -> torch.Tensor:
    """Per row, the pixel variance across draws averaged over pixels and images: (rows,) from
    (rows, draws, B, C, H, W). Zero where every draw of a row is the same image."""
    if images.dim() != 6 or images.shape[1] < 2:
        raise ValueError(f"spread_across_draws expects (rows, draws, B, C, H, W) with at least two draws, got shape "
                         f"{tuple(images.shape)}; pass the images of posterior_down_to_each_resolution.")
    return images.var(dim=1).flatten(1).mean(dim=1)  # (rows,)


def distance_to_image(images: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per row, the mean squared difference between the draws and the images ``x`` (B, C, H, W) they
    were decoded from: (rows,) from (rows, draws, B, C, H, W)."""
    if images.dim() != 6 or tuple(images.shape[2:]) != tuple(x.shape):
        raise ValueError(f"distance_to_image expects images (rows, draws, B, C, H, W) decoded from x (B, C, H, W), got "
                         f"{tuple(images.shape)} and {tuple(x.shape)}.")
    return ((images - x) ** 2).flatten(1).mean(dim=1)


def coarse_and_fine_error(images: torch.Tensor, x: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the squared error against ``x`` split into a coarse and a fine part: (coarse (rows,), fine (rows,)).

    With d = draw - x and c(d) its mean over every factor x factor block (spread over the block), the
    coarse error is mean(c(d)^2) (wrong global shape: the error of the block means) and the fine error
    mean((d - c(d))^2) (wrong detail inside the blocks). The two parts are orthogonal, so they add up
    to :func:`distance_to_image` exactly.
    """
    if images.dim() != 6 or tuple(images.shape[2:]) != tuple(x.shape):
        raise ValueError(f"coarse_and_fine_error expects images (rows, draws, B, C, H, W) decoded from x (B, C, H, W), "
                         f"got {tuple(images.shape)} and {tuple(x.shape)}.")
    h, w = x.shape[-2:]
    if factor < 1 or h % factor or w % factor:
        raise ValueError(f"factor must be a positive divisor of the image size {h}x{w} (the block side), got {factor}.")
    d = (images - x).flatten(0, 2)  # (rows * draws * B, C, H, W)
    coarse = F.interpolate(F.avg_pool2d(d, factor), scale_factor=factor, mode="nearest")  # block means, spread out
    fine = d - coarse
    shape = images.shape[:3]
    return ((coarse**2).reshape(*shape, -1).mean(dim=(1, 2, 3)),  # (rows,)
            (fine**2).reshape(*shape, -1).mean(dim=(1, 2, 3)))


def kl_by_resolution(model, images, batch_size: int = 256) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """The KL of the latent layers at each resolution, in nats per image, and its share of the total.

    KL_r = sum over the layers l at resolution r of E_x KL(q(z_l | z_<l, x) || p(z_l | z_<l)), one
    posterior sample per image (:func:`hvae_lib.analysis.diagnostics.kl_per_group`). Returns (resolutions
    coarsest first, KL_r (R,), KL_r / sum_r KL_r (R,)).
    """
    resolutions = latent_resolutions(model)
    per_layer = kl_per_group(model, images, batch_size).double()  # (L,)
    levels = sorted(set(resolutions))
    which = torch.tensor([levels.index(r) for r in resolutions])  # (L,) the level of every layer
    nats = torch.zeros(len(levels), dtype=torch.float64).index_add_(0, which, per_layer)  # (R,)
    total = nats.sum()
    if not total > 0:
        raise ValueError(f"The model's total KL on these images is {total.item():.3g} nats, so it has no shares to "
                         f"split; every latent layer is switched off (posterior collapse) or the model is untrained.")
    return levels, nats.float(), (nats / total).float()
