"""What each resolution of a multi-resolution hierarchy decides (Chapter 7; the Very Deep VAE paper's Fig. 4).

Measurements on a trained multi-resolution hierarchy (a :class:`~hvae_lib.models.vdvae.VDVAE` in
Chapter 7):

- the images decoded with the latent layers up to each resolution r from the posterior and the
  layers below from the prior come from :func:`hvae_lib.analysis.latents.decode_by_level` (the one
  implementation, which ``python -m hvae_lib.latents levels`` uses too); here are the measures of
  those rows: :func:`spread_across_draws`, :func:`distance_to_image` and :func:`coarse_and_fine_error`;
- :func:`kl_by_resolution` sums the KL of the latent layers at each resolution,
  KL_r = sum_{l : res(l) = r} E_x KL(q(z_l | z_<l, x) || p(z_l | z_<l)), and its share KL_r / sum_r KL_r.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hvae_lib.analysis.diagnostics import kl_per_group
from hvae_lib.analysis.latents import latent_resolutions


def spread_across_draws(images: torch.Tensor) -> torch.Tensor:
    """Per row, the pixel variance across draws averaged over pixels and images: (rows,) from
    (rows, draws, B, C, H, W). Zero where every draw of a row is the same image."""
    if images.dim() != 6 or images.shape[1] < 2:
        raise ValueError(f"spread_across_draws expects (rows, draws, B, C, H, W) with at least two draws, got shape "
                         f"{tuple(images.shape)}; pass the images of decode_by_level.")
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
