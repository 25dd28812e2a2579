# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 3 — NVAE I: the architecture
#
# NVAE (Vahdat & Kautz 2020) keeps the hierarchy of Chapter 2 — latent groups inferred top-down
# along the generative path — and asks what the *networks* inside it should look like. Its answer
# is a handful of architectural choices that made hierarchical VAEs competitive on real images.
# This chapter builds them one at a time and then trains a small NVAE on Fashion-MNIST.
#
# **You will learn**
# 1. NVAE's two residual cells — the encoder cell and the generative cell, drawn from the library's
#    modules — and why each ends in `skip + 0.1 * branch`;
# 2. depthwise separable convolutions and the inverted residual: parameters (*exercise 1*) and
#    receptive fields (*derivation 1*, then *exercise 2*), counted by hand and checked on the
#    library's modules;
# 3. Swish and squeeze-and-excitation (*exercise 3*), and the generative cell assembled from its
#    layers (*exercise 4*): the chapter then trains its NVAE with your cell;
# 4. why earlier VAEs avoided BatchNorm, what the NVAE paper says about BN's momentum, what
#    "momentum" means in PyTorch and in TensorFlow, BatchNorm's two modes written out (*exercise
#    5*), what NVAE's 0.05 changes — measured with your BatchNorm — and the regulariser on the BN
#    scales;
# 5. the bidirectional encoder: a bottom-up tower and a top-down tower shared with the generative
#    model, with latent groups at several scales (a diagram read off the model), and one latent
#    group — encoder combiner, residual-normal posterior, KL, decoder combiner — written by you
#    (*exercise 6*): the chapter's NVAE trains with it in every group;
# 6. how a small NVAE trained on a CPU compares with the VAE of Chapter 1 and the Ladder VAE of
#    Chapter 2: bits/dim, KL per group, samples and reconstructions, and what BatchNorm's lag and
#    noise cost it.
#
# Before some measurements you are asked to *predict* the result first (a function returning your
# guess); the measuring cell prints your prediction beside the number.
#
# **What to expect.** Full mode trains NVAE for 1500 steps and takes about 8 minutes on a 2-core
# CPU when the machine is otherwise idle: the run whose figures this chapter quotes took 459 s
# (880 s of CPU time on two threads), 6.8 minutes of it the training at 0.26 s per step.
# The model, 140 000 parameters like the earlier chapters' 107 000 (VAE) and 126 000 (Ladder VAE),
# reaches about **3.52 bits/dim** on the Fashion-MNIST test set, against 3.71 for Chapter 1's VAE
# and 3.67 for Chapter 2's Ladder VAE (all three are printed below, the earlier two from their
# runs in `runs/` when you have run those chapters, else the figures their chapters report). The
# preset's own length, 2000 steps (`python -m hvae_lib.train --preset nvae_fashion`), reaches 3.46
# bits/dim but needs about 9 minutes for the training alone (2000 steps at 0.26 s), which would take
# the chapter past its 10-minute budget; that is why it stops at 1500.
# `HVAE_SMOKE=1` runs everything in well under a minute on a few hundred images.
#
# Chapter 4 ("NVAE II: taming the KL") loads the model trained here from `runs/ch03_nvae/` and
# covers the rest of NVAE: the residual normal posterior, spectral regularisation, KL warm-up and
# balancing, BN re-estimation for sampling, and flows.

# %%
import copy
import json
import math
import shutil
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import nn

from hvae_lib.analysis import diagnostics
from hvae_lib.analysis.diagrams import ENCODER_COLOUR, draw_cell, draw_nvae
from hvae_lib.analysis.plotting import read_metrics, show_grid
from hvae_lib.config import override
from hvae_lib.data import load_dataset
from hvae_lib.exercises import assert_matches, check, resolve, reveal_prediction, smoke_mode, use_if_correct
from hvae_lib.layers.cells import EncoderCell, GenerativeCell, SqueezeExcite, Swish, use_generative_cell
from hvae_lib.layers.norms import BN_MOMENTUM, BatchNorm2d, batchnorm_layers, bn_regularizer, frozen_running_stats
from hvae_lib.models.presets import get_preset
from hvae_lib.probability.gaussian import sum_except_batch
from hvae_lib.probability.objectives import elbo, nats_to_bpd
from hvae_lib.probability.residual_normal import NVAENormal
from hvae_lib.training.engine import Trainer

SMOKE = smoke_mode()
torch.manual_seed(0)
RUNS = Path("runs")
SMOKE_CHANGES = {"max_steps": 20, "train_limit": 512, "test_limit": 256, "batch_size": 64, "eval_every": 10,
                 "eval_batches": 2, "log_every": 5, "warmup_steps": 5, "kl_warmup_steps": 6, "checkpoint_every": 10,
                 "sample_every": 0, "quiet": True}
data = load_dataset("fashion_mnist", train_limit=512 if SMOKE else None, test_limit=256 if SMOKE else None)
x_test = torch.stack([data.test[i][0] for i in range(min(1000, len(data.test)))])  # (N, 1, 28, 28)
print(f"smoke mode: {SMOKE}; {len(data.train)} training images, {len(x_test)} test images for diagnostics")

# %% [markdown]
# ## 1. What a VAE asks of its networks
#
# The paper's starting point: most VAEs borrow their networks from classifiers, but a VAE wants
# something else from them.
#
# - A classifier may throw away everything but the label; a VAE's encoder must keep what it needs
#   to *reconstruct* the image, and its decoder must put every pixel back.
# - Images have long-range correlations (the left sleeve looks like the right one), so the
#   networks need large receptive fields.
# - The KL terms of a deep hierarchy are unbounded, so deep VAEs are easily unstable; anything that
#   adds noise to the networks — BatchNorm was the suspect — was avoided.
#
# NVAE's answers, in this chapter: residual cells built from depthwise separable convolutions,
# Swish and squeeze-and-excitation, BatchNorm used with care, and a multi-scale hierarchy with a
# bidirectional encoder. Chapter 4 adds the parts that tame the KL.
#
# ## 2. Two residual cells
#
# Every block of NVAE is a residual cell, `output = skip(x) + 0.1 * branch(x)`, where the skip is
# the identity unless the cell changes the resolution. The two branches differ:
#
# - **encoder cell** (bottom-up tower): BN – Swish – Conv3×3 – BN – Swish – Conv3×3 – SE;
# - **generative cell** (top-down tower): BN – Conv1×1 (C → 6C) – BN – Swish – depthwise Conv5×5 –
#   BN – Swish – Conv1×1 (6C → C) – BN – SE.
#
# Normalisation and activation come *before* each convolution (the "pre-activation" order, which
# the paper found better than Conv–BN–activation). The library's cells, `hvae_lib.layers.cells.EncoderCell`
# and `GenerativeCell`, list their layers in exactly that order. Drawn from the modules themselves
# (`hvae_lib.analysis.diagrams` reads every box off the cell's layers, with its channels at 16 input
# channels), input at the top:

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 7.5))
encoder_labels = draw_cell(EncoderCell(16), axes[0], "encoder cell (bottom-up)", colour=ENCODER_COLOUR)
generative_labels = draw_cell(GenerativeCell(16), axes[1], "generative cell (top-down)")
plt.tight_layout()
assert generative_labels[4] == "dwConv 5x5 96" and generative_labels[-1] == encoder_labels[-1] == "SE"
assert "Swish" not in (generative_labels[0], generative_labels[1])  # no activation before the expanding 1x1

# %% [markdown]
# The same, as text, with each cell's number of parameters:

# %%
encoder_cell, generative_cell = EncoderCell(16), GenerativeCell(16)
for name, cell in [("encoder cell", encoder_cell), ("generative cell", generative_cell)]:
    layers = [type(m).__name__ if not isinstance(m, nn.Sequential) else "-".join(type(s).__name__ for s in m)
              for m in cell.branch]
    print(f"{name:15s}: {' | '.join(layers)}")
    print(f"{'':15s}  {sum(p.numel() for p in cell.parameters()):,} parameters at 16 channels")
depthwise = [m for m in generative_cell.branch if isinstance(m, nn.Conv2d) and m.groups > 1]
assert len(depthwise) == 1 and depthwise[0].groups == depthwise[0].in_channels == 6 * 16  # one depthwise 5x5 on 6C
assert depthwise[0].kernel_size == (5, 5)

# %% [markdown]
# Why the factor 0.1? At initialisation each branch outputs something of order one (the generative
# branch ends in BatchNorm, unit variance per channel, and an SE gate around 0.5). A deep stack of plain residual
# cells adds one such term per cell, and the activations grow with depth; scaled by 0.1, each cell
# starts close to the identity and the stack as a whole starts as a well-behaved function, which
# is what a deep hierarchy needs in its first steps. Twenty generative cells, with and without the
# factor:

# %%
torch.manual_seed(0)
stack = [GenerativeCell(16) for _ in range(20)]
x_cells = torch.randn(32, 16, 8, 8)  # (B, C, H, W)
growth = {}
with torch.no_grad():
    for factor in (0.1, 1.0):
        h = x_cells
        for cell in stack:
            h = cell.skip(h) + factor * cell.branch(h)
        growth[factor] = (h.std() / x_cells.std()).item()
        print(f"skip + {factor} * branch, 20 cells: std of the output / std of the input = {growth[factor]:.2f}")
assert growth[0.1] < 1.1 < 1.5 < growth[1.0]

# %% [markdown]
# ## 3. Depthwise separable convolutions
#
# The decoder needs a large receptive field, and the obvious way — bigger kernels — is expensive: a
# regular $k\times k$ convolution from $C$ to $C$ channels has $k^2 C^2$ weights. A *depthwise*
# convolution gives each channel its own $k\times k$ filter ($k^2 C$ weights) and a *pointwise*
# $1\times 1$ convolution then mixes the channels ($C^2$): together, a *depthwise separable*
# convolution (Xception, MobileNet). A depthwise filter sees one channel only, which limits what
# it can express; MobileNetV2's *inverted residual* first expands to $EC$ channels with a $1\times1$
# convolution, filters those depthwise, and projects back — NVAE's generative cell with $E = 6$ and
# $k = 5$. The paper reports that depthwise convolutions helped in the decoder and hurt in the
# encoder, which is why the encoder cell keeps regular 3×3 convolutions.
#
# **Exercise 1.** Count the weights (no biases) of the three ways to mix a $C$-channel map over a
# $k\times k$ window, from $C$ channels back to $C$: a regular convolution, a depthwise separable
# one, and the inverted residual with expansion $E$. Return them as a tensor of three integers.

# %% nbgrader={"grade": false, "grade_id": "ex01_conv_weights", "locked": false, "schema_version": 3, "solution": true, "task": false}
def conv_weight_counts(channels, kernel_size, expansion):
    """Weights of a k x k mixing C -> C channels: [regular conv, depthwise separable conv, inverted
    residual (1x1 C -> EC, depthwise k x k on EC channels, 1x1 EC -> C)], as a (3,) integer tensor."""
    ### BEGIN SOLUTION
    c, k, e = channels, kernel_size, expansion
    regular = k * k * c * c
    separable = k * k * c + c * c  # depthwise k x k, then pointwise 1x1
    inverted = c * (e * c) + k * k * (e * c) + (e * c) * c
    return torch.tensor([regular, separable, inverted])
    ### END SOLUTION


# %% [markdown]
# The check counts `p.numel()` over real modules: `nn.Conv2d` layers for the first two, and the
# convolutions inside the library's `GenerativeCell` for the third.

# %%
def count_parameters(modules):
    return sum(p.numel() for m in modules for p in m.parameters())


def conv_weights_reference(channels, kernel_size, expansion):
    regular = nn.Conv2d(channels, channels, kernel_size, bias=False)
    separable = [nn.Conv2d(channels, channels, kernel_size, groups=channels, bias=False),
                 nn.Conv2d(channels, channels, 1, bias=False)]
    cell = GenerativeCell(channels, expansion=expansion, kernel_size=kernel_size, use_se=False)
    inverted = [m for m in cell.branch if isinstance(m, nn.Conv2d)]
    return torch.tensor([count_parameters([regular]), count_parameters(separable), count_parameters(inverted)])


# %% nbgrader={"grade": true, "grade_id": "ex01_conv_weights_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
ok_conv_weights = check("conv_weight_counts", conv_weight_counts, conv_weights_reference,
                        {"NVAE's cell (5x5, E = 6)": (16, 5, 6), "a wider cell": (32, 5, 6), "a 3x3 window, E = 3": (4, 3, 3),
                         "a 1x1 window": (8, 1, 6), "no expansion (E = 1)": (3, 3, 1)})
### BEGIN HIDDEN TESTS
assert_matches("conv_weight_counts", conv_weight_counts, conv_weights_reference,
               {"NVAE's cell (5x5, E = 6)": (64, 5, 6), "a wider cell": (48, 7, 6), "a 3x3 window, E = 3": (12, 3, 3),
                "a 1x1 window": (5, 1, 2), "no expansion (E = 1)": (6, 9, 1)})
### END HIDDEN TESTS

# %% [markdown]
# **Predict, then run.** At 32 channels and a 5×5 window, how many times more weights does a
# regular convolution have than the depthwise separable one? Write your guess in the function
# below (a number), then run the next cell.

# %% nbgrader={"grade": false, "grade_id": "predict03_separable_ratio", "locked": false, "schema_version": 3, "solution": true, "task": false}
def predicted_separable_ratio():
    """Your guess: weights of a regular 5x5 conv at 32 channels / weights of the depthwise separable one."""
    ### BEGIN SOLUTION
    return 14.0  # 25 * 32^2 / (25 * 32 + 32^2) = 25600 / 1824: the 1x1 part dominates the separable one
    ### END SOLUTION


# %%
counts = {k: conv_weights_reference(32, k, 6).tolist() for k in (3, 5, 7)}
print(f"{'window':>6s} {'regular':>9s} {'separable':>10s} {'inverted (E=6)':>15s}")
for k, (regular, separable, inverted) in counts.items():
    print(f"{k}x{k:<4d} {regular:9,d} {separable:10,d} {inverted:15,d}")
(regular3, _, inverted3), (regular5, separable5, inverted5) = counts[3], counts[5]
reveal_prediction("regular / separable weights at 32 channels, 5x5", predicted_separable_ratio,
                  round(regular5 / separable5, 1), " times")
assert separable5 < regular5 / 10
assert inverted3 > regular3 and inverted5 < regular5  # the inverted residual pays off for large windows
assert counts[7][2] - inverted5 == 24 * 6 * 32 and counts[7][0] - regular5 == 24 * 32 * 32
print(f"encoder cell (two regular 3x3, with BN and SE): {count_parameters([EncoderCell(32)]):,} parameters; "
      f"generative cell (inverted residual 5x5, with BN and SE): {count_parameters([GenerativeCell(32)]):,}")
assert round(regular5 / separable5) == 14

# %% [markdown]
# What the counts say, at 32 channels: a depthwise 5×5 costs 25 weights per channel, where a
# regular one costs 25 per channel *pair*, so the separable convolution is dominated by its 1×1
# part and is 14 times cheaper. The inverted residual pays for its expansion with two 1×1 layers of
# $EC^2$ weights each: with a 3×3 window that is more than a regular convolution, but from 5×5 on
# it is cheaper — while running its filter on six times as many channels. The window can grow
# almost for free: going from 5×5 to 7×7 adds $24EC$ weights instead of $24C^2$.

# %% [markdown]
# ### Receptive fields
#
# The *receptive field* of an output pixel is the window of input pixels it depends on. A stack of
# convolutions with kernel sizes $k_i$ and strides $s_i$ has a receptive field of width
#
# $$r = 1 + \sum_i (k_i - 1) \prod_{j < i} s_j ,$$
#
# each layer widening it by $k_i - 1$ pixels of its own input, which are $\prod_{j<i} s_j$ pixels of
# the image apart.
#
# **Derivation 1.** Prove this formula by induction over the layers, for convolutions with
# "same" padding (the padding moves the window, not its width). State what one output pixel of
# layer $i$ sees of layer $i$'s input, how far apart neighbouring pixels of that input are when
# measured in image pixels, and why the stride of layer $i$ itself does not enter its own term.
# Then use the formula: what is the receptive field of the stack 3×3 (stride 2), 3×3 (stride 1),
# 3×3 (stride 2), 3×3 (stride 1)? Answer in the cell below.

# %% [markdown] nbgrader={"grade": true, "grade_id": "derive01_receptive_field", "locked": false, "points": 3, "schema_version": 3, "solution": true, "task": false}
# **Model answer.** Let $r_i$ be the receptive field, in image pixels, of one pixel of the output of
# layer $i$, and $J_i = \prod_{j \le i} s_j$ the distance, in image pixels, between neighbouring
# pixels of that output ($r_0 = 1$, $J_0 = 1$: a pixel of the image sees itself). One output pixel of
# layer $i$ is computed from $k_i$ neighbouring pixels (per dimension) of its input, the output of
# layer $i-1$. Each of those sees $r_{i-1}$ image pixels, and neighbouring ones are $J_{i-1}$ image
# pixels apart, so $k_i$ of them cover $r_{i-1} + (k_i - 1) J_{i-1}$ image pixels:
#
# $$r_i = r_{i-1} + (k_i - 1) \prod_{j < i} s_j, \qquad\text{hence}\qquad r = 1 + \sum_i (k_i - 1) \prod_{j<i} s_j .$$
#
# The stride $s_i$ of layer $i$ only sets how far apart *its outputs* are ($J_i = J_{i-1} s_i$):
# it spaces the windows, not the pixels inside one window, so it first appears in the term of
# layer $i + 1$. For 3×3/2, 3×3/1, 3×3/2, 3×3/1: $r = 1 + 2 \cdot 1 + 2 \cdot 2 + 2 \cdot 2 + 2 \cdot 4 = 19$.
#
# **Rubric** (3 points): 1 point for the induction step $r_i = r_{i-1} + (k_i - 1) J_{i-1}$ with the
# spacing $J_{i-1}$ explained; 1 point for why the layer's own stride is absent from its term;
# 1 point for 19.

# %% [markdown]
# **Exercise 2.** Return the width $r$ for lists of kernel sizes and strides (first layer first),
# as a tensor holding one integer.

# %% nbgrader={"grade": false, "grade_id": "ex02_receptive_field", "locked": false, "schema_version": 3, "solution": true, "task": false}
def receptive_field(kernel_sizes, strides):
    """Width of the receptive field of a stack of convolutions: 1 + sum_i (k_i - 1) prod_{j<i} s_j."""
    ### BEGIN SOLUTION
    width, spacing = 1, 1
    for k, s in zip(kernel_sizes, strides):
        width += (k - 1) * spacing
        spacing *= s
    return torch.tensor(width)
    ### END SOLUTION


# %% [markdown]
# The check measures the receptive field instead of computing it: backpropagate from one output
# pixel in the middle of the map and see which input pixels receive a nonzero gradient.

# %%
def measured_receptive_field(module, in_channels, size=65):
    """Width of the input window that the central output pixel of ``module`` depends on (autograd)."""
    x = torch.randn(1, in_channels, size, size, requires_grad=True)
    y = module(x)  # (1, C', H', W')
    y[0, :, y.shape[2] // 2, y.shape[3] // 2].sum().backward()
    touched = x.grad[0].abs().sum(0) > 0  # (H, W): pixels the central output depends on
    rows = touched.any(dim=1).nonzero()
    return int(rows.max() - rows.min() + 1)


def conv_stack_receptive_field(kernel_sizes, strides):
    torch.manual_seed(0)
    convs = [nn.Conv2d(2, 2, k, stride=s, padding=k // 2) for k, s in zip(kernel_sizes, strides)]
    return torch.tensor(measured_receptive_field(nn.Sequential(*convs), 2))


# %% nbgrader={"grade": true, "grade_id": "ex02_receptive_field_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
ok_receptive_field = check("receptive_field", receptive_field, conv_stack_receptive_field,
                           {"one layer": ([3], [1]), "a stack at stride 1": ([3, 3], [1, 1]),
                            "1x1 layers (they add nothing)": ([1, 5, 1], [1, 1, 1]),
                            "a stride-2 layer first (the spacing doubles)": ([3, 3, 3, 3], [2, 1, 2, 1]),
                            "a stride on the last layer (it does not count)": ([5, 5], [1, 2])})
### BEGIN HIDDEN TESTS
assert_matches("receptive_field", receptive_field, conv_stack_receptive_field,
               {"one layer": ([7], [2]), "a stack at stride 1": ([5, 3, 3], [1, 1, 1]),
                "1x1 layers (they add nothing)": ([1], [1]),
                "a stride-2 layer first (the spacing doubles)": ([7, 3, 3, 3], [2, 2, 2, 1]),
                "a stride on the last layer (it does not count)": ([5, 5], [2, 2])})
### END HIDDEN TESTS

# %% [markdown]
# Derivation 1's example, with your function once its check passed (the autograd measurement
# until then):

# %%
field_fn = use_if_correct("receptive_field", receptive_field, conv_stack_receptive_field, ok_receptive_field)
example = int(field_fn([3, 3, 3, 3], [2, 1, 2, 1]))
print(f"3x3/2, 3x3/1, 3x3/2, 3x3/1: a receptive field {example} pixels wide")
assert example == int(conv_stack_receptive_field([3, 3, 3, 3], [2, 1, 2, 1])) == 19

# %% [markdown]
# Now the library's cells (in eval mode, so BatchNorm is a fixed per-channel affine map). Both
# branches have the same receptive field: two 3×3 convolutions reach as far as one 5×5. But with
# squeeze-and-excitation (next section) every output pixel depends on the *whole* image: the SE
# gate is computed from a global average.

# %%
fields = {}
for name, kind in [("encoder cell", EncoderCell), ("generative cell", GenerativeCell)]:
    for use_se in (False, True):
        torch.manual_seed(0)
        fields[name, use_se] = measured_receptive_field(kind(8, use_se=use_se).eval(), 8, size=33)
        print(f"{name:15s} {'with' if use_se else 'without':7s} SE: receptive field {fields[name, use_se]} pixels wide")
assert fields["encoder cell", False] == conv_stack_receptive_field([3, 3], [1, 1]) == 5  # two 3x3
assert fields["generative cell", False] == conv_stack_receptive_field([1, 5, 1], [1, 1, 1]) == 5  # 1x1, 5x5, 1x1
assert fields["encoder cell", True] == fields["generative cell", True] == 33  # the whole 33x33 input

# %% [markdown]
# ## 4. Swish and squeeze-and-excitation
#
# **Swish** (Ramachandran et al. 2017), $\mathrm{swish}(u) = u\,\sigma(u) = u / (1 + e^{-u})$, is a
# smooth ReLU: close to $u$ for large $u$, close to 0 for very negative $u$, with a small dip
# below zero and a nonzero gradient for negative inputs. Earlier deep VAEs used ELU; NVAE uses
# Swish everywhere in its cells, following its good results in image classifiers.

# %%
u = torch.linspace(-5, 4, 901, requires_grad=True)
swish = Swish()(u)
(grad,) = torch.autograd.grad(swish.sum(), u)
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(u.detach(), swish.detach(), label="swish(u) = u sigmoid(u)")
ax.plot(u.detach(), torch.relu(u).detach(), "--", label="ReLU")
ax.set(xlabel="u", title="Swish against ReLU")
ax.legend()
i_min = swish.argmin()
print(f"minimum of swish: {swish[i_min].item():.3f} at u = {u[i_min].item():.2f}; gradient at u = -2: "
      f"{grad[300].item():.3f} (ReLU: 0)")
assert abs(swish[i_min].item() + 0.278) < 0.002 and abs(u[i_min].item() + 1.28) < 0.02
assert torch.allclose(swish, u * torch.sigmoid(u)) and grad[300] != 0

# %% [markdown]
# **Squeeze-and-excitation** (Hu et al. 2018) lets a cell reweight its channels from global
# context. *Squeeze*: average each channel over the whole image, giving a vector
# $m \in \mathbb{R}^C$. *Excite*: a two-layer network turns it into one gate per channel,
# $g = \sigma(W_2\, \mathrm{ReLU}(W_1 m + b_1) + b_2) \in (0, 1)^C$, with a bottleneck of
# $\max(C/16, 4)$ hidden units. The output is $x \cdot g$, broadcast over the pixels. It costs
# almost nothing, and it is where the global receptive field of section 3 comes from.
#
# **Exercise 3.** Implement the SE forward pass from its weights: `w1` is $(R, C)$, `b1` $(R,)$,
# `w2` $(C, R)$, `b2` $(C,)$ — the layout of `nn.Linear.weight`.

# %% nbgrader={"grade": false, "grade_id": "ex03_squeeze_excite", "locked": false, "schema_version": 3, "solution": true, "task": false}
def squeeze_excite(x, w1, b1, w2, b2):
    """x * g[:, :, None, None] with g = sigmoid(W2 relu(W1 m + b1) + b2), m = mean of x over (H, W).
    x: (B, C, H, W); returns (B, C, H, W)."""
    ### BEGIN SOLUTION
    m = x.mean(dim=(2, 3))  # (B, C)
    gate = torch.sigmoid(torch.relu(m @ w1.T + b1) @ w2.T + b2)  # (B, C)
    return x * gate[:, :, None, None]
    ### END SOLUTION


# %% [markdown]
# The check copies random weights into the library's `SqueezeExcite` and compares the outputs.

# %%
def se_reference(x, w1, b1, w2, b2):
    se = SqueezeExcite(x.shape[1])
    with torch.no_grad():
        for layer, (w, b) in zip([se.net[0], se.net[2]], [(w1, b1), (w2, b2)]):
            layer.weight.copy_(w)
            layer.bias.copy_(b)
    return se(x)


def se_cases(seed=6, sizes=((8, 4), (96, 3), (16, 1))):
    """(x, w1, b1, w2, b2) of each kind: few channels (hidden width 4), many (C / 16), a 1x1 map."""
    g = torch.Generator().manual_seed(seed)
    cases = {}
    for kind, (c, hw) in zip(("few channels: hidden width 4", "many channels: hidden width C / 16", "a 1x1 feature map"),
                             sizes):
        r = max(c // 16, 4)
        cases[kind] = (torch.randn(3, c, hw, hw, generator=g), torch.randn(r, c, generator=g), torch.randn(r, generator=g),
                       torch.randn(c, r, generator=g), torch.randn(c, generator=g))
    return cases


# %% nbgrader={"grade": true, "grade_id": "ex03_squeeze_excite_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
ok_squeeze_excite = check("squeeze_excite", squeeze_excite, se_reference, se_cases(),
                          forbid=("hvae_lib.layers.cells:SqueezeExcite",))
### BEGIN HIDDEN TESTS
assert_matches("squeeze_excite", squeeze_excite, se_reference, se_cases(seed=16, sizes=((4, 5), (160, 2), (32, 1))))
### END HIDDEN TESTS

# %% [markdown]
# Two properties of the library's SE layer: the gates are strictly between 0 and 1, so SE can only
# damp a channel, never flip or amplify it; and the gate depends on the image — the same layer
# weights two different images' channels differently.

# %%
torch.manual_seed(0)
se = SqueezeExcite(32)
x_se = torch.randn(4, 32, 8, 8) + torch.randn(4, 32, 1, 1)  # (B, C, H, W), channel means differ per image
with torch.no_grad():
    gates = se.gate(x_se)  # (B, C)
    assert torch.allclose(se(x_se), x_se * gates[:, :, None, None])
print(f"gates between {gates.min():.3f} and {gates.max():.3f}; largest difference between two images' gates: "
      f"{(gates[0] - gates[1]).abs().max():.3f}")
assert 0 < gates.min() and gates.max() < 1
assert (gates[0] - gates[1]).abs().max() > 0.01

# %% [markdown]
# ### The generative cell, assembled
#
# A cell is nothing but its layers applied in the order of section 2, plus the skip path. The
# library's `GenerativeCell.layers()` hands them out by role, and its forward pass is the
# function `hvae_lib.layers.cells.generative_cell(x, layers)`, which a cell can be told to replace.
#
# **Exercise 4.** Write the generative cell's forward pass from its layers. `layers` has the
# attributes `upsample`, `bn_in`, `expand`, `bn_expand`, `depthwise`, `bn_depthwise`, `project`,
# `bn_out`, `se` and `skip`, each a module you call (`upsample` and `se` are identities when the
# cell has none, `skip` is the identity unless the cell changes the resolution). Return
# `skip(x) + 0.1 * branch`, where the branch is: upsample, then BN – Conv1×1 – BN – Swish –
# depthwise Conv – BN – Swish – Conv1×1 – BN – SE (Swish is `torch.nn.functional.silu`). Section 7
# trains this chapter's NVAE with your function in every generative cell.

# %% nbgrader={"grade": false, "grade_id": "ex04_generative_cell", "locked": false, "schema_version": 3, "solution": true, "task": false}
def generative_cell(x, layers):
    """NVAE's generative cell: layers.skip(x) + 0.1 * SE(BN(Conv1x1(swish(BN(dwConv(swish(BN(Conv1x1(BN(up(x)))))))))));
    x: (B, C, H, W)."""
    ### BEGIN SOLUTION
    h = layers.expand(layers.bn_in(layers.upsample(x)))  # (B, EC, H', W')
    h = layers.depthwise(torch.nn.functional.silu(layers.bn_expand(h)))
    h = layers.project(torch.nn.functional.silu(layers.bn_depthwise(h)))  # (B, C_out, H', W')
    return layers.skip(x) + 0.1 * layers.se(layers.bn_out(h))
    ### END SOLUTION


# %% [markdown]
# The check runs your function and the library's on the layers of fresh cells in training mode
# (BatchNorm on batch statistics): a cell that keeps its size, an up cell, and one with a 3×3
# window and no SE.

# %%
def cell_cases(seed=0, channels=(8, 16, 6)):
    """(x, layers) of fresh cells in training mode: one that keeps its size, an up cell, a small one."""
    torch.manual_seed(seed)
    specs = {"a cell that keeps its size": (channels[0], {}), "an up cell": (channels[1], {"upsample": True}),
             "a 3x3 window, E = 3, no SE": (channels[2], {"expansion": 3, "kernel_size": 3, "use_se": False})}
    return {kind: (torch.randn(3, c, 6, 6), GenerativeCell(c, **kwargs).layers()) for kind, (c, kwargs) in specs.items()}


def running_statistics_agree(function, channels=8, seed=0):
    """Whether ``function`` leaves a cell's BatchNorm running statistics as the library's leaves them
    (each BN layer used once, in order) after one pass in training mode."""
    torch.manual_seed(seed)
    mine, library = GenerativeCell(channels), GenerativeCell(channels)
    library.load_state_dict(mine.state_dict())
    x = torch.randn(4, channels, 5, 5)
    try:
        function(x, mine.layers())
    except Exception:  # noqa: BLE001 - not done yet, or wrong: the check above says why
        return False
    resolve("hvae_lib.layers.cells:generative_cell")(x, library.layers())
    return all(torch.allclose(a.running_mean, b.running_mean) and torch.allclose(a.running_var, b.running_var)
               for a, b in zip(batchnorm_layers(mine), batchnorm_layers(library)))


# %% nbgrader={"grade": true, "grade_id": "ex04_generative_cell_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
ok_generative_cell = check("generative_cell", generative_cell, "hvae_lib.layers.cells:generative_cell", cell_cases(),
                           forbid=("hvae_lib.layers.cells:GenerativeCell.forward",))
if ok_generative_cell and not running_statistics_agree(generative_cell):
    ok_generative_cell = False
    print("generative_cell: the outputs match, but the BatchNorm running statistics do not: use each of the "
          "cell's BN layers once, in the order of the text.")
### BEGIN HIDDEN TESTS
assert_matches("generative_cell", generative_cell, "hvae_lib.layers.cells:generative_cell", cell_cases(seed=5, channels=(32, 12, 4)))
assert running_statistics_agree(generative_cell, channels=12, seed=5), "use the cell's BatchNorm layers, in order"
### END HIDDEN TESTS

# %% [markdown]
# ## 5. BatchNorm, and why VAEs avoided it
#
# In training mode a BatchNorm layer normalises each channel with the mean and variance of the
# *current batch*; in evaluation mode with *running* estimates, updated at every training step. The
# network is trained with batch statistics but evaluated with running ones, and the two never agree
# exactly:
#
# - **noise**: a running estimate averages a limited number of recent batches, so it carries their
#   sampling noise;
# - **lag**: the weights change at every step, so the statistics change too, and a running estimate
#   trails them.
#
# IAF-VAE and BIVA left BatchNorm out and used weight normalisation instead: in a VAE, whose KL terms
# are unbounded, anything that adds noise to the networks was suspected of making training
# unstable.
#
# **What the NVAE paper says.** Its diagnosis is that BatchNorm's trouble in a deep VAE is the
# *shift at evaluation*: the running statistics move slowly, so in evaluation mode every BN layer
# normalises with statistics slightly different from the batch statistics it was trained with, and
# a deep hierarchy — whose priors, posteriors and KL terms are all computed from these features —
# can turn many small shifts into a large change of its output. Its remedy is to set BatchNorm's
# momentum so that the running statistics *follow the batch statistics faster*, and to regularise
# the BN scales so that a small shift is not amplified. The number is in the official code:
# `momentum=0.05` in every BN layer (PyTorch's `BatchNorm2d`), with NVAE's weight normalisation kept
# on its regular convolutions. (It also re-estimates the statistics before sampling: Chapter 4.)
#
# **One name, two conventions.** Both frameworks keep an exponential moving average; they disagree
# on which weight they call the momentum.
#
# | framework | update of the running mean $\hat\mu$ | the parameter is the weight of | default |
# |---|---|---|---|
# | PyTorch (`nn.BatchNorm2d(momentum=m)`) | $\hat\mu \leftarrow (1 - m)\,\hat\mu + m\,\mu_{\text{batch}}$ | the *newest batch* | $m = 0.1$ |
# | TensorFlow (Keras `BatchNormalization(momentum=d)`; `decay` in `tf.contrib.layers.batch_norm`) | $\hat\mu \leftarrow d\,\hat\mu + (1 - d)\,\mu_{\text{batch}}$ | the *old estimate* | $d = 0.99$ (Keras), $0.999$ (contrib) |
#
# (The running variance is updated the same way.) A PyTorch momentum $m$ is a TensorFlow momentum
# $1 - m$. Either way the estimate averages over about $1/m$ batches, and after a jump of the true
# statistics it needs $\ln 0.1 / \ln(1 - m)$ steps to close 90% of the gap.
#
# **Exercise 5: BatchNorm, both modes.** Write BatchNorm's forward pass for `(B, C, H, W)` inputs
# as a function that returns the new running statistics instead of updating them in place:
#
# - in **training** mode (`training=True`), normalise each channel with the mean and the *biased*
#   variance of the batch over $(B, H, W)$ — $n = BHW$ values per channel; then
#   $y = \gamma\,(x - \mu_B)/\sqrt{\sigma_B^2 + \epsilon} + \beta$; and update the running
#   statistics in PyTorch's convention, $\hat\mu \leftarrow (1 - m)\,\hat\mu + m\,\mu_B$ and
#   $\hat\sigma^2 \leftarrow (1 - m)\,\hat\sigma^2 + m\,\sigma_B^2\,\frac{n}{n - 1}$ — the running
#   variance estimates the data's variance, so it takes the *unbiased* batch variance;
# - in **evaluation** mode, normalise with the running statistics and return them unchanged.
#
# Return `(y, running_mean, running_var)`. Do not call `F.batch_norm`, `torch.batch_norm` or a BN
# module: they are what the check compares with. The experiment below runs on your function.

# %% nbgrader={"grade": false, "grade_id": "ex05_batch_norm", "locked": false, "schema_version": 3, "solution": true, "task": false}
def batch_norm(x, running_mean, running_var, weight, bias, momentum, training, eps=1e-5):
    """BatchNorm2d's forward pass: (y (B, C, H, W), new running mean (C,), new running variance (C,))."""
    ### BEGIN SOLUTION
    if training:
        n = x.numel() // x.shape[1]  # values per channel: B * H * W
        mean = x.mean(dim=(0, 2, 3))  # (C,)
        var = x.var(dim=(0, 2, 3), unbiased=False)  # (C,) biased: normalises this batch
        running_mean = (1 - momentum) * running_mean + momentum * mean
        running_var = (1 - momentum) * running_var + momentum * var * n / (n - 1)  # unbiased estimate
    else:
        mean, var = running_mean, running_var
    shape = (1, -1, 1, 1)  # broadcast a (C,) vector over (B, C, H, W)
    x_hat = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + eps)
    y = weight.view(shape) * x_hat + bias.view(shape)
    return y, running_mean, running_var
    ### END SOLUTION


# %%
def library_batch_norm(x, running_mean, running_var, weight, bias, momentum, training, eps=1e-5):
    """torch's batch_norm, on copies of the running statistics (it updates them in place)."""
    mean, var = running_mean.clone(), running_var.clone()
    return nn.functional.batch_norm(x, mean, var, weight, bias, training, momentum, eps), mean, var


def bn_cases(seed=9, channels=(5, 3, 4, 6)):
    g = torch.Generator().manual_seed(seed)

    def case(c, batch, size, momentum, training):
        x = 2 + 3 * torch.randn(batch, c, size, size, generator=g)  # far from zero mean, unit variance
        stats = (torch.randn(c, generator=g), torch.rand(c, generator=g) + 0.5)  # running mean, variance
        return (x, *stats, torch.randn(c, generator=g), torch.randn(c, generator=g), momentum, training)

    return {"training, PyTorch's momentum 0.1": case(channels[0], 8, 4, 0.1, True),
            "training, NVAE's momentum 0.05": case(channels[1], 4, 5, BN_MOMENTUM, True),
            "evaluation: the running statistics": case(channels[2], 3, 4, 0.1, False),
            "a batch of one image": case(channels[3], 1, 3, 0.05, True)}


# %% nbgrader={"grade": true, "grade_id": "ex05_batch_norm_test", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
ok_batch_norm = check("batch_norm", batch_norm, library_batch_norm, bn_cases(),
                      forbid=("torch.nn.functional:batch_norm", torch.batch_norm, "torch.nn.modules.batchnorm:_BatchNorm"))
### BEGIN HIDDEN TESTS
assert_matches("batch_norm", batch_norm, library_batch_norm, bn_cases(seed=19, channels=(7, 2, 9, 3)))
### END HIDDEN TESTS

# %% [markdown]
# NVAE's 0.05, as PyTorch reads it, gives the newest batch a weight of 0.05. Against TensorFlow's
# default, a weight of 0.01, that follows the batch statistics five times faster — what the paper
# describes. Against PyTorch's own default of 0.1 it follows them *half as fast*. The paper does not
# name its baseline; what we can do is measure. A single BN layer with 256 independent channels —
# your `batch_norm` once its check passed, torch's until then — fed batches whose true mean jumps
# from 0 to 1 at step 100 (what a change of the weights below does to a layer's input), at the
# three momenta:
#
# **Predict, then run.** How many steps will the running mean at NVAE's momentum 0.05 need to get
# within 10% of the jump?

# %% nbgrader={"grade": false, "grade_id": "predict03_bn_catch_up", "locked": false, "schema_version": 3, "solution": true, "task": false}
def predicted_catch_up_steps():
    """Your guess: steps after the jump until the running mean (momentum 0.05) is within 10% of it."""
    ### BEGIN SOLUTION
    return 45  # the remaining gap shrinks by (1 - 0.05) per step: ln 0.1 / ln 0.95 = 44.9 steps
    ### END SOLUTION


# %%
steps, jump_at, channels = 300, 100, 256
true_mean = (torch.arange(steps) >= jump_at).float()  # (T,)
MOMENTA = {0.01: "TensorFlow's default (decay 0.99)", BN_MOMENTUM: "NVAE (PyTorch convention)", 0.1: "PyTorch's default"}
bn_function = use_if_correct("batch_norm", batch_norm, library_batch_norm, ok_batch_norm)
tracks = {}
for momentum in MOMENTA:
    running_mean, running_var = torch.zeros(channels), torch.ones(channels)  # a fresh layer's statistics
    gamma, beta = torch.ones(channels), torch.zeros(channels)
    g = torch.Generator().manual_seed(0)
    track = []
    with torch.no_grad():
        for t in range(steps):
            batch = true_mean[t] + torch.randn(64, channels, 4, 4, generator=g)  # a training batch (B, C, H, W)
            _, running_mean, running_var = bn_function(batch, running_mean, running_var, gamma, beta, momentum, True)
            track.append(running_mean.clone())
    tracks[momentum] = torch.stack(track)  # (T, C)

fig, ax = plt.subplots(figsize=(7, 3))
for momentum, track in tracks.items():
    ax.plot(track[:, 0], label=f"m = {momentum}: {MOMENTA[momentum]}")
ax.plot(true_mean, "k--", lw=1, label="true mean of the batches")
ax.set(xlabel="training step", ylabel="running mean, channel 0", title="BatchNorm's running mean after a change")
ax.legend(fontsize=8)
catch_up, noise = {}, {}
for momentum, track in tracks.items():
    error = (track - true_mean[:, None]).abs().mean(1)  # (T,) averaged over channels
    catch_up[momentum] = int((error[jump_at:] > 0.1).sum())  # steps until within 10% of the jump
    noise[momentum] = track[jump_at - 30:jump_at].pow(2).mean().sqrt().item()  # at rest (true mean 0)
    print(f"m = {momentum:4} ({MOMENTA[momentum]:33s}): {catch_up[momentum]:3d} steps to get within 10% of the jump "
          f"(formula {math.log(0.1) / math.log(1 - momentum):.1f}); noise at rest {noise[momentum]:.4f}")
reveal_prediction("steps to within 10% at m = 0.05", predicted_catch_up_steps, catch_up[BN_MOMENTUM], " steps")
assert catch_up[0.01] > 4 * catch_up[BN_MOMENTUM]  # five times faster than TensorFlow's default...
assert catch_up[BN_MOMENTUM] > 1.8 * catch_up[0.1]  # ...half as fast as PyTorch's
assert noise[0.01] < noise[BN_MOMENTUM] < 0.8 * noise[0.1]  # and the noise the other way round

# %% [markdown]
# So "faster" depends on what you compare with: 0.05 sits between the two defaults, trading lag
# against noise (the noise's variance is about $m / (2 - m)$ of a batch mean's). Which one matters
# depends on how fast the weights move. Early in training, with a large learning rate, the lag
# dominates; at the end of a cosine schedule the learning rate is tiny and the weights barely move,
# so the noise is what is left. Section 8 measures both on the trained model.
#
# ### The BN regulariser
#
# In evaluation mode BatchNorm is a fixed affine map per channel,
# $y_c = \gamma_c\,(x_c - \hat\mu_c) / \hat\sigma_c + \beta_c$. An error $\delta$ in the running mean
# moves the output of channel $c$ by $\gamma_c\,\delta / \hat\sigma_c$: the scale $\gamma_c$ is the gain
# of a statistics error through the layer, and the largest $|\gamma_c|$ is the layer's worst case.
# NVAE adds
#
# $$\mathcal{L}_{BN} = \lambda \sum_{\text{BN layers}} \max_c |\gamma_c|$$
#
# to the loss, so no channel can blow up a small shift; $\lambda$ is the one of the spectral
# regulariser (Chapter 4: $10^{-2}$ here, as in the paper's MNIST and CIFAR-10 models), and the
# library's `bn_regularizer` computes the sum. One BN layer with four channels of different scales,
# and the same error of 0.1 standard deviations in every channel's running mean:

# %%
torch.manual_seed(0)
bn_demo = BatchNorm2d(4)
x_bn = torch.randn(256, 4, 4, 4) * torch.tensor([1.0, 2.0, 0.5, 3.0]).view(1, 4, 1, 1)  # (B, C, H, W)
with torch.no_grad():
    bn_demo.momentum = None  # a plain average: exact statistics of x_bn
    bn_demo(x_bn)
    bn_demo.eval().weight.copy_(torch.tensor([0.5, 1.0, 2.0, 8.0]))
    exact_output = bn_demo(x_bn)
    bn_demo.running_mean += 0.1 * bn_demo.running_var.sqrt()  # a shift of 0.1 feature std per channel
    shifted_output = bn_demo(x_bn)
output_error = (shifted_output - exact_output).mean((0, 2, 3))  # (C,)
print("gamma per channel        :", bn_demo.weight.tolist())
print("output error per channel :", [round(e, 4) for e in output_error.abs().tolist()])
print(f"regulariser term of this layer, max |gamma|: {bn_regularizer([bn_demo]):.1f}")
assert torch.allclose(output_error.abs(), 0.1 * bn_demo.weight.abs(), rtol=1e-3)  # error = gamma x shift
assert bn_regularizer([bn_demo]) == 8.0

# %% [markdown]
# The channel with $\gamma = 8$ turns a shift of 0.1 standard deviations into an error of 0.8 —
# the error the next layer sees. Section 8 looks at the $\gamma$s of the trained model, and
# Chapter 4 trains with and without $\lambda$ and compares them.

# %% [markdown]
# ## 6. The bidirectional encoder and multi-scale groups
#
# NVAE's hierarchy is Chapter 2's Ladder VAE made deep and multi-scale:
#
# - a **bottom-up** tower of encoder cells turns the image into features $e_l$, one per latent group,
#   at decreasing resolution (after a few pre-processing cells that halve it);
# - a **top-down** tower starts from a learned constant $h_0$ and, group by group from the top,
#   runs generative cells, computes the prior $p(z_l \mid z_{<l})$ from its state, draws $z_l$ and
#   merges it back into the state; an up cell doubles the resolution between scales, and
#   post-processing cells and a 3×3 convolution produce the likelihood's parameters.
#
# Inference runs *both* towers: the posterior $q(z_l \mid z_{<l}, x)$ reads $e_l$ plus the top-down
# state, so it is conditioned on the groups above exactly as the prior is. Generation runs the
# top-down tower alone. The top-down tower is therefore *shared*: the same weights are the
# generative model and half of the encoder ("bidirectional encoder"). The top group's prior is
# $\mathcal{N}(0, I)$.
#
# The chapter's model, the preset `nvae_fashion`, follows the official MNIST model (28×28 images
# padded to 32×32, two pre-processing blocks, latents at 4×4 and 8×8) at a much smaller size: 4
# base channels instead of 32, one cell where the official model has two or three, and 2 + 2 groups of
# 8 latent channels instead of 5 + 10 of 20. Its two towers, read off the model: one row per latent
# group, the top group first; the bottom-up tower is read from the bottom, the top-down tower from
# the top, and the encoder feature $e_l$ of each row feeds that group's posterior.

# %%
config = get_preset("nvae_fashion")
torch.manual_seed(0)
fresh = config.model.build((1, 28, 28), 8, "logistic_mixture")  # an untrained NVAE, to look at its shapes
print(f"nvae_fashion: {count_parameters([fresh]):,} parameters, groups per scale (8x8 first) {fresh.groups_per_scale}, "
      f"canvas {fresh.canvas}")
fig, ax = plt.subplots(figsize=(11, 6.5))
rows = draw_nvae(fresh, ax)
plt.tight_layout()
assert len(rows) == fresh.num_groups and "N(0, I)" in rows[0][1]  # the top group's prior is fixed

# %% [markdown]
# The shapes behind the diagram, recorded with forward hooks during one pass: the feature each
# posterior reads and the top-down state after each group.

# %%

shapes = {}  # group index -> shapes seen inside its forward pass
hooks = []
for idx, group in enumerate(fresh.groups):
    hooks.append(group.posterior.register_forward_hook(
        lambda m, inp, out, idx=idx: shapes.setdefault(idx, {}).update(feature=tuple(inp[0].shape[1:]))))
    hooks.append(group.dec_combiner.register_forward_hook(
        lambda m, inp, out, idx=idx: shapes.setdefault(idx, {}).update(state=tuple(out.shape[1:]))))
with torch.no_grad():
    features = fresh.encode(x_test[:4])  # e_l, top group first
    fresh.eval()(x_test[:4])
for h in hooks:
    h.remove()
print(f"{'group':>5s} {'z_l':>12s} {'posterior reads':>16s} {'top-down state':>15s}")
for idx, z_shape in enumerate(fresh.group_shapes):
    print(f"{idx:5d} {str(z_shape):>12s} {str(shapes[idx]['feature']):>16s} {str(shapes[idx]['state']):>15s}")
assert [tuple(f.shape[1:]) for f in features] == [shapes[i]["feature"] for i in range(fresh.num_groups)]
assert [s[1] for s in fresh.group_shapes] == [4, 4, 8, 8]  # coarse groups at the top

# %% [markdown]
# Which weights serve which purpose? The encoder-only parts are the bottom-up tower and, in each
# group, the two small convolutions that form the posterior. Everything else — the top-down cells,
# priors, combiners, up cells, post-processing and output head — is the generative model, which
# inference reuses. Forward hooks confirm that the same top-down cells run when encoding and when
# sampling, and the bottom-up cells only when encoding.

# %%
def part_of(name):
    encoder_only = name.startswith(("stem", "preprocess", "enc_")) or ".enc_combiner" in name or ".posterior" in name
    return "encoder only" if encoder_only else "generative (shared)"


breakdown = {}
for name, p in fresh.named_parameters():
    breakdown[part_of(name)] = breakdown.get(part_of(name), 0) + p.numel()
print({k: f"{v:,}" for k, v in breakdown.items()})
assert sum(breakdown.values()) == count_parameters([fresh])

calls = {"top-down": 0, "bottom-up": 0}
hooks = [cell.register_forward_hook(lambda *a: calls.__setitem__("top-down", calls["top-down"] + 1))
         for group in fresh.groups for cell in group.cells]
hooks += [cell.register_forward_hook(lambda *a: calls.__setitem__("bottom-up", calls["bottom-up"] + 1))
          for scale in fresh.enc_scales for cells in scale for cell in cells]
with torch.no_grad():
    fresh(x_test[:4])
    when_encoding = dict(calls)
    fresh.sample(4)
for h in hooks:
    h.remove()
when_sampling = {k: calls[k] - when_encoding[k] for k in calls}
print(f"cells called while encoding: {when_encoding}; while sampling: {when_sampling}")
assert when_encoding["top-down"] == when_sampling["top-down"] > 0 and when_sampling["bottom-up"] == 0

# %% [markdown]
# **Exercise 6: one latent group.** The heart of the top-down tower is what happens at each group,
# between its generative cells and the up cell. Write it for a group `group` of the library's
# NVAE (a `TopDownGroup`), given the top-down state `s` `(B, C, h, w)` and the encoder's feature
# `e` for this group `(B, C_e, h, w)`, with $z_l$ drawn from the posterior:
#
# 1. the prior's raw parameters `group.prior(s)` `(B, 2Z, h, w)` (an ELU and a 1×1 convolution;
#    `NVAENormal.from_params` turns them into the Gaussian $p(z_l \mid z_{<l})$). The top group has
#    no prior network: its prior is $\mathcal{N}(0, I)$, `NVAENormal.standard(shape, s.device)`;
# 2. the **encoder combiner**: the posterior reads `e + group.enc_combiner(s)` (a 1×1 convolution
#    of the state), so $q(z_l \mid z_{<l}, x)$ depends on the groups above as the prior does; the
#    top group reads `e` alone (`group.enc_combiner` is None there);
# 3. the posterior's raw corrections `group.posterior(feature)` `(B, 2Z, h, w)`, and the **residual
#    normal** posterior $q = \mathcal{N}(\mu_p + \Delta\mu, (\sigma_p \Delta\sigma)^2)$ from them:
#    `NVAENormal.residual(prior_params, delta)` (Chapter 4 derives its KL); at the top group, where
#    there is no prior to be relative to, `NVAENormal.from_params(delta)`;
# 4. $z_l$ = `q.rsample()`, the group's KL per image, $\mathrm{KL}(q \,\|\, p)$ elementwise with
#    `q.kl(p)` summed over everything but the batch, and $\log q(z_l) - \log p(z_l)$ at that sample,
#    likewise summed (the importance-weighted bound of Chapter 1 needs it);
# 5. the **decoder combiner**: the new state `group.dec_combiner(torch.cat([s, z], dim=1))`, a 1×1
#    convolution of the state and $z_l$ side by side.
#
# Return `(new state, KL (B,), log q - log p (B,), q.mu)`. Draw nothing but $z_l$. (No flows here:
# Chapter 4 adds them.) Section 7 trains the chapter's NVAE with your function in every group.

# %% nbgrader={"grade": false, "grade_id": "ex06_latent_group", "locked": false, "schema_version": 3, "solution": true, "task": false}
def latent_group(group, s, e):
    """One NVAE latent group with z ~ q: (new state (B, C, h, w), KL (B,), log q(z) - log p(z) (B,), posterior mean)."""
    ### BEGIN SOLUTION
    if group.is_top:
        feature = e  # the top group's posterior reads the encoder alone
        q = NVAENormal.from_params(group.posterior(feature))
        p = NVAENormal.standard(q.mu.shape, s.device)  # p(z_1) = N(0, I)
    else:
        prior_params = group.prior(s)  # (B, 2Z, h, w) raw
        feature = e + group.enc_combiner(s)  # the encoder combiner
        delta = group.posterior(feature)  # (B, 2Z, h, w) raw corrections
        q = NVAENormal.residual(prior_params, delta)  # N(mu_p + dmu, (sigma_p dsigma)^2)
        p = NVAENormal.from_params(prior_params)
    z = q.rsample()  # (B, Z, h, w)
    kl = sum_except_batch(q.kl(p))  # (B,) nats
    log_ratio = sum_except_batch(q.log_prob(z) - p.log_prob(z))  # (B,)
    new_state = group.dec_combiner(torch.cat([s, z], dim=1))  # the decoder combiner
    return new_state, kl, log_ratio, q.mu
    ### END SOLUTION


# %%
def library_group(group, s, e):
    """hvae_lib's posterior_group (what NVAE.top_down runs), from the current random state without
    moving it on."""
    with torch.random.fork_rng():
        return resolve("hvae_lib.models.nvae_parts:posterior_group")(group, s, e)


def group_cases(seed=0):
    """(group, state, encoder feature) of groups of the fresh nvae_fashion model above, with random inputs."""
    g = torch.Generator().manual_seed(seed)

    def case(idx, batch=3):
        c_enc, h, w = shapes[idx]["feature"]
        state = torch.randn(batch, shapes[idx]["state"][0], h, w, generator=g)
        return fresh.groups[idx], state, torch.randn(batch, c_enc, h, w, generator=g)

    return {"the top group (its prior is N(0, I))": case(0), "a lower group (the residual normal)": case(1),
            "a group of the finer scale": case(2), "one image": case(3, batch=1)}


# %% nbgrader={"grade": true, "grade_id": "ex06_latent_group_test", "locked": true, "points": 5, "schema_version": 3, "solution": false, "task": false}
ok_latent_group = check("latent_group", latent_group, library_group, group_cases(),
                        forbid=("hvae_lib.models.nvae_parts:posterior_group", "hvae_lib.models.nvae:NVAE.top_down",
                                "hvae_lib.models.nvae_parts:TopDownGroup.encoder_feature",
                                "hvae_lib.models.nvae_parts:TopDownGroup.combine"))
### BEGIN HIDDEN TESTS
assert_matches("latent_group", latent_group, library_group, group_cases(seed=7))
### END HIDDEN TESTS

# %% [markdown]
# ## 7. Training NVAE on Fashion-MNIST
#
# The preset trains with NVAE's own recipe: Adamax with learning rate $10^{-2}$, a cosine decay,
# KL warm-up over the first 30% of the steps and KL balancing, the spectral and BN regularisers,
# batches of 64 (warm-up, balancing and the regularisers are Chapter 4's subject; here they are
# simply on). The chapter trains
# for 1500 steps instead of the preset's 2000 to stay within its time budget, with the KL warm-up
# shortened to match (30% of the steps): the preset `nvae_fashion_1500`. The run is saved in `runs/ch03_nvae/`, where Chapter 4
# finds it. The Ladder VAE of Chapter 2 saw 2000 batches of 128 images; this NVAE sees 1500 of 64,
# 2.7 times fewer images.
#
# Every generative cell of this run — the top-down tower and the post-processing — computes its
# output with your function from exercise 4, and every latent group its posterior, KL and new state
# with your function from exercise 6, once they passed their checks (with the library's until then).

# %%
def train(preset, run_name, changes=None, cell_function=None, group_function=None):
    """Train a preset afresh into runs/<run_name> (smoke mode shrinks it), its generative cells computed by
    ``cell_function`` and its posterior groups by ``group_function`` (None: the library's); return the
    trainer and its result."""
    config = override(get_preset(preset), {**(changes or {}), **(SMOKE_CHANGES if SMOKE else {})})
    run_dir = RUNS / (run_name + ("_smoke" if SMOKE else ""))
    shutil.rmtree(run_dir, ignore_errors=True)
    trainer = Trainer(config, run_dir, resume=False)
    for model in {id(trainer.model): trainer.model, id(trainer.eval_model): trainer.eval_model}.values():
        use_generative_cell(model, cell_function)
        model.group_function = group_function
    return trainer, trainer.fit()


cell_function = use_if_correct("generative_cell", generative_cell, "hvae_lib.layers.cells:generative_cell", ok_generative_cell)
group_function = use_if_correct("latent_group", latent_group, "hvae_lib.models.nvae_parts:posterior_group", ok_latent_group)
start = time.perf_counter()
nvae_trainer, nvae_result = train("nvae_fashion_1500", "ch03_nvae", {"quiet": False}, cell_function, group_function)
seconds = time.perf_counter() - start
nvae = nvae_trainer.eval_model.eval()
nvae_bpd = nvae_result["test_bpd"]
cells_used = [m.function for m in nvae.modules() if isinstance(m, GenerativeCell)]
assert cells_used and all(f is cell_function for f in cells_used)  # every generative cell ran your function
assert nvae.group_function is group_function  # and every latent group
records = read_metrics(nvae_trainer.out / "metrics.jsonl")
train_records = [r for r in records if r["split"] == "train"]
step_seconds = nvae_trainer.config.optim.batch_size / (sum(r["images_per_s"] for r in train_records) / len(train_records))
print(f"NVAE: {count_parameters([nvae]):,} parameters, {nvae_trainer.step} steps in {seconds / 60:.1f} min "
      f"({step_seconds:.2f} s per training step); test {nvae_bpd:.3f} bits/dim")
assert nvae_bpd < 8, "a trained model must beat the uniform 8 bits/dim"

# %% [markdown]
# Against the earlier chapters. Their runs are read from `runs/` when you have run them; otherwise
# the figures their chapters state are printed instead.

# %%
def earlier_result(run, fallback):
    path = RUNS / run / "results.json"
    if path.exists():
        return json.loads(path.read_text())["test_bpd"], f"from {path.as_posix()}"
    return fallback, "the figure stated in its chapter (run not found)"


vae_bpd, vae_source = earlier_result("ch01_vae", 3.712)
lvae_bpd, lvae_source = earlier_result("ch02_lvae", 3.673)
print(f"Chapter 1 VAE       : {vae_bpd:.3f} bits/dim  ({vae_source})")
print(f"Chapter 2 Ladder VAE: {lvae_bpd:.3f} bits/dim  ({lvae_source})")
print(f"Chapter 3 NVAE      : {nvae_bpd:.3f} bits/dim  (this run)")
if not SMOKE:
    assert nvae_bpd < vae_bpd

# %% [markdown]
# The training curve. The grey line is the KL weight $\beta$ of the warm-up: while it is small the
# model is free to put information into $z$; the reported negative ELBO (blue) always uses the
# full KL.

# %%
test_records = [r for r in records if r["split"] == "test"]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.2))
ax1.plot([r["step"] for r in train_records], [r["bpd"] for r in train_records], label="train batches")
ax1.plot([r["step"] for r in test_records], [r["test_bpd"] for r in test_records], "o-", label="test set")
ax1.set(xlabel="step", ylabel="negative ELBO (bits/dim)", ylim=(None, min(8, train_records[0]["bpd"])), title="ELBO")
ax1.legend()
kl_groups = torch.tensor([r["kl_per_group"] for r in train_records])  # (T, L)
for group in range(kl_groups.shape[1]):
    ax2.plot([r["step"] for r in train_records], kl_groups[:, group], label=f"group {group}")
ax2b = ax2.twinx()
ax2b.plot([r["step"] for r in train_records], [r["kl_weight"] for r in train_records], color="grey", ls=":")
ax2b.set(ylabel="KL weight beta", ylim=(0, 1.05))
ax2.set(xlabel="step", ylabel="KL (nats / image)", title="KL per group during training")
ax2.legend(fontsize=8)
plt.tight_layout()
assert train_records[-1]["bpd"] < train_records[0]["bpd"]

# %% [markdown]
# ## 8. What the trained NVAE does
#
# **KL per group.** `hvae_lib.analysis.diagnostics` from Chapter 2 works unchanged: the nats each group
# carries per test image, and the same divided by the group's size (a 4×4 group has 128 latent
# units, an 8×8 group 512).

# %%
kl = diagnostics.kl_per_group(nvae, x_test)  # (L,) nats per image
sizes = nvae.group_sizes.float()  # (L,) latent units per group
fig, axes = plt.subplots(1, 3, figsize=(15, 3.2))
colours = ["C0" if s[1] == nvae.group_shapes[0][1] else "C1" for s in nvae.group_shapes]
axes[0].bar(range(len(kl)), kl.numpy(), color=colours)
axes[0].set(xlabel="latent group (top = 0; blue 4x4, orange 8x8)", ylabel="KL (nats / image)", title="KL per group")
axes[1].bar(range(len(kl)), (kl / sizes).numpy(), color=colours)
axes[1].set(xlabel="latent group", ylabel="nats per latent unit", title="KL per latent unit")
diagnostics.plot_cumulative_rate(kl, ax=axes[2])
plt.tight_layout()
print("group shapes:", nvae.group_shapes)
print("KL per group (nats):", [round(v, 1) for v in kl.tolist()], f"total {kl.sum():.1f}")
with torch.no_grad():
    out = nvae(x_test[:256])
assert out.kl_per_group.shape == (256, nvae.num_groups)
assert torch.allclose(out.kl_per_group.sum(1).mean(), out.log_q_minus_log_p.mean(), rtol=0.05, atol=1.0)
per_unit = kl / sizes  # (L,)
if not SMOKE:
    assert kl.min() > 5  # no group has collapsed
    assert 40 < kl.sum() < 80
    assert kl[2:].sum() > kl[:2].sum()  # more nats in total at 8x8...
    assert per_unit[:2].min() > 2 * per_unit[2:].max()  # ...but far fewer per unit

# %% [markdown]
# No group has collapsed (preventing that is the job of KL warm-up and balancing, Chapter 4); the
# total is about 60 nats per image. The 8×8 groups carry somewhat more nats in total, but each of
# their units carries far less than a unit of the 4×4 groups: the coarse groups decide the global
# shape, which is worth many nats per unit, and the fine groups add local detail spread over four
# times as many units.

# %% [markdown]
# **Samples and reconstructions.** A sample draws every group from the prior, runs the top-down
# tower, and draws each pixel from the likelihood — independently given $z$, which makes samples
# grainy; the likelihood's *mean* for the same $z$ shows the shapes the latents decided.
# Reconstructions decode one posterior sample of every group and show the mean. (All in eval mode
# with the running BN statistics; Chapter 4 re-estimates them for sampling and lowers the
# temperature, as NVAE does.)

# %%
torch.manual_seed(0)
with torch.no_grad():
    state, _, _, _ = nvae.top_down(36)  # decoder features for 36 prior draws of every group
    likelihood = nvae.head(state)
    samples, sample_means = likelihood.sample(), likelihood.mean()  # (36, 1, 28, 28) each
recon = nvae.reconstruct(x_test[:36])
fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
show_grid(samples, "samples", ax=axes[0])
show_grid(sample_means, "the same z: likelihood means", ax=axes[1])
show_grid(x_test[:36], "test images", ax=axes[2])
show_grid(recon, "reconstructions", ax=axes[3])
plt.tight_layout()
mse_recon = ((recon - x_test[:36]) ** 2).mean().item()
mse_shuffled = ((recon - x_test[:36].roll(1, dims=0)) ** 2).mean().item()
print(f"mean squared error: reconstruction {mse_recon:.4f}, against a different image {mse_shuffled:.4f}")
assert samples.shape == sample_means.shape == (36, 1, 28, 28) and 0 <= samples.min() and samples.max() <= 1
if not SMOKE:
    assert mse_recon < 0.2 * mse_shuffled

# %% [markdown]
# The reconstructions are close, while the samples are blurry garments at best: with 140 000
# parameters and 1500 steps, the prior of this small model fits the aggregate posterior only
# roughly — the gap between good reconstructions and poor samples that Chapter 2 called "holes".
# The paper's models are far larger: counted on NVlabs' code built from its training commands,
# from 238 times this one's parameters (MNIST) through 934 (CIFAR-10) and 1,917 (ImageNet-32) to
# 2,361 times (CelebA-HQ and FFHQ at 256×256).

# %%
PAPER_PARAMETERS = {"MNIST": 33_363_134, "CIFAR-10": 130_852_480, "CelebA-64": 153_281_364,
                    "ImageNet-32": 268_509_444, "CelebA-HQ-256 and FFHQ-256": 330_798_664}  # NVlabs' models
ours = count_parameters([nvae])
ratios = {name: n / ours for name, n in PAPER_PARAMETERS.items()}
print(f"this NVAE: {ours:,} parameters; the paper's, as multiples of it: "
      + ", ".join(f"{name} {ratio:,.0f}x" for name, ratio in ratios.items()))
assert [round(r) for r in ratios.values()] == [238, 934, 1094, 1917, 2361]  # the figures stated above

# %% [markdown]
# **What each group decides**: the top $k$ groups from the posterior of a test image, the rest from
# the prior (Chapter 2's picture). With four groups, $k = 2$ fixes the two 4×4 groups. The top group
# alone already fixes the kind of garment and its rough shape; the 8×8 groups add the rest.

# %%
torch.manual_seed(0)
diagnostics.plot_fixed_top_grid(nvae, x_test[:8], ks=list(range(nvae.num_groups + 1)), temperature=0.8)
ks = [0, 1, nvae.num_groups]
rows = diagnostics.fixed_top_grid(nvae, x_test[:32].repeat(2, 1, 1, 1), ks=ks)  # (3, 64, 1, 28, 28)
distance = ((rows - x_test[:32].repeat(2, 1, 1, 1)) ** 2).flatten(2).mean(2).mean(1)  # (3,)
print("mean squared distance to x:", ", ".join(f"k = {k}: {d:.4f}" for k, d in zip(ks, distance.tolist())))
if not SMOKE:
    assert distance[2] < distance[1] < 0.7 * distance[0]  # the top group alone already brings x much closer

# %% [markdown]
# ### BatchNorm statistics in the trained model
#
# Back to section 5, now on the real model. The reference is the statistics of the *data* under
# the final weights: BN's running estimates recomputed as a plain average over many training
# batches (momentum `None`), with the weights fixed. Against it we measure, for every BN channel,
# how far a running mean is off, in units of the feature's standard deviation, and the test
# negative ELBO in three settings:
#
# 1. *eval mode* with the running statistics training left behind (how every number in this course
#    is computed);
# 2. eval mode with the data's statistics (no shift at all);
# 3. *train mode*: each test batch of 64 normalised with its own statistics
#    (`frozen_running_stats` keeps the running estimates untouched).

# %%
g = torch.Generator().manual_seed(0)


def training_batches(n):
    return [torch.stack([data.train[int(i)][0] for i in torch.randint(len(data.train), (64,), generator=g)])
            for _ in range(n)]  # n batches (64, 1, 28, 28)


reference_batches, later_batches, step_batches = (training_batches(n) for n in ((4, 6, 3) if SMOKE else (32, 30, 15)))
x_eval = x_test[:128 if SMOKE else 512]


def bn_stats(model):
    return [(m.running_mean.clone(), m.running_var.clone()) for m in batchnorm_layers(model)]


@torch.no_grad()
def with_statistics(model, batches, momentum=None, reset=True):
    """A copy of ``model`` whose BN statistics were (re)computed by train-mode passes over ``batches``
    with the weights fixed; momentum None is a plain average over the batches."""
    probe = copy.deepcopy(model).train()
    for m in batchnorm_layers(probe):
        if reset:
            m.reset_running_stats()
        m.momentum = momentum
    for x in batches:
        probe(x)
    return probe.eval()


def shift(model, reference):
    """Mean over all BN channels of |running mean - reference mean| / reference std."""
    gaps = [(mean - ref_mean).abs() / (ref_var + 1e-5).sqrt()
            for (mean, _), (ref_mean, ref_var) in zip(bn_stats(model), bn_stats(reference))]
    return torch.cat(gaps).mean().item()


@torch.no_grad()
def test_bpd(model, train_mode=False):
    torch.manual_seed(1)  # the same z noise in every evaluation
    model.train(train_mode)
    with frozen_running_stats():
        nats = torch.cat([-elbo(model(x), model.num_dims).elbo for x in x_eval.split(64)]).mean()
    model.eval()
    return nats_to_bpd(nats, model.num_dims).item()


exact = with_statistics(nvae, reference_batches)  # the data's statistics under the final weights
bpd_eval, bpd_exact, bpd_train = test_bpd(nvae), test_bpd(exact), test_bpd(nvae, train_mode=True)
shift_trained = shift(nvae, exact)
print(f"test negative ELBO on {len(x_eval)} images (bits/dim): eval mode {bpd_eval:.4f}, with the data's "
      f"statistics {bpd_exact:.4f}, train mode {bpd_train:.4f}")
print(f"running means after training are off by {shift_trained:.4f} feature std on average")

# %% [markdown]
# Now the two sources of the shift, each at the three momenta of section 5: TensorFlow's default
# (0.01 as PyTorch counts), NVAE's 0.05 and PyTorch's 0.1.
#
# - **Lag**: take the trained model, make 15 more training steps (the training loss: ELBO plus the
#   regularisers; Adamax with the trainer's own state, the moment estimates it ended training with,
#   at a learning rate of $3\times10^{-3}$, the rate the cosine schedule passes about two thirds
#   into training) and compare the running statistics with the data's under the *new* weights. The
#   weights do not depend on the momentum — training uses batch statistics only — so all three runs
#   end with identical weights and differ only in their running estimates. A fourth run restarts
#   Adamax from a fresh state instead, to show why the trainer's state matters: a fresh Adamax's
#   first steps move every weight by about the learning rate, whatever its gradient.
# - **Noise**: keep the trained weights fixed, start the running statistics at the data's, and
#   let 30 more training batches update them. Nothing changes but the noise of the batches.

# %%
def more_steps(momentum, optimiser_state):
    """A copy of the trained model after 15 more training steps at lr 3e-3, its BN at ``momentum``,
    Adamax starting from ``optimiser_state`` (None: a fresh Adamax)."""
    model = copy.deepcopy(nvae)
    for m in batchnorm_layers(model):
        m.momentum = momentum
    optimiser = torch.optim.Adamax(model.parameters(), lr=3e-3, eps=1e-3, weight_decay=3e-4)  # the preset's
    if optimiser_state is not None:
        # The moments training ended with (parameters in the same order); a copy, as Adamax updates them in place.
        optimiser.load_state_dict(copy.deepcopy(optimiser_state))
    for group in optimiser.param_groups:
        group["lr"] = 3e-3
    torch.manual_seed(0)
    model.train()
    for x in step_batches:
        loss = -elbo(model(x), model.num_dims).elbo.mean() + model.regularization(nvae_trainer.step)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


trainer_state = nvae_trainer.optimizer.state_dict()
lagged, noisy = {}, {}
for momentum in MOMENTA:
    lagged[momentum] = more_steps(momentum, trainer_state)
    noisy[momentum] = with_statistics(exact, later_batches, momentum, reset=False)
assert all(torch.equal(p, q) for p, q in zip(lagged[0.1].parameters(), lagged[0.01].parameters()))
exact_moved = with_statistics(lagged[0.1], reference_batches)
lag_shift = {m: shift(model, exact_moved) for m, model in lagged.items()}
noise_shift = {m: shift(model, exact) for m, model in noisy.items()}
lag_bpd, noise_bpd = {m: test_bpd(model) for m, model in lagged.items()}, {m: test_bpd(model) for m, model in noisy.items()}
bpd_moved = test_bpd(exact_moved)
lag_cost = {m: lag_bpd[m] - bpd_moved for m in MOMENTA}  # what the stale statistics cost, bits/dim
bpd_fresh_adamax = test_bpd(with_statistics(more_steps(BN_MOMENTUM, None), reference_batches))
print(f"{'':15s} {'shift (std)':>11s} {'test bits/dim':>14s} {'cost of the lag':>16s}")
for m in MOMENTA:
    print(f"lag,   m = {m:4}: {lag_shift[m]:11.4f} {lag_bpd[m]:14.4f} {lag_cost[m]:16.4f}")
print(f"  (data's statistics after the {len(step_batches)} steps: {bpd_moved:.4f} bits/dim; before them "
      f"{bpd_exact:.4f}; after {len(step_batches)} steps of a fresh Adamax instead: {bpd_fresh_adamax:.4f})")
for m in MOMENTA:
    print(f"noise, m = {m:4}: {noise_shift[m]:11.4f} {noise_bpd[m]:14.4f}")
assert lag_shift[0.01] > lag_shift[BN_MOMENTUM] > lag_shift[0.1]  # the smaller m, the further behind changing weights...
assert noise_shift[0.01] < noise_shift[BN_MOMENTUM] < noise_shift[0.1]  # ...and the more batch noise averaged away
if not SMOKE:
    assert shift_trained < 2 * noise_shift[BN_MOMENTUM]  # after a cosine schedule: little left but noise
    assert abs(bpd_eval - bpd_exact) < 0.01  # and the shift costs this small model almost nothing
    assert bpd_train > bpd_exact  # a test batch's own statistics are noisier than the running ones
    assert max(abs(b - bpd_exact) for b in noise_bpd.values()) < 0.002  # noise costs nothing here...
    assert lag_cost[0.01] > lag_cost[BN_MOMENTUM] > lag_cost[0.1] > 0  # ...lag does, more the smaller m
    assert bpd_fresh_adamax - bpd_moved > 2 * lag_cost[0.01]  # a fresh optimiser costs more than any lag
    stated_lag_cost = {0.01: 0.07, BN_MOMENTUM: 0.06, 0.1: 0.04}  # "about 0.07, 0.06 and 0.04" below
    assert all(abs(lag_cost[m] - stated_lag_cost[m]) < 0.015 for m in MOMENTA)
    assert abs((bpd_fresh_adamax - bpd_moved) - 0.19) < 0.04  # "about 0.19" below
    assert min(lag_cost.values()) > bpd_moved - bpd_exact  # more than the steps moved the bound itself

# %% [markdown]
# And the BN scales the regulariser of section 5 watches: the largest $|\gamma_c|$ of every BN layer
# of the trained model, which bounds how much that layer can amplify a statistics error.

# %%
max_gammas = torch.stack([m.weight.detach().abs().max() for m in batchnorm_layers(nvae)])  # (N_BN,)
print(f"{len(max_gammas)} BN layers; max |gamma| per layer: median {max_gammas.median():.2f}, largest "
      f"{max_gammas.max():.2f}; the regulariser's term lambda * sum = {nvae.weight_decay_norm:g} x "
      f"{bn_regularizer(batchnorm_layers(nvae)):.1f} = {nvae.weight_decay_norm * bn_regularizer(batchnorm_layers(nvae)):.2f} nats")
plt.figure(figsize=(6, 2.6))
plt.hist(max_gammas.numpy(), bins=20)
plt.xlabel("max |gamma| of a BN layer")
plt.ylabel("layers")
plt.title("BN scales of the trained NVAE")
plt.tight_layout()
assert torch.isclose(max_gammas.sum(), bn_regularizer(batchnorm_layers(nvae)))

# %% [markdown]
# What this says, for this model:
#
# - At the end of training the running statistics are as close to the data's as the batch noise
#   allows: the learning rate has decayed to $10^{-4}$, the weights hardly move, and the lag is gone.
#   Evaluating with them costs nothing measurable against the data's exact statistics. Train mode
#   is *worse*: a batch of 64 test images gives noisier statistics than the running average.
# - The order is that of the toy of section 5: the smaller the momentum, the less noise and the
#   more lag, with NVAE's 0.05 between TensorFlow's and PyTorch's defaults. (Fifteen steps are too
#   few for the lag's full $1/m$ scaling: at $m = 0.01$ the running estimates have hardly begun to
#   move.) Which one matters depends on how fast the weights move when you evaluate.
# - Noise alone changes the ELBO by less than a thousandth of a bit per dimension; lag does not.
#   After fifteen fast steps, continued with the trainer's own Adamax state, the stale statistics
#   cost about 0.07, 0.06 and 0.04 bits per dimension at $m$ = 0.01, 0.05 and 0.1 (the cell above
#   prints each cost and asserts these figures to within 0.015): several hundredths of a bit, more
#   than the fifteen steps moved the bound itself — a model evaluated in the middle of training looks
#   worse than it is — and the smaller the momentum, the more. This is the situation in which NVAE's
#   "follow the batch statistics faster" helps, if the baseline is TensorFlow's 0.01.
# - Restarting Adamax from a fresh state instead costs about 0.19 bits per dimension by itself,
#   measured with the data's statistics (asserted to within 0.04), nearly three times the largest lag: a
#   fresh Adamax's first steps move every weight by about the learning rate. An experiment that
#   restarts the optimiser measures mostly the restart, not BatchNorm.
# - NVAE's concern is a hierarchy of 30 or more groups, where each group's prior and posterior are
#   computed from shifted features and the shifts compound, and sampling, where the features come
#   from the prior rather than the data and the running statistics fit even less. That is why NVAE
#   also bounds the BN scales (section 5) and re-estimates the statistics before sampling
#   (Chapter 4).

# %% [markdown]
# ## Summary
#
# - NVAE's cells are residual, `skip + 0.1 * branch`, so a deep stack starts near the identity.
#   The encoder cell uses two regular 3×3 convolutions; the generative cell is an inverted
#   residual with a depthwise 5×5 convolution, cheaper than one regular 5×5 convolution. You
#   assembled the generative cell from its layers and wrote one latent group (encoder combiner,
#   residual-normal posterior, KL, decoder combiner), and this chapter's NVAE trained with both.
# - The receptive field of a stack grows by $(k_i - 1)$ times the product of earlier strides; SE
#   makes every cell's receptive field global by gating channels with a global average.
# - BatchNorm trains on batch statistics and evaluates on running ones; the difference is noise
#   and lag. The paper sets BN's momentum so that the running statistics follow the batch
#   statistics faster; its code's 0.05 (PyTorch's convention: the newest batch's weight) is five
#   times faster than TensorFlow's default (decay 0.99) and half as fast as PyTorch's (0.1), with
#   the noise the other way round. The BN regulariser $\lambda \sum \max_c|\gamma_c|$ bounds how much
#   a layer can amplify a statistics error.
# - The bidirectional encoder shares the top-down tower between inference and generation; latent
#   groups sit at several scales, the coarse ones at the top.
# - A 140 000-parameter NVAE trained for 1500 steps on a CPU beats Chapter 1's VAE in bits/dim
#   (about 3.52 against 3.71); section 7 prints it beside Chapter 2's Ladder VAE, which saw 2.7
#   times as many images. Its four groups all carry information (tens of nats each).
#
# **Next: Chapter 4** loads this model and covers what keeps a deep NVAE stable: the residual
# normal posterior, spectral regularisation, KL warm-up and balancing, BN re-estimation for
# sampling, and normalising flows.
#
# Further reading: Vahdat & Kautz (2020), *NVAE: A Deep Hierarchical Variational Autoencoder*;
# Sandler et al. (2018), *MobileNetV2* (inverted residuals); Hu et al. (2018), *Squeeze-and-Excitation
# Networks*; Ramachandran et al. (2017), *Searching for Activation Functions* (Swish); Ioffe &
# Szegedy (2015), *Batch Normalization*; Salimans & Kingma (2016), *Weight Normalization*.
