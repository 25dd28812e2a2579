"""Procedural coloured shapes at any power-of-two resolution, deterministic from a seed and always
available offline (the engine's smoke presets; Chapters 6b and 7).

Each image holds one large shape (its class sets the label) and up to two small ones on a one- or
two-tone background: global structure (which shape, where) and local detail (edges, small shapes)
that a multi-resolution hierarchy can split between its levels.
"""
from __future__ import annotations

import math

import torch

from hvae_lib.data.contract import ImageDataset

SHAPES_SIZES = (10_000, 2_000)  # default (train, test) sizes of the procedural dataset
SHAPE_CLASSES = ("circle", "square", "triangle")


def _shape_params(n: int, seed: int, split: int, chunk: int = 1000) -> dict[str, torch.Tensor]:
    """Random parameters of ``n`` shape images, drawn in fixed-size chunks so item i depends only
    on (seed, split, i) and not on how many items were asked for."""
    K = 3  # shapes per image: one large (it sets the label), up to two small ones on top
    parts = []
    for c in range(math.ceil(n / chunk)):
        g = torch.Generator().manual_seed((seed * 1_000_003 + split) * 1_000_003 + c)
        size = torch.rand(chunk, K, generator=g)
        size = torch.cat([0.22 + 0.16 * size[:, :1], 0.07 + 0.09 * size[:, 1:]], dim=1)  # half-extent, fraction of H
        parts.append(dict(
            cls=torch.randint(0, len(SHAPE_CLASSES), (chunk, K), generator=g),
            size=size,
            centre=size[..., None] + (1 - 2 * size[..., None]) * torch.rand(chunk, K, 2, generator=g),  # inside the image
            colour=torch.randint(100, 256, (chunk, K, 3), generator=g, dtype=torch.uint8),  # brighter than any background
            active=torch.cat([torch.ones(chunk, 1, dtype=torch.bool), torch.rand(chunk, K - 1, generator=g) < 0.6], 1),
            bg=torch.randint(0, 100, (chunk, 2, 3), generator=g, dtype=torch.uint8),
            two_tone=torch.rand(chunk, generator=g) < 0.5,
            vertical=torch.rand(chunk, generator=g) < 0.5,
            split_at=0.3 + 0.4 * torch.rand(chunk, generator=g),
        ))
    return {k: torch.cat([p[k] for p in parts])[:n] for k in parts[0]}


def render_shapes(p: dict[str, torch.Tensor], resolution: int) -> torch.Tensor:
    """Paint shape parameters onto a pixel grid: uint8 images (N, 3, H, W), hard edges."""
    coords = (torch.arange(resolution) + 0.5) / resolution  # pixel centres in (0, 1)
    v, u = coords.view(1, -1, 1), coords.view(1, 1, -1)  # (1, H, 1) rows, (1, 1, W) columns
    across = torch.where(p["vertical"].view(-1, 1, 1), u, v)  # (N, H, W)
    second = p["two_tone"].view(-1, 1, 1) & (across > p["split_at"].view(-1, 1, 1))  # (N, H, W)
    img = torch.where(second[:, None], p["bg"][:, 1, :, None, None], p["bg"][:, 0, :, None, None])  # (N, 3, H, W)
    for k in range(p["cls"].shape[1]):  # large shape first, small ones painted over it
        r = p["size"][:, k].view(-1, 1, 1)
        # Offsets are separable, (N, 1, W) and (N, H, 1): only the final comparisons are full size.
        du, dv = u - p["centre"][:, k, 0].view(-1, 1, 1), v - p["centre"][:, k, 1].view(-1, 1, 1)
        circle = du**2 + dv**2 <= r**2  # (N, H, W)
        square = (du.abs() <= 0.85 * r) & (dv.abs() <= 0.85 * r)  # about the circle's area
        triangle = (dv.abs() <= r) & (2 * du.abs() - dv <= r)  # apex up, base 2r at the bottom
        cls = p["cls"][:, k].view(-1, 1, 1)
        mask = torch.where(cls == 0, circle, torch.where(cls == 1, square, triangle))
        mask &= p["active"][:, k].view(-1, 1, 1)
        img = torch.where(mask[:, None], p["colour"][:, k, :, None, None], img)
    return img


def shapes_dataset(n: int, resolution: int, seed: int, split: int) -> ImageDataset:
    p = _shape_params(n, seed, split)
    batch = max(1, 2**22 // resolution**2)  # bounds the (batch, H, W) temporaries to ~16 MB each
    parts = [render_shapes({k: t[i:i + batch] for k, t in p.items()}, resolution) for i in range(0, n, batch)]
    images = torch.cat(parts) if parts else torch.zeros(0, 3, resolution, resolution, dtype=torch.uint8)
    return ImageDataset(images, p["cls"][:, 0])  # label = class of the large shape
