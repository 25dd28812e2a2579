"""Sampling with BatchNorm statistics re-estimated at the sampling temperature (Chapter 4,
"sampling at low temperature").

At temperature t < 1 every prior sigma shrinks, so the decoder's activations have other batch
statistics than during training, and BN's running averages (collected on posterior samples at
t = 1) normalise them wrongly: samples come out washed out or saturated. NVAE's fix is to run the
sampler in train mode for a few hundred batches at temperature t so BN collects statistics of
*those* activations, and only then draw the samples in eval mode.

Here the estimate is an exact average over ``num_passes`` batches (momentum=None) rather than the
official exponential average with momentum 0.05 (which still holds ~e^-0.05N of the training
statistics after N passes), it runs on a fixed seed so the same parameters always give the same
statistics, and it is cached per temperature: the official code recomputes it on every call. Only
the layers sampling runs are re-estimated (the decoder's); the encoder's BatchNorm keeps the
statistics of training, as in the official code, so a reconstruction or a conditional sample
inside :func:`readjusted_bn` encodes as it always does. The cache is dropped as soon as any
parameter changes (an optimiser step, ``load_state_dict``, an EMA update), detected by the
parameters' in-place version counters plus a checksum for writes through ``.data``. The model's
own running statistics and train/eval mode are restored afterwards, so training continues exactly
as if nothing had happened.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from hvae_lib.layers.sync_bn import local_batch_norm

_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def parameter_version(model: nn.Module) -> tuple:
    """A key that changes whenever a parameter of ``model`` changes: (sum of in-place version
    counters, number of parameters, checksum of their values)."""
    params = list(model.parameters())
    with torch.no_grad():
        checksum = sum(float(p.detach().double().sum()) for p in params)
    return sum(p._version for p in params), len(params), checksum


def _bn_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def _read_stats(layers) -> list[tuple[torch.Tensor, ...]]:
    return [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in layers]


def _write_stats(layers, stats) -> None:
    with torch.no_grad():
        for m, (mean, var, count) in zip(layers, stats):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)


@torch.no_grad()
def estimate_bn_stats(model: nn.Module, temperature: float, num_passes: int, batch_size: int,
                      seed: int = 0) -> dict[int, tuple[torch.Tensor, ...]]:
    """BN running statistics averaged over ``num_passes`` calls of ``model.sample(batch_size,
    temperature)`` in train mode (on a forked RNG seeded with ``seed``), for the layers sampling
    runs: {index among the model's BN layers: (mean, var, count)}. Those layers keep the estimate;
    the others (the encoder's) get their own statistics back."""
    layers = _bn_layers(model)
    own, momenta = _read_stats(layers), [m.momentum for m in layers]
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        model.train()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: every pass counts equally
        with torch.random.fork_rng(devices=devices), local_batch_norm():
            torch.manual_seed(seed)
            for _ in range(num_passes):
                model.sample(batch_size, temperature)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
    ran = [i for i, m in enumerate(layers) if m.num_batches_tracked.item() > 0]
    _write_stats([m for i, m in enumerate(layers) if i not in ran], [s for i, s in enumerate(own) if i not in ran])
    stats = _read_stats(layers)
    return {i: stats[i] for i in ran}


@contextmanager
def readjusted_bn(model: nn.Module, temperature=1.0, num_passes: int = 100, batch_size: int = 16):
    """Within the block ``model`` is in eval mode with the statistics of the BN layers sampling
    runs re-estimated at ``temperature`` (one number, or one per latent group; cached, see the
    module docstring), the others as they were. On exit its own statistics and mode come back. A
    model without BatchNorm is only put in eval mode."""
    if num_passes < 1 or batch_size < 2:
        raise ValueError(f"BN readjustment needs num_passes >= 1 and batch_size >= 2 (BatchNorm needs a batch); "
                         f"got num_passes={num_passes}, batch_size={batch_size}.")
    layers = _bn_layers(model)
    saved, was_training = _read_stats(layers), model.training
    try:
        if not layers:  # nothing to re-estimate (ConvVAE, Ladder VAE, VDVAE): no sampling passes either
            model.eval()
            yield model
            return
        version = parameter_version(model)
        entry = _CACHE.get(model)
        if entry is None or entry["version"] != version:
            entry = _CACHE[model] = {"version": version, "stats": {}}
        key = (_temperature_key(temperature), num_passes, batch_size)
        if key not in entry["stats"]:
            entry["stats"][key] = estimate_bn_stats(model, temperature, num_passes, batch_size)
        estimated = entry["stats"][key]
        _write_stats([layers[i] for i in estimated], list(estimated.values()))
        model.eval()
        yield model
    finally:
        _write_stats(layers, saved)
        model.train(was_training)


def _temperature_key(temperature) -> float | tuple[float, ...]:
    """One temperature as a float, one per latent group as a tuple of floats."""
    if isinstance(temperature, (int, float)):
        return float(temperature)
    return tuple(float(t) for t in temperature)


def cached_temperatures(model: nn.Module) -> list:
    """Temperatures whose BN statistics are cached for the model's current parameters (a tuple where
    the statistics were estimated with one temperature per latent group)."""
    entry = _CACHE.get(model)
    if entry is None or entry["version"] != parameter_version(model):
        return []
    return sorted({key[0] for key in entry["stats"]}, key=lambda t: (isinstance(t, tuple), t))


@torch.no_grad()
def sample_with_readjusted_bn(model: nn.Module, n: int, temperature: float = 1.0, num_passes: int = 100,
                              batch_size: int = 16, **sample_options) -> torch.Tensor:
    """``model.sample(n, temperature, **sample_options)`` in eval mode with BN statistics re-estimated
    at that temperature (NVAE's ``--readjust_bn``; the official code runs 500 passes of 16 samples).
    ``sample_options`` (NVAE's ``likelihood_temperature``) reach only the final call: the likelihood
    comes after the last BatchNorm, so it does not change the estimate."""
    with readjusted_bn(model, temperature, num_passes, batch_size):
        return model.sample(n, temperature, **sample_options)
