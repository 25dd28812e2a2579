"""What every model in the course returns and promises, so the engine can train any of them."""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


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
