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
# **What to expect.** FILLED AFTER THE FULL RUN.

# %%
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from hvae_lib import diagnostics
from hvae_lib.config import get_preset, override
from hvae_lib.data import load_dataset
from hvae_lib.engine import Trainer
from hvae_lib.exercises import reveal_prediction, smoke_mode
from hvae_lib.plotting import read_metrics

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
    params = sum(p.numel() for p in trainer.model.parameters())
    print(f"{run_name}: {params:,} parameters, {trainer.model.num_groups} latent layers; test {result['test_bpd']:.3f} "
          f"bits/dim; {trainer.total_skips} updates skipped")
    return trainer, result, records


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
# **Predict, then run.** After STEPS steps, how many bits/dim higher (positive) is the training loss
# of the unscaled model than the scaled one's (both averaged over the last 25 steps)?

# %% nbgrader={"grade": false, "grade_id": "predict01_unscaled_gap", "locked": false, "schema_version": 3, "solution": true, "task": false}
def predicted_unscaled_gap():
    ### BEGIN SOLUTION
    return 0.2  # the unscaled model starts from a state N/3 times too large and spends its first steps undoing it
    ### END SOLUTION


# %%
DEEP = {"width": 16, "dec_blocks": "1x2,7m1,7x60,14m7,14x4,28m14"}
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
print(f"training loss over the last 25 steps: {curves[True][-1]:.3f} with the scaling, {curves[False][-1]:.3f} without; "
      f"at step 50: {curves[True][49 if not SMOKE else -1]:.3f} and {curves[False][49 if not SMOKE else -1]:.3f}")
assert curves[False][-1] > curves[True][-1]  # without the scaling the deep model lags
if not SMOKE:
    assert curves[False][49] > curves[True][49] + 0.3  # far behind early on
    assert deep[False][1]["test_bpd"] > deep[True][1]["test_bpd"]

# %% [markdown]
# TABLE3_TEXT
#
# ## 2. Nearest-neighbour against learned unpooling (Fig. 5 in small)
#
# Between resolutions the top-down state is *unpooled*: VDVAE repeats each value over a block of
# pixels (nearest neighbour, no parameters); the alternative is a learned upsampler, here a
# transposed convolution of stride $R/S$. The paper found that with the learned upsampler the
# first 13 of 73 layers of an ImageNet-32 model encoded nothing — the KL of a layer is the
# information its latent carries about the image — while with nearest neighbours every layer
# did, and the loss was lower. Below, the deep model of section 1 (nearest) against the same
# model with learned unpooling; the plot shows the cumulative KL along the hierarchy in bits per
# data dimension, the paper's units, on 2,000 test images.

# %%
learned = train("deep_learned", {**DEEP, "unpool": "learned"})
kl_curves = {}
for name, (trainer, result, _) in (("nearest neighbour", deep[True]), ("learned (transposed conv)", learned)):
    kl = diagnostics.kl_per_group(trainer.eval_model, x_test)  # (L,) nats per image
    kl_curves[name] = (kl, result["test_bpd"], trainer.eval_model.layer_resolutions)
fig, ax = plt.subplots(figsize=(8, 3.2))
for name, (kl, bpd, _) in kl_curves.items():
    ax.plot(range(len(kl)), (kl.cumsum(0) / (784 * torch.log(torch.tensor(2.0)))).numpy(), label=f"{name}: {bpd:.3f} bits/dim")
ax.set(xlabel="latent layer (top = 0)", ylabel="cumulative KL (bits/dim)", title="Where the information sits")
ax.legend()
plt.tight_layout()
for name, (kl, bpd, resolutions) in kl_curves.items():
    silent = int((kl < 0.01).sum())
    first = next((i for i, k in enumerate(kl.tolist()) if k >= 0.01), None)
    print(f"{name:26s} test {bpd:.3f} bits/dim; layers with KL < 0.01 nats: {silent} of {len(kl)}; first layer "
          f"that carries information: {first}")
top = {name: kl[[i for i, r in enumerate(res) if r == 1]].sum().item() for name, (kl, _, res) in kl_curves.items()}
print(f"KL of the two 1x1 layers: {top['nearest neighbour']:.3f} nats with nearest-neighbour unpooling, "
      f"{top['learned (transposed conv)']:.4f} with the learned upsampler")
if not SMOKE:
    assert top["learned (transposed conv)"] < 0.01 < 0.1 < top["nearest neighbour"]

# %% [markdown]
# FIG5_TEXT
#
# ## 3. Depth against width at a fixed number of parameters (Table 1 in small)
#
# The paper's Table 1: at a fixed parameter count, more (stochastic) layers gave a lower loss, up to
# the 48 it tried. Here three models of about 121,000–127,000 parameters: the 69-layer model of
# section 1 (width 16), 30 layers at width 24, and 8 layers at width 40, each trained for STEPS steps.

# %%
budget = {"69 layers, width 16": deep[True]}
budget["30 layers, width 24"] = train("mid", {"width": 24, "dec_blocks": "1x1,7m1,7x22,14m7,14x4,28m14"})
budget["8 layers, width 40"] = train("shallow", {"width": 40, "dec_blocks": "1x1,7m1,7x3,14m7,14x1,28m14"})
sizes = {name: sum(p.numel() for p in trainer.model.parameters()) for name, (trainer, _, _) in budget.items()}
fig, ax = plt.subplots(figsize=(6, 2.6))
names = list(budget)
ax.barh(names, [budget[n][1]["test_bpd"] for n in names])
for i, n in enumerate(names):
    ax.text(budget[n][1]["test_bpd"], i, f" {budget[n][1]['test_bpd']:.3f}", va="center")
ax.set(xlabel="test bits/dim after the same steps", xlim=(min(budget[n][1]["test_bpd"] for n in names) - 0.2,
                                                                     max(budget[n][1]["test_bpd"] for n in names) + 0.15))
plt.tight_layout()
for n in names:
    print(f"{n:20s} {sizes[n]:,} parameters, test {budget[n][1]['test_bpd']:.3f} bits/dim")
assert max(sizes.values()) / min(sizes.values()) < 1.06  # the same budget, within 6%
bpds = {n: budget[n][1]["test_bpd"] for n in names}
if not SMOKE:
    assert bpds["8 layers, width 40"] < bpds["30 layers, width 24"] < bpds["69 layers, width 16"]  # after 150 steps

# %% [markdown]
# TABLE1_TEXT
#
# ## Summary
#
# SUMMARY_TEXT
#
# **Next:** Chapter 7 shows what the depth buys in theory — an N-layer VAE generalises an
# autoregressive model — and, with Chapter 6's model, what each resolution of the hierarchy decides.
