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
# with ablations; this notebook runs three of them on Fashion-MNIST at a size a CPU trains in a
# minute or two, with the library's presets and engine, and reads every comparison over three seeds.
#
# **You will learn**
# 1. what the 1/√N initialisation does for a *deep* model in training: the loss and the skipped
#    updates with and without it (the paper's Table 3);
# 2. why VDVAE unpools with nearest neighbours rather than a learned upsampler: where the KL sits
#    along the hierarchy with each (the paper's Fig. 5);
# 3. whether the *stochastic* depth matters when the network stays the same — the same layers and
#    parameters, fewer of them drawing their latents one after the other (the paper's Table 1, left).
#
# On the way you write the pieces the experiments use: the scale factors of an architecture string
# (*exercise 1*), the learned upsampler as patches (*exercise 2*, which the learned-upsampler run
# trains with), the information profile that draws Fig. 5 (*exercise 3*), the stochastic depth of a
# grouped model (*a graded derivation* and *exercise 4*) and the grouped top-down pass itself
# (*exercise 5*, which measures the Table 1 models).
#
# **What to expect.** Full mode trains five models with the same 69 latent layers for 150 steps each
# (the baseline with 121,060 parameters; without 1/√N; with a learned upsampler, 135,700; at
# stochastic depth 20 and 4). Three of them need none of your code: a second process trains them on
# the other core while this notebook trains the other two and runs your exercises. Every run is on
# one thread, as `benchmarks/seeds.py` trains, so that on the machine that trained that file this
# notebook's run is its seed 0 to the last digit. The committed run took 232 s on an idle 2-core
# machine (AMD EPYC); the same notebook training the five models one after the other took 384 s
# there. On its seed the test losses are 3.974 bits/dim (the baseline), 4.128 without 1/√N, 3.976
# with the learned upsampler, 4.007 and 4.141 at stochastic depth 20 and 4. The cells assert what
# holds on this notebook's own run: the scale
# factors multiply exactly the weights they should; without them the 69-layer model's training
# loss trails by more than 0.3 bits/dim at step 50; no update is skipped either way; with the
# learned upsampler the two 1×1 layers carry less than 0.01 nats while with nearest neighbours they
# carry more than 0.1 and the very first layer is used; grouping keeps the layers and parameters
# and gives stochastic depth 69, 20 and 4. Which differences hold is read over seeds 0, 1 and 2
# (`benchmarks/seeds_ch06b.json`, printed and asserted in each section): at stochastic depth 4 the
# model ends behind on every seed; without 1/√N it ends behind on two seeds and level on the third;
# the learned upsampler and stochastic depth 20 land on either side of the baseline; and the
# learned upsampler leaves the 1×1 layers silent on every seed where nearest neighbours use them on
# two of the three. With `HVAE_SMOKE=1` every run takes 5 steps on 512 images (the notebook takes
# about 20 seconds); its numbers mean nothing,
# and the asserts that need trained models are skipped (those that read the seeds' file are not).

# %%
import functools
import json
import math
import re
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from hvae_lib.analysis import diagnostics
from hvae_lib.analysis.plotting import read_metrics
from hvae_lib.config import override
from hvae_lib.data import load_dataset
from hvae_lib.exercises import assert_matches, check, reveal_prediction, smoke_mode, use_if_correct
from hvae_lib.models.presets import get_preset
from hvae_lib.models.vdvae import VDVAE
from hvae_lib.models.vdvae_arch import parse_decoder, parse_encoder
from hvae_lib.models.vdvae_parts import Unpool
from hvae_lib.training.background import train_in_background
from hvae_lib.training.engine import Trainer

SMOKE = smoke_mode()
torch.manual_seed(0)
RUNS = Path("runs")
# Every run is a preset (hvae_lib/models/presets/vdvae.py): vdvae_fashion_deep — 69 latent layers,
# width 16, 150 steps of 32 images with Chapter 6's optimiser (AdamW, betas (0.9, 0.9), gradient
# clipping and skipping, loss per dimension), evaluated with the raw weights (no EMA: it would still
# remember the initialisation after so few steps) on 2,000 test images — and its variants.
# benchmarks/seeds.py trains the same presets for seeds 0, 1 and 2 (seed 0 is this notebook's run).
SMOKE_CHANGES = {"max_steps": 5, "train_limit": 512, "test_limit": 256, "warmup_steps": 5}
STEPS = 5 if SMOKE else get_preset("vdvae_fashion_deep").optim.max_steps
data = load_dataset("fashion_mnist", test_limit=256 if SMOKE else 2000)
x_test = torch.stack([data.test[i][0] for i in range(len(data.test))])  # (N, 1, 28, 28)
print(f"smoke mode: {SMOKE}; {STEPS} steps per run")
assert SMOKE or STEPS == 150  # the number of steps the text gives


torch.set_num_threads(1)  # as benchmarks/seeds.py trains (a thread count changes a run's last digits)
# Three of the five models need no code of yours. A second process trains them on the other core, one after
# the other, while this notebook trains the other two and runs your exercises (a model 16 channels wide
# is only about an eighth faster on two threads than on one, so two runs at once do more); `train` below
# collects them when a section needs them. Their log: runs/ch06b_vdvae_fashion_deep_unscaled.background.log.
ON_THE_OTHER_CORE = ["vdvae_fashion_deep_unscaled", "vdvae_fashion_deep_stoch20", "vdvae_fashion_deep_stoch4"]


def config_of(preset):
    return override(get_preset(preset), {"quiet": True, **(SMOKE_CHANGES if SMOKE else {})})


def run_dir(preset):
    return RUNS / (f"ch06b_{preset}" + ("_smoke" if SMOKE else ""))


background = train_in_background({preset: (config_of(preset), run_dir(preset)) for preset in ON_THE_OTHER_CORE})


def train(preset, prepare=None):
    """Train a preset afresh into runs/ch06b_<preset>, or collect it from the second process (waiting,
    with a progress bar, until it is done); ``prepare(model)`` runs before the first step."""
    config, folder = config_of(preset), run_dir(preset)
    if preset in ON_THE_OTHER_CORE:
        result = background.wait(preset)
        trainer = Trainer(config, folder, resume=True)  # its trained weights, from the run's checkpoint
    else:
        shutil.rmtree(folder, ignore_errors=True)
        trainer = Trainer(config, folder, resume=False)
        if prepare is not None:
            prepare(trainer.model)
        result = trainer.fit()
    records = [r for r in read_metrics(folder / "metrics.jsonl") if r["split"] == "train"]
    print(f"{preset}: {param_count(trainer.model):,} parameters, {trainer.model.num_groups} latent layers "
          f"(stochastic depth {trainer.model.stochastic_depth}); test {result['test_bpd']:.3f} bits/dim; "
          f"{trainer.total_skips} updates skipped")
    return trainer, result, records


def param_count(model):
    return sum(p.numel() for p in model.parameters())


def smoothed(values, window=25):
    values = torch.tensor(values)
    return torch.stack([values[max(0, i - window + 1):i + 1].mean() for i in range(len(values))])


SEEDS_FILE = Path("..") / "benchmarks" / "seeds_ch06b.json"  # benchmarks/seeds.py --presets ch06b
SEED_RUNS = json.loads(SEEDS_FILE.read_text())["runs"] if SEEDS_FILE.exists() else {}


def seed_table(presets, baseline="vdvae_fashion_deep"):
    """Raw-weight test bits/dim of three seeds per preset (benchmarks/seeds_ch06b.json), printed with the
    per-seed differences from ``baseline``; {preset: {seed: bits/dim}} (empty where not run yet)."""
    table = {p: {int(s): r.get("test_bpd_raw", r["test_bpd"]) for s, r in SEED_RUNS.get(p, {}).items()} for p in presets}
    for preset, per_seed in table.items():
        if not per_seed:
            print(f"{preset}: no seeds in {SEEDS_FILE} (run benchmarks/seeds.py --presets ch06b)")
            continue
        values = torch.tensor([per_seed[s] for s in sorted(per_seed)], dtype=torch.float64)
        line = f"{preset:28s} seeds {sorted(per_seed)}: " + ", ".join(f"{v:.3f}" for v in values.tolist())
        line += f"; mean {values.mean():.3f}, std {values.std():.3f}" if len(values) > 1 else ""
        if preset != baseline and table.get(baseline):
            gaps = [per_seed[s] - table[baseline][s] for s in sorted(per_seed) if s in table[baseline]]
            line += f"; minus {baseline}: " + ", ".join(f"{g:+.3f}" for g in gaps)
        print(line)
    return table


def rounded_gaps(table, preset, baseline="vdvae_fashion_deep"):
    """``preset`` minus ``baseline`` on each seed, in bits/dim to three decimals."""
    return [round(table[preset][s] - table[baseline][s], 3) for s in sorted(table[preset])]


DEEP = get_preset("vdvae_fashion_deep").model
ENCODER, DEEP_DEC = DEEP.enc_blocks, DEEP.dec_blocks

# %% [markdown]
# ## 1. The 1/√N initialisation in a deep model (Table 3 in small)
#
# The paper trained networks of 15 to 75 layers with and without the scaling for 80,000 steps: at
# 15 and 30 layers the scaling made little difference (slightly worse, even), from 45 layers on it
# helped, and the unscaled 75-layer network diverged; without the scaling, many more updates had to
# be skipped. Chapter 6 derived and measured what the scaling changes at initialisation: the
# top-down state's variance, $N/3$ without it. Here a model with 69 latent layers (two at 1×1,
# sixty-one at 7×7, five at 14×14, one at 28×28, width 16: the preset `vdvae_fashion_deep`) trains
# for 150 steps each way (5 in smoke mode).
#
# The factor comes from the architecture strings alone: $\sqrt{1/N}$, $N$ the number of blocks in the
# tower — the encoder's blocks for the encoder's residual branches, the decoder's latent layers for
# the top-down `resnet` blocks and the $z$ projections.
#
# **Exercise 1.** Given an encoder string and a decoder string (Chapter 6's format: `RxN` is N
# blocks, `R`, `RdK` and `RmS` one block each), return the two factors as a tensor
# `[sqrt(1 / N_encoder), sqrt(1 / N_decoder)]` (float64). Count the blocks yourself: the library's
# parsers are what the check compares with.

# %% nbgrader={"grade": false, "grade_id": "ex01_residual_scales", "locked": false, "schema_version": 3, "solution": true, "task": false}
def residual_scales(enc_blocks, dec_blocks):
    """tensor([sqrt(1 / encoder blocks), sqrt(1 / decoder blocks)]), float64."""
    ### BEGIN SOLUTION
    def count(text):
        return sum(int(token.split("x")[1]) if "x" in token else 1 for token in text.split(","))
    return torch.tensor([math.sqrt(1 / count(enc_blocks)), math.sqrt(1 / count(dec_blocks))], dtype=torch.float64)
    ### END SOLUTION


# %%
def library_scales(enc_blocks, dec_blocks):
    """The same factors from the library's parsers (the number of typed blocks each string gives)."""
    blocks = len(parse_encoder(enc_blocks, int(re.match(r"\d+", enc_blocks).group())))  # starts at the image
    layers = len(parse_decoder(dec_blocks, int(re.match(r"\d+", dec_blocks.split(",")[-1]).group())))  # ends there
    return torch.tensor([math.sqrt(1 / blocks), math.sqrt(1 / layers)], dtype=torch.float64)


def preset_strings(name):
    model = get_preset(name).model
    return model.enc_blocks, model.dec_blocks


PARSERS = ("hvae_lib.models.vdvae_arch:parse_encoder", "hvae_lib.models.vdvae_arch:parse_decoder")

# %% nbgrader={"grade": true, "grade_id": "ex01_residual_scales_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
ok_scales = check("residual_scales", residual_scales, library_scales,
                  {"a paper preset's strings": preset_strings("vdvae_cifar10"),
                   "a Fashion-MNIST model's strings": (ENCODER, DEEP_DEC),
                   "single-block tokens (R alone)": ("8,8d2,4", "4,8m4")}, forbid=PARSERS)
### BEGIN HIDDEN TESTS
assert_matches("residual_scales", residual_scales, library_scales,
               {"a paper preset's strings": preset_strings("vdvae_ffhq1024"),
                "a Fashion-MNIST model's strings": preset_strings("vdvae_fashion"),
                "single-block tokens (R alone)": ("4", "4")})
assert_matches("residual_scales", residual_scales, library_scales,
               {"a paper preset's strings": preset_strings("vdvae_imagenet64")})
### END HIDDEN TESTS

# %% [markdown]
# Your factors, against the weights of the deep model built with and without the scaling from the
# same random seed: the last convolution of every residual branch and every $z$ projection differ
# by exactly these factors, everything else not at all.

# %%
def deep_model(scaled, **changes):
    torch.manual_seed(0)
    return VDVAE((1, 28, 28), 8, width=DEEP.width, zdim=DEEP.zdim, num_mixtures=DEEP.num_mixtures, enc_blocks=ENCODER,
                 dec_blocks=DEEP_DEC, scale_residuals=scaled, **changes)


scales = use_if_correct("residual_scales", residual_scales, library_scales, ok_scales)(ENCODER, DEEP_DEC)
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
# **Predict, then run.** After 150 steps, how many bits/dim higher (positive) is the training loss
# of the unscaled model than the scaled one's (both averaged over the last 25 steps)?

# %% nbgrader={"grade": false, "grade_id": "predict01_unscaled_gap", "locked": false, "schema_version": 3, "solution": true, "task": false}
def predicted_unscaled_gap():
    ### BEGIN SOLUTION
    return 0.2  # the unscaled model starts from a state N/3 times too large and spends its first steps undoing it
    ### END SOLUTION


# %%
deep = {True: train("vdvae_fashion_deep"), False: train("vdvae_fashion_deep_unscaled")}
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
print(f"test: {deep[True][1]['test_bpd']:.3f} with the scaling, {deep[False][1]['test_bpd']:.3f} without")
assert all(trainer.total_skips == 0 for trainer, _, _ in deep.values())  # no update skipped, either way
if not SMOKE:  # this seed's run; the seeds below say whether it holds
    assert curves[False][49] > curves[True][49] + 0.3  # far behind early on

# %% [markdown]
# One run each is one draw. Over three seeds (`benchmarks/seeds.py --presets ch06b`, seed 0 being
# the run above), the test bits/dim with and without the scaling, and the difference per seed:

# %%
table3 = seed_table(["vdvae_fashion_deep", "vdvae_fashion_deep_unscaled"])
if all(len(per_seed) == 3 for per_seed in table3.values()):  # what the text below reads from the file
    assert rounded_gaps(table3, "vdvae_fashion_deep_unscaled") == [0.155, 0.107, -0.012]  # behind on two seeds
    baseline_spread = torch.tensor(list(table3["vdvae_fashion_deep"].values())).std().item()
    assert round(baseline_spread, 3) == 0.070 and 0.012 < baseline_spread  # seed 2's gap: within the noise

# %% [markdown]
# On this seed the model without the scaling trails by 1.030 bits/dim in training loss at step 50
# (6.026 against 4.996; the cell asserts more than 0.3) and by 0.166 at the end (4.232 against
# 4.067), and its test loss is 4.128 against 3.974; no update is skipped either way (asserted),
# where the paper's unscaled deep models needed many skips.
#
# Over three seeds (the same seed meaning the same batches and initial weights before scaling) the
# model without the scaling ends behind on two of them, by 0.155 and 0.107 bits/dim, and is level
# on the third: -0.012 on seed 2, a hundredth of a bit, well inside the spread of the baseline's own
# three seeds (standard deviation 0.070: 3.974, 4.036 and 4.113; asserted). After 150 steps the
# scaling is usually ahead, by an amount that one seed cannot tell you. (The paper's Table 3
# compared 80,000-step runs, where at 45 layers and more the unscaled models did worse and at 75
# one diverged.)
#
# A run depends on more than its seed. The file was trained on this machine's CPU; the same code
# and seeds on one thread of another machine gave +0.162, +0.234 and +0.011, and the baseline's
# seed 1 4.008 instead of 4.036. Another CPU adds the same numbers in another order, and 150 steps
# later that is another run: yours will differ in the last digits too, and on seed 2 perhaps in
# the sign. `OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/seeds.py --presets ch06b`
# trains the five presets for seeds 0, 1 and 2 into `benchmarks/seeds_ch06b.json` (resumable; 15
# runs of one to two minutes each on one thread here).
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
# (B, C_out, r f, r f). (`torch.einsum` and a `reshape` do it; `F.conv_transpose2d` is the answer the
# check compares with.) The learned-upsampler model below trains with your function.

# %% nbgrader={"grade": false, "grade_id": "ex02_learned_unpool", "locked": false, "schema_version": 3, "solution": true, "task": false}
def learned_unpool(s, weight, bias, factor):
    """The stride-`factor` transposed convolution with a factor x factor kernel, as patches: (B, C_out, r f, r f)."""
    ### BEGIN SOLUTION
    b, _, r, _ = s.shape
    patches = torch.einsum("bkij,koac->boiajc", s, weight)  # (B, C_out, r, f, r, f)
    return patches.reshape(b, weight.shape[1], r * factor, r * factor) + bias[:, None, None]
    ### END SOLUTION


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
    shapes = {"1x1 to 7x7 (factor 7)": (2, 8, 1, 4, 7), "7x7 to 14x14 (factor 2), C_in > C_out": (3, 6, 7, 4, 2),
              "a batch of one, factor 3": (1, 4, 3, 5, 3)}  # (B, C_in, r, C_out, f)
    return {kind: (torch.randn(b, c, r, r, generator=g), torch.randn(c, o, f, f, generator=g),
                   torch.randn(o, generator=g), f) for kind, (b, c, r, o, f) in shapes.items()}


# %% nbgrader={"grade": true, "grade_id": "ex02_learned_unpool_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
ok_unpool = check("learned_unpool", learned_unpool, library_unpool, unpool_cases(0),
                  forbid=(F.conv_transpose2d, torch.nn.ConvTranspose2d))
### BEGIN HIDDEN TESTS
assert_matches("learned_unpool", learned_unpool, library_unpool, unpool_cases(1))
assert_matches("learned_unpool", learned_unpool, library_unpool, unpool_cases(2))
### END HIDDEN TESTS

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
    nearest_model, learned_model = deep_model(True), deep_model(True, unpool="learned")
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
# **Exercise 3.** Write the information profile of a model on test images: with the model in
# evaluation mode and without gradients, run it on the images in batches of `batch_size`, in order
# (`model(batch).kl_per_group` is (B, L), nats per image), and average the KL of every layer over
# all the images; then the cumulative rate $R_l$ in bits per dimension, the number of *silent*
# layers (a mean KL below 0.01 nats) and the index of the first layer, from the top, that is not
# silent (None if every layer is). Put the model back in the mode it was in. Return
# `{"kl": (L,), "cumulative_bits": (L,), "silent": int, "first_used": int or None}`. The check draws
# the same posterior noise for your function and the library's `kl_per_group` and `cumulative_rate`;
# Fig. 5 below is drawn with yours.

# %%
def library_profile(model, images, num_dims, batch_size=256):
    kl = diagnostics.kl_per_group(model, images, batch_size)  # (L,)
    used = [i for i, k in enumerate(kl.tolist()) if k >= 0.01]
    return {"kl": kl, "cumulative_bits": diagnostics.cumulative_rate(kl, num_dims), "silent": int((kl < 0.01).sum()),
            "first_used": used[0] if used else None}


def profile_with_seed(profile, model, images, num_dims, batch_size, seed):
    torch.manual_seed(seed)  # the same z noise for both
    return profile(model, images, num_dims, batch_size)


def student_profile(*case):
    return profile_with_seed(information_profile, *case)


def reference_profile(*case):
    return profile_with_seed(library_profile, *case)


def silent_top_model(seed):
    """A small model whose top layers are silent: their posterior equals their prior (zero KL)."""
    model = deep_model(True)
    with torch.no_grad():
        for block in list(model.dec_blocks)[:2]:  # the two 1x1 layers: q's mean and log-sigma = p's
            block.posterior.c4.weight.zero_()
            block.posterior.c4.bias.zero_()
    torch.manual_seed(seed)
    return model.train()  # a model left in training mode: the profile must evaluate it, then put it back


def profile_cases(seed):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(40, 1, 28, 28, generator=g)
    return {"a 69-layer model, batches of 16 (the last one short)": (deep_model(True), images, 784, 16, seed),
            "silent top layers": (silent_top_model(seed), images[:12], 784, 256, seed)}


# %% nbgrader={"grade": false, "grade_id": "ex03_information_profile", "locked": false, "schema_version": 3, "solution": true, "task": false}
def information_profile(model, images, num_dims, batch_size=256):
    """{'kl': (L,) nats per image, 'cumulative_bits': (L,), 'silent': int, 'first_used': int or None}."""
    ### BEGIN SOLUTION
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            out = model(images[start:start + batch_size])
            total = total + out.kl_per_group.double().sum(dim=0)  # (L,)
    model.train(was_training)
    kl = (total / len(images)).float()  # (L,) mean KL per layer, nats per image
    cumulative = torch.cumsum(kl, dim=0) / (num_dims * math.log(2))  # bits per dimension
    used = [i for i, k in enumerate(kl.tolist()) if k >= 0.01]
    return {"kl": kl, "cumulative_bits": cumulative, "silent": int((kl < 0.01).sum()),
            "first_used": used[0] if used else None}
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex03_information_profile_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
ok_profile = check("information_profile", student_profile, reference_profile, profile_cases(0),
                   forbid=("hvae_lib.analysis.diagnostics:kl_per_group", "hvae_lib.analysis.diagnostics:cumulative_rate"))
### BEGIN HIDDEN TESTS
assert_matches("information_profile", student_profile, reference_profile, profile_cases(3))
### END HIDDEN TESTS

# %% [markdown]
# The learned-upsampler model trains with your upsampler of exercise 2 in every unpooling (or the
# library's transposed convolution, until it passes):

# %%
profile_fn = use_if_correct("information_profile", information_profile, library_profile, ok_profile)


def use_your_upsampler(model):
    for unpool in model.unpools.values():  # the learned Unpools keep their weights; the forward is yours
        unpool.forward = functools.partial(lambda s, u: unpool_fn(s, u.up.weight, u.up.bias, u.factor), u=unpool)


learned = train("vdvae_fashion_deep_learned", prepare=use_your_upsampler)
torch.manual_seed(0)
profiles = {"nearest neighbour": (profile_fn(deep[True][0].model, x_test, data.info.num_dims), deep[True][1]["test_bpd"]),
            "learned (transposed conv)": (profile_fn(learned[0].model, x_test, data.info.num_dims), learned[1]["test_bpd"])}
fig, ax = plt.subplots(figsize=(8, 3.2))
for name, (profile, bpd) in profiles.items():
    ax.plot(range(len(profile["kl"])), profile["cumulative_bits"].numpy(), label=f"{name}: {bpd:.3f} bits/dim")
ax.set(xlabel="latent layer (top = 0)", ylabel="cumulative KL (bits/dim)", title="Where the information sits")
ax.legend()
plt.tight_layout()
for name, (profile, bpd) in profiles.items():
    print(f"{name:26s} test {bpd:.3f} bits/dim; layers with KL < 0.01 nats: {profile['silent']} of {len(profile['kl'])}; "
          f"first layer that carries information: {profile['first_used']}; total KL "
          f"{profile['cumulative_bits'][-1]:.3f} bits/dim")
top = {name: profile["kl"][:2].sum().item() for name, (profile, _) in profiles.items()}  # the two 1x1 layers
print(f"KL of the two 1x1 layers: {top['nearest neighbour']:.3f} nats with nearest-neighbour unpooling, "
      f"{top['learned (transposed conv)']:.4f} with the learned upsampler")
if not SMOKE:  # this seed's run; the seeds below say how the losses compare
    assert top["learned (transposed conv)"] < 0.01 < 0.1 < top["nearest neighbour"]
    assert profiles["nearest neighbour"][0]["first_used"] == 0  # with nearest neighbours the very first layer is used

# %% [markdown]
# Over three seeds, the test bits/dim with each upsampler:

# %%
fig5 = seed_table(["vdvae_fashion_deep", "vdvae_fashion_deep_learned"])
top_kl = {preset: {int(s): sum(r["kl_per_layer"][:2]) for s, r in SEED_RUNS.get(preset, {}).items()}
          for preset in fig5}  # the two 1x1 layers of each seed's model, nats per image
for preset, per_seed in top_kl.items():
    print(f"{preset:28s} KL of the two 1x1 layers, seeds {sorted(per_seed)}: "
          + ", ".join(f"{per_seed[s]:.4f}" for s in sorted(per_seed)) + " nats")
if all(len(per_seed) == 3 for per_seed in fig5.values()):  # what the text below reads from the file
    assert rounded_gaps(fig5, "vdvae_fashion_deep_learned") == [0.002, 0.010, -0.060]  # no winner
    assert all(kl < 0.01 for kl in top_kl["vdvae_fashion_deep_learned"].values())  # silent on every seed
    assert [s for s, kl in top_kl["vdvae_fashion_deep"].items() if kl > 0.1] == [0, 2]  # used on two of three

# %% [markdown]
# The run above shows the paper's finding in small on one seed, asserted: with the learned
# upsampler the two 1×1 layers carry 0.0002 nats (under 0.01) against 0.247 (over 0.1) with nearest
# neighbours, and the first layer that carries information is layer 2 against layer 0.
#
# Three seeds say how far that goes (`benchmarks/seeds.py` records each model's KL per layer on the
# same 2,000 test images). With the learned upsampler the 1×1 layers stay silent on every seed (at
# most 0.0066 nats, asserted). With nearest neighbours they carry information on seeds 0 and 2
# (0.247 and 0.364 nats) but not on seed 1, where they too are silent (0.0052): nearest neighbours
# let the top layers be used, and usually they are; the learned upsampler shuts them off every
# time. The test losses do not separate the two: the learned upsampler is +0.002, +0.010 and -0.060
# bits/dim from nearest neighbour (asserted), a mean of -0.016 against differences of either sign.
# At 150 steps the choice decides where the information sits, not how well the model fits.
#
# ## 3. The same layers, a lower stochastic depth (Table 1 in small)
#
# The paper's Table 1 (left) asks whether *stochastic* depth — how many latent layers are drawn one
# after the other — matters on its own. It keeps a network of 48 layers and about 41 million
# parameters on ImageNet-32 and lowers its stochastic depth by grouping layers: within a group the
# layers no longer read each other's output, so their latents are drawn together. The test loss fell
# with stochastic depth all the way: 4.30, 4.18, 4.06, 3.98 and 3.95 nats per dimension at 3, 6, 12,
# 24 and 48 stochastic layers. (Its right half kept 48 layers and moved them between resolutions:
# more at the high resolutions did better.)
#
# The library's VDVAE groups layers with `layers_per_group` $k$ (our reading of the paper's Section
# 5.1; the official code has no such switch): the layers of each resolution are taken in runs of $k$
# consecutive layers, every layer of a run reads the state $s_g$ the run starts from, and the run
# hands on the sum of their increments,
#
# $$s \leftarrow s_g + \sum_{j=1}^{k} \big(\text{layer}_j(s_g) - s_g\big).$$
#
# Here the 69-layer model of section 1 at $k$ = 1 (69 stochastic layers), 4 (20) and 61 (one group per
# resolution: 4), every time with the same 69 layers and 121,060 parameters (presets
# `vdvae_fashion_deep_stoch20` and `vdvae_fashion_deep_stoch4`).
#
# **Derivation (graded by hand).** For a grouped model: (a) show that the latents of the $k$ layers of
# one group are conditionally independent given the latents above the group, both under the prior
# and under the posterior; (b) give the stochastic depth — the number of sequential steps in which
# the prior's latents can be drawn — for $n_r$ layers at resolution $r$; (c) say why the number of
# parameters does not depend on $k$.

# %% [markdown] nbgrader={"grade": true, "grade_id": "derive01_grouped_stochastic_depth", "locked": false, "points": 3, "schema_version": 3, "solution": true, "task": false}
# **Model answer.** (a) Every layer $j$ of a group reads only the group's input state $s_g$ (and,
# under the posterior, the encoder's activation $e_r$, a function of $x$). Its prior
# $p(z_j \mid s_g)$ and posterior $q(z_j \mid s_g, x)$ are therefore functions of $s_g$ (and $x$)
# alone, and $s_g$ is a deterministic function of the latents above the group. The latents of the
# other layers of the group enter only the group's *output* $s_g + \sum_j (\text{layer}_j(s_g) - s_g)$,
# which no layer of the group reads. Hence
# $p(z_1, \dots, z_k \mid z_{\text{above}}) = \prod_j p(z_j \mid s_g)$, and likewise for $q$: given the
# latents above, the group's latents are independent, and they can be drawn at once. (b) Drawing
# from the prior goes group after group, each group in one step: a resolution with $n_r$ layers
# makes $\lceil n_r / k \rceil$ groups, so the stochastic depth is $\sum_r \lceil n_r / k \rceil$ (for
# the 69-layer model, $2, 61, 5, 1$ layers: $1 + 16 + 2 + 1 = 20$ at $k = 4$, $4$ at $k = 61$, $69$ at
# $k = 1$). (c) Grouping changes only which state each layer reads and how the outputs are added;
# every layer keeps its posterior, prior, $z$ projection and residual block, so the parameters —
# and the compute of a training step — are those of the ungrouped model.
#
# **Rubric (3 points).** 1 point for (a), naming that each layer's prior and posterior depend on the
# group's input state only, so the joint factorises given the latents above; 1 point for (b),
# $\sum_r \lceil n_r / k \rceil$ with groups not crossing resolutions; 1 point for (c), the same
# modules in every layer, only the wiring changes.

# %% [markdown]
# **Exercise 4.** Your result (b) as a function: the stochastic depth of a decoder string whose layers
# are grouped `layers_per_group` at a time. The check compares with the library's VDVAE built with
# that grouping.

# %%
def encoder_for(dec_blocks):
    """An encoder string that reaches every resolution of ``dec_blocks`` (pooling from one to the next)."""
    resolutions = sorted({int(re.match(r"\d+", t).group()) for t in dec_blocks.split(",")}, reverse=True)
    return ",".join([f"{a}d{a // b}" for a, b in zip(resolutions, resolutions[1:])] + [str(resolutions[-1])])


def library_stochastic_depth(dec_blocks, layers_per_group):
    size = int(re.match(r"\d+", dec_blocks.split(",")[-1]).group())
    with torch.device("meta"):
        model = VDVAE((1, size, size), 8, width=8, zdim=1, num_mixtures=1, enc_blocks=encoder_for(dec_blocks),
                      dec_blocks=dec_blocks, layers_per_group=layers_per_group)
    return model.stochastic_depth


# %% nbgrader={"grade": false, "grade_id": "ex04_stochastic_depth", "locked": false, "schema_version": 3, "solution": true, "task": false}
def stochastic_depth(dec_blocks, layers_per_group):
    """The number of sequential groups of a decoder string grouped layers_per_group at a time."""
    ### BEGIN SOLUTION
    layers = {}  # resolution -> number of layers there
    for token in dec_blocks.split(","):
        if "x" in token:
            resolution, count = token.split("x")
        else:
            resolution, count = token.split("m")[0], 1
        layers[int(resolution)] = layers.get(int(resolution), 0) + int(count)
    return sum(math.ceil(n / layers_per_group) for n in layers.values())
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex04_stochastic_depth_test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
ok_depth = check("stochastic_depth", stochastic_depth, library_stochastic_depth,
                 {"groups of 4": (DEEP_DEC, 4), "groups longer than every resolution's run": (DEEP_DEC, 61),
                  "k = 1 (every layer its own group)": (DEEP_DEC, 1)})
### BEGIN HIDDEN TESTS
cifar_dec = get_preset("vdvae_cifar10").model.dec_blocks
assert_matches("stochastic_depth", stochastic_depth, library_stochastic_depth,
               {"groups of 4": (cifar_dec, 4), "groups longer than every resolution's run": (cifar_dec, 100),
                "k = 1 (every layer its own group)": (get_preset("vdvae_fashion").model.dec_blocks, 1)})
### END HIDDEN TESTS

# %% [markdown]
# **Exercise 5.** Write the grouped top-down pass during inference, for a model built without
# grouping, run as if its layers were grouped `layers_per_group` at a time. As in Chapter 6's
# exercise 3, the state at each resolution starts from the bias input (`model.bias_xs[str(r)]`) or
# zeros (`model.widths[r]` channels), and a layer `RmS` first adds the state at $S$ unpooled
# (`model.unpools[str(i)]` for layer $i$ does it, nearest neighbour); then:
#
# - a layer *starts a group* when it is the first of its resolution (the first layer, a change of
#   resolution, or a mix-in) or when `layers_per_group` layers of its resolution came before it in
#   its group; it reads the state as it stands, `s_g`, and its output becomes the state;
# - any other layer reads the same `s_g` and adds its increment: `state = state + (out - s_g)`.
#
# A layer is called as `block(s, F.gelu(e_r))`, which returns (new state, KL per image, and two
# things you do not need), `e_r` = `activations[r]`. Return the features
# `states[H] * model.gain + model.bias` (B, C, H, W) and the KLs stacked (B, L). Work out the groups
# from the layers themselves: the check hands you a model built without grouping, and compares with
# the library's model built with `layers_per_group`, on the same weights and noise. The chapter then
# measures its trained Table 1 models with your pass.

# %%
GROUP_ARCH = dict(width=8, zdim=2, num_mixtures=2, enc_blocks="16x1,16d4,4x1,4d4,1x1", dec_blocks="1x2,4m1,4x6,16m4,16x2")


def grouped_pair(seed, k, **arch):
    """(the model without grouping, the same weights grouped k at a time), weights moved off their start."""
    arch = {**GROUP_ARCH, **arch}
    torch.manual_seed(seed)
    plain = VDVAE((1, 16, 16), 8, **arch)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.05 * torch.randn_like(p))
    grouped = VDVAE((1, 16, 16), 8, layers_per_group=k, **arch)
    grouped.load_state_dict(plain.state_dict())
    return plain, grouped


def run_grouped(fn, model, x, k, seed):
    with torch.no_grad():
        activations = model.encoder(model.normalise(x))  # {r: (B, C_r, r, r)}
        torch.manual_seed(seed)
        return fn(model, activations, k)


def library_grouped(model, activations, k):
    """The library's top-down pass of a model built with layers_per_group (``k`` is its own)."""
    gelu = {r: F.gelu(a) for r, a in activations.items()}
    features, kls, _, _ = model.top_down(next(iter(activations.values())).shape[0], gelu, model.num_groups)
    return features, torch.stack(kls, dim=1)


def student_grouped(plain, grouped, x, k, seed):
    return run_grouped(grouped_top_down, plain, x, k, seed)


def reference_grouped(plain, grouped, x, k, seed):
    return run_grouped(library_grouped, grouped, x, k, seed)


def grouped_cases(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 1, 16, 16, generator=g)
    return {"groups of 2": (*grouped_pair(seed, 2), x, 2, seed),
            "groups of 4 (a short last group)": (*grouped_pair(seed + 1, 4), x, 4, seed),
            "one group per resolution, no bias input above 4x4": (*grouped_pair(seed + 2, 8, no_bias_above=4), x, 8, seed),
            "k = 1: the ordinary pass": (*grouped_pair(seed + 3, 1), x[:1], 1, seed)}


# %% nbgrader={"grade": false, "grade_id": "ex05_grouped_top_down", "locked": false, "schema_version": 3, "solution": true, "task": false}
def grouped_top_down(model, activations, layers_per_group):
    """The top-down pass with layers grouped layers_per_group at a time: (features (B, C, H, W), KL (B, L))."""
    ### BEGIN SOLUTION
    batch = next(iter(activations.values())).shape[0]
    states, kls, position = {}, [], 0
    for i, block in enumerate(model.dec_blocks):
        r = block.resolution
        first_of_resolution = i == 0 or model.dec_blocks[i - 1].resolution != r or model.mixins[i] is not None
        position = 0 if first_of_resolution else position + 1
        e = F.gelu(activations[r])
        if position % layers_per_group == 0:  # a group starts from the state as it stands
            if r in states:
                s = states[r]
            elif str(r) in model.bias_xs:
                s = model.bias_xs[str(r)].expand(batch, -1, -1, -1)  # (B, C, r, r)
            else:
                s = torch.zeros(batch, model.widths[r], r, r)
            if model.mixins[i] is not None:
                s = s + model.unpools[str(i)](states[model.mixins[i]])
            group_input = s
            state, kl = block(group_input, e)[:2]
        else:  # the group's other layers read the same input and add their increments
            out, kl = block(group_input, e)[:2]
            state = states[r] + (out - group_input)
        states[r] = state
        kls.append(kl)
    features = states[model.image_shape[1]] * model.gain + model.bias  # (B, C, H, W)
    return features, torch.stack(kls, dim=1)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex05_grouped_top_down_test", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
ok_grouped = check("grouped_top_down", student_grouped, reference_grouped, grouped_cases(0),
                   forbid=("hvae_lib.models.vdvae:VDVAE.top_down", "hvae_lib.models.vdvae:VDVAE.forward"))
### BEGIN HIDDEN TESTS
assert_matches("grouped_top_down", student_grouped, reference_grouped, grouped_cases(11))
### END HIDDEN TESTS

# %% [markdown]
# **Predict, then run.** After 150 steps, how many bits/dim higher (positive) is the test loss of
# the model with stochastic depth 4 than the 69-layer model's — the same layers and parameters?

# %% nbgrader={"grade": false, "grade_id": "predict02_shallow_stochastic_gap", "locked": false, "schema_version": 3, "solution": true, "task": false}
def predicted_stochastic_gap():
    ### BEGIN SOLUTION
    return 0.05  # the paper's gap took long training; after 150 steps little of it can show
    ### END SOLUTION


# %%
grouped_fn = use_if_correct("grouped_top_down", grouped_top_down, library_grouped, ok_grouped)
table1 = {69: deep[True], 20: train("vdvae_fashion_deep_stoch20"), 4: train("vdvae_fashion_deep_stoch4")}
for depth, (trainer, _, _) in table1.items():
    assert trainer.model.stochastic_depth == depth and param_count(trainer.model) == param_count(deep[True][0].model)
bpds = {depth: result["test_bpd"] for depth, (_, result, _) in table1.items()}
reveal_prediction("stochastic depth 4 minus 69, test bits/dim", predicted_stochastic_gap, round(bpds[4] - bpds[69], 3),
                  " bits/dim")
kl_by_depth = {}
for depth, (trainer, _, _) in table1.items():  # the KL of every layer, with your grouped pass
    model = trainer.model.eval()
    k = get_preset(f"vdvae_fashion_deep{'' if depth == 69 else f'_stoch{depth}'}").model.layers_per_group
    torch.manual_seed(0)
    kl_by_depth[depth] = torch.cat([run_grouped(grouped_fn, model, batch, k, 0)[1] for batch in x_test.split(500)]).mean(0)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.2), gridspec_kw={"width_ratios": [1, 2]})
ax1.barh([f"stochastic depth {d}" for d in bpds], list(bpds.values()))
for i, d in enumerate(bpds):
    ax1.text(bpds[d], i, f" {bpds[d]:.3f}", va="center")
ax1.set(xlabel="test bits/dim after the same steps", xlim=(min(bpds.values()) - 0.2, max(bpds.values()) + 0.2))
for depth, kl in kl_by_depth.items():
    ax2.plot(range(len(kl)), diagnostics.cumulative_rate(kl, data.info.num_dims).numpy(), label=f"stochastic depth {depth}")
ax2.set(xlabel="latent layer (top = 0)", ylabel="cumulative KL (bits/dim)", title="69 layers, grouped")
ax2.legend()
plt.tight_layout()
for depth in bpds:
    print(f"stochastic depth {depth:2d}: test {bpds[depth]:.3f} bits/dim, total KL {kl_by_depth[depth].sum():.1f} nats; "
          f"layers with KL < 0.01 nats: {int((kl_by_depth[depth] < 0.01).sum())} of 69")
assert all(torch.isfinite(kl).all() and (kl > -1e-4).all() for kl in kl_by_depth.values())

# %% [markdown]
# Over three seeds:

# %%
table1_seeds = seed_table(["vdvae_fashion_deep", "vdvae_fashion_deep_stoch20", "vdvae_fashion_deep_stoch4"])
if all(len(per_seed) == 3 for per_seed in table1_seeds.values()):  # what the text below reads from the file
    assert rounded_gaps(table1_seeds, "vdvae_fashion_deep_stoch4") == [0.167, 0.193, 0.082]  # behind on every seed
    assert rounded_gaps(table1_seeds, "vdvae_fashion_deep_stoch20") == [0.033, 0.015, -0.032]  # either side

# %% [markdown]
# The paper's gap — 4.30 against 3.95 nats per dimension from 3 to 48 stochastic layers — came from
# long training; here each model has 150 steps. On this notebook's seed the test losses are 3.974,
# 4.007 and 4.141 bits/dim at stochastic depth 69, 20 and 4 — the paper's order — and the lower the
# stochastic depth, the more KL the layers carry (53.1, 57.2 and 75.1 nats). What is asserted on
# this run holds by construction and by measurement: the three models have the same 69 layers and
# parameters, their stochastic depths are 69, 20 and 4, and your grouped pass gives every layer a
# finite, non-negative KL.
#
# Over three seeds (asserted from the file): stochastic depth 4 ends behind the 69-layer model on
# every seed, by 0.167, 0.193 and 0.082 bits/dim; stochastic depth 20 does not separate from it,
# +0.033, +0.015 and -0.032, a mean of +0.005. At this size and budget, drawing the 69 latents in 4
# steps costs about a seventh of a bit per dimension, and drawing them in 20 costs nothing we can
# measure with three seeds: the paper's order at the shallow end, not yet its whole curve.
#
# ## Summary
#
# - **1/√N scaling** (Table 3 in small): the factors come from the architecture strings alone
#   (exercise 1) and multiply exactly the last convolution of every residual branch and every $z$
#   projection. Without them the 69-layer model trails early in training (by more than 0.3
#   bits/dim at step 50 on this run) and ends behind on the test set on two seeds of three (by
#   0.155 and 0.107 bits/dim), level on the third (-0.012); no update is skipped either way.
# - **Unpooling** (Fig. 5 in small): a learned upsampler is one learned patch per pixel (exercise
#   2), of which nearest neighbour is the identity case; with it the two 1×1 layers stay silent on
#   every seed, as in the paper, while with nearest neighbours they are used on two seeds of three.
#   The test losses do not tell the two apart. The information profile (exercise 3) shows where
#   the KL sits.
# - **Stochastic depth** (Table 1 in small): grouping $k$ layers that read one state keeps every
#   layer and parameter and lowers the number of sequential draws to $\sum_r \lceil n_r / k \rceil$
#   (the derivation and exercise 4); your grouped top-down pass (exercise 5) measures the models.
#   Stochastic depth 4 costs 0.082 to 0.193 bits/dim on every seed; depth 20 costs nothing
#   measurable.
# - One run each is not a result: on a single seed, stochastic depth 20 "lost" by 0.033 and the
#   learned upsampler "tied"; three seeds (`benchmarks/seeds.py --presets ch06b`) show which
#   differences hold their sign and which are noise.
#
# **Next:** Chapter 7 shows what the depth buys in theory — an N-layer VAE generalises an
# autoregressive model — and, with Chapter 6's model, what each resolution of the hierarchy decides.
