"""The training loop in its plainest form (Chapter 1's exercise): what the engine's ``Trainer`` computes
at every step, without its machinery — no checkpoints, logs, periodic evaluation, exact resumption,
mixed precision, DDP, gradient skipping or EMA.

One step: set the learning rate of the schedule (:func:`~hvae_lib.training.optim.lr_factor`) and the
KL weight of the warm-up, take the batch of this step, zero the gradients, compute the loss
-log p(x|z) + beta * KL averaged over the batch (one z per image), backpropagate, clip the global
gradient norm at ``grad_clip`` (0: never) and update. The loss is written as the engine writes it,
so that on the same batches, initial weights and random state both reach the same weights
(tests/test_simple_loop.py). :func:`engine_checkpoint` then hands such a run to the engine, which
resumes it as its own (Chapter 1 saves its VAE this way).
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch

from hvae_lib.probability.kl_control import kl_warmup_beta
from hvae_lib.probability.objectives import nats_to_bpd
from hvae_lib.training.checkpoint import checkpoint_state
from hvae_lib.training.optim import lr_factor, make_scheduler


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


def engine_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, config, info, step: int) -> dict:
    """The engine's checkpoint of a run this loop trained for ``step`` steps: the config, the weights,
    the optimiser's state, and the schedule's state at ``step`` (its learning rate is the one the
    loop would use next). ``Trainer(config, folder)`` resumes it as if it had taken those steps
    itself (at ``max_steps`` it only saves, evaluates and writes results.json); ``load_model``,
    ``python -m hvae_lib.evaluate`` and ``sample`` read it."""
    for group in optimizer.param_groups:  # the schedule multiplies the base rate, not the loop's last one
        group["lr"] = group["initial_lr"] = config.optim.lr
    scheduler = make_scheduler(optimizer, config.optim)  # sets the rate of step 0 ...
    with warnings.catch_warnings():  # ... and is moved on to ``step`` without optimiser steps in between
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        for _ in range(step):
            scheduler.step()
    return checkpoint_state(config, info, model.state_dict(), optimizer, scheduler,
                            torch.amp.GradScaler("cpu", enabled=False), step=step)
