"""What every model in the course promises, so the engine can train any of them (Chapter 1 onwards).

A model returns the terms of the ELBO for a batch, a
:class:`~hvae_lib.probability.objectives.ModelOutput`; this module holds the base class that checks
its input and recomputes blocks under gradient checkpointing, and the seeded evaluation mode.
"""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
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
