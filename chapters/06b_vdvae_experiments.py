# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 6b — The Very Deep VAE: the paper's ablations, in small
#
# Chapter 6 built the Very Deep VAE and trained it. The paper (Child 2021) supports its design
# with three ablations; this notebook runs each of them on Fashion-MNIST at a size a CPU trains in
# a minute or two, with the library's presets and engine.
#
# **You will learn**
# 1. what the 1/√N initialisation does for a *deep* model in training: the loss and the skipped
#    updates with and without it (the paper's Table 3);
# 2. why VDVAE unpools with nearest neighbours rather than a learned upsampler: where the KL sits
#    along the hierarchy with each (the paper's Fig. 5);
# 3. whether depth or width buys more at a fixed number of parameters (the paper's Table 1).
#
# On the way you write four small pieces the experiments use: the scale factor of an architecture
# string (*exercise 1*), the learned upsampler as a transposed convolution (*exercise 2*), the
# cumulative KL that draws Fig. 5 (*exercise 3*) and the width that fits a parameter budget, which
# builds Table 1's models (*exercise 4*).
#
# **What to expect.** Full mode takes about 5.5 minutes of CPU time on one thread (5.5 to 8.3
# minutes of wall time on a shared 2-core machine at load 2 to 5): five training runs of 150 steps of models with
# 121,000–136,000 parameters and 69, 30 or 8 latent layers. Measured: without the 1/√N scaling the
# 69-layer model trails by 1.0 bits/dim at step 50 and 0.17 at step 150 (test 4.128 against 3.974
# bits/dim); with a learned upsampler its two 1×1 layers carry nothing (0.0002 nats, against 0.25
# with nearest neighbours) at the same test loss (3.976); at an equal parameter budget, after 150
# steps, the 30- and 8-layer models (3.915 and 3.917) are ahead of the 69-layer one (3.974) — not
# the paper's Table 1, which compares long runs. With `HVAE_SMOKE=1` every run takes 5 steps on 512
# images and the notebook runs in under a minute; the comparisons are then not asserted.

# %%
import math
import re
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from hvae_lib.analysis import diagnostics
from hvae_lib.analysis.plotting import read_metrics
from hvae_lib.config import override
from hvae_lib.data import load_dataset
from hvae_lib.exercises import assert_matches, check, reveal_prediction, smoke_mode, use_if_correct
from hvae_lib.models import build_model
from hvae_lib.models.presets import get_preset
from hvae_lib.models.vdvae import VDVAE
from hvae_lib.models.vdvae_arch import parse_decoder, parse_encoder, width_for_budget
from hvae_lib.models.vdvae_parts import Unpool
from hvae_lib.training.engine import Trainer

SMOKE = smoke_mode()
torch.manual_seed(0)
RUNS = Path("runs")
STEPS = 5 if SMOKE else 150
ENCODER = "28x1,28d2,14x2,14d2,7x2,7d7,1x1"
# Every run: the chapter's optimiser (AdamW, betas (0.9, 0.9), gradient clipping and skipping, loss
# per dimension), batch 32, STEPS steps, evaluated with the raw weights (no EMA: it would still
# remember the initialisation after so few steps) on 2,000 test images.
COMMON = {"max_steps": STEPS, "batch_size": 32, "test_limit": 256 if SMOKE else 2000, "log_every": 1,
          "eval_every": 0, "checkpoint_every": 0, "sample_every": 0, "quiet": True, "zdim": 4, "enc_blocks": ENCODER,
          "ema_rate": 0.0,
          **({"train_limit": 512, "warmup_steps": 5} if SMOKE else {})}
data = load_dataset("fashion_mnist", test_limit=256 if SMOKE else 2000)
x_test = torch.stack([data.test[i][0] for i in range(len(data.test))])  # (N, 1, 28, 28)
print(f"smoke mode: {SMOKE}; {STEPS} steps per run")


def train(run_name, changes):
    """Train vdvae_fashion with the common and the given changes, afresh, into runs/ch06b_<run_name>."""
    config = override(get_preset("vdvae_fashion"), {**COMMON, **changes})
    run_dir = RUNS / (f"ch06b_{run_name}" + ("_smoke" if SMOKE else ""))
    shutil.rmtree(run_dir, ignore_errors=True)
    trainer = Trainer(config, run_dir, resume=False)
    result = trainer.fit()
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "train"]
    params = param_count(trainer.model)
    print(f"{run_name}: {params:,} parameters, {trainer.model.num_groups} latent layers; test {result['test_bpd']:.3f} "
          f"bits/dim; {trainer.total_skips} updates skipped")
    return trainer, result, records


def param_count(model):
    return sum(p.numel() for p in model.parameters())


def smoothed(values, window=25):
    values = torch.tensor(values)
    return torch.stack([values[max(0, i - window + 1):i + 1].mean() for i in range(len(values))])


# %% [markdown]
# ## 1. The 1/√N initialisation in a deep model (Table 3 in small)
#
# The paper trained networks of 15 to 75 layers with and without the scaling for 80,000 steps: at
# 15 and 30 layers the scaling made little difference (slightly worse, even), from 45 layers on it
# helped, and the unscaled 75-layer network diverged; without the scaling, many more updates had to
# be skipped. Chapter 6 showed what the scaling changes at initialisation: the top-down state's
# variance, $N/3$ without it. Here a model with 69 latent layers (two at 1×1, sixty-one at 7×7,
# five at 14×14, one at 28×28, width 16) trains for STEPS steps each way.
#
# The factor comes from the architecture strings alone: $\sqrt{1/N}$, $N$ the number of blocks in the
# tower — the encoder's blocks for the encoder's residual branches, the decoder's latent layers for
# the top-down `resnet` blocks and the $z$ projections.
#
# **Exercise 1.** Given an encoder string and a decoder string (Chapter 6's format: `RxN` is N
# blocks, `R`, `RdK` and `RmS` one block each), return the two factors as a tensor
# `[sqrt(1 / N_encoder), sqrt(1 / N_decoder)]` (float64).

# %% nbgrader={"grade": false, "grade_id": "ex01_residual_scales", "locked": false, "schema_version": 3, "solution": true, "task": false}
def residual_scales(enc_blocks, dec_blocks):
    """tensor([sqrt(1 / encoder blocks), sqrt(1 / decoder blocks)]), float64."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %%
def library_scales(enc_blocks, dec_blocks):
    """The same factors from the library's parsers (the number of typed blocks each string gives)."""
    blocks = len(parse_encoder(enc_blocks, int(re.match(r"\d+", enc_blocks).group())))  # starts at the image
    layers = len(parse_decoder(dec_blocks, int(re.match(r"\d+", dec_blocks.split(",")[-1]).group())))  # ends there
    return torch.tensor([math.sqrt(1 / blocks), math.sqrt(1 / layers)], dtype=torch.float64)


def preset_strings(name):
    model = get_preset(name).model
    return model.enc_blocks, model.dec_blocks


DEEP = {"width": 16, "dec_blocks": "1x2,7m1,7x60,14m7,14x4,28m14"}

# %% nbgrader={"grade": true, "grade_id": "ex01_residual_scales_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
ok_scales = check("residual_scales", residual_scales, library_scales,
                  [preset_strings("vdvae_cifar10"), (ENCODER, DEEP["dec_blocks"]), ("8x2", "8x2")])


# %% [markdown]
# Your factors, against the weights of the deep model built with and without the scaling from the
# same random seed: the last convolution of every residual branch and every $z$ projection differ
# by exactly these factors, everything else not at all.

# %%
def deep_model(scaled):
    torch.manual_seed(0)
    return VDVAE((1, 28, 28), 8, width=16, zdim=4, num_mixtures=5, enc_blocks=ENCODER, dec_blocks=DEEP["dec_blocks"],
                 scale_residuals=scaled)


scales = use_if_correct("residual_scales", residual_scales, library_scales, ok_scales)(ENCODER, DEEP["dec_blocks"])
with_scaling, without_scaling = deep_model(True), deep_model(False)
ratios = {}
for (name, w_scaled), w_plain in zip(with_scaling.named_parameters(), without_scaling.parameters()):
    if w_plain.abs().sum() > 0:
        ratios[name] = (w_scaled.norm() / w_plain.norm()).item()
scaled_names = [n for n, r in ratios.items() if abs(r - 1) > 1e-6]
print(f"factors: encoder {scales[0]:.4f} (1/sqrt({round(scales[0].item() ** -2)})), decoder {scales[1]:.4f} "
      f"(1/sqrt({round(scales[1].item() ** -2)})); {len(scaled_names)} weight tensors scaled")
for name in scaled_names:
    factor = scales[0] if name.startswith("encoder") else scales[1]
    assert abs(ratios[name] - factor) < 1e-5 and (name.endswith("c4.weight") or "z_proj.weight" in name), name
assert len(scaled_names) == len(with_scaling.encoder.enc_blocks) + 2 * with_scaling.num_groups  # and nothing else

# %% [markdown]
# **Predict, then run.** After STEPS steps, how many bits/dim higher (positive) is the training loss
# of the unscaled model than the scaled one's (both averaged over the last 25 steps)?

# %% nbgrader={"grade": false, "grade_id": "predict01_unscaled_gap", "locked": false, "schema_version": 3, "solution": true, "task": false}
def predicted_unscaled_gap():
    # YOUR CODE HERE
    raise NotImplementedError()


# %%
deep = {scaled: train("deep_" + ("scaled" if scaled else "unscaled"), {**DEEP, "scale_residuals": scaled})
        for scaled in (True, False)}
curves = {scaled: smoothed([r["bpd"] for r in records]) for scaled, (_, _, records) in deep.items()}
gap = (curves[False][-1] - curves[True][-1]).item()
reveal_prediction("unscaled minus scaled training loss at the end", predicted_unscaled_gap, round(gap, 3), " bits/dim")
fig, ax = plt.subplots(figsize=(7, 3))
for scaled, curve in curves.items():
    ax.plot(range(1, len(curve) + 1), curve, label=("with" if scaled else "without") + " 1/sqrt(N)")
ax.set(xlabel="step", ylabel="training loss (bits/dim, mean of 25 steps)", title="69 latent layers", ylim=(None, 8))
ax.legend()
plt.tight_layout()
early = 49 if not SMOKE else -1
print(f"training loss over the last 25 steps: {curves[True][-1]:.3f} with the scaling, {curves[False][-1]:.3f} without; "
      f"at step {early % len(curves[True]) + 1}: {curves[True][early]:.3f} and {curves[False][early]:.3f}")
assert curves[False][-1] > curves[True][-1]  # without the scaling the deep model lags
if not SMOKE:
    assert curves[False][49] > curves[True][49] + 0.3  # far behind early on
    assert deep[False][1]["test_bpd"] > deep[True][1]["test_bpd"]
assert all(trainer.total_skips == 0 for trainer, _, _ in deep.values())  # no update skipped, either way

# %% [markdown]
# The unscaled model starts far behind — at step 50 its training loss is 1.0 bits/dim above the
# scaled model's, from a top-down state whose variance at initialisation grows with the number of
# layers, as N/3 instead of staying at 1/3 (Chapter 6) — and is still 0.17 bits/dim behind after 150 steps, on the test set
# too (4.128 against 3.974). No update was skipped in either run: at this size the gradient norms
# stay far below CIFAR-10's threshold, so what the paper saw as many more skipped updates and, at
# 75 layers, divergence shows here only as a slower start. The paper also found the scaling slightly
# *worse* for shallow networks (15 and 30 layers); this notebook does not test that.
#
# ## 2. Nearest-neighbour against learned unpooling (Fig. 5 in small)
#
# Between resolutions the top-down state is *unpooled*: VDVAE repeats each value over a block of
# pixels (nearest neighbour, no parameters); the alternative is a learned upsampler, here a
# transposed convolution whose kernel and stride are both the factor $f = R/S$. Such a convolution
# does not overlap: every pixel $(i, j)$ of the low-resolution state becomes its own $f \times f$ patch,
#
# $$\text{out}[o,\, i f + a,\, j f + c] = b_o + \sum_k s[k, i, j]\, W[k, o, a, c],$$
#
# a learned linear map from the $C_\text{in}$ channels of one pixel to $C_\text{out} \times f \times f$ values.
#
# **Exercise 2.** Write that upsampler without a convolution: `s` (B, C_in, r, r), `weight`
# (C_in, C_out, f, f) — PyTorch's layout for a transposed convolution — and `bias` (C_out,); return
# (B, C_out, r f, r f). (`torch.einsum` and a `reshape` do it.)

# %% nbgrader={"grade": false, "grade_id": "ex02_learned_unpool", "locked": false, "schema_version": 3, "solution": true, "task": false}
def learned_unpool(s, weight, bias, factor):
    """The stride-`factor` transposed convolution with a factor x factor kernel, as patches: (B, C_out, r f, r f)."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %%
def library_unpool(s, weight, bias, factor):
    """The library's learned Unpool (an nn.ConvTranspose2d) with these weights."""
    up = Unpool("learned", factor, weight.shape[0], weight.shape[1])
    with torch.no_grad():
        up.up.weight.copy_(weight)
        up.up.bias.copy_(bias)
        return up(s)


def unpool_cases(seed):
    g = torch.Generator().manual_seed(seed)
    shapes = [(2, 8, 1, 4, 7), (3, 6, 7, 6, 2), (1, 4, 3, 2, 3)]  # (B, C_in, r, C_out, f)
    return [(torch.randn(b, c, r, r, generator=g), torch.randn(c, o, f, f, generator=g), torch.randn(o, generator=g), f)
            for b, c, r, o, f in shapes]


# %% nbgrader={"grade": true, "grade_id": "ex02_learned_unpool_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
ok_unpool = check("learned_unpool", learned_unpool, library_unpool, unpool_cases(0))

# %% [markdown]
# Nearest-neighbour unpooling is the special case $W[k, o, a, c] = [k = o]$, $b = 0$: every patch
# copies its pixel. The learned upsampler can represent it, and more — at the price of
# $C_\text{in} C_\text{out} f^2 + C_\text{out}$ parameters per unpooling, most of them in the 1×1 → 7×7 step:

# %%
unpool_fn = use_if_correct("learned_unpool", learned_unpool, library_unpool, ok_unpool)
s_low = torch.randn(2, 16, 7, 7)  # (B, C, r, r)
identity = torch.eye(16)[:, :, None, None].expand(16, 16, 2, 2)  # (C_in, C_out, f, f)
nearest = Unpool("nearest", 2, 16, 16)(s_low)  # (B, C, 2r, 2r)
assert torch.allclose(unpool_fn(s_low, identity, torch.zeros(16), 2), nearest)
with torch.device("meta"):
    nearest_model = deep_model(True)
    learned_model = VDVAE((1, 28, 28), 8, width=16, zdim=4, num_mixtures=5, enc_blocks=ENCODER,
                          dec_blocks=DEEP["dec_blocks"], unpool="learned")
extra = {f"{m}m{s}": 16 * 16 * (m // s) ** 2 + 16 for m, s in ((7, 1), (14, 7), (28, 14))}
print(f"learned unpooling adds {param_count(learned_model) - param_count(nearest_model):,} parameters: "
      + ", ".join(f"{k}: {v:,}" for k, v in extra.items()))
assert param_count(learned_model) - param_count(nearest_model) == sum(extra.values())

# %% [markdown]
# The paper found that with the learned upsampler the first 13 of 73 layers of an ImageNet-32
# model encoded nothing — the KL of a layer is the information its latent carries about the
# image — while with nearest neighbours every layer did, and the loss was lower. Below, the deep
# model of section 1 (nearest) against the same model with learned unpooling.
#
# The paper plots the *cumulative* KL along the hierarchy, top first, in bits per data dimension:
# $R_l = \frac{1}{D \ln 2}\sum_{j \le l} \mathrm{KL}_j$ for KLs in nats per image and $D$ dimensions per image.
#
# **Exercise 3.** Write it: `kl` is the (L,) vector of KLs per layer in nats per image, top first,
# `num_dims` is $D$; return the (L,) cumulative rate in bits per dimension. The plot below draws yours.

# %% nbgrader={"grade": false, "grade_id": "ex03_cumulative_kl", "locked": false, "schema_version": 3, "solution": true, "task": false}
def cumulative_kl_bits(kl, num_dims):
    """(L,) cumulative KL from the top layer down, in bits per data dimension."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "ex03_cumulative_kl_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
ok_cumulative = check("cumulative_kl_bits", cumulative_kl_bits, diagnostics.cumulative_rate,
                      [(torch.tensor([784 * math.log(2), 0.0, 392 * math.log(2)]), 784), (torch.rand(69) * 30, 784)])

# %%
cumulative_bits = use_if_correct("cumulative_kl_bits", cumulative_kl_bits, diagnostics.cumulative_rate, ok_cumulative)
learned = train("deep_learned", {**DEEP, "unpool": "learned"})
kl_curves = {}
for name, (trainer, result, _) in (("nearest neighbour", deep[True]), ("learned (transposed conv)", learned)):
    kl = diagnostics.kl_per_group(trainer.eval_model, x_test)  # (L,) nats per image
    kl_curves[name] = (kl, result["test_bpd"], trainer.eval_model.layer_resolutions)
fig, ax = plt.subplots(figsize=(8, 3.2))
for name, (kl, bpd, _) in kl_curves.items():
    ax.plot(range(len(kl)), cumulative_bits(kl, data.info.num_dims).numpy(), label=f"{name}: {bpd:.3f} bits/dim")
ax.set(xlabel="latent layer (top = 0)", ylabel="cumulative KL (bits/dim)", title="Where the information sits")
ax.legend()
plt.tight_layout()
for name, (kl, bpd, resolutions) in kl_curves.items():
    silent = int((kl < 0.01).sum())
    first = next((i for i, k in enumerate(kl.tolist()) if k >= 0.01), None)
    print(f"{name:26s} test {bpd:.3f} bits/dim; layers with KL < 0.01 nats: {silent} of {len(kl)}; first layer "
          f"that carries information: {first}; total KL {cumulative_bits(kl, data.info.num_dims)[-1]:.3f} bits/dim")
top = {name: kl[[i for i, r in enumerate(res) if r == 1]].sum().item() for name, (kl, _, res) in kl_curves.items()}
print(f"KL of the two 1x1 layers: {top['nearest neighbour']:.3f} nats with nearest-neighbour unpooling, "
      f"{top['learned (transposed conv)']:.4f} with the learned upsampler")
silent = {name: int((kl < 0.01).sum()) for name, (kl, _, _) in kl_curves.items()}
if not SMOKE:
    assert top["learned (transposed conv)"] < 0.01 < 0.1 < top["nearest neighbour"]
    assert kl_curves["nearest neighbour"][0][0] >= 0.01  # with nearest neighbours the very first layer is used
    assert abs(silent["nearest neighbour"] - silent["learned (transposed conv)"]) <= 5  # elsewhere: alike
    assert abs(kl_curves["nearest neighbour"][1] - kl_curves["learned (transposed conv)"][1]) < 0.02  # same loss

# %% [markdown]
# As in the paper, the learned upsampler leaves the top of the hierarchy unused: together the two
# 1×1 layers carry 0.0002 nats, against 0.25 with nearest neighbours, where the very first layer
# already carries information. The rest is not the paper's result in small: elsewhere both models
# leave about as many layers silent (13 and 11 of 69), and after 150 steps their test losses are the
# same (3.974 and 3.976 bits/dim), where the paper, after long training, measured a lower loss with
# nearest neighbours. A plausible reason for the silent top: nearest-neighbour unpooling copies the
# 1×1 state into every pixel of the 7×7 state, so what the top latent says reaches the image from the
# first step, while a randomly initialised upsampler first has to learn to pass it on — and until
# it does, the KL those layers would pay buys nothing.
#
# ## 3. Depth against width at a fixed number of parameters (Table 1 in small)
#
# The paper's Table 1: at a fixed parameter count, more (stochastic) layers gave a lower loss, up to
# the 48 it tried. Here the 69-layer model of section 1 (width 16) against a 30-layer and an
# 8-layer model, each as wide as it must be to have as many parameters, all trained for STEPS steps.
#
# **Exercise 4.** Given `param_count(width)` — the model's number of parameters at that width,
# growing with it — and a budget, return the multiple of 4 between 4 and 256 whose count is closest
# to the budget (the smaller width on a tie). Table 1's models are built with your function.

# %% nbgrader={"grade": false, "grade_id": "ex04_closest_width", "locked": false, "schema_version": 3, "solution": true, "task": false}
def closest_width(param_count, budget):
    """The width (a multiple of 4 in [4, 256]) whose param_count is closest to budget."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %%
def library_width(param_count, budget):
    return width_for_budget(param_count, budget, multiple=4, max_width=256)


# %% nbgrader={"grade": true, "grade_id": "ex04_closest_width_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
ok_width = check("closest_width", closest_width, library_width,
                 [(lambda w: 10 * w * w, 6760), (lambda w: w * w + 100 * w, 50_000), (lambda w: w, 6)])

# %%
fit_width = use_if_correct("closest_width", closest_width, library_width, ok_width)


def size_at(dec_blocks):
    """param_count(width) of the chapter's model with this decoder (built on the meta device: no memory)."""
    def count(width):
        with torch.device("meta"):
            return param_count(build_model(override(get_preset("vdvae_fashion"),
                                                    {**COMMON, "width": width, "dec_blocks": dec_blocks}), data.info))
    return count


target = param_count(deep[True][0].model)
budget = {"69 layers, width 16": deep[True]}
for layers, dec_blocks in ((30, "1x1,7m1,7x22,14m7,14x4,28m14"), (8, "1x1,7m1,7x3,14m7,14x1,28m14")):
    width = fit_width(size_at(dec_blocks), target)
    budget[f"{layers} layers, width {width}"] = train(f"{layers}_layers", {"width": width, "dec_blocks": dec_blocks})
sizes = {name: param_count(trainer.model) for name, (trainer, _, _) in budget.items()}
fig, ax = plt.subplots(figsize=(6, 2.6))
names = list(budget)
bpds = {n: budget[n][1]["test_bpd"] for n in names}
ax.barh(names, [bpds[n] for n in names])
for i, n in enumerate(names):
    ax.text(bpds[n], i, f" {bpds[n]:.3f}", va="center")
ax.set(xlabel="test bits/dim after the same steps", xlim=(min(bpds.values()) - 0.2, max(bpds.values()) + 0.15))
plt.tight_layout()
for n in names:
    print(f"{n:20s} {sizes[n]:,} parameters, test {bpds[n]:.3f} bits/dim")
assert max(sizes.values()) / min(sizes.values()) < 1.06  # the same budget, within 6%
if not SMOKE:
    deepest, mid, shallow = names
    assert bpds[deepest] > max(bpds[mid], bpds[shallow]) + 0.03  # after 150 steps the deepest is behind
    assert abs(bpds[mid] - bpds[shallow]) < 0.02  # and 30 against 8 layers is a tie

# %% [markdown]
# At this budget depth has not paid yet: the 69-layer model is 0.06 bits/dim behind, and 30 layers
# at width 24 tie with 8 layers at width 40 (3.915 and 3.917). That is not the paper's Table 1,
# where with equal parameters more stochastic layers gave a lower loss, up to 48 — but the paper
# compared models trained for hundreds of thousands of steps, and these have had 150: what they
# measure is how fast a model starts. Reproducing Table 1 itself needs the paper's training
# budget, or at least a GPU: the presets and the engine are ready for it.
#
# ## Summary
#
# - **1/√N scaling** (Table 3 in small): the factor depends only on how many blocks each tower has
#   (exercise 1). Without it a 69-layer model starts from a top-down state whose variance grows with
#   depth, and trails by 1.0 bits/dim at step 50 and 0.17 at step 150; no update was skipped either way.
# - **Unpooling** (Fig. 5 in small): a learned upsampler — a transposed convolution, one learned
#   patch per pixel (exercise 2), of which nearest neighbour is the identity case — leaves the top
#   layers unused, as in the paper; the cumulative KL (exercise 3) shows where the information sits.
#   After 150 steps the loss is the same either way.
# - **Depth against width** (Table 1 in small): with widths fitted to one parameter budget
#   (exercise 4), after 150 steps the deepest model is behind and the other two tie; the paper's
#   advantage of depth is a result of long training, which these runs do not reach.
#
# **Next:** Chapter 7 shows what the depth buys in theory — an N-layer VAE generalises an
# autoregressive model — and, with Chapter 6's model, what each resolution of the hierarchy decides.
