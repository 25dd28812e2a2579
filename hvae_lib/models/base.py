"""What every model in the course promises, so the engine can train any of them (Chapter 1 onwards).

A model returns the terms of the ELBO for a batch, a
:class:`~hvae_lib.probability.objectives.ModelOutput`; this module holds the base class that checks
its input and recomputes blocks under gradient checkpointing, the seeded evaluation mode, and the
latent interface every model keeps (encode to per-group latents, decode from given latents for the
top groups and the prior below), which :mod:`hvae_lib.analysis.latents` and ``python -m
hvae_lib.latents`` use on any family.
"""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from hvae_lib.probability.objectives import ModelOutput


@contextmanager
def seeded_eval(model: nn.Module, seed: int):
    """``model`` in eval mode with the global RNG forked and seeded by ``seed``; the caller's random
    stream and the model's train/eval mode are restored after (evaluations and samples mid-training
    that neither depend on nor disturb the training's randomness)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            yield model
    finally:
        model.train(was_training)


class LatentVariableModel(nn.Module, metaclass=ABCMeta):
    """Base class: an image shape, a bit depth, and a clear error for inputs that do not fit."""

    grad_checkpointing: bool = False  # the engine's run.grad_checkpointing switch

    def __init__(self, image_shape: tuple[int, int, int], bits: int):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.bits = bits

    @property
    def num_dims(self) -> int:
        """Data dimensions D = C * H * W, the denominator of bits/dim."""
        c, h, w = self.image_shape
        return c * h * w

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            c, h, w = self.image_shape
            raise ValueError(
                f"{type(self).__name__} was built for images of shape (B, {c}, {h}, {w}) in [0, 1], "
                f"but got a tensor of shape {tuple(x.shape)}; build the model with "
                f"image_shape={tuple(x.shape[1:]) if x.dim() == 4 else '(C, H, W)'} for this data."
            )

    def checkpointed(self, block: nn.Module, *args):
        """``block(*args)``, recomputed in the backward pass instead of storing its activations
        when ``grad_checkpointing`` is on (non-reentrant ``torch.utils.checkpoint``)."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    @abstractmethod
    def forward(self, x: torch.Tensor) -> ModelOutput:
        """Encode, sample z ~ q(z|x) once, decode: the terms of the ELBO for the batch."""

    @abstractmethod
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """Draw n images in [0, 1] from the prior; temperature scales every prior sigma."""

    # ------------------------------------------------------------------ the latent interface
    num_groups: int = 1

    def latent_shapes(self) -> list[tuple[int, ...]]:
        """The shape of every latent group's z without the batch, top group first."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its latents (latent_shapes, "
                                  f"posterior_latents, decode_latents); only the course's VAE families do.")

    def encoder_features(self, x: torch.Tensor):
        """What the posterior reads from x, computed once and reused by :meth:`decode_latents`."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its latents; only the course's VAE "
                                  f"families do.")

    def posterior_latents(self, x: torch.Tensor, use_mean: bool = False) -> list[torch.Tensor]:
        """z of every group, top first: drawn from q(z_l | z_<l, x), or with ``use_mean`` its mean
        (each group's mean given the means above)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its latents; only the course's VAE "
                                  f"families do.")

    def decode_latents(self, latents: Sequence[torch.Tensor | None] | None = None, n: int | None = None,
                       temperature: float | Sequence[float] = 1.0, features=None, num_posterior: int = 0):
        """p(x | z) where group l takes ``latents[l]`` when given, else a draw from q(z_l | z_<l, x)
        for l < ``num_posterior`` (reading ``features`` = :meth:`encoder_features` of x), else a draw
        from the prior p(z_l | z_<l) with its sigma times the group's temperature (one number, or one
        per group)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its latents; only the course's VAE "
                                  f"families do.")


def group_temperatures(temperature: float | Sequence[float], num_groups: int) -> list[float]:
    """The prior temperature of every latent group, top first, from one number or one per group."""
    if isinstance(temperature, (int, float)):
        return [float(temperature)] * num_groups
    temperatures = [float(t) for t in temperature]
    if len(temperatures) != num_groups:
        raise ValueError(f"A temperature per group needs {num_groups} values (one per latent group, top first), "
                         f"got {len(temperatures)}.")
    return temperatures


def batch_size_of(latents, features, n: int | None) -> int:
    """The batch a decode runs: ``n``, else that of the first given latent, else of the encoder features."""
    if n is not None:
        return n
    for z in latents or ():
        if z is not None:
            return z.shape[0]
    if features is not None:
        first = features[0] if isinstance(features, (list, tuple)) else (
            next(iter(features.values())) if isinstance(features, dict) else features)
        return first.shape[0] if torch.is_tensor(first) else first.mu.shape[0]
    raise ValueError("decode_latents needs n, a latent or encoder features to know how many images to decode.")


class HierarchicalVAE(LatentVariableModel):
    """A top-down hierarchy of latent groups z_1 (top) .. z_L (Ladder VAE, NVAE, Very Deep VAE).

    A family provides three pieces: ``encoder_features(x)`` (the bottom-up pass), ``top_down(n,
    features, num_posterior, temperature, *, latents, posterior_mean, return_latents)`` (the
    generative tower, shared by inference and generation) and ``likelihood(features)``; the latent
    interface is built from them here, once for every family.
    """

    group_shapes: list[tuple[int, int, int]]

    @abstractmethod
    def top_down(self, n: int, features=None, num_posterior: int = 0, temperature: float | Sequence[float] = 1.0, *,
                 latents: Sequence[torch.Tensor | None] | None = None, posterior_mean: bool = False,
                 return_latents: bool = False):
        """Groups with a tensor in ``latents`` use it; groups ``< num_posterior`` draw from the
        posterior (its mean with ``posterior_mean``); the rest draw from the prior at their
        temperature. Returns (decoder features, KL per posterior group, log q - log p, posterior
        means), and every group's z last with ``return_latents``."""

    @abstractmethod
    def likelihood(self, features: torch.Tensor):
        """p(x | z) from the decoder features."""

    def latent_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(int(d) for d in shape) for shape in self.group_shapes]

    def posterior_latents(self, x: torch.Tensor, use_mean: bool = False) -> list[torch.Tensor]:
        out = self.top_down(x.shape[0], self.encoder_features(x), self.num_groups, posterior_mean=use_mean,
                            return_latents=True)
        return out[-1]

    def decode_latents(self, latents=None, n=None, temperature=1.0, features=None, num_posterior: int = 0):
        if not 0 <= num_posterior <= self.num_groups:
            raise ValueError(f"num_posterior must be between 0 and {self.num_groups} (this {type(self).__name__}'s "
                             f"latent groups), got {num_posterior}.")
        if num_posterior and features is None:
            raise ValueError("decode_latents needs the encoder features of x to draw groups from the posterior.")
        n = batch_size_of(latents, features if num_posterior else None, n)
        out = self.top_down(n, features if num_posterior else None, num_posterior, temperature, latents=latents)
        return self.likelihood(out[0])
