"""An autoregressive model over D binary pixels, the model Proposition 1 compares a VAE with (Chapter 7).

p(x) = prod_i p(x_i | x_<i), pixels in raster order, each conditional a Bernoulli whose logit a
MADE computes (Germain et al. 2015): one masked MLP whose output i sees only inputs 0..i-1, so one
pass scores every conditional of a known image, while drawing an image takes D passes, one pixel
at a time (the sampling cost Chapter 7 measures).

Images here are vectors: x is (B, D) with values in {0, 1}. :func:`downsample_binarize` turns a
batch of grey images into such vectors (Chapter 7 uses 4x4 binarised Fashion-MNIST, D = 16), and
:func:`all_binary_vectors` lists all 2^D of them, for sums over every image or latent.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

MAX_ENUMERATED_DIMS = 20  # 2^20 rows of D floats: 80 MB at D = 20; beyond that enumeration is the wrong tool


def all_binary_vectors(num_dims: int) -> torch.Tensor:
    """Every vector in {0, 1}^D, (2^D, D) float32; row k holds the bits of k, pixel 0 the lowest bit."""
    if not 1 <= num_dims <= MAX_ENUMERATED_DIMS:
        raise ValueError(f"all_binary_vectors enumerates 2^D vectors and needs 1 <= D <= {MAX_ENUMERATED_DIMS}, "
                         f"got D={num_dims}; use sampling instead of enumeration for larger D.")
    codes = torch.arange(2**num_dims)
    return ((codes[:, None] >> torch.arange(num_dims)) & 1).float()  # (2^D, D)


def downsample_binarize(images: torch.Tensor, side: int, threshold: float = 0.3) -> torch.Tensor:
    """Grey images (B, 1, H, W) in [0, 1] -> binary vectors (B, side * side): average each of the
    side x side blocks (``adaptive_avg_pool2d``), then 1 where the block's mean exceeds ``threshold``."""
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"downsample_binarize expects grey images of shape (B, 1, H, W), got {tuple(images.shape)}.")
    if side < 1 or side > min(images.shape[2:]):
        raise ValueError(f"side must be between 1 and the image size {min(images.shape[2:])}, got {side}.")
    pooled = F.adaptive_avg_pool2d(images.float(), side)  # (B, 1, side, side)
    return (pooled > threshold).float().flatten(1)  # (B, side * side)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out_features, in_features)."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class BinaryAR(nn.Module):
    """MADE over D binary values: logit_i = f_i(x_<i), p(x_i = 1 | x_<i) = sigmoid(logit_i) (Chapter 7).

    One hidden layer of ``hidden`` SiLU units plus a direct masked linear path. Hidden unit k has
    degree m_k = 1 + (k mod (D - 1)) and sees inputs 0..m_k - 1; output i sees hidden units with
    m_k <= i and inputs 0..i-1. Output 0 sees nothing: p(x_0) is a learned constant.
    """

    def __init__(self, num_dims: int, hidden: int = 64):
        super().__init__()
        if num_dims < 2 or hidden < num_dims - 1:
            raise ValueError(f"BinaryAR needs num_dims >= 2 and hidden >= num_dims - 1 (so every conditioning "
                             f"set has a hidden unit), got num_dims={num_dims}, hidden={hidden}.")
        self.num_dims = num_dims
        inputs = torch.arange(num_dims)  # input j carries pixel j
        degree = 1 + torch.arange(hidden) % (num_dims - 1)  # (H,): unit k sees pixels < degree[k]
        self.inp = MaskedLinear(num_dims, hidden, inputs[None, :] < degree[:, None])  # (H, D)
        self.out = MaskedLinear(hidden, num_dims, degree[None, :] <= inputs[:, None])  # (D, H)
        self.direct = MaskedLinear(num_dims, num_dims, inputs[None, :] < inputs[:, None])  # (D, D), strictly lower

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.num_dims:
            raise ValueError(f"BinaryAR was built for vectors of {self.num_dims} binary values, shape (B, {self.num_dims}); "
                             f"got a tensor of shape {tuple(x.shape)} (flatten images with x.flatten(1)).")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every conditional, (B, D): column i depends on x[:, :i] only (one pass)."""
        self.check_input(x)
        centred = 2 * x.to(self.direct.weight.dtype) - 1  # (B, D) in {-1, 1}
        return self.out(F.silu(self.inp(centred))) + self.direct(centred)

    def conditional_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x_i | x_<i) for every pixel, (B, D), in nats."""
        logits = self(x)
        return -F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none")

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) = sum_i log p(x_i | x_<i), (B,), in nats."""
        return self.conditional_log_probs(x).sum(dim=1)

    @torch.no_grad()
    def sample_from_uniforms(self, u: torch.Tensor) -> torch.Tensor:
        """Ancestral sampling driven by given uniforms u (B, D): x_i = 1 if u_i < p(x_i = 1 | x_<i).

        Pixel i needs pixels 0..i-1 first, so this makes D sequential passes of the network.
        """
        self.check_input(u)
        x = torch.zeros_like(u, dtype=torch.float32)  # (B, D), filled left to right
        for i in range(self.num_dims):
            x[:, i] = (u[:, i] < torch.sigmoid(self(x)[:, i])).float()
        return x

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """n binary vectors (n, D) from the model, in D sequential passes."""
        return self.sample_from_uniforms(torch.rand(n, self.num_dims, device=self.direct.weight.device))


def fit_vectors(loss_fn: Callable[[torch.Tensor], torch.Tensor], parameters: Iterable[torch.nn.Parameter],
                data: torch.Tensor, steps: int, batch_size: int = 128, lr: float = 3e-3, seed: int = 0) -> list[float]:
    """Minimise ``loss_fn(batch)`` with Adam over random batches of the rows of ``data`` (N, D); returns
    the loss of every step. The batches depend only on ``seed``, so two models trained with the same
    seed see the same images in the same order (Chapter 7 trains the AR model and its VAE this way)."""
    if len(data) == 0 or steps < 0 or batch_size < 1:
        raise ValueError(f"fit_vectors needs data, steps >= 0 and batch_size >= 1; got {len(data)} rows, "
                         f"steps={steps}, batch_size={batch_size}.")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(parameters, lr=lr)
    losses = []
    for _ in range(steps):
        batch = data[torch.randint(0, len(data), (batch_size,), generator=g)]  # (B, D)
        loss = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
