# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 5 — NVAE III: fitting a deep hierarchy in memory
#
# The paper's CIFAR-10 NVAE has 131 million parameters and 30 latent groups; trained in full
# precision at the official 32 images per GPU it needs tens of gigabytes of GPU memory (section 5
# has the measurements). Almost none of that is the parameters. This chapter finds where the memory
# of a training step goes and takes apart the three tools NVAE and the course's library use to
# shrink it: half precision, gradient checkpointing, and NVAE's own trick of recomputing BatchNorm
# in the backward pass.
#
# **You will learn**
# 1. where a training step's memory goes — parameters, gradients, optimiser state and the
#    activations autograd keeps for the backward pass — counted per cell type with
#    `saved_tensors_hooks` (*exercise 1*: the counting hook);
# 2. gradient checkpointing: recomputing each cell in the backward pass, written as an autograd
#    Function (*exercise 2*, which then trains the chapter's NVAE), what it costs in time, and what
#    it does to BatchNorm (*derivation 1* and *exercise 3*: the momentum of a batch counted twice);
# 3. bf16 against fp16, and what breaks when the likelihood, the KL or the log-sigmas run in half
#    precision — measured on the trained model; loss scaling and why it starts at $2^{10}$ here
#    (*exercise 4*: the scaler's step, which then takes the chapter's fp16 steps);
# 4. NVAE's BN-Swish recomputation next to checkpointing, counted on this model and on the
#    paper's CIFAR-10 layout;
# 5. the GPU measurements set against the paper's claims, and a recipe for choosing batch,
#    precision and checkpointing for a given GPU (*exercise 5*: the memory line).
#
# **What to expect.** Full mode takes about 3.5 minutes on a 2-core CPU (212 s for the committed
# run, on an idle machine; 389 s of CPU time on two threads): 300 training steps of the
# chapter's NVAE with your checkpointing, a few dozen timed steps and memory counts, and a handful
# of fp16 steps. The numbers of the committed run: at batch 64 the activations take about 70 times
# the memory of the parameters, gradients and optimiser state together; checkpointing keeps about
# a fifth of the activation memory, for 15–45% more time per step at batches up to 64 and none at
# 128 on this CPU (section 2 says why); bf16 keeps about 57% of it; NVAE's
# BN-Swish trick saves about 23% more than bf16 alone on the paper's CIFAR-10 layout (the paper
# says 18%). `HVAE_SMOKE=1` runs every cell in well under a minute on tiny data and tiny layouts;
# the numbers are then rough, and the few assertions that need a trained model or the real layout
# are relaxed (each says so).

# %%
import copy
import math
import os
import shutil
import statistics
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch.utils.checkpoint import checkpoint

import hvae_lib
from hvae_lib.config import override
from hvae_lib.data import load_dataset
from hvae_lib.exercises import assert_matches, check, reveal_prediction, smoke_mode, use_if_correct
from hvae_lib.layers.cells import EncoderCell, GenerativeCell
from hvae_lib.layers.norms import BatchNorm2d, frozen_running_stats
from hvae_lib.memory.plan import GIB, fit_costs, read_gpu_results, suggest_settings
from hvae_lib.memory.recompute import fuse_bn_swish
from hvae_lib.memory.saved_tensors import (
    count_saved_tensors,
    gradient_bytes,
    optimizer_state_bytes,
    parameter_bytes,
    saved_bytes_by_site,
)
from hvae_lib.models.presets import get_preset
from hvae_lib.probability.likelihoods import DiscretizedLogisticMixture
from hvae_lib.probability.objectives import nats_to_bpd
from hvae_lib.probability.residual_normal import NVAENormal, residual_kl
from hvae_lib.training.engine import Trainer

SMOKE = smoke_mode()
torch.manual_seed(0)
RUNS = Path("runs")
MIB = 2**20
GPU_RESULTS = Path(hvae_lib.__file__).resolve().parents[1] / "benchmarks" / "gpu_results.json"
SMOKE_DATA = {"train_limit": 512, "test_limit": 256} if SMOKE else {}
data = load_dataset("fashion_mnist", **SMOKE_DATA)
x_test = torch.stack([data.test[i][0] for i in range(64)])  # (64, 1, 28, 28)
print(f"smoke mode: {SMOKE}; torch {torch.__version__}; {torch.get_num_threads()} CPU threads; "
      f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


def train_loss(model, x):
    """The negative ELBO per image, batch mean: what a training step differentiates (no KL warm-up)."""
    out = model(x)
    return (out.kl_per_group.sum(1) - out.log_px_z).mean()


# %% [markdown]
# ## 1. Where the memory goes
#
# A training step holds four kinds of tensors:
#
# - the **parameters** $\theta$;
# - their **gradients**, one per parameter;
# - the **optimiser state**: Adamax keeps a running mean of the gradient and a running maximum of
#   its magnitude, two more tensors per parameter;
# - the **activations saved for the backward pass**. The gradient of $y = Wx$ with respect to $W$
#   is $\bar y\, x^\top$: the backward pass needs the forward pass's $x$. Autograd keeps every such
#   tensor from the forward until the backward has used it, so at the end of the forward pass
#   *all* of them are alive at once.
#
# The first three scale with the number of parameters, the last with the batch size and the size
# of every feature map. The chapter's NVAE (`nvae_fashion`, Chapters 3–4) at its batch of 64,
# after one step of the engine so that Adamax's state exists:

# %%
config = override(get_preset("nvae_fashion"), {"quiet": True, "eval_every": 0, "sample_every": 0,
                                                "checkpoint_every": 0, **SMOKE_DATA})
probe = Trainer(config, RUNS / "ch05_probe", resume=False)
probe.train_step()  # creates Adamax's state
x_batch = probe.batches.get(1)  # (64, 1, 28, 28)
(loss, _, _), saved = count_saved_tensors(lambda: probe.loss(x_batch, 1), probe.model.parameters())
loss.backward()
budget = {"parameters": parameter_bytes(probe.model), "gradients": gradient_bytes(probe.model),
          "optimiser state (Adamax)": optimizer_state_bytes(probe.optimizer),
          "activations saved for backward": saved.activation_bytes}
for name, nbytes in budget.items():
    print(f"{name:32s} {nbytes / MIB:9.2f} MiB")
weights_side = sum(v for k, v in budget.items() if k != "activations saved for backward")
activation_ratio = budget["activations saved for backward"] / weights_side
print(f"activations / (parameters + gradients + optimiser state) = {activation_ratio:.0f}")
plt.figure(figsize=(7, 2.2))
plt.barh(list(budget)[::-1], [v / MIB for v in list(budget.values())[::-1]])
plt.xscale("log")
plt.xlabel("MiB (log scale)")
plt.title(f"one training step of nvae_fashion at batch {x_batch.shape[0]}")
plt.tight_layout()
num_tensors = sum(1 for _ in probe.model.parameters())
assert budget["gradients"] == budget["parameters"]
assert 2 * budget["parameters"] <= budget["optimiser state (Adamax)"] <= 2 * budget["parameters"] + 16 * num_tensors
assert activation_ratio > 10  # the activations dwarf everything else

# %% [markdown]
# Activations dominate by a factor of 70 (the figure above, measured). The paper's CIFAR-10 model has
# nearly 1000 times more parameters, but also 32 times the channels and 30 latent groups at 16×16:
# its activations dominate too (section 5 fits its GPU figures).
#
# ### Counting saved tensors
#
# How were the activations counted? `torch.autograd.graph.saved_tensors_hooks(pack, unpack)` calls
# `pack(t)` for every tensor an operation saves for its backward and hands `unpack` whatever `pack`
# returned when the backward needs it. A `pack` that records `t` and returns it unchanged sees all
# of them. Two traps: several saved tensors can share one block of memory (a view of a tensor, or
# one tensor saved by two operations, like both factors of `x * x`), so count each *storage*
# (`t.untyped_storage()`, keyed by its `data_ptr()`) once, at its full size (`nbytes()`); and keep a
# reference to each storage until you are done, or a freed block's address can be reused by a
# new tensor and go uncounted.
#
# **Exercise 1.** Return the bytes of the distinct storages that `fn()` saves for backward
# (parameters included; the library's `count_saved_tensors` reports them apart).

# %% nbgrader={"grade": false, "grade_id": "ex01_count_saved", "locked": false, "schema_version": 3, "solution": true, "task": false}
def saved_bytes(fn):
    """Bytes of the distinct storages that autograd saves for backward while running fn()."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% [markdown]
# The check runs small computations through your function and through the library's
# `count_saved_tensors`: a linear layer, one tensor saved twice, a view of a saved tensor, an encoder
# and a generative cell of NVAE, and a computation that saves nothing.

# %%
COUNTING_SHORTCUTS = ("hvae_lib.memory.saved_tensors:count_saved_tensors", "hvae_lib.memory.saved_tensors:saved_bytes_by_site")


def counting_cases(seed=0, width=16):
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layer, enc_cell, gen_cell = torch.nn.Linear(width, 8), EncoderCell(4), GenerativeCell(8)
    x = torch.randn(5, width, generator=g, requires_grad=True)
    image, features = torch.randn(2, 4, 6, 6, generator=g, requires_grad=True), torch.randn(3, 8, 4, 4, generator=g, requires_grad=True)
    return {"a linear layer": (lambda: layer(x),), "one tensor saved twice (x * x)": (lambda: (x * x).sum(),),
            "a view of a saved tensor": (lambda: torch.tanh(x).exp()[:, :3].sum(),),
            "an encoder cell": (lambda: enc_cell(image),), "a generative cell": (lambda: gen_cell(features),),
            "nothing saved (no gradient needed)": (lambda: x.detach() * 2,)}


def library_saved_bytes(fn):
    """The library's count (activations and parameters together)."""
    return count_saved_tensors(fn)[1].total_bytes


# %% nbgrader={"grade": true, "grade_id": "ex01_count_saved_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
ok_saved_bytes = check("saved_bytes", saved_bytes, library_saved_bytes, counting_cases(), forbid=COUNTING_SHORTCUTS)

# %% [markdown]
# ### Activations per cell type
#
# `hvae_lib.memory.saved_tensors.saved_bytes_by_site` counts the same storages but remembers who saved each one:
# the innermost module whose forward was running, and the source file of the code that called the
# operation (for the model's own code outside any submodule, the sampling, KL and likelihood). Grouped
# by the kind of cell, on the same batch:

# %%
ENCODER_PARTS = ("stem", "preprocess", "enc_scales", "enc_down", "enc_top")


def cell_type(module, source):
    """The kind of NVAE part a saved tensor belongs to, from where it was saved."""
    if source == "likelihoods" or module.startswith("head"):
        return "likelihood (output head, mixture)"
    if module == "":
        return "latent distributions and KL" if source == "residual_normal" else "other model code"
    top = module.split(".")[0]
    if top in ENCODER_PARTS:
        return "encoder cells"
    if top == "postprocess" or (top == "groups" and module.split(".")[2] in ("cells", "up")):
        return "generative cells"
    return "latent groups (prior, posterior, combiner convs)"


def activations_by_cell_type(model, x):
    (out), sites = saved_bytes_by_site(lambda: train_loss(model, x), model)
    per_type = {}
    for (module, source), nbytes in sites.items():
        per_type[cell_type(module, source)] = per_type.get(cell_type(module, source), 0) + nbytes
    return dict(sorted(per_type.items(), key=lambda kv: -kv[1]))


per_type = activations_by_cell_type(probe.model, x_batch)
probe.model.zero_grad(set_to_none=True)
total = sum(per_type.values())
for name, nbytes in per_type.items():
    print(f"{name:50s} {nbytes / MIB:7.1f} MiB  {100 * nbytes / total:5.1f}%")
plt.figure(figsize=(7, 2.6))
plt.barh(list(per_type)[::-1], [v / MIB for v in list(per_type.values())[::-1]])
plt.xlabel("MiB saved for backward")
plt.title(f"activations per cell type, batch {x_batch.shape[0]}")
plt.tight_layout()
_, whole = count_saved_tensors(lambda: train_loss(probe.model, x_batch), probe.model.parameters())
assert abs(total - whole.activation_bytes) <= 0.02 * whole.activation_bytes  # the same count, split up
assert list(per_type)[:2] == ["generative cells", "likelihood (output head, mixture)"]  # the two largest shares

# %% [markdown]
# The generative cells hold the largest share: each expands its $C$ channels six times (three in
# post-processing) and runs BN, Swish and a depthwise convolution on the wide tensor, and the
# last of them work at the full 32×32 canvas. The likelihood is next in line although it is a single
# convolution: the mixture evaluates every pixel under each of its components, with a dozen
# intermediate tensors of shape (B, C, M, H, W) that its backward needs.
#
# Which of these grow with the batch? Counting at two batch sizes separates the two parts of
# $M(B) = M_{\text{fixed}} + B\, m_{\text{image}}$:

# %%
def saved_line(model, small, large, x_pool):
    """(fixed bytes, bytes per image) of what a forward saves, from counts at two batch sizes."""
    counts = []
    for b in (small, large):
        _, s = count_saved_tensors(lambda: train_loss(model, x_pool[:b]), model.parameters())
        counts.append(s.activation_bytes)
    per_image = (counts[1] - counts[0]) / (large - small)
    return counts[0] - small * per_image, per_image


fixed, per_image = saved_line(probe.model, 16, 64, x_batch)
sites_small, sites_large = (saved_bytes_by_site(lambda: train_loss(probe.model, x_batch[:b]), probe.model)[1]
                            for b in (16, 64))
fixed_in_norms = sum(sites_small.get(k, 0) - 16 * (sites_large.get(k, 0) - sites_small.get(k, 0)) / 48
                     for k in set(sites_small) | set(sites_large) if k[1] == "norms")
probe.model.zero_grad(set_to_none=True)
print(f"saved for backward: {fixed / MIB:.2f} MiB whatever the batch (of which {fixed_in_norms / MIB:.2f} MiB in "
      f"hvae_lib/layers/norms.py) + {per_image / MIB:.2f} MiB per image")
assert fixed >= 0 and per_image > 0
assert fixed < 0.1 * (fixed + 64 * per_image)  # at batch 64 the batch-independent part is small
assert fixed < 64 * 1024 or fixed_in_norms >= 0.8 * fixed  # what there is of it is weight normalisation's

# %% [markdown]
# The batch-independent part is small here (it grows with the parameters, not the images), and
# nearly all of it is saved while weight normalisation computes each convolution's weight
# $e^{g} V / \lVert V \rVert$ (`WNConv2d` in `hvae_lib/layers/norms.py`). Everything else is paid
# per image.


# %% [markdown]
# ## 2. Gradient checkpointing
#
# The activations are kept because the backward pass needs them. But they can be *recomputed*:
# keep only the input of each cell, and in the backward pass run the cell's forward again just
# before its backward. That is **gradient checkpointing** (Chen et al. 2016). The saved memory is
# then one feature map per cell instead of a dozen, plus, for a moment in the backward, the full
# activations of the one cell being recomputed. The price is a second forward pass through every
# checkpointed cell.
#
# `torch.utils.checkpoint.checkpoint(fn, *inputs, use_reentrant=False)` does this for any
# function. Two details matter for NVAE:
#
# - **random numbers**: a recomputed forward must draw the same random numbers; `checkpoint`
#   saves and restores the RNG state by default (NVAE's cells draw none — the latent samples are
#   drawn between cells — but a flow or dropout inside a block would);
# - **BatchNorm**: in train mode BN normalises with the *batch's* statistics, so the recomputed
#   output is exactly the original one. But BN also updates its *running* statistics in every train-mode
#   forward, and the recomputation is a train-mode forward: without care, each batch is counted
#   twice. The library's `frozen_running_stats()` context stops that: inside it, BN layers in
#   train mode normalise as usual and leave their running statistics alone.
#
# What does `checkpoint` do inside? You will write it. A `torch.autograd.Function` has a `forward`
# that runs without autograd watching (nothing it computes is kept for the backward pass unless it
# says so with `ctx.save_for_backward`) and a `backward` that receives the gradient of its output
# and returns the gradients of its inputs.
#
# The check will run a stack of NVAE cells through a checkpointing function and through the
# library's `checkpoint_block`, one forward and backward each, and compare everything that comes
# out: the output, every gradient, BN's running statistics and batch counters, and the bytes saved
# for the backward pass (a wrapper that does not checkpoint saves far more). This is the stack:

# %%
def cell_stack_run(wrapper, kinds, seed, width=8):
    """Output, gradients, BN buffers and saved bytes of a stack of cells run through ``wrapper``, one tensor."""
    torch.manual_seed(seed)
    cells = torch.nn.ModuleList(EncoderCell(width) if k == "enc" else GenerativeCell(width, upsample=k == "up")
                                for k in kinds).double()
    x = torch.randn(4, width, 6, 6, dtype=torch.float64, requires_grad=True)  # (B, C, H, W)

    def forward():
        h = x
        for cell in cells:
            h = wrapper(cell, h)
        return h

    out, counted = count_saved_tensors(forward, cells.parameters())
    (out * torch.cos(torch.arange(out.numel(), dtype=out.dtype)).view_as(out)).sum().backward()
    buffers = [b.double().flatten() for b in cells.buffers()]
    return torch.cat([out.detach().flatten(), x.grad.flatten(), *(p.grad.flatten() for p in cells.parameters()),
                      *buffers, torch.tensor([float(counted.activation_bytes)], dtype=torch.float64)])


def cells_through_checkpointed(kinds, seed, width=8):
    """The stack through your `checkpointed` (what the check grades)."""
    return cell_stack_run(checkpointed, kinds, seed, width)


def cells_through_checkpoint_block(kinds, seed, width=8):
    """The stack through the library's checkpoint_block (what the check compares with)."""
    from hvae_lib.memory.recompute import checkpoint_block

    return cell_stack_run(checkpoint_block, kinds, seed, width)


# %% [markdown]
# **Exercise 2.** Write gradient checkpointing as such a Function, `RecomputedBlock`, and
# `checkpointed(block, *inputs)`, which applies it when gradients are on and some input needs one
# (and otherwise simply returns `block(*inputs)`):
#
# - `forward(ctx, block, *inputs)`: keep the block (`ctx.block = block`) and the inputs
#   (`ctx.save_for_backward(*inputs)`), and return `block(*inputs)` computed under `torch.no_grad()`,
#   so that nothing inside the block is saved; BatchNorm updates its running statistics here, once;
# - `backward(ctx, grad_output)`: take detached copies of the saved inputs, each requiring a
#   gradient where the original did; run the block on them again with gradients on
#   (`torch.enable_grad()`) and inside `frozen_running_stats()`; back-propagate `grad_output`
#   through that recomputed graph with `torch.autograd.backward`, which adds the gradients of the
#   block's parameters to their `.grad`; return `None` for the block and the copies' `.grad` for the
#   inputs.
#
# This is torch's original ("reentrant") checkpoint. Like it, yours needs at least one input that
# requires a gradient (every NVAE cell's does) and gives parameter gradients through `.backward()`
# only; unlike torch's, it replays neither the random generator nor autocast, which the chapter
# does not need (NVAE's cells draw no random numbers, and it checkpoints in float32).
# `torch.utils.checkpoint` and the library's `checkpoint_block` are what the check compares with,
# so they are off limits.

# %% nbgrader={"grade": false, "grade_id": "ex02_checkpointed", "locked": false, "schema_version": 3, "solution": true, "task": false}
class RecomputedBlock(torch.autograd.Function):
    """block(*inputs) whose activations are recomputed in the backward pass instead of saved."""

    @staticmethod
    def forward(ctx, block, *inputs):
        # YOUR CODE HERE
        raise NotImplementedError()

    @staticmethod
    def backward(ctx, grad_output):
        # YOUR CODE HERE
        raise NotImplementedError()


def checkpointed(block, *inputs):
    """block(*inputs), its activations recomputed in backward; BN running statistics updated once.
    Without gradients (evaluation), or when no input needs one, it is block(*inputs)."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %%
CHECKPOINT_SHORTCUTS = ("torch.utils.checkpoint:_checkpoint_impl", "hvae_lib.memory.recompute:checkpoint_block",
                        "hvae_lib.models.nvae:NVAE.checkpointed")  # every torch checkpoint runs _checkpoint_impl


def checkpoint_cases(seed=0, width=8):
    return {"one encoder cell": (("enc",), seed, width), "an encoder and a generative cell": (("enc", "gen"), seed + 1, width),
            "three cells": (("gen", "enc", "gen"), seed + 2, width),
            "a generative cell that upsamples": (("gen", "up"), seed + 3, width)}


# %% nbgrader={"grade": true, "grade_id": "ex02_checkpointed_test", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
ok_checkpointed = check("checkpointed", cells_through_checkpointed, cells_through_checkpoint_block, checkpoint_cases(),
                        atol=1e-9, rtol=1e-9, forbid=CHECKPOINT_SHORTCUTS)

# %% [markdown]
# From here on the chapter checkpoints with `checkpoint_cell`: your function once its check passed,
# the library's until then. First, the claim that matters: checkpointed gradients are the plain
# ones. Same cells, same input, once without any recomputation:

# %%
checkpoint_cell = use_if_correct("checkpointed", checkpointed, "hvae_lib.memory.recompute:checkpoint_block", ok_checkpointed)
kinds = ("gen", "enc", "gen", "up")
plain_run = cell_stack_run(lambda cell, h: cell(h), kinds, seed=5)
recomputed_run = cell_stack_run(checkpoint_cell, kinds, seed=5)
difference = (plain_run[:-1] - recomputed_run[:-1]).abs().max().item()
print(f"largest difference in outputs, gradients and BN statistics: {difference:.1e}; saved for backward: "
      f"{plain_run[-1] / 1024:.0f} KiB plain, {recomputed_run[-1] / 1024:.0f} KiB checkpointed")
assert difference < 1e-10
assert recomputed_run[-1] < 0.2 * plain_run[-1]

# %% [markdown]
# ### What BatchNorm does under recomputation
#
# Why does the recomputation have to leave BN's running statistics alone? A BN layer updates its
# running mean after every train-mode forward, $r \leftarrow (1 - m)\,r + m\,\bar x$, with $\bar x$ the
# batch's channel means and $m$ its momentum (0.05 in NVAE). With a plain `checkpoint`, the
# recomputation in the backward pass is a second train-mode forward on the same batch, so the
# update is applied twice.
#
# **Derivation 1.** Starting from a running mean $r_0$, show that one training step with the
# update applied twice leaves $r = (1 - m')\,r_0 + m'\,\bar x$, and give $m'$ in terms of $m$. Then:
# an estimate updated with a constant momentum $\mu$ at every step gives the batch of $k$ steps ago
# the weight $\mu(1-\mu)^k$. What is the mean age $\sum_k k\,\mu(1-\mu)^k$ of the batches it averages,
# and what does it become, for NVAE's $m = 0.05$, when every batch is counted twice?

# %% [markdown] nbgrader={"grade": true, "grade_id": "derive01_double_counted_bn", "locked": false, "points": 3, "schema_version": 3, "solution": true, "task": false}
# YOUR ANSWER HERE

# %% [markdown]
# **Exercise 3.** Return $m'$ for a momentum $m$ (a float). The check measures it: one BN layer in
# float64 with a random running mean $r_0$, one batch through a plain `torch.utils.checkpoint` and a
# backward pass, then $m' = (r - r_0) / (\bar x - r_0)$ read off the layer.

# %% nbgrader={"grade": false, "grade_id": "ex03_effective_momentum", "locked": false, "schema_version": 3, "solution": true, "task": false}
def effective_momentum(momentum):
    """The momentum m' of one BN update that equals two updates with ``momentum`` on the same batch."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %%
def measured_effective_momentum(momentum):
    """m' measured on a BN layer whose batch a plain (non-freezing) checkpoint counts twice."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        layer = BatchNorm2d(3, momentum=momentum).double()
        with torch.no_grad():
            layer.running_mean.copy_(torch.randn(3, dtype=torch.float64))
        x = (torch.randn(8, 3, 5, 5, dtype=torch.float64) + torch.tensor([1.0, -2.0, 3.0]).view(1, 3, 1, 1)).requires_grad_()
    before = layer.running_mean.clone()
    checkpoint(layer, x, use_reentrant=False).square().sum().backward()
    batch_mean = x.detach().mean(dim=(0, 2, 3))  # (3,)
    return ((layer.running_mean - before) / (batch_mean - before)).mean().item()


def momentum_cases(values=(0.05, 0.1, 0.5)):
    return {"a small momentum (NVAE's 0.05)": (values[0],), "PyTorch's default 0.1": (values[1],),
            "a large momentum": (values[2],)}


# %% nbgrader={"grade": true, "grade_id": "ex03_effective_momentum_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
ok_momentum = check("effective_momentum", effective_momentum, measured_effective_momentum, momentum_cases(), atol=1e-9,
                    rtol=1e-9)


# %% [markdown]
# And on one BN layer with NVAE's momentum, fresh (running mean 0): after one training step, the
# running mean as a multiple of the batch's means, and the layer's batch counter — without
# checkpointing, with a plain `checkpoint`, and with `checkpoint_cell`:

# %%
def bn_after_one_step(wrapper):
    torch.manual_seed(0)
    layer = BatchNorm2d(3).double()
    x = (torch.randn(8, 3, 5, 5, dtype=torch.float64) + torch.tensor([1.0, -2.0, 3.0]).view(1, 3, 1, 1)).requires_grad_()
    wrapper(layer, x).square().sum().backward()
    batch_mean = x.detach().mean(dim=(0, 2, 3))  # (3,)
    return (layer.running_mean / batch_mean).mean().item(), int(layer.num_batches_tracked)


bn_rows = {"no checkpointing": bn_after_one_step(lambda m, x: m(x)),
           "plain checkpoint": bn_after_one_step(lambda m, x: checkpoint(m, x, use_reentrant=False)),
           "checkpoint_cell (frozen in recomputation)": bn_after_one_step(checkpoint_cell)}
for name, (ratio, count) in bn_rows.items():
    print(f"{name:42s} running mean = {ratio:.4f} x batch mean, batches counted: {count}")
momentum_fn = use_if_correct("effective_momentum", effective_momentum, measured_effective_momentum, ok_momentum)
assert abs(bn_rows["no checkpointing"][0] - 0.05) < 1e-9 and bn_rows["no checkpointing"][1] == 1
assert abs(bn_rows["plain checkpoint"][0] - momentum_fn(0.05)) < 1e-9 and bn_rows["plain checkpoint"][1] == 2
assert bn_rows["checkpoint_cell (frozen in recomputation)"] == bn_rows["no checkpointing"]

# %% [markdown]
# A running estimate that counts every batch twice follows the batches twice as fast — in effect
# a momentum of 0.0975 instead of 0.05, the very choice Chapter 3 showed matters for evaluation.
# Nothing would crash; the model would just evaluate a little worse. With `--set
# grad_checkpointing=true` the library's NVAE checkpoints every cell with
# `hvae_lib.memory.recompute.checkpoint_block`: torch's checkpoint, with the recomputation frozen.
#
# ### The trade-off, measured
#
# Predict first. With every cell of the NVAE checkpointed, what fraction of the activation
# memory of section 1 will still be saved at batch 64? (The cells are most of it, but not all:
# look again at the bars of section 1.)

# %% nbgrader={"grade": false, "grade_id": "predict05_checkpoint_memory", "locked": false, "schema_version": 3, "solution": true, "task": false}
def predicted_checkpoint_fraction():
    """Saved activation bytes with checkpointing / without, at batch 64."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% [markdown]
# The measurement: the bytes saved for backward by one forward, and the time of a forward and
# backward, with and without checkpointing, on the same weights and images, at several batch sizes.
# The two settings take turns step by step, so a burst of load from elsewhere on the machine hits
# both alike; each time is a median.

# %%
def with_checkpointing(model, on):
    model.grad_checkpointing = on
    return model


def timed_step(model, x):
    """Seconds of one forward and backward of the training loss."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    train_loss(model, x).backward()
    return time.perf_counter() - start


def trade_off(settings, batches, repeats, x_pool):
    """{setting: {"mib": [...], "seconds": [...]}} over ``batches``; settings are (model, checkpointing)."""
    table = {name: {"mib": [], "seconds": []} for name in settings}
    for b in batches:
        x = x_pool[:b]
        for name, (model, on) in settings.items():
            _, s = count_saved_tensors(lambda: train_loss(with_checkpointing(model, on), x), model.parameters())
            table[name]["mib"].append(s.activation_bytes / MIB)
            timed_step(with_checkpointing(model, on), x)  # warm-up at this shape
        times = {name: [] for name in settings}
        for _ in range(repeats):
            for name, (model, on) in settings.items():
                times[name].append(timed_step(with_checkpointing(model, on), x))
        for name in settings:
            table[name]["seconds"].append(statistics.median(times[name]))
    for model, _ in settings.values():
        with_checkpointing(model, False).zero_grad(set_to_none=True)
    return table


BATCHES = [4, 8] if SMOKE else [16, 32, 64, 128]
x_pool = torch.stack([data.train[i][0] for i in range(max(BATCHES))])  # (B_max, 1, 28, 28)
probe_model = probe.model
plain_vs_ckpt = trade_off({"plain": (probe_model, False), "checkpointing": (probe_model, True)}, BATCHES,
                          2 if SMOKE else 5, x_pool)
print(f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
for i, b in enumerate(BATCHES):
    p, c = (plain_vs_ckpt[k] for k in ("plain", "checkpointing"))
    print(f"batch {b:4d}: saved {p['mib'][i]:6.1f} -> {c['mib'][i]:5.1f} MiB ({c['mib'][i] / p['mib'][i]:.2f}x), "
          f"step {1000 * p['seconds'][i]:5.0f} -> {1000 * c['seconds'][i]:5.0f} ms ({c['seconds'][i] / p['seconds'][i]:.2f}x)")
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
for name, row in plain_vs_ckpt.items():
    axes[0].plot(BATCHES, row["mib"], "o-", label=name)
    axes[1].plot(BATCHES, [1000 * s for s in row["seconds"]], "o-", label=name)
axes[0].set(xlabel="batch size", ylabel="MiB saved for backward", title="memory")
axes[1].set(xlabel="batch size", ylabel="ms per forward + backward (median)", title="time on this CPU")
axes[1].legend()
plt.tight_layout()
i64 = BATCHES.index(64) if 64 in BATCHES else -1
checkpoint_fraction = plain_vs_ckpt["checkpointing"]["mib"][i64] / plain_vs_ckpt["plain"]["mib"][i64]
reveal_prediction(f"saved with checkpointing / without, batch {BATCHES[i64]}", predicted_checkpoint_fraction,
                  round(checkpoint_fraction, 2))
assert all(c < 0.5 * p for c, p in zip(plain_vs_ckpt["checkpointing"]["mib"], plain_vs_ckpt["plain"]["mib"]))
for row in plain_vs_ckpt.values():  # straight lines through the origin, up to the small fixed part
    per_image_mib = [m / b for m, b in zip(row["mib"], BATCHES)]
    assert max(per_image_mib) < 1.25 * min(per_image_mib)
seconds = {name: row["seconds"] for name, row in plain_vs_ckpt.items()}
assert seconds["checkpointing"][0] > seconds["plain"][0]  # at the smallest batch the second forward shows

# %% [markdown]
# Both lines of the memory plot are straight: everything grows in proportion to the batch, and
# checkpointing divides the slope by about 4.5. The time depends on the batch. At small batches the
# cells' forward runs twice and it shows: in the committed run (two threads of an idle 2-core CPU)
# checkpointing took 1.42, 1.27 and 1.14 times as long at batches 16, 32 and 64 (the cell asserts
# that the smallest batch is slower). At 128 it came out 13% *faster*: there the plain step grows
# faster than the batch (643 ms against 279 at 64), as its 314 MiB of saved activations stream
# through memory, while the checkpointed step keeps a fifth of them. The ratios at large batches
# scatter from run to run (an earlier run on this machine had batch 64 10% faster too), and runs of
# this cell on one thread of a loaded machine took 20–39% longer at batches 16 to 64; `benchmarks/RESULTS.md`
# measured 1.2 times at batch 64 on an idle machine. On a CPU, then, recomputation can pay for itself;
# what it always buys is the memory. What is left when every cell is checkpointed is what is *not*
# inside a cell: the latent distributions and KL, the likelihood, the combiner convolutions, and the
# one input per cell.
#
# ### Training the chapter's NVAE with your checkpointing
#
# The engine's NVAE calls `model.checkpointed(block, *inputs)` for every cell. Replacing that method
# on the model puts your wrapper in charge of every cell of a real training run. The run is Chapter 3's
# model trained for 300 steps (with the KL warm-up shortened to match): short, but a trained model
# whose tensors section 3 needs.

# %%
TRAIN_STEPS = 12 if SMOKE else 300
train_config = override(get_preset("nvae_fashion"), {"max_steps": TRAIN_STEPS, "kl_warmup_steps": int(0.3 * TRAIN_STEPS),
                                                      "warmup_steps": 5 if SMOKE else 30, "eval_every": 0,
                                                      "sample_every": 0, "checkpoint_every": 0, "quiet": True,
                                                      "grad_checkpointing": True, "eval_batches": 4 if SMOKE else 20,
                                                      **SMOKE_DATA})
run_dir = RUNS / ("ch05_nvae" + ("_smoke" if SMOKE else ""))
shutil.rmtree(run_dir, ignore_errors=True)
trainer = Trainer(train_config, run_dir, resume=False)
nvae = trainer.model
calls = []


def cell_wrapper(block, *inputs):
    if nvae.training and torch.is_grad_enabled():
        calls.append(1)
        return checkpoint_cell(block, *inputs)
    return block(*inputs)


nvae.checkpointed = cell_wrapper  # every cell of the towers now goes through your function
start = time.perf_counter()
result = trainer.fit()
train_minutes = (time.perf_counter() - start) / 60
del nvae.checkpointed  # back to the class's own method, and no checkpointing in what follows
nvae.grad_checkpointing = False
print(f"{TRAIN_STEPS} steps in {train_minutes:.1f} min; {len(calls) // TRAIN_STEPS} cells checkpointed per step; "
      f"test negative ELBO {result['test_bpd']:.3f} bits/dim on {result['test_images']} test images")
assert len(calls) == TRAIN_STEPS * (len(nvae.preprocess) + sum(len(c) for s in nvae.enc_scales for c in s)
                                    + len(nvae.enc_down) + sum(len(g.cells) + (g.up is not None) for g in nvae.groups)
                                    + len(nvae.postprocess))
assert result["test_bpd"] < (7.0 if SMOKE else 4.5)  # uniform noise is 8; Chapter 3's 1500 steps reach 3.52

# %% [markdown]
# Every cell of every step went through `checkpoint_cell`. Bits/dim after 300 steps is far from Chapter
# 3's 3.52 (1500 steps), as it should be; what matters here is a model whose posteriors, priors
# and likelihood have started to mean something.


# %% [markdown]
# ## 3. Half precision
#
# The second lever is the size of each number. Two 16-bit formats exist. Both keep a sign bit;
# they split the other fifteen differently:
#
# - **fp16** (IEEE half): 5 exponent bits, 10 mantissa bits — fine steps, small range;
# - **bf16** (bfloat16, "brain float"): 8 exponent bits, like fp32, and 7 mantissa bits — fp32's
#   range, coarse steps.
#
# `torch.finfo` says what that means:

# %%
formats = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
print(f"{'':5s} {'largest':>11s} {'smallest normal':>16s} {'eps (step at 1)':>16s} {'step at 2000':>13s}")
for name, dtype in formats.items():
    info = torch.finfo(dtype)
    step_2000 = (torch.tensor(2000.0, dtype=dtype).nextafter(torch.tensor(3000.0, dtype=dtype)) - 2000).item()
    print(f"{name:5s} {info.max:11.3g} {info.tiny:16.3g} {info.eps:16.3g} {step_2000:13.3g}")
examples = {"70000 (a batch's loss)": 70000.0, "1 + 1/500": 1 + 1 / 500, "2e-8 (a small gradient)": 2e-8,
            "1 - 2e-3 (a sigmoid near 1)": 1 - 2e-3}
for text, value in examples.items():
    print(f"{text:28s}" + "".join(f"  {name}: {torch.tensor(value, dtype=d).item():<12.8g}" for name, d in formats.items()))
assert torch.tensor(70000.0, dtype=torch.float16).isinf() and torch.tensor(70000.0, dtype=torch.bfloat16).isfinite()
assert torch.tensor(1 + 1 / 500, dtype=torch.bfloat16).item() == 1.0  # bf16 cannot tell 1.002 from 1
assert torch.tensor(2e-8, dtype=torch.float16).item() == 0.0 and torch.tensor(2e-8, dtype=torch.bfloat16).item() > 0

# %% [markdown]
# So fp16 overflows at 65504 and has nothing below $2^{-24} \approx 6\times10^{-8}$ (smaller values
# round to 0 or to $2^{-24}$; below the smallest *normal* number, $6\times10^{-5}$, it already loses
# significant bits), while bf16 cannot tell 1.002 from 1. Mixed precision (`torch.autocast`) runs
# the convolutions and matrix products in half precision, where tensor cores make them fast and the
# activations they produce take half the memory, and keeps the weights in fp32. Which other
# operations may safely follow? On the trained model, the three places where NVAE's numbers are
# delicate.
#
# ### What breaks, on the trained model's own tensors
#
# One forward pass of 64 test images, keeping the raw outputs of every prior and posterior
# convolution and of the output head (in fp32). Then the same formulas as the library's, in
# fp32, bf16 and fp16:

# %%
captured = {"prior": {}, "posterior": {}, "head": None}
hooks = []
for l, group in enumerate(nvae.groups):
    if group.prior is not None:
        hooks.append(group.prior.register_forward_hook(lambda m, i, o, l=l: captured["prior"].__setitem__(l, o.detach())))
    hooks.append(group.posterior.register_forward_hook(lambda m, i, o, l=l: captured["posterior"].__setitem__(l, o.detach())))
hooks.append(nvae.head.conv.register_forward_hook(lambda m, i, o: captured.__setitem__("head", o.detach())))
nvae.eval()
torch.manual_seed(0)
with torch.no_grad():
    reference = nvae(x_test)
for h in hooks:
    h.remove()
top, left, hh, ww = nvae.head.crop
head_params = captured["head"][:, :, top:top + hh, left:left + ww].float()  # (B, P, 28, 28)
print("log p(x|z) per image (fp32, nats):", [round(v, 1) for v in reference.log_px_z[:4].tolist()], "...")

# %% [markdown]
# **The likelihood.** A pixel's probability is the mass of its bin, $\sigma(\frac{x + h - \mu}{s}) -
# \sigma(\frac{x - h - \mu}{s})$ with $h = 1/255$: a difference of two sigmoids that are often
# both close to 1, and bin edges $x \pm h$ that must be placed to better than $h$. Then 784
# per-pixel terms are summed into one number per image, and the engine sums over the batch.

# %%
likelihood = {}
for name, dtype in formats.items():
    log_px = DiscretizedLogisticMixture(head_params, 1, 8, dtype=dtype).log_prob(x_test).float()  # (B,)
    likelihood[name] = log_px
for name in ("bf16", "fp16"):
    err = (likelihood[name] - likelihood["fp32"]).abs().mean().item()
    print(f"{name}: log p(x|z) off by {err:6.2f} nats per image on average = {nats_to_bpd(err, 784):.4f} bits/dim")
batch_nll = -likelihood["fp32"]
print(f"the batch's summed negative log-likelihood: fp32 {batch_nll.sum():.0f}; "
      f"summed in fp16: {batch_nll.half().sum().item()}; in bf16: {batch_nll.bfloat16().sum().item():.0f}")
bf16_error = nats_to_bpd((likelihood["bf16"] - likelihood["fp32"]).abs().mean().item(), 784)
fp16_error = nats_to_bpd((likelihood["fp16"] - likelihood["fp32"]).abs().mean().item(), 784)
assert bf16_error > 4 * fp16_error  # bf16's 8 significant bits cost far more than fp16's 11
assert torch.isinf(batch_nll.half().sum())  # 64 images x ~2000 nats > 65504
if not SMOKE:
    assert bf16_error > 0.005  # enough to matter: Chapters 2-4 compared models 0.03 bits/dim apart

# %% [markdown]
# In bf16 the likelihood is off by about 0.03 bits/dim, in fp16 by about 0.002 — and the batch's
# total, which the engine needs for the mean loss, does not exist in fp16 at all: 64 images of
# about 2000 nats each is more than 65504.
#
# **The mixture's log-sum-exp.** Per pixel, the mixture combines its components as
# $\log \sum_k \exp(\ell_k)$. Written naively, each $\exp(\ell_k)$ underflows in fp16 once
# $\ell_k < \log 2^{-24} \approx -16.6$. `torch.logsumexp` subtracts the largest $\ell_k$ first, so
# nothing underflows that matters; what is left is the rounding of its inputs:

# %%
component_terms = {}
real_logsumexp = torch.logsumexp


def keep_terms(t, dim):  # the mixture's per-component log-probabilities, (B, M, H, W), on their way in
    component_terms["terms"] = t.detach()
    return real_logsumexp(t, dim)


torch.logsumexp = keep_terms
try:
    DiscretizedLogisticMixture(head_params, 1, 8).log_prob(x_test)
finally:
    torch.logsumexp = real_logsumexp
terms = component_terms["terms"]  # (B, M, H, W) nats
underflow = (torch.exp(terms.half()) == 0).float().mean().item()
naive16 = torch.log(torch.exp(terms.half()).sum(1))  # (B, H, W)
stable = {name: torch.logsumexp(terms.to(d), 1).float() for name, d in formats.items()}
lost_pixels = int((~torch.isfinite(naive16)).sum())
print(f"component terms from {terms.min():.1f} to {terms.max():.1f} nats; {100 * underflow:.2f}% of them "
      f"underflow to 0 under exp in fp16")
print(f"naive log(sum(exp)) in fp16: {lost_pixels} of {naive16.numel()} pixels lost every component (-inf)"
      + ("" if lost_pixels else f"; largest error {(naive16.float() - stable['fp32']).abs().max():.3f} nats per pixel"))
rounding = {}
for name in ("bf16", "fp16"):
    rounding[name] = (stable[name] - stable["fp32"]).abs().flatten(1).sum(1).mean().item()
    print(f"stable logsumexp in {name}: off by {rounding[name]:.2f} nats per image (summed over pixels), "
          f"finite everywhere: {bool(torch.isfinite(stable[name]).all())}")
assert all(torch.isfinite(v).all() for v in stable.values())
assert rounding["bf16"] > max(1.0, 4 * rounding["fp16"])

# %% [markdown]
# The naive version stays finite only while every pixel keeps at least one component above the
# limit (the line above says whether this batch did); the stable one is finite always, so it is
# the only safe way to write it. The real cost is rounding: even the stable log-sum-exp, fed bf16
# numbers, is off by several nats per image, fp16 by well under one.
#
# **The KL and the log-sigmas.** Section 1 of Chapter 4 computed each element's KL as
# $\frac12(\Delta\mu^2/\sigma_p^2 + \Delta\sigma^2 - \log\Delta\sigma^2 - 1)$. For a latent unit the
# encoder barely uses, $\Delta\sigma$ is close to 1 and the terms cancel almost exactly: with
# $\Delta\sigma = 1 + \delta$ the KL is about $\delta^2$, far below the step between numbers near 1.
# In half precision such a KL comes out as exactly 0, or as a multiple of that step:

# %%
kl_rows = {}
for l in range(1, nvae.num_groups):  # the top group's prior is N(0, I), not a network output
    p = NVAENormal.from_params(captured["prior"][l])
    q = NVAENormal.residual(captured["prior"][l], captured["posterior"][l])
    dmu, dsigma, sigma_p = q.mu - p.mu, q.sigma / p.sigma, p.sigma  # (B, Z, h, w) each, fp32
    exact = residual_kl(dmu, dsigma, sigma_p)
    row = {"fp32": (exact.sum().item() / len(x_test), (exact == 0).float().mean().item())}
    for name in ("bf16", "fp16"):
        half_kl = residual_kl(dmu.to(formats[name]), dsigma.to(formats[name]), sigma_p.to(formats[name])).float()
        row[name] = (half_kl.sum().item() / len(x_test), (half_kl == 0).float().mean().item())
    kl_rows[l] = row
    print(f"group {l} {tuple(nvae.group_shapes[l])}: KL per image " +
          ", ".join(f"{n} {v[0]:.3f}" for n, v in row.items()) + "; elements at exactly 0: " +
          ", ".join(f"{n} {100 * v[1]:.1f}%" for n, v in row.items()))
log_sigmas = torch.cat([NVAENormal.from_params(captured["prior"][l]).sigma.log().flatten() for l in captured["prior"]])
print(f"log sigma of the priors: from {log_sigmas.min():.2f} to {log_sigmas.max():.2f} (soft-clamped to (-5, 5))")
zero_fractions = {n: statistics.mean(r[n][1] for r in kl_rows.values()) for n in formats}
kl_shift = max(abs(r[n][0] - r["fp32"][0]) / r["fp32"][0] for r in kl_rows.values() for n in ("bf16", "fp16"))
assert zero_fractions["fp32"] < 0.01 < zero_fractions["fp16"] < zero_fractions["bf16"]
if not SMOKE:  # in the barely trained smoke model most of the KL sits in nearly inactive units
    assert kl_shift < 0.02
# NVAE's clamp keeps sigma^2 and 1/sigma^2 inside fp16's range; Chapter 1's bound of 7 would not:
assert torch.exp(torch.tensor(2 * 5.0, dtype=torch.float16)).isfinite()
assert torch.exp(torch.tensor(2 * 7.0, dtype=torch.float16)).isinf()

# %% [markdown]
# The summed KL per group moves by less than 2%, because each element that vanishes carried little
# KL; what is lost is the information about which units are nearly, but not quite, inactive. As
# for the log-sigmas:
# $\sigma^2 = e^{2\log\sigma}$ and $1/\sigma^2$ overflow fp16 once $|\log\sigma| > 5.5$. NVAE's soft
# clamp at 5 happens to stay inside; Chapter 1's Gaussian, clamped at 7, would not.
#
# ### How the library keeps them in fp32
#
# So the rule is: half precision for the convolutions, fp32 for the distributions. The library
# casts at the boundary: `NVAENormal.from_params` and `.residual` (`hvae_lib/probability/residual_normal.py`)
# and `DiagonalGaussian.from_params` take `.float()` of the network's raw outputs; the output head
# and `DiscretizedLogisticMixture` compute in `dtype=torch.float32` whatever autocast hands them;
# the flows do their shift, scale and log-determinant in float32 (`flows._maths_dtype`); the
# spectral regulariser switches autocast off; and the engine forms the loss from these float32
# terms. The test `tests/test_mixed_precision.py` checks every model family. Here, the dtypes a
# forward pass of the trained model produces under fp16 autocast on this CPU:

# %%
seen = {}
watch = {"a generative cell's output": nvae.groups[1].cells[0], "a prior's raw output": nvae.groups[1].prior,
         "the output head's convolution": nvae.head.conv}
hooks = [m.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.dtype)) for name, m in watch.items()]
torch.manual_seed(0)
with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
    half_out = nvae(x_test)
for h in hooks:
    h.remove()
seen.update({"log p(x|z)": half_out.log_px_z.dtype, "KL per group": half_out.kl_per_group.dtype})
for name, dtype in seen.items():
    print(f"{name:32s} {dtype}")
moved = nats_to_bpd((half_out.log_px_z - reference.log_px_z).abs().mean().item(), 784)
print(f"log p(x|z) with fp16 convolutions vs fp32: {moved:.5f} bits/dim apart")
assert all(seen[n] == torch.float16 for n in watch) and half_out.log_px_z.dtype == half_out.kl_per_group.dtype == torch.float32
assert moved < fp16_error  # fp16 convolutions cost less than fp16 maths in the likelihood

# %% [markdown]
# What does bf16 save in memory? Predict: with the convolutions' activations in 16 bits and the
# distributions in 32, what fraction of the fp32 activation memory of section 1 will a bf16
# forward save for backward?

# %% nbgrader={"grade": false, "grade_id": "predict05_bf16_memory", "locked": false, "schema_version": 3, "solution": true, "task": false}
def predicted_bf16_fraction():
    """Saved activation bytes under bf16 autocast / in fp32, batch 64."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %%
probe_model.train()
with torch.autocast("cpu", dtype=torch.bfloat16):
    bf16_by_type = activations_by_cell_type(probe_model, x_batch)
probe_model.zero_grad(set_to_none=True)
bf16_fraction = sum(bf16_by_type.values()) / sum(per_type.values())
reveal_prediction("saved under bf16 / fp32, batch 64", predicted_bf16_fraction, round(bf16_fraction, 2))
for name in per_type:
    print(f"{name:50s} {bf16_by_type.get(name, 0) / per_type[name]:.2f}x")
assert 0.4 < bf16_fraction < 0.8
assert bf16_by_type["likelihood (output head, mixture)"] > 0.7 * per_type["likelihood (output head, mixture)"]  # fp32

# %% [markdown]
# The cells shrink to about half; the likelihood, computed in fp32 on purpose, hardly shrinks.
# That is why bf16 saves about 43% rather than 50% (and mind that on this CPU bf16
# convolutions are *slower* than fp32 ones; `benchmarks/RESULTS.md` measured 7–10 times: half precision
# pays on GPUs).
#
# ### Loss scaling, and why it starts at $2^{10}$ here
#
# Gradients are small numbers. fp16 flushes anything below $2^{-24} \approx 6\times10^{-8}$ to
# zero, so the gradients of small activations would vanish. **Loss scaling** multiplies the loss by a
# factor $S$ before the backward pass — every gradient is then $S$ times larger, safely inside
# fp16's range — and divides the parameter gradients by $S$ (in fp32) before the update. Too large
# an $S$ and the largest gradients overflow to infinity: the step must be skipped. PyTorch's
# `GradScaler` adapts $S$: it halves it after every step with an infinite gradient (and skips that
# step), and doubles it after `growth_interval` steps in a row without one (2000 by default).
#
# **Exercise 4.** Write one step of dynamic loss scaling, as `GradScaler` takes it:
#
# - back-propagate the loss multiplied by the current scale $S$ (`state["scale"]`);
# - if any gradient of the optimiser's parameters (`optimizer.param_groups[...]["params"]`) is
#   infinite or NaN, skip the update: halve $S$ and reset the count of good steps
#   (`state["good_steps"]`) to 0;
# - otherwise divide every gradient by $S$, take the optimiser's step, and count one more good
#   step; when the count reaches `state["growth_interval"]`, double $S$ and reset the count;
# - return whether the step was skipped.
#
# The caller zeroes the gradients before each step and computes the loss (in fp16 where it runs
# fp16). `torch.amp.GradScaler` is what the check compares with, so it is off limits. The check
# runs several steps on a toy parameter whose gradient passes through fp16 and overflows whenever
# $S$ times its size exceeds 65504, and compares the scales, the skipped steps and the parameter
# at the end with `GradScaler`'s; `steps_with_scaled_step` runs your function for it.

# %%
def fp16_toy_steps(step_fn, magnitudes, init_scale, growth_interval, seed):
    """Run step_fn once per entry of ``magnitudes`` on a toy parameter (SGD) whose loss, sum(w * magnitude)
    computed in fp16, overflows in backward when scale * magnitude > 65504. Returns (scales after each
    step, skipped flags, the parameter at the end)."""
    weight = torch.nn.Parameter(torch.randn(6, generator=torch.Generator().manual_seed(seed)))
    optimizer = torch.optim.SGD([weight], lr=0.01)
    state = {"scale": float(init_scale), "growth_interval": growth_interval, "good_steps": 0}
    scales, skipped = [], []
    for magnitude in magnitudes:
        optimizer.zero_grad(set_to_none=True)
        loss = (weight.half() * magnitude).float().sum()  # the backward runs through fp16
        skipped.append(float(bool(step_fn(loss, optimizer, state))))
        scales.append(state["scale"])
    return torch.tensor(scales, dtype=torch.float64), torch.tensor(skipped), weight.detach().clone()


def torch_scaled_step(loss, optimizer, state):
    """The same step by torch's GradScaler (kept in ``state`` from one step to the next)."""
    scaler = state.setdefault("torch_scaler", torch.amp.GradScaler(
        "cpu", init_scale=state["scale"], growth_interval=state["growth_interval"]))
    scaler.scale(loss).backward()
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    state["scale"] = scaler.get_scale()
    return state["scale"] < before  # GradScaler lowers the scale exactly when it skipped the step


def steps_with_scaled_step(magnitudes, init_scale, growth_interval, seed):
    """The toy steps taken by your `scaled_step` (what the check grades)."""
    return fp16_toy_steps(scaled_step, magnitudes, init_scale, growth_interval, seed)


def steps_with_grad_scaler(magnitudes, init_scale, growth_interval, seed):
    """The toy steps taken by torch's GradScaler (what the check compares with)."""
    return fp16_toy_steps(torch_scaled_step, magnitudes, init_scale, growth_interval, seed)


# %% nbgrader={"grade": false, "grade_id": "ex04_scaled_step", "locked": false, "schema_version": 3, "solution": true, "task": false}
def scaled_step(loss, optimizer, state):
    """One step of dynamic loss scaling (backoff 0.5, growth 2); ``state`` ("scale", "growth_interval",
    "good_steps") is updated in place. Returns True when the step was skipped."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %%
SCALER_SHORTCUTS = ("torch.amp.grad_scaler:GradScaler", torch._amp_foreach_non_finite_check_and_unscale_, torch._amp_update_scale_)


def scale_cases(seed=0, steps=40):
    g = torch.Generator().manual_seed(seed)
    random_sizes = (2.0 ** torch.randint(0, 10, (steps,), generator=g)).tolist()  # overflows at some steps
    return {"overflow from the start: the scale backs off": ([1.0] * 10, 2.0**20, 3, seed),
            "no overflow: the scale grows every growth_interval steps": ([1.0] * 9, 2.0**4, 4, seed + 1),
            "overflows at random steps": (random_sizes, 2.0**10, 5, seed + 2),
            "a growth interval of 1": ([1.0, 2.0**12] * 5, 8.0, 1, seed + 3)}


# %% nbgrader={"grade": true, "grade_id": "ex04_scaled_step_test", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
ok_scaled_step = check("scaled_step", steps_with_scaled_step, steps_with_grad_scaler, scale_cases(), forbid=SCALER_SHORTCUTS)

# %% [markdown]
# Which gradients would fp16 have to hold for *this* model? One fp32 backward pass of the engine's
# loss on a batch, recording the gradient that flows out of every convolution, shows the small end:

# %%
nvae.train()
x_scale = trainer.batches.get(0)  # (64, 1, 28, 28)
activation_grads = []
hooks = [m.register_full_backward_hook(lambda m, gi, go: activation_grads.append(go[0].detach().abs().flatten()))
         for m in nvae.modules() if isinstance(m, torch.nn.Conv2d)]
trainer.optimizer.zero_grad(set_to_none=True)
scale_loss, _, _ = trainer.loss(x_scale, trainer.step)
with warnings.catch_warnings():  # the stem's input (the images) needs no gradient; torch mentions it
    warnings.simplefilter("ignore", UserWarning)
    scale_loss.backward()
for h in hooks:
    h.remove()
trainer.optimizer.zero_grad(set_to_none=True)
grads = torch.cat(activation_grads)
nonzero = grads[grads > 0]
flushed = {k: (nonzero * 2.0**k < 2**-24).float().mean().item() for k in (0, 10)}
print(f"{nonzero.numel():,} nonzero activation gradients, from {nonzero.min():.1e} to {nonzero.max():.2f}; "
      f"below fp16's smallest number: {100 * flushed[0]:.3f}% at S = 1, {100 * flushed[10]:.4f}% at S = 2^10")
plt.figure(figsize=(9, 3))
plt.hist(torch.log2(nonzero[torch.randperm(nonzero.numel())[:200_000]]).numpy(), bins=120, color="0.6")
for log2_scale, color in ((0, "C2"), (10, "C1"), (16, "C3")):  # fp16 holds S |g| in [2^-24, 65504]
    plt.axvline(-24 - log2_scale, color=color, ls="--", label=f"S = 2^{log2_scale}: smaller flush to 0")
    plt.axvline(math.log2(65504) - log2_scale, color=color, ls="-", label=f"S = 2^{log2_scale}: larger overflow")
plt.xlabel("log2 |activation gradient| (fp32 backward)")
plt.ylabel("elements (a sample)")
plt.legend(fontsize=7, ncol=3, loc="upper left")
plt.tight_layout()
assert flushed[10] <= flushed[0] < 0.01  # few gradients are that small

# %% [markdown]
# Few gradients here are small enough to vanish; this model's trouble is at the other end. A
# convolution's weight gradient is a sum over every pixel of every image, and the loss itself is a
# *sum* over pixels: $-\log p(x \mid z)$ adds 784 per-pixel terms (3072 for CIFAR-10), so gradients
# are hundreds of times those of a loss averaged per pixel. The real test: one fp16 backward pass of
# the trained model per scale, counting the parameter tensors whose gradient came out infinite:

# %%
FP16_STEPS, FP16_BATCH = (3, 16) if SMOKE else (8, 32)
fp16_config = override(train_config, {"precision": "fp16", "batch_size": FP16_BATCH, "grad_checkpointing": False})
fp16_trainer = Trainer(fp16_config, run_dir, resume=True)  # the trained weights and optimiser; nothing is written
x_fp16 = fp16_trainer.batches.get(fp16_trainer.step)  # (32, 1, 28, 28)
overflowing = {}
for log2_scale in (16, 14, 12, 10, 8, 6):
    fp16_trainer.optimizer.zero_grad(set_to_none=True)
    fp16_loss, _, _ = fp16_trainer.loss(x_fp16, fp16_trainer.step)  # under fp16 autocast
    (fp16_loss * 2.0**log2_scale).backward()
    overflowing[log2_scale] = [n for n, p in fp16_trainer.model.named_parameters()
                               if p.grad is not None and not torch.isfinite(p.grad).all()]
    print(f"S = 2^{log2_scale:<2d}: {len(overflowing[log2_scale]):3d} parameter tensors with an infinite gradient "
          f"{overflowing[log2_scale][:3]}")
fp16_trainer.optimizer.zero_grad(set_to_none=True)
largest_clean = max((k for k, names in overflowing.items() if not names), default=None)
print(f"largest scale without overflow on this batch: {'none tried' if largest_clean is None else f'2^{largest_clean}'}")
assert overflowing[16] and len(overflowing[16]) >= len(overflowing[10]) >= len(overflowing[6])
if not SMOKE:  # the trained model's largest clean scale is near 2^16 / 784 (see below)
    assert largest_clean is not None and abs(largest_clean - math.log2(2**16 / 784)) <= 2

# %% [markdown]
# torch's default initial scale, $2^{16}$, suits losses *averaged* over their elements. Ours is a
# sum over 784 pixels, $784 \approx 2^{9.6}$ times larger, so for us $2^{16}$ acts like $2^{25.6}$
# would on an averaged loss, and it overflows all over the network; the largest clean scale above
# (in full mode) is within a factor of 4 of $2^{16} / 784 \approx 2^{6.4}$. NVAE's `train.py` starts
# at $2^{10}$, and so does the engine; the scaler then backs off by itself to what the model needs.
# Predict: in 8 fp16 training steps of the trained model starting from $S = 2^{16}$, how many steps
# will be skipped?

# %% nbgrader={"grade": false, "grade_id": "predict05_fp16_skips", "locked": false, "schema_version": 3, "solution": true, "task": false}
def predicted_skips_from_2_16():
    """Skipped steps among the first 8 fp16 steps from a loss scale of 2^16."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% [markdown]
# The steps are taken by your `scaled_step` (the library's `GradScaler` until yours passes), on the
# engine's fp16 loss of the trained model — a loop of your own around the engine's loss, without the
# engine's gradient clipping:

# %%
scale_step = use_if_correct("scaled_step", scaled_step, torch_scaled_step, ok_scaled_step)
fp16_runs = {}
for log2_scale in (16, 10):
    fp16_trainer = Trainer(fp16_config, run_dir, resume=True)  # the trained state again, for each run
    state = {"scale": 2.0**log2_scale, "growth_interval": 2000, "good_steps": 0}
    skipped = []
    for i in range(FP16_STEPS):
        step = fp16_trainer.step + i
        fp16_trainer.optimizer.zero_grad(set_to_none=True)
        fp16_loss, _, _ = fp16_trainer.loss(fp16_trainer.batches.get(step), step)  # under fp16 autocast
        skipped.append(int(scale_step(fp16_loss, fp16_trainer.optimizer, state)))
    fp16_runs[log2_scale] = {"skipped": skipped, "scale": state["scale"]}
    print(f"from 2^{log2_scale}: skipped {sum(fp16_runs[log2_scale]['skipped'])} of {FP16_STEPS} steps "
          f"{fp16_runs[log2_scale]['skipped']}, scale now 2^{math.log2(fp16_runs[log2_scale]['scale']):.0f}")
reveal_prediction(f"skipped steps of {FP16_STEPS} from 2^16", predicted_skips_from_2_16, sum(fp16_runs[16]["skipped"]))
assert sum(fp16_runs[16]["skipped"]) >= sum(fp16_runs[10]["skipped"])
if not SMOKE:
    assert sum(fp16_runs[16]["skipped"]) > sum(fp16_runs[10]["skipped"])

# %% [markdown]
# Every skipped step is a wasted batch: the scaler halves its way down, one skipped step at a
# time, until the largest gradient fits; from $2^{10}$ there are six fewer powers of two to come
# down than from $2^{16}$. The GPU measurements of section 5 tell the same story at the paper's
# size:

# %%
for r in read_gpu_results(GPU_RESULTS):
    if r["preset"] == "nvae_cifar10" and r["precision"] == "fp16":
        print(f"{r['device']}, batch {r['batch']}: {r['skipped_steps']} of {r['timed_steps'] or 'the'} timed steps "
              f"skipped. {r.get('note', '')}")

# %% [markdown]
# bf16 needs no scaling at all: its range is fp32's. On GPUs that have it (NVIDIA's since Ampere),
# it is the simpler choice, and the course's paper presets use it; NVAE, written for V100s, had only
# fp16.


# %% [markdown]
# ## 4. NVAE's trick: recomputing BatchNorm in the backward pass
#
# NVAE's paper reports that mixed precision saved about 40% of the memory, and that recomputing
# BatchNorm in the backward pass saved about 18% more. The official code does not checkpoint whole
# cells; it fuses each BN with the Swish that follows it (`SyncBatchNormSwish`). Separately, BN
# saves its input $x$ and Swish saves its input $y = \mathrm{BN}(x)$: two tensors of the same size.
# The fused op saves only $x$ and the per-channel mean and inverse deviation, and its backward recomputes
# $y$ from them — one cheap elementwise pass — before applying Swish's and BN's derivatives.
#
# The library's `hvae_lib.memory.recompute.BNSwish` does the same, and `fuse_bn_swish(model)` turns every
# BN–Swish pair of a model into one (keeping the parameters, buffers and `state_dict` as they are).
# It computes the same function and the same gradients: on a copy of the trained model, the loss
# and every gradient agree with the unfused model's, up to float32 rounding (its backward adds
# things up in another order; in float64 the unit tests find them equal to eight digits and more):

# %%
fused = copy.deepcopy(nvae)
pairs = fuse_bn_swish(fused)
results = []
for m in (nvae, fused):
    m.train()
    m.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    with frozen_running_stats():
        loss = train_loss(m, x_batch)
    loss.backward()
    results.append((loss.item(), torch.cat([p.grad.flatten() for p in m.parameters()])))
    m.zero_grad(set_to_none=True)
grad_gap = ((results[0][1] - results[1][1]).abs().max() / results[0][1].abs().max()).item()
print(f"{pairs} BN-Swish pairs fused; loss {results[0][0]:.3f} vs {results[1][0]:.3f}; largest gradient "
      f"difference {grad_gap:.1e} of the largest gradient")
assert abs(results[0][0] - results[1][0]) < 1e-3 and grad_gap < 1e-3  # float32 rounding: sums in another order

# %% [markdown]
# Now the memory, per image, on this model — plain, fused, checkpointed, each in fp32 and bf16 —
# from counts at two batch sizes, so the batch-independent part drops out:

# %%
def per_image_bytes(model, x_pool, small, large, dtype=None, ckpt=False):
    with_checkpointing(model, ckpt)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        _, per_image = saved_line(model, small, large, x_pool)
    with_checkpointing(model, False).zero_grad(set_to_none=True)
    return per_image


def memory_table(plain_model, fused_model, x_pool, small, large):
    settings = {"fp32": (plain_model, None, False), "bf16": (plain_model, torch.bfloat16, False),
                "fp32 + fused BN-Swish": (fused_model, None, False), "bf16 + fused BN-Swish": (fused_model, torch.bfloat16, False),
                "fp32 + checkpointing": (plain_model, None, True), "bf16 + checkpointing": (plain_model, torch.bfloat16, True)}
    return {name: per_image_bytes(m, x_pool, small, large, dtype, ckpt) for name, (m, dtype, ckpt) in settings.items()}


def show_memory_table(table, title):
    base = table["fp32"]
    for name, value in table.items():
        print(f"  {name:24s} {value / MIB:8.2f} MiB per image  {value / base:5.2f}x")
    plt.figure(figsize=(7, 2.6))
    plt.barh(list(table)[::-1], [v / base for v in list(table.values())[::-1]])
    plt.xlabel("activation memory per image, relative to fp32")
    plt.title(title)
    plt.tight_layout()


small_b, large_b = (2, 4) if SMOKE else (16, 48)
chapter_table = memory_table(nvae, fused, x_pool, small_b, large_b)
show_memory_table(chapter_table, "the chapter's NVAE (Fashion-MNIST)")
chapter_fused_saving = 1 - chapter_table["fp32 + fused BN-Swish"] / chapter_table["fp32"]
assert chapter_table["fp32 + checkpointing"] < chapter_table["fp32 + fused BN-Swish"] < chapter_table["fp32"]
assert chapter_table["bf16 + fused BN-Swish"] < chapter_table["bf16"] < chapter_table["fp32"]

# %% [markdown]
# Fusing saves about 23% of this model's activation memory, close to the paper's 18%; checkpointing every
# cell saves far more. The paper's claims were made on its own models, though. The CIFAR-10 model
# (`nvae_cifar10`: one scale of 30 groups at 16×16, 128 channels, a flow per group) is far too
# big for this CPU, but its *structure* is what sets these ratios: the cells' feature maps have
# channels proportional to the width, so a copy at a quarter of the width (32 channels) keeps the
# proportions between its cells. (The latents, 20 channels per group, and the likelihood's
# parameters do not shrink with the width, so the copy must not be much narrower: section 5
# compares it with the GPU.) The same table for it (in smoke mode, an eighth of that width and
# tiny batches):

# %%
WIDTH, (small_c, large_c) = (4, (1, 2)) if SMOKE else (32, (1, 3))
cifar_config = override(get_preset("nvae_cifar10"), {"num_channels_enc": WIDTH, "num_channels_dec": WIDTH})
torch.manual_seed(0)
cifar_model = cifar_config.model.build((3, 32, 32), 8, "logistic_mixture").train()
cifar_fused = copy.deepcopy(cifar_model)
fuse_bn_swish(cifar_fused)
cifar_images = torch.randint(0, 256, (large_c, 3, 32, 32)).float() / 255  # (B, 3, 32, 32): the counts need shapes, not data
start = time.perf_counter()
cifar_table = memory_table(cifar_model, cifar_fused, cifar_images, small_c, large_c)
print(f"CIFAR-10 layout at {WIDTH} channels ({sum(p.numel() for p in cifar_model.parameters()):,} parameters; "
      f"counted in {time.perf_counter() - start:.0f} s):")
show_memory_table(cifar_table, f"nvae_cifar10's layout at {WIDTH} channels")
mixed_saving = 1 - cifar_table["bf16"] / cifar_table["fp32"]
fused_on_top = 1 - cifar_table["bf16 + fused BN-Swish"] / cifar_table["bf16"]
print(f"mixed precision saves {100 * mixed_saving:.0f}% (paper: about 40%); fused BN-Swish saves "
      f"{100 * fused_on_top:.0f}% more on top of it (paper: about 18%)")
assert 0.3 < mixed_saving < 0.55  # the paper: about 40%
if not SMOKE:  # at smoke mode's 4 channels the latents and the likelihood, which have no BN, outweigh the cells
    assert 0.1 < fused_on_top < 0.3  # the paper: about 18%
    assert cifar_table["bf16 + checkpointing"] < 0.5 * cifar_table["bf16 + fused BN-Swish"]
assert cifar_table["bf16 + checkpointing"] < cifar_table["bf16 + fused BN-Swish"] < cifar_table["bf16"]

# %% [markdown]
# On the paper's layout both come out close to the paper's figures: bf16 autocast saves about 48%
# per image, and the fused BN-Swish about 23% more. Checkpointing whole cells goes much further.
# And the time? The same steps as in section 2, plain, fused and checkpointed, taking turns:

# %%
three_ways = trade_off({"plain": (nvae, False), "fused BN-Swish": (fused, False), "checkpointing": (nvae, True)},
                       [8] if SMOKE else [64], 2 if SMOKE else 5, x_pool)
print(f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
for name, row in three_ways.items():
    print(f"{name:15s} {row['mib'][0]:6.1f} MiB saved, {1000 * row['seconds'][0]:5.0f} ms per forward + backward "
          f"({row['seconds'][0] / three_ways['plain']['seconds'][0]:.2f}x)")
assert three_ways["checkpointing"]["mib"][0] < three_ways["fused BN-Swish"]["mib"][0] < three_ways["plain"]["mib"][0]
if not SMOKE:  # at a batch of 8 both are dominated by Python overheads
    assert three_ways["fused BN-Swish"]["seconds"][0] < three_ways["checkpointing"]["seconds"][0]

# %% [markdown]
# The fused op recomputes one elementwise affine map per pair, where checkpointing reruns whole
# cells, convolutions included: NVAE's trick costs less time than checkpointing but saves about a
# fifth where checkpointing saves about four fifths. The library trains with checkpointing (`--set
# grad_checkpointing=true`) and offers `fuse_bn_swish` for measurements like these.
#
# ## 5. On a GPU: the measurements, the paper's claims, and a recipe
#
# The engine's GPU benchmark (`benchmarks/engine_gpu.py`) trained the paper's CIFAR-10 model on
# one H100 at several batch sizes in every setting and recorded the peak memory
# (`torch.cuda.max_memory_allocated`: weights, gradients, Adamax state and activations). The
# figures live in `benchmarks/gpu_results.json`, each with its command and source; the chapter reads
# them from there:

# %%
gpu_runs = [r for r in read_gpu_results(GPU_RESULTS) if r["preset"] == "nvae_cifar10"]
current = [r for r in gpu_runs if not r.get("superseded") and r["peak_gib"] is not None]
device = gpu_runs[0]["device"]
at_32 = {r["setting"]: r["peak_gib"] for r in current if r["batch"] == 32}
for r in gpu_runs:
    peak = "out of memory" if r["out_of_memory"] else ("not recorded" if r["peak_gib"] is None else f"{r['peak_gib']:6.2f} GiB")
    flag = " (superseded)" if r.get("superseded") else ""
    print(f"batch {r['batch']:4d}  {r['setting']:27s} {peak:>14s}  {r['images_per_s'] or '':>5} img/s{flag}")

fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
names = ["fp32", "fp16 (NVAE's amp)", "bf16", "fp32 + grad checkpointing", "bf16 + grad checkpointing"]
axes[0].barh(names[::-1], [at_32[n] for n in names[::-1]], color="C0", label=f"measured, {device}")
paper_mp = at_32["fp32"] * (1 - 0.40)
axes[0].axvline(paper_mp, color="C1", ls="--", label="paper: mixed precision saves ~40%")
axes[0].axvline(paper_mp * (1 - 0.18), color="C2", ls=":", label="paper: + BN recomputation ~18% more")
axes[0].axvline(at_32["bf16"] * (1 - fused_on_top), color="C3", ls="-.", label="bf16 + fused BN-Swish (from section 4's counts)")
axes[0].set(xlabel="peak GiB", title="nvae_cifar10, batch 32 (the official per-GPU batch)")
axes[0].legend(fontsize=7, loc="lower right")
for setting in ("fp32", "bf16", "bf16 + grad checkpointing"):
    rows = sorted((r["batch"], r["peak_gib"]) for r in current if r["setting"] == setting)
    axes[1].plot(*zip(*rows), "o-", label=setting)
oom = [r["batch"] for r in gpu_runs if r["out_of_memory"]]
axes[1].axhline(gpu_runs[0]["device_total_gib"], color="k", ls="--", label="the GPU's memory")
axes[1].plot(oom, [gpu_runs[0]["device_total_gib"]] * len(oom), "rx", markersize=10, label="fp32: out of memory")
axes[1].set(xlabel="batch size", ylabel="peak GiB", title="peak memory against batch size", xticks=[32, 64, 128, 256])
axes[1].legend(fontsize=7)
plt.tight_layout()
gpu_mixed_saving = 1 - at_32["bf16"] / at_32["fp32"]
print(f"on the GPU, bf16 saves {100 * gpu_mixed_saving:.0f}% of the peak (paper: ~40%); bf16 + checkpointing "
      f"{100 * (1 - at_32['bf16 + grad checkpointing'] / at_32['bf16']):.0f}% more (paper's BN trick: ~18%)")
assert abs(gpu_mixed_saving - 0.40) < 0.1 and abs(at_32["fp16 (NVAE's amp)"] - at_32["bf16"]) < 0.05 * at_32["bf16"]
assert at_32["bf16 + grad checkpointing"] < 0.5 * at_32["bf16"]

# %% [markdown]
# The GPU confirms the paper's ~40% for mixed precision (fp16 and bf16 store the same bytes). With
# whole cells checkpointed, the peak falls much further than NVAE's 18% would take it. Memory grows
# in a straight line with the batch, which makes the budget easy to plan:
#
# $$M(B) = M_{\text{fixed}} + B \cdot m_{\text{image}},$$
#
# with $M_{\text{fixed}}$ what does not grow with the batch — the weights, gradients and optimiser
# state (16 bytes per parameter with Adamax), weight normalisation's copies of the weights, the
# GPU's workspaces — and $m_{\text{image}}$ the activations of one image.
#
# **Exercise 5.** Fit that line by least squares: given the batch sizes and peak memories of one
# setting, return `torch.tensor([fixed, per_image])` in the units of the peaks. Write the closed
# form (slope = covariance of batch and peak over the variance of the batch); the library's
# `fit_costs` and `torch.linalg.lstsq` are off limits.

# %% nbgrader={"grade": false, "grade_id": "ex05_memory_line", "locked": false, "schema_version": 3, "solution": true, "task": false}
def memory_line(batches, peaks):
    """Least-squares (fixed, per_image) of peaks = fixed + batch * per_image; lists of equal length >= 2."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %%
def library_memory_line(batches, peaks):
    runs = [{"setting": "s", "precision": "fp32", "grad_checkpointing": False, "batch": b, "peak_gib": p, "step_ms": None}
            for b, p in zip(batches, peaks)]
    cost = fit_costs(runs)[0]
    return torch.tensor([cost.fixed_bytes / GIB, cost.per_image_bytes / GIB], dtype=torch.float64)


LINE_SHORTCUTS = ("hvae_lib.memory.plan:fit_costs", torch.linalg.lstsq)


def gpu_line_cases(settings=("fp32", "bf16", "bf16 + grad checkpointing")):
    cases = {}
    for setting in settings:
        rows = sorted((r["batch"], r["peak_gib"]) for r in current if r["setting"] == setting)
        cases[f"the GPU's peaks, {setting}"] = tuple(map(list, zip(*rows)))
    return cases


def line_cases(seed=0):
    g = torch.Generator().manual_seed(seed)
    noise = (0.1 * torch.rand(4, generator=g)).tolist()  # not quite on a line
    return {"two batch sizes": ([8, 64], [1.0 + noise[0], 2.0]),
            "a batch size measured twice": ([10, 10, 30], [3.0, 3.2 + noise[1], 7.0]),
            "four batch sizes, not quite on a line": ([1, 2, 3, 5], [5.0, 7.0 + noise[2], 9.5, 13.0 + noise[3]])}


# %% nbgrader={"grade": true, "grade_id": "ex05_memory_line_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
ok_memory_line = check("memory_line", memory_line, library_memory_line, {**gpu_line_cases(), **line_cases()},
                       forbid=LINE_SHORTCUTS)


# %% [markdown]
# The fitted lines of every setting, from the GPU measurements (a setting measured at a single
# batch size gets $M_{\text{fixed}}$ = 16 bytes per parameter). Predict before running: the
# paper's global batch is 256 images. How many GiB would bf16 *without* checkpointing need for all
# 256 on one GPU?

# %% nbgrader={"grade": false, "grade_id": "predict05_bf16_256", "locked": false, "schema_version": 3, "solution": true, "task": false}
def predicted_bf16_gib_at_256():
    """Peak GiB of bf16 without checkpointing at batch 256 on one GPU."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %%
line_fn = use_if_correct("memory_line", memory_line, library_memory_line, ok_memory_line)
costs = fit_costs(current, num_parameters=gpu_runs[0]["parameters"])
for c in costs:
    rows = sorted((r["batch"], r["peak_gib"]) for r in current if r["setting"] == c.setting)
    fixed_gib, per_image_gib = (line_fn(*map(list, zip(*rows))).tolist() if len(rows) > 1
                                else (c.fixed_bytes / GIB, c.per_image_bytes / GIB))
    print(f"{c.setting:27s} {fixed_gib:5.2f} GiB + B x {1024 * per_image_gib:6.1f} MiB")
for r in current:  # every measured peak lies on its setting's line (within 3%)
    cost = next(c for c in costs if c.setting == r["setting"])
    assert abs(cost.memory(r["batch"]) - r["peak_gib"] * GIB) < 0.03 * r["peak_gib"] * GIB
print(f"16 bytes per parameter would be {16 * gpu_runs[0]['parameters'] / GIB:.2f} GiB")
bf16_cost = next(c for c in costs if c.setting == "bf16")
reveal_prediction("bf16 at batch 256", predicted_bf16_gib_at_256, round(bf16_cost.memory(256) / GIB, 1), " GiB")
per_image_gpu = {c.setting: c.per_image_bytes for c in costs}
gpu_mixed_per_image = 1 - per_image_gpu["bf16"] / per_image_gpu["fp32"]
print(f"per image, bf16 saves {100 * gpu_mixed_per_image:.0f}% of the activations on the GPU; section 4's count on "
      f"this CPU, at {WIDTH} channels, said {100 * mixed_saving:.0f}%")
assert bf16_cost.memory(256) > gpu_runs[0]["device_total_gib"] * GIB  # does not fit the 80 GB GPU
assert abs(gpu_mixed_per_image - mixed_saving) < (0.15 if SMOKE else 0.05)  # smoke mode's 4 channels are far off

# %% [markdown]
# ### A recipe
#
# With these lines, choosing settings for a GPU is arithmetic. `hvae_lib.memory.plan.suggest_settings`
# follows three rules:
#
# 1. keep about 10% of the GPU free (the CUDA context, cuDNN's workspaces and the allocator's
#    fragmentation are not in the measured peaks);
# 2. use as few GPUs as hold the global batch — more GPUs split it (`torchrun`), at the cost of
#    the GPUs and of BatchNorm statistics over smaller per-GPU batches;
# 3. on that many GPUs, take the setting with the fastest predicted step that fits. Step times are
#    lines in the batch too; bf16 only where the GPU has it (NVIDIA's from Ampere on; a V100 has
#    fp16 with loss scaling).
#
# For the paper's CIFAR-10 model and its global batch of 256, and for the official per-GPU batch of 32:

# %%
gpus = {"V100 16 GB (no bf16)": (16, False), "RTX 4090 24 GB": (24, True), "A100 40 GB": (40, True),
        device: (gpu_runs[0]["device_total_gib"], True)}
plans = {}
for batch in (256, 32):
    for gpu, (gib, bf16_ok) in gpus.items():
        plan = suggest_settings(gib * GIB, costs, batch, bf16_supported=bf16_ok)
        plans[gpu, batch] = plan
        print(f"global batch {batch:3d} on {gpu:24s}: {plan}")
for (gpu, batch), plan in plans.items():
    gib, bf16_ok = gpus[gpu]
    usable = 0.9 * gib * GIB
    assert plan.memory_bytes <= usable and plan.batch_per_gpu * plan.num_gpus >= batch
    if plan.num_gpus > 1:  # no setting would have held the batch on one GPU fewer
        fewer = math.ceil(batch / (plan.num_gpus - 1))
        assert all(c.memory(fewer) > usable for c in costs if bf16_ok or c.precision != "bf16")
assert plans[device, 256].cost.grad_checkpointing and plans[device, 256].num_gpus == 1
assert plans["V100 16 GB (no bf16)", 256].num_gpus > 1 and plans["V100 16 GB (no bf16)", 256].cost.grad_checkpointing
assert not plans["A100 40 GB", 32].cost.grad_checkpointing and not plans[device, 32].cost.grad_checkpointing

# %% [markdown]
# The H100 holds the paper's whole global batch with bf16 and checkpointing, which is what
# `python -m hvae_lib.train --preset nvae_cifar10 --set grad_checkpointing=true` runs; a 16 GB GPU
# without bf16 needs several GPUs and checkpointing for it. At the official 32 images per GPU the
# larger GPUs can skip the recomputation. Two cautions. The step times behind rule 3 were
# measured on a host-bound machine (`benchmarks/RESULTS.md`: about 200 ms of GPU work in a 1 s
# step), where bf16 is no faster than fp32; on a GPU kept busy, half precision is usually faster as
# well (tensor cores), which these measurements cannot show. And every line comes from one model:
# for another, measure it (`benchmarks/engine_gpu.py --json`).
#
# ## Summary
#
# - A training step's memory is mostly **activations** saved for the backward pass, not parameters:
#   here about 70 times the parameters, gradients and optimiser state together.
#   `saved_tensors_hooks` count them; by cell type the generative cells and the likelihood lead.
# - **Gradient checkpointing** keeps one input per cell and recomputes the rest in the backward pass:
#   about a fifth of the activation memory here, for 15–45% more time per step at batches up to 64
#   on this CPU and none at 128; its gradients are exactly
#   the plain ones. With BatchNorm, the recomputation must not update the running statistics again.
# - **Half precision**: bf16 has fp32's range and 8 significant bits, fp16 11 bits and a range that
#   ends at 65504. Run the convolutions in it, and keep the distributions in fp32: the likelihood
#   loses 0.03 bits/dim in bf16, the batch's loss overflows fp16, and nearly inactive units' KL
#   rounds to zero. fp16 needs loss scaling; with losses summed over pixels the scale must start
#   low ($2^{10}$).
# - **NVAE's BN-Swish recomputation** saves about a fifth on the paper's layout (the paper: 18%)
#   at the cost of one elementwise pass; checkpointing whole cells saves several times more at the
#   cost of a forward.
# - Memory is a straight line in the batch; measured once per setting, it tells which batch,
#   precision and checkpointing a GPU can hold (`hvae_lib.memory.plan.suggest_settings`).
#
# **Next:** the Very Deep VAE (Child 2021) drops BatchNorm and spectral regularisation altogether and
# stabilises a hierarchy of dozens of groups with careful initialisation and gradient skipping;
# its memory is dominated by the same activations, and the same tools apply.
#
# Further reading: Vahdat & Kautz (2020), *NVAE*, section 3 ("reducing the memory requirements"); Micikevicius et al. (2018),
# *Mixed Precision Training* (loss scaling); Chen et al. (2016), *Training Deep Nets with Sublinear
# Memory Cost* (checkpointing); Kalamkar et al. (2019), *A Study of BFLOAT16 for Deep Learning
# Training*; the PyTorch documentation of `torch.autograd.graph.saved_tensors_hooks`,
# `torch.utils.checkpoint` and `torch.amp`.
