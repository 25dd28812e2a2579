"""The training loop in its plainest form (Chapter 1's exercise): what the engine's ``Trainer`` computes
at every step, without its machinery — no checkpoints, logs, periodic evaluation, exact resumption,
mixed precision, DDP, gradient skipping or EMA.

One step: set the learning rate of the schedule (:func:`~hvae_lib.training.optim.lr_factor`) and the
KL weight of the warm-up, take the batch of this step, zero the gradients, compute the loss
-log p(x|z) + beta * KL averaged over the batch (one z per image), backpropagate, clip the global
gradient norm at ``grad_clip`` (0: never) and update. The loss is written as the engine writes it,
so that on the same batches, initial weights and random state both reach the same weights
(tests/test_simple_loop.py).
"""
from __future__ import annotations

from typing import Callable

import torch

from hvae_lib.probability.kl_control import kl_warmup_beta
from hvae_lib.probability.objectives import nats_to_bpd
from hvae_lib.training.optim import lr_factor


def train_loop(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Callable[[int], torch.Tensor],
               optim) -> list[dict]:
    """Train ``model`` for ``optim.max_steps`` steps on ``batches(step)`` (images (B, C, H, W) in [0, 1]).

    ``optim`` is an :class:`~hvae_lib.config.OptimConfig` (lr, warmup_steps, lr_min, schedule,
    max_steps, grad_clip, kl_warmup_steps, kl_warmup_start); ``optimizer`` updates the model's
    parameters and gets the schedule's rate before every step. Returns one record per step:
    ``loss`` (the minimised objective, nats per image), ``bpd`` (the batch's negative ELBO with
    beta = 1, bits/dim), ``grad_norm`` (before clipping), ``lr`` and ``beta``.
    """
    history = []
    model.train()
    for step in range(optim.max_steps):
        lr = optim.lr * lr_factor(step, optim)
        for group in optimizer.param_groups:
            group["lr"] = lr
        beta = kl_warmup_beta(step, optim.kl_warmup_steps, optim.kl_warmup_start)
        x = batches(step)  # (B, C, H, W)
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        loss = -out.log_px_z.mean() + beta * out.kl_per_group.mean(dim=0).sum()  # the engine's objective
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip or float("inf"))
        optimizer.step()
        neg_elbo = (out.kl_per_group.sum(dim=1) - out.log_px_z).mean().item()  # beta = 1
        history.append({"loss": loss.item(), "bpd": nats_to_bpd(neg_elbo, x[0].numel()),
                        "grad_norm": grad_norm.item(), "lr": lr, "beta": beta})
    return history
