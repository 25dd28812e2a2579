"""What a sample costs: network evaluations and wall time of an AR model, Proposition 1's D-layer VAE
and a multi-resolution VAE, as the data dimension D grows (Chapter 7; the paper's Table 2 column
"Sampling": D network evaluations for autoregressive models, 1 for a hierarchical VAE).

- :func:`count_calls` counts forward calls of chosen modules (forward hooks), so the number of
  passes a sampler makes is measured, not assumed;
- :func:`median_times` times several samplers interleaved (A, B, C, A, B, C, ...) and takes
  medians, so a load spike on a shared machine hits every sampler alike;
- :func:`sampling_cost_rows` builds the three models for each image side and returns one row per
  (model, D): passes of the network per sample batch, stochastic layers, seconds per sample.
"""
from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

from hvae_lib.models.exact.binary_ar import BinaryAR
from hvae_lib.models.exact.d_layer_vae import DLayerVAE
from hvae_lib.models.lvae import LadderVAE


@contextmanager
def count_calls(**modules: nn.Module):
    """``with count_calls(net=model.net) as counts: ...`` -> ``counts["net"]`` = forward calls inside the block."""
    counts = {name: 0 for name in modules}
    handles = []
    for name, module in modules.items():
        if not isinstance(module, nn.Module):
            raise TypeError(f"count_calls counts forward calls of nn.Modules; {name!r} is a {type(module).__name__}.")

        def hook(*_, name=name):
            counts[name] += 1

        handles.append(module.register_forward_hook(hook))
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def median_times(samplers: dict[str, Callable[[], object]], repeats: int = 3, warmup: int = 1,
                 count: dict[str, dict[str, nn.Module]] | None = None) -> tuple[dict[str, float], dict[str, dict[str, int]]]:
    """Median wall time in seconds of each zero-argument callable, run interleaved ``repeats`` times
    after ``warmup`` untimed rounds (at least one when ``count`` is given); ``count[name]`` names
    modules whose forward calls are counted during ``name``'s first warm-up call.

    Returns (median seconds per sampler, {sampler: {module name: calls}}).
    """
    count = count or {}
    warmup = max(warmup, 1 if count else 0)
    times, calls = {name: [] for name in samplers}, {}
    for round_ in range(warmup + repeats):
        for name, fn in samplers.items():
            if round_ == 0 and name in count:
                with count_calls(**count[name]) as counts:
                    fn()
                calls[name] = dict(counts)
                continue
            start = time.perf_counter()
            fn()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, calls


def multiresolution_vae(side: int, channels: int = 32) -> LadderVAE:
    """The Chapter 2 Ladder VAE for side x side binary images: 4 latent layers at two resolutions,
    whatever the image size (the multi-resolution VAE of the sampling-cost comparison)."""
    return LadderVAE((1, side, side), bits=1, likelihood="bernoulli", groups_per_scale=(2, 2), z_channels=4,
                     channels=channels, initial_downsamples=1, merge="learned")


def sampling_cost_rows(sides: tuple[int, ...] = (4, 8, 16, 32), batch: int = 8, repeats: int = 3,
                       seed: int = 0) -> list[dict]:
    """For each image side s (D = s * s binary pixels), untrained models of that size (timing needs
    no training), ``batch`` samples per call:

    - ``autoregressive``: :class:`BinaryAR` with max(64, D) hidden units;
    - ``D-layer VAE``: Proposition 1's copy VAE around such an AR model (its prior's passes counted);
    - ``multi-resolution VAE``: :func:`multiresolution_vae` (passes of its output head counted).

    Rows: model, D, layers (stochastic layers), passes (network evaluations to draw the batch,
    counted in the warm-up call), seconds_per_sample (median batch time / batch, ``repeats``
    interleaved calls), batch, load (1-minute load average when measured).
    """
    torch.manual_seed(seed)
    rows = []
    for side in sides:
        d = side * side
        ar = BinaryAR(d, hidden=max(64, d)).eval()
        vae = DLayerVAE(BinaryAR(d, hidden=max(64, d))).eval()
        lvae = multiresolution_vae(side).eval()
        samplers = {"autoregressive": lambda: ar.sample(batch), "D-layer VAE": lambda: vae.sample(batch),
                    "multi-resolution VAE": lambda: lvae.sample(batch)}
        count = {"autoregressive": {"net": ar}, "D-layer VAE": {"net": vae.prior},
                 "multi-resolution VAE": {"net": lvae.head}}
        layers = {"autoregressive": d, "D-layer VAE": vae.num_layers, "multi-resolution VAE": lvae.num_groups}
        with torch.no_grad():
            times, calls = median_times(samplers, repeats=repeats, count=count)
        load = os.getloadavg()[0]
        for name in samplers:
            rows.append({"model": name, "D": d, "layers": layers[name], "passes": calls[name]["net"],
                         "seconds_per_sample": times[name] / batch, "batch": batch, "load": load})
    return rows
