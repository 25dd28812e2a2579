"""The update rule of the training engine: the optimiser and its learning-rate schedule (NVAE's
recipe in Chapter 3), VDVAE's gradient skipping and the EMA of the weights (Chapter 6).

The schedule is a factor on ``optim.lr``: a linear warm-up over ``warmup_steps``, then either
constant or a cosine from 1 down to ``lr_min / lr`` over ``schedule_steps`` (``max_steps`` when 0).
"""
from __future__ import annotations

import dataclasses
import math

import torch

from hvae_lib.config.ranges import ConfigError

OPTIMIZERS = {"adamax": torch.optim.Adamax, "adamw": torch.optim.AdamW, "adam": torch.optim.Adam}


def lr_factor(step: int, optim) -> float:
    """Linear warm-up to 1, then cosine down to lr_min / lr over schedule_steps, or constant."""
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    horizon = max(1, (optim.schedule_steps or optim.max_steps) - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / horizon)
    floor = optim.lr_min / optim.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(params, optim) -> torch.optim.Optimizer:
    if optim.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optim.optimizer={optim.optimizer!r} is not one of {', '.join(OPTIMIZERS)}.")
    return OPTIMIZERS[optim.optimizer](params, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                                       weight_decay=optim.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, optim) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule of ``optim`` (its warm-up, then cosine or constant) on ``optimizer``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, optim))


def schedule_change(old, new, step: int) -> str:
    """One line for a run resumed at ``step`` whose max_steps or cosine length changed ('' if nothing did)."""
    if new.max_steps != old.max_steps and step >= new.max_steps:
        return (f"The checkpoint is at step {step}, at or past max_steps={new.max_steps}: nothing is left to train, "
                f"so the run only saves and evaluates.")
    was, now = (o.schedule_steps or o.max_steps for o in (old, new))  # the cosine's length
    if old.schedule != "cosine" or new.schedule != "cosine" or was == now:
        return ""
    lr_was, lr_now = (new.lr * lr_factor(step, dataclasses.replace(new, schedule_steps=n)) for n in (was, now))
    return (f"Resuming at step {step} with max_steps={new.max_steps} instead of {old.max_steps}: the cosine schedule "
            f"{'stretches' if now > was else 'shrinks'} from {was} to {now} steps, so the learning rate goes from "
            f"{lr_was:.3g} to {lr_now:.3g} (--set schedule_steps={was} keeps the old schedule).")


def should_skip(loss: torch.Tensor, grad_norm: torch.Tensor, skip_threshold: float) -> torch.Tensor:
    """VDVAE's gradient skipping (Chapter 6): skip the update (a bool tensor) when the loss or the
    gradient norm is not finite, or when ``skip_threshold`` > 0 and the norm reaches it.

    As openai/vdvae's ``train.py``, which updates only while ``grad_norm < skip_threshold``: a norm
    equal to the threshold is skipped."""
    bad = ~torch.isfinite(loss) | ~torch.isfinite(grad_norm)
    return bad | (grad_norm >= skip_threshold) if skip_threshold > 0 else bad


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, rate: float) -> None:
    """ema <- rate * ema + (1 - rate) * model for the parameters; buffers (BN statistics) copied."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - rate)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)
