# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 2 — Hierarchical VAEs and the Ladder VAE
#
# Chapter 1's VAE squeezes an image through one Gaussian vector. This chapter stacks latent
# *groups* into a hierarchy — coarse decisions at the top, details below — and builds the Ladder
# VAE (Sønderby et al. 2016), the template NVAE and the Very Deep VAE refine.
#
# **You will learn**
# 1. why a single Gaussian latent is too little: the *aggregate posterior* does not fill the prior;
# 2. the factorised prior and posterior of a hierarchy, and its ELBO with one KL per group;
# 3. bottom-up against top-down inference, and the precision-weighted merge (*derivation 1*, then
#    *exercise 1* computes it);
# 4. the top-down path that generates samples (*exercise 2*), the same path inferring the posterior
#    and the KL of every group (*exercise 3*), and how the untrained hierarchy starts:
#    zero-initialised priors, residual branches scaled by $1/\sqrt{N}$, zero biases;
# 5. whether the hierarchy fills the single latent's holes;
# 6. posterior collapse made visible — KL per group and active units (*exercise 4*), with and
#    without KL warm-up and free bits;
# 7. what each depth of the hierarchy decides: samples with the top groups fixed.
#
# Your merge (exercise 1) trains the collapse experiment's models and your counter (exercise 4)
# counts their active units; your inference pass (exercise 3) computes the trained model's ELBO and
# your top-down pass (exercise 2) draws the chapter's final samples, once their checks pass.
# Two "predict, then run" questions ask you to guess a number before the cell that measures it.
#
# **What to expect.** Full mode trains one Ladder VAE for 2000 steps and three short variants for
# 400 steps each: the run whose figures this chapter quotes took 585 s (under 10 minutes; 1139 s of
# CPU time on two threads) on an idle 2-core machine with Chapter 1's model in `runs/ch01_vae/`, as
# it is when you have run Chapter 1; without it the chapter trains that VAE first, about 5 minutes
# more. The Ladder VAE, at a
# parameter count and step time close to Chapter 1's VAE and trained with the same settings,
# reaches a test bits/dim level with the VAE's: **3.673 against 3.712** in our run (the cell that
# trains it prints both, and asserts them to within 0.1 bits/dim, about one standard deviation
# across seeds, and that they are within 0.2 bits/dim of each other). It is one seed: section 5
# says what three seeds show.
# `HVAE_SMOKE=1` runs everything in well under a minute on a few hundred images.

# %%
import json
import math
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from hvae_lib.analysis import diagnostics
from hvae_lib.analysis.plotting import show_grid
from hvae_lib.config import override
from hvae_lib.data import load_dataset
from hvae_lib.exercises import assert_matches, check, reveal_prediction, smoke_mode, use_if_correct
from hvae_lib.models.lvae import LadderVAE, ResBlock, precision_weighted_merge
from hvae_lib.models.presets import get_preset
from hvae_lib.probability.gaussian import DiagonalGaussian, sum_except_batch
from hvae_lib.probability.kl_control import free_bits
from hvae_lib.probability.objectives import nats_to_bpd
from hvae_lib.training.checkpoint import load_model
from hvae_lib.training.engine import Trainer

SMOKE = smoke_mode()
torch.manual_seed(0)
RUNS = Path("runs")
SMOKE_CHANGES = {"max_steps": 20, "train_limit": 512, "test_limit": 256, "batch_size": 64,
                 "eval_every": 10, "eval_batches": 2, "log_every": 5, "warmup_steps": 5, "quiet": True}
data = load_dataset("fashion_mnist", train_limit=512 if SMOKE else None, test_limit=256 if SMOKE else None)
x_test = torch.stack([data.test[i][0] for i in range(min(2000, len(data.test)))])  # (N, 1, 28, 28)
labels = torch.tensor([data.test[i][1] for i in range(len(x_test))])
print(f"smoke mode: {SMOKE}; {len(data.train)} training images, {len(x_test)} test images for diagnostics")


def train(preset, run_name, changes=None, fresh=True, loss_fn=None, merge_fn=None):
    """Train a preset into runs/<run_name> (smoke mode shrinks it); return the trainer and its result.
    ``loss_fn`` replaces the engine's loss, ``merge_fn`` a Ladder VAE's precision merge."""
    config = get_preset(preset)
    config = override(config, {**(changes or {}), **(SMOKE_CHANGES if SMOKE else {})})
    run_dir = RUNS / (run_name + ("_smoke" if SMOKE else ""))
    if fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
    trainer = Trainer(config, run_dir, resume=not fresh, loss_fn=loss_fn)
    if merge_fn is not None:
        trainer.model.merge_fn = trainer.eval_model.merge_fn = merge_fn
    return trainer, trainer.fit()


# %% [markdown]
# ## 1. Why one Gaussian latent is too little
#
# The prior of Chapter 1's VAE is $\mathcal{N}(0, I)$. The codes the encoder actually produces, pooled over
# the data, form the *aggregate posterior* $q(z) = \frac1N \sum_n q(z \mid x_n)$. Sampling decodes
# prior draws; if $q(z)$ does not fill the prior, many prior draws land where the decoder has never
# been trained, and the samples are poor. With one Gaussian vector the KL term pulls every
# $q(z \mid x)$ towards the same $\mathcal{N}(0, I)$, yet the data are clustered (trousers, shoes,
# bags...). A flexible, learned prior — which a hierarchy provides — can follow the clusters.
#
# We load Chapter 1's VAE (or train it, the same preset, if you have not run Chapter 1) and look at
# its two most informative latent dimensions.

# %%
ch1_checkpoint = RUNS / ("ch01_vae_smoke" if SMOKE else "ch01_vae") / "checkpoint.pt"
if ch1_checkpoint.exists():
    vae, _, _ = load_model(ch1_checkpoint)
    vae_bpd = json.loads((ch1_checkpoint.parent / "results.json").read_text())["test_bpd"]
else:
    print("Chapter 1's run was not found: training its VAE now (about 4 minutes).")
    vae_trainer, vae_result = train("vae_fashion", "ch01_vae")
    vae, vae_bpd = vae_trainer.eval_model.eval(), vae_result["test_bpd"]
print(f"Chapter 1 VAE: {sum(p.numel() for p in vae.parameters()):,} parameters, {vae_bpd:.3f} bits/dim on the test set")

# %%
with torch.no_grad():
    q = vae.encode(x_test)
kl_per_dim = q.kl(DiagonalGaussian.standard(q.mu.shape)).mean(0)  # (Z,)
d1, d2 = kl_per_dim.argsort(descending=True)[:2].tolist()
z_post = q.rsample()  # one code per test image: samples of the aggregate posterior
z_prior = torch.randn_like(z_post)
fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True, sharey=True)
sc = axes[0].scatter(z_post[:, d1], z_post[:, d2], c=labels, cmap="tab10", s=4)
axes[0].set(title="aggregate posterior q(z) (colour = class)", xlabel=f"z[{d1}]", ylabel=f"z[{d2}]")
axes[1].scatter(z_prior[:, d1], z_prior[:, d2], s=4, c="grey")
axes[1].set(title="prior N(0, I)", xlabel=f"z[{d1}]")
plt.colorbar(sc, ax=axes[0])
plt.tight_layout()

# %% [markdown]
# "Holes" can be measured: in the dimensions the VAE uses, how far is a prior draw from the nearest
# code of a real image, compared with a fresh posterior code of another real image? If the
# aggregate posterior filled the prior, the two distances would match.

# %%
def used_units(kl_per_unit):
    """Indices of the units carrying more than 0.1 nats (all of them if none does, as after the
    few steps of a smoke run)."""
    used = (kl_per_unit > 0.1).nonzero().flatten()
    return used if len(used) else torch.arange(len(kl_per_unit))


def nearest(codes, reference):
    """Mean distance from each code to its nearest neighbour in ``reference``."""
    return torch.cdist(codes, reference).min(dim=1).values.mean().item()


def hole_distances(z_post, kl_per_unit, k):
    """(held-out posterior codes, prior draws): mean distance to the nearest of the other half's
    posterior codes, in the k units carrying the most KL. Distances grow with the number of units,
    so two models are compared at the same k."""
    units = kl_per_unit.argsort(descending=True)[:k]
    half = len(z_post) // 2
    reference, held_out = z_post[:half, units], z_post[half:, units]
    prior = torch.randn(len(held_out), len(kl_per_unit), generator=torch.Generator().manual_seed(0))[:, units]
    return nearest(held_out, reference), nearest(prior, reference)


used = used_units(kl_per_dim)
d_posterior, d_prior = hole_distances(z_post, kl_per_dim, len(used))
print(f"{len(used)} used dimensions; mean distance to the nearest real code: "
      f"posterior draws {d_posterior:.2f}, prior draws {d_prior:.2f}")
print(f"ratio prior / posterior: {d_prior / d_posterior:.2f}")  # 1 if the aggregate posterior filled the prior
if not SMOKE:
    assert d_prior > 1.1 * d_posterior  # prior draws land away from the data's codes

# %% [markdown]
# Section 5 measures the same ratio on the Ladder VAE, whose hierarchy is meant to fill these holes.

# %% [markdown]
# ## 2. A hierarchy of latent groups
#
# Split the latent into groups $z = (z_1, \dots, z_L)$, $z_1$ at the top. The generative model is
# top-down and each group is conditioned on all groups above it:
#
# $$p_\theta(x, z) = p(z_1) \prod_{l=2}^{L} p_\theta(z_l \mid z_{<l}) \; p_\theta(x \mid z), \qquad
# q_\phi(z \mid x) = q_\phi(z_1 \mid x) \prod_{l=2}^{L} q_\phi(z_l \mid z_{<l}, x).$$
#
# Each conditional is a diagonal Gaussian whose parameters come from a network, so the *marginal*
# prior $p(z_l)$ of a lower group is a continuous mixture of Gaussians — as flexible as the
# network. Plugging the factorisations into the ELBO of Chapter 1 gives one KL per group:
#
# $$\text{ELBO} = \mathbb{E}_q[\log p(x \mid z)] - \mathrm{KL}(q(z_1 \mid x)\,\|\,p(z_1))
#  - \sum_{l=2}^{L} \mathbb{E}_{q(z_{<l} \mid x)}\big[\mathrm{KL}(q(z_l \mid z_{<l}, x)\,\|\,p(z_l \mid z_{<l}))\big].$$
#
# Each KL is analytic between the two Gaussians of its group, evaluated at one sample of the groups
# above: `kl_per_group` of shape `(B, L)` in every model of this course.
#
# ## 3. Bottom-up against top-down inference
#
# The obvious encoder is *bottom-up*: $x \to z_L \to \dots \to z_1$, each group inferred from the
# one below. Its posterior for a group never sees the prior of that group, which is computed
# top-down; the two must meet through the KL alone, and deep stacks of this kind leave most upper
# groups unused.
#
# The Ladder VAE infers *top-down*, along the generative path. A deterministic bottom-up pass
# computes features $d_l$ and a bottom-up estimate $\mathcal{N}(\hat\mu_l, \hat\sigma_l^2)$ for every
# group. Then the top-down pass — the *same* network that computes the priors — walks down, and at
# each group combines the bottom-up estimate with the top-down prior $\mathcal{N}(\mu_p, \sigma_p^2)$.
# The LVAE paper combines them as a product of the two Gaussians — the *precision-weighted merge*:
#
# $$\sigma_q^2 = \frac{1}{\hat\sigma_l^{-2} + \sigma_p^{-2}}, \qquad \mu_q = \big(\hat\mu_l\,\hat\sigma_l^{-2} + \mu_p\,\sigma_p^{-2}\big)\,\sigma_q^2 .$$
#
# The more certain source (the smaller $\sigma$, the larger precision $\sigma^{-2}$) dominates. Later
# convolutional versions (and NVAE) replace the product by a learned function of both; the library
# offers both (`merge="precision"` or `"learned"`).
#
# **Derivation 1.** Show that the normalised product of two Gaussian densities of one variable,
# $\mathcal{N}(z; \hat\mu, \hat\sigma^2)\,\mathcal{N}(z; \mu_p, \sigma_p^2) / Z$, is the Gaussian
# with the variance and mean above, and give the normaliser $Z$ (it is itself a Gaussian density,
# in $\hat\mu$). Why is it enough to do this for one dimension? Answer in the cell below.

# %% [markdown] nbgrader={"grade": true, "grade_id": "derive01_precision_merge", "locked": false, "points": 3, "schema_version": 3, "solution": true, "task": false}
# **Model answer.** Write the log of the product and collect the powers of $z$, with the
# precisions $\hat\tau = \hat\sigma^{-2}$ and $\tau_p = \sigma_p^{-2}$:
#
# $$-\tfrac12 \hat\tau (z - \hat\mu)^2 - \tfrac12 \tau_p (z - \mu_p)^2
#   = -\tfrac12 (\hat\tau + \tau_p)\, z^2 + (\hat\tau \hat\mu + \tau_p \mu_p)\, z + \text{const}.$$
#
# A quadratic in $z$ with a negative leading coefficient is, up to a constant, the log-density of
# a Gaussian; completing the square, $-\tfrac12 \tau_q (z - \mu_q)^2 + \text{const}$ with
#
# $$\tau_q = \hat\tau + \tau_p, \quad\text{i.e.}\quad \sigma_q^2 = \frac{1}{\hat\sigma^{-2} + \sigma_p^{-2}}, \qquad
#   \mu_q = \frac{\hat\tau \hat\mu + \tau_p \mu_p}{\tau_q} = \big(\hat\mu\,\hat\sigma^{-2} + \mu_p\,\sigma_p^{-2}\big)\,\sigma_q^2 .$$
#
# Precisions add and the mean is the precision-weighted average of the two means. The constants
# left over give the normaliser: $Z = \int \mathcal{N}(z; \hat\mu, \hat\sigma^2)\,\mathcal{N}(z; \mu_p,
# \sigma_p^2)\,dz = \mathcal{N}(\hat\mu; \mu_p, \hat\sigma^2 + \sigma_p^2)$ (the density of the difference
# of two independent Gaussians at zero), which does not depend on $z$ — the constant the cell
# after Exercise 1 measures. One dimension is enough because both factors are diagonal Gaussians:
# each density is a product over dimensions, so the product of the two factorises too, and every
# dimension merges on its own.
#
# **Rubric** (3 points): 1 point for collecting the terms in $z^2$ and $z$; 1 point for completing the
# square to the precision sum and the precision-weighted mean; 1 point for the normaliser (its
# independence of $z$ suffices for full marks, the closed form is a bonus) and the factorisation
# over dimensions.

# %% [markdown]
# **Exercise 1.** Implement the merge on log-sigmas. Return `(mu_q, log_sigma_q)`. A stable route:
# the precisions are `exp(-2 * log_sigma)`; `torch.logaddexp` adds them in log space. When one
# source is far more certain than the other (a ratio of $e^{12}$ in $\sigma$), the merge must return
# the certain one, not `nan` or `inf`.

# %% nbgrader={"grade": false, "grade_id": "ex01_precision_merge", "locked": false, "schema_version": 3, "solution": true, "task": false}
def merge_gaussians(mu_l, log_sigma_l, mu_p, log_sigma_p):
    """Precision-weighted merge of N(mu_l, sigma_l^2) and N(mu_p, sigma_p^2): returns (mu_q, log_sigma_q)."""
    ### BEGIN SOLUTION
    log_precision = torch.logaddexp(-2 * log_sigma_l, -2 * log_sigma_p)  # log(sigma_l^-2 + sigma_p^-2)
    log_sigma_q = -0.5 * log_precision
    mu_q = (mu_l * torch.exp(-2 * log_sigma_l) + mu_p * torch.exp(-2 * log_sigma_p)) * torch.exp(2 * log_sigma_q)
    return mu_q, log_sigma_q
    ### END SOLUTION


# %%
def merge_cases(seed=3):
    g = torch.Generator().manual_seed(seed)
    draw = lambda shape: tuple(torch.randn(shape, generator=g) for _ in range(4))  # noqa: E731
    mu = torch.randn(2, generator=g)
    certain = (mu, torch.tensor([-6.0, 6.0]), -mu, torch.tensor([6.0, -6.0]))  # sigma ratios e^12 and e^-12
    return {"a vector": draw((6,)), "images (B, C, H, W)": draw((2, 4, 3, 3)), "a matrix": draw((5, 8)),
            "one source far more certain": certain}


def merge_reference(mu_l, log_sigma_l, mu_p, log_sigma_p):
    q = precision_weighted_merge(DiagonalGaussian(mu_l, log_sigma_l), DiagonalGaussian(mu_p, log_sigma_p))
    return q.mu, q.log_sigma


# %% nbgrader={"grade": true, "grade_id": "ex01_precision_merge_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
ok_merge = check("merge_gaussians", merge_gaussians, merge_reference, merge_cases(),
                 forbid=("hvae_lib.models.lvae:precision_weighted_merge",))
### BEGIN HIDDEN TESTS
assert_matches("merge_gaussians", merge_gaussians, merge_reference, merge_cases(seed=13))
### END HIDDEN TESTS

# %% [markdown]
# The merge really is the product of the two densities: $\log \hat p(z) + \log p(z) - \log q(z)$ is
# the same number (the log normaliser) at every $z$, and that number is $\log Z =
# \log \mathcal{N}(\hat\mu; \mu_p, \hat\sigma^2 + \sigma_p^2)$ of Derivation 1.

# %%
bottom_up, top_down = DiagonalGaussian(torch.tensor([1.0]), torch.tensor([-0.5])), DiagonalGaussian(torch.tensor([-0.5]), torch.tensor([0.3]))
merged = precision_weighted_merge(bottom_up, top_down)
zs = torch.linspace(-3, 3, 7)
log_normaliser = bottom_up.log_prob(zs) + top_down.log_prob(zs) - merged.log_prob(zs)
log_z = DiagonalGaussian(top_down.mu, 0.5 * torch.log(bottom_up.sigma**2 + top_down.sigma**2)).log_prob(bottom_up.mu)
print(f"merged: mu = {merged.mu.item():.3f}, sigma = {merged.sigma.item():.3f}; "
      f"log-normaliser over z: {log_normaliser.min():.4f} .. {log_normaliser.max():.4f}; log Z = {log_z.item():.4f}")
assert log_normaliser.max() - log_normaliser.min() < 1e-4 and abs(log_normaliser.mean() - log_z) < 1e-4
assert merged.sigma < min(bottom_up.sigma, top_down.sigma)  # the product is sharper than both

# %% [markdown]
# ## 4. The top-down path, and how the Ladder VAE starts
#
# Sampling uses only the top-down half of the model. Start from $z_1 \sim \mathcal{N}(0, I)$;
# project it into a *state* $s$ of hidden features and run residual blocks; read the next group's
# prior $p(z_2 \mid z_1) = \mathcal{N}(\mu_p(s), \sigma_p(s)^2)$ off the state, draw $z_2$, add its
# projection to the state, and so on down to the last group; the state then goes through the
# decoder's tail to the likelihood $p(x \mid z)$. Training runs the same path with each $z_l$ drawn
# from the posterior instead (the merge of Section 3) — one network for both.
#
# **Exercise 2.** Write the top-down sampling pass of the library's `LadderVAE`. Its parts, for
# group `l` (0 is the top):
#
# - `model.num_groups` ($L$) and `model.group_shapes[l]`, the shape `(C_z, h, w)` of $z_l$;
# - `model.scale_of[l]`, the resolution index of group `l`: when it differs from the group above,
#   upsample the state first, `F.interpolate(s, scale_factor=2, mode="nearest")`;
# - `model.priors[l - 1](s)` (for `l >= 1`): the prior's parameters, to turn into a Gaussian with
#   `DiagonalGaussian.from_params`; the top group's prior is `DiagonalGaussian.standard((n, *model.group_shapes[0]))`;
# - `model.z_proj[l](z)`: the projection of $z_l$, which *starts* the state at the top group and is
#   *added* to it below;
# - `model.td_blocks[l]`: the residual blocks to run on the state after group `l`;
# - `model.tail(s)`: the decoder's tail; return its output, the decoder features.
#
# Draw each group with `p.rsample(temperature)`, from the top down, so that your samples and the
# library's use the same random numbers. The chapter draws its final samples with your function.

# %% nbgrader={"grade": false, "grade_id": "ex02_sample_top_down", "locked": false, "schema_version": 3, "solution": true, "task": false}
def sample_top_down(model, n, temperature=1.0):
    """Decoder features (n, C, H, W) of n samples from a LadderVAE's prior: z_l ~ p(z_l | z_<l), top first."""
    ### BEGIN SOLUTION
    s = None
    for l in range(model.num_groups):
        if l == 0:
            p = DiagonalGaussian.standard((n, *model.group_shapes[0]))  # p(z_1) = N(0, I)
        else:
            if model.scale_of[l] != model.scale_of[l - 1]:
                s = F.interpolate(s, scale_factor=2, mode="nearest")  # (n, C, 2h, 2w)
            p = DiagonalGaussian.from_params(model.priors[l - 1](s))  # p(z_l | z_<l), (n, C_z, h, w) each
        z = p.rsample(temperature)
        s = model.z_proj[l](z) if s is None else s + model.z_proj[l](z)  # (n, C, h, w)
        for block in model.td_blocks[l]:
            s = block(s)
    return model.tail(s)
    ### END SOLUTION


# %%
def library_sampler(model, n, temperature=1.0):
    """The library's sampler, from the current random state without moving it on (so that your
    function then draws the same numbers)."""
    with torch.random.fork_rng(), torch.no_grad():
        return model.top_down(n, temperature=temperature)[0]


def small_lvae(seed, groups=(1, 2), merge="precision", blocks=1):
    """A LadderVAE on 16x16 images with informative priors (a fresh model's are all N(0, I))."""
    torch.manual_seed(seed)
    model = LadderVAE((1, 16, 16), 8, groups_per_scale=groups, z_channels=2, channels=8, initial_downsamples=1,
                      merge=merge, blocks_per_group=blocks)
    with torch.no_grad():
        for head in [*model.priors, *model.bu_heads, *model.merges]:
            torch.nn.init.normal_(head.weight, std=0.2)
            torch.nn.init.normal_(head.bias, std=0.2)
    return model


def sampler_cases(seed=6, groups=(1, 2)):
    model = small_lvae(seed, groups)
    return {"temperature 1": (model, 3, 1.0), "a lower temperature": (model, 2, 0.6),
            "one image": (model, 1, 1.0), "one group": (small_lvae(seed + 1, (1,)), 2, 1.0)}


# %% nbgrader={"grade": true, "grade_id": "ex02_sample_top_down_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
ok_sampler = check("sample_top_down", sample_top_down, library_sampler, sampler_cases(),
                   forbid=("hvae_lib.models.lvae:LadderVAE.top_down", "hvae_lib.models.lvae:LadderVAE.sample"))
### BEGIN HIDDEN TESTS
assert_matches("sample_top_down", sample_top_down, library_sampler, sampler_cases(seed=24, groups=(2, 1, 1)))
### END HIDDEN TESTS

# %% [markdown]
# **Exercise 3.** The inference pass: the same path, with every group drawn from its *posterior*,
# and the KL of each group — the hierarchical ELBO's rate of Section 2. It receives the bottom-up
# features `features = model.bottom_up(x)` (a list of $d_l$, top group first, each `(B, C, h, w)`).
# For group `l`:
#
# - the prior $p$ as in Exercise 2 (the top group's is $\mathcal{N}(0, I)$ of shape
#   `(B, *model.group_shapes[0])`);
# - the posterior $q$: for the top group, the bottom-up estimate `model.estimate(0, features[0])`;
#   below it, with `model.merge == "precision"`, the merge of the bottom-up estimate
#   `model.estimate(l, features[l])` with the prior, computed by the model's `model.merge_fn(estimate, prior)`
#   (Exercise 1 in the library); with `"learned"`,
#   `DiagonalGaussian.from_params(model.merges[l - 1](torch.cat([s, features[l]], dim=1)))`;
# - draw $z_l$ with `q.rsample()`, and the group's KL per image, $\mathrm{KL}(q \,\|\, p)$ elementwise
#   (`q.kl(p)`) summed over everything but the batch (`sum_except_batch`);
# - the state as in Exercise 2.
#
# Return the decoder features `model.tail(s)` and the KL per group, a `(B, L)` tensor. Draw nothing
# but the $z_l$, top first, so that your pass and the library's use the same random numbers. The
# chapter then computes the trained Ladder VAE's ELBO with your pass.

# %% nbgrader={"grade": false, "grade_id": "ex03_infer_top_down", "locked": false, "schema_version": 3, "solution": true, "task": false}
def infer_top_down(model, features):
    """(decoder features (B, C, H, W), KL per group (B, L)) of a LadderVAE's top-down pass with every
    z_l ~ q(z_l | z_<l, x), given the bottom-up features (top group first)."""
    ### BEGIN SOLUTION
    n, s, kl = features[0].shape[0], None, []
    for l in range(model.num_groups):
        if l == 0:
            p = DiagonalGaussian.standard((n, *model.group_shapes[0]))  # p(z_1) = N(0, I)
            q = model.estimate(0, features[0])
        else:
            if model.scale_of[l] != model.scale_of[l - 1]:
                s = F.interpolate(s, scale_factor=2, mode="nearest")  # (B, C, 2h, 2w)
            p = DiagonalGaussian.from_params(model.priors[l - 1](s))  # p(z_l | z_<l)
            if model.merge == "precision":
                q = model.merge_fn(model.estimate(l, features[l]), p)
            else:
                q = DiagonalGaussian.from_params(model.merges[l - 1](torch.cat([s, features[l]], dim=1)))
        z = q.rsample()  # (B, C_z, h, w)
        kl.append(sum_except_batch(q.kl(p)))  # (B,) nats
        s = model.z_proj[l](z) if s is None else s + model.z_proj[l](z)  # (B, C, h, w)
        for block in model.td_blocks[l]:
            s = block(s)
    return model.tail(s), torch.stack(kl, dim=1)
    ### END SOLUTION


# %%
def library_inference(model, features):
    """The library's inference pass (what the model's forward runs), from the current random state
    without moving it on."""
    with torch.random.fork_rng():
        s, kl, _, _ = model.top_down(features[0].shape[0], features, num_posterior=model.num_groups)
    return s, torch.stack(kl, dim=1)


def inference_cases(seed=7):
    images = torch.randint(0, 256, (4, 1, 16, 16), generator=torch.Generator().manual_seed(seed)) / 255
    cases = {}
    for kind, model in {"the precision merge over two scales": small_lvae(seed),
                        "the learned merge": small_lvae(seed + 1, (2, 1), "learned"),
                        "one group (Chapter 1's VAE)": small_lvae(seed + 2, (1,)),
                        "two blocks per group": small_lvae(seed + 3, (1, 1), "learned", blocks=2)}.items():
        with torch.no_grad():
            cases[kind] = (model, model.bottom_up(images))
    return cases


# %% nbgrader={"grade": true, "grade_id": "ex03_infer_top_down_test", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
ok_inference = check("infer_top_down", infer_top_down, library_inference, inference_cases(),
                     forbid=("hvae_lib.models.lvae:LadderVAE.top_down", "hvae_lib.models.lvae:LadderVAE.forward"))
### BEGIN HIDDEN TESTS
assert_matches("infer_top_down", infer_top_down, library_inference, inference_cases(seed=27))
### END HIDDEN TESTS

# %% [markdown]
# How does this path start, before any training? Three choices in `hvae_lib.models.lvae` keep the
# untrained network tame, all taken from the Very Deep VAE (openai/vdvae):
#
# - **Zero-initialised priors.** Every prior head starts with zero weights and bias, so every
#   $p(z_l \mid z_{<l})$ starts as $\mathcal{N}(0, I)$ whatever the state, and the posterior heads
#   start small, so $q$ starts near $p$: each group's KL starts near zero, as in Chapter 1, instead
#   of at whatever two random networks happen to disagree by.
# - **1/√N scaling.** Each residual block adds its branch to the stream, $s \leftarrow s + f(s)$. $N$
#   blocks add $N$ contributions: even when each is small, the variance of the stream grows with
#   the number of blocks, and a deep stack starts with exploding activations. Multiplying the last
#   convolution of every branch by $1/\sqrt{N}$ at initialisation makes $N$ contributions of variance
#   $\propto 1/N$, whose sum levels off instead of growing with the depth. Our Ladder VAE counts
#   the blocks of both passes, $N = 2 \times L \times$ `blocks_per_group` $= 12$; VDVAE scales each
#   pass by its own count (and its $z$ projections too), a factor $\sqrt 2$ larger for the same depth.
# - **Zero biases** in the residual blocks, as in every convolution of VDVAE. The scaling reaches
#   the weights only: with PyTorch's default biases (random, of order $1/\sqrt{\text{fan-in}}$), each
#   block also adds a constant offset per channel that $1/\sqrt{N}$ does not shrink, $N$ blocks add
#   $N$ independent offsets, and the added variance grows with $N$ again. (An earlier version of this
#   model kept the default biases; with the scaling, the variance its blocks added still grew from
#   0.008 to 0.054 to 0.108 over 6, 24 and 96 blocks.)
#
# First the priors of a fresh model, and the KL it starts with:

# %%
torch.manual_seed(0)
fresh = LadderVAE((1, 28, 28), 8, groups_per_scale=(2, 2, 2), z_channels=4, channels=20, merge="learned")
state = torch.randn(8, 20, 4, 4)  # any state: the prior ignores it
prior = DiagonalGaussian.from_params(fresh.priors[1](state))  # p(z_3 | z_<3), (8, 4, 4, 4) each
print(f"a fresh prior: |mu| max {prior.mu.abs().max():.1e}, |log sigma| max {prior.log_sigma.abs().max():.1e}; "
      f"residual scale 1/sqrt({2 * fresh.num_groups}) = {(2 * fresh.num_groups) ** -0.5:.3f}")
assert prior.mu.abs().max() == 0 and prior.log_sigma.abs().max() == 0  # exactly N(0, I)
with torch.no_grad():
    kl_at_start = fresh(x_test[:256]).kl_per_group.mean(0)  # (L,)
print("KL per group of the untrained model (nats):", [round(v, 3) for v in kl_at_start.tolist()])
assert kl_at_start.sum() < 5  # near zero: the trained model's groups carry tens of nats
assert all(not b.conv1.bias.any() and not b.conv2.bias.any() for blocks in fresh.td_blocks for b in blocks)

# %% [markdown]
# Then the scaling, on stacks of the model's own residual blocks (20 channels at 8×8): how much
# variance do $N$ blocks add to a stream of unit variance, with and without it?
#
# **Predict, then run.** Going from 6 to 96 unscaled blocks multiplies the number of blocks by 16.
# By what factor will the variance they add grow?

# %% nbgrader={"grade": false, "grade_id": "predict01_unscaled_growth", "locked": false, "schema_version": 3, "solution": true, "task": false}
def predicted_growth():
    """Your guess: (variance added by 96 unscaled blocks) / (variance added by 6)."""
    ### BEGIN SOLUTION
    # More than 16: each block adds a variance proportional to its input's, and the input has
    # already grown, so the increments compound, (1 + c)^N - 1 rather than N c.
    return 40.0
    ### END SOLUTION


# %%
torch.manual_seed(0)
x_stream = torch.randn(32, 20, 8, 8)  # (B, C, H, W), unit variance
added = {}
for n_blocks in (6, 24, 96):
    for scaled in (False, True):
        torch.manual_seed(1)
        stack = torch.nn.Sequential(*[ResBlock(20, n_blocks**-0.5 if scaled else 1.0) for _ in range(n_blocks)])
        with torch.no_grad():
            added[n_blocks, scaled] = (stack(x_stream).var() - x_stream.var()).item()
    print(f"{n_blocks:3d} blocks: variance added {added[n_blocks, False]:.3f} unscaled, "
          f"{added[n_blocks, True]:.4f} with 1/sqrt(N)")
reveal_prediction("growth of the added variance, 6 -> 96 unscaled blocks", predicted_growth,
                  round(added[96, False] / added[6, False], 1), "x")
assert added[96, False] > 16 * added[6, False]  # unscaled: faster than the number of blocks
assert abs(added[96, True] / added[24, True] - 1) < 0.2  # scaled: level from 24 to 96 blocks ...
assert added[96, True] < 0.02 * added[96, False]  # ... and a small fraction of the unscaled stack's
assert [round(added[n, True], 3) for n in (6, 24, 96)] == [0.004, 0.010, 0.010]  # the figures stated below
assert round(added[96, False] / added[6, False]) == 40

# %% [markdown]
# With the scaling the added variance levels off: 0.004 at 6 blocks, 0.010 at 24 and still 0.010 at
# 96. Without it the variance grows 40-fold from 6 to 96 blocks and keeps compounding.

# %% [markdown]
# ## 5. Training the Ladder VAE
#
# `hvae_lib.models.lvae.LadderVAE` with the preset `lvae_fashion_learned`: six groups over three
# scales (2×2, 4×4 and 8×8, four latent channels each), residual blocks in both passes, the
# *learned* merge, and no normalisation layers. It is sized to match Chapter 1's VAE in parameters,
# and it is trained with exactly the same optimiser, batch size and number of steps.
#
# Why not the paper's precision-weighted merge? At this size it lets groups collapse: Section 6
# trains it (preset `lvae_fashion`) and watches half of its groups switch off, where the learned
# merge keeps every group in use (the KL per group below). A learned function of the state and
# the bottom-up features can also say *how* the two combine, not only how much each is trusted.

# %%
lvae_trainer, lvae_result = train("lvae_fashion_learned", "ch02_lvae")
lvae = lvae_trainer.eval_model.eval()
lvae_bpd = lvae_result["test_bpd"]
n_vae, n_lvae = sum(p.numel() for p in vae.parameters()), sum(p.numel() for p in lvae.parameters())
print(f"VAE : {n_vae:,} parameters, test {vae_bpd:.3f} bits/dim")
print(f"LVAE: {n_lvae:,} parameters, test {lvae_bpd:.3f} bits/dim ({lvae.num_groups} latent groups)")
assert abs(n_lvae - n_vae) / n_vae < 0.2  # a similar parameter budget
if not SMOKE:
    assert abs(vae_bpd - 3.712) < 0.1 and abs(lvae_bpd - 3.673) < 0.1  # the figures stated above, to a seed's spread
    assert abs(lvae_bpd - vae_bpd) < 0.2  # level with the VAE at the same budget (see the three seeds below)

# %% [markdown]
# The model's ELBO is what its forward pass computes: your inference pass (Exercise 3), once its
# check passed, gives the same number on test images from the same random draws.

# %%
inference = use_if_correct("infer_top_down", infer_top_down, library_inference, ok_inference)
x_elbo = x_test[:256]
with torch.no_grad():
    torch.manual_seed(0)
    features, kl_yours = inference(lvae, lvae.bottom_up(x_elbo))
    elbo_yours = lvae.likelihood(features).log_prob(x_elbo) - kl_yours.sum(1)  # (B,) nats
    torch.manual_seed(0)
    out = lvae(x_elbo)
    elbo_model = out.log_px_z - out.kl_per_group.sum(1)
print(f"negative ELBO of {len(x_elbo)} test images: {nats_to_bpd(-elbo_yours.mean(), lvae.num_dims):.4f} bits/dim "
      f"with your pass, {nats_to_bpd(-elbo_model.mean(), lvae.num_dims):.4f} with the model's")
assert torch.allclose(elbo_yours, elbo_model, rtol=1e-4, atol=1e-2)

# %% [markdown]
# One run is one draw. `benchmarks/seeds.py` trains both models for seeds 0, 1 and 2 (the same
# batches for both at each seed; the table is in `benchmarks/RESULTS.md`, and Chapter 4 reads it).
# The Ladder VAE minus the VAE came out at -0.039, +0.153 and -0.204 bits/dim (the Ladder VAE at
# 3.674, 3.884 and 3.686): it wins on two seeds and loses on one, and the mean difference (-0.03)
# is far inside its spread (0.18). At this size and budget the hierarchy is *level* with the single-latent VAE; what it buys
# here is the structure this chapter measures next (a rate spread over groups, samples drawn
# top-down), not a better bound. NVAE (Chapters 3-4) is ahead on every seed, by 0.136 to 0.377 bits/dim.

# %% [markdown]
# Where do the nats go? The KL of each group, and the cumulative rate from the top down: the
# total is the rate of the whole hierarchy, the number of nats it spends encoding an image in $z$.

# %%
lvae_kl = diagnostics.kl_per_group(lvae, x_test[:1000])
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
axes[0].bar(range(len(lvae_kl)), lvae_kl.numpy())
axes[0].set(xlabel="latent group (top = 0)", ylabel="KL (nats / image)", title="KL per group")
diagnostics.plot_cumulative_rate(lvae_kl, ax=axes[1])
plt.tight_layout()
with torch.no_grad():
    out = lvae(x_test[:256])
print("KL per group (nats):", [round(v, 2) for v in lvae_kl.tolist()])
# The per-group KLs add up to the total rate, and, averaged over samples, to E_q[log q - log p].
assert torch.allclose(out.kl_per_group.sum(1).mean(), out.log_q_minus_log_p.mean(), rtol=0.05, atol=0.5)
if not SMOKE:
    assert (lvae_kl > 1).all()  # the learned merge keeps every group in use

# %% [markdown]
# Does the hierarchy fill the holes of Section 1? Its top group has the same fixed prior
# $\mathcal{N}(0, I)$ as the VAE's latent, so the same measurement applies to it unchanged: how
# far are prior draws from the nearest real code, against fresh posterior codes? The top group
# carries only a few nats — the rest of the information sits in lower groups, whose priors
# $p(z_l \mid z_{<l})$ are learned and follow the groups above — so its codes no longer need to
# cluster far apart, and its aggregate posterior can fill its prior. Distances between points grow
# with the number of coordinates, so both models are measured in the same number of units: those
# the top group uses, against as many of the VAE's (its most informative ones).

# %%
with torch.no_grad():
    q_top = lvae.estimate(0, lvae.bottom_up(x_test)[0])  # q(z_1 | x), (N, 4, 2, 2) each
kl_top = q_top.kl(DiagonalGaussian.standard(q_top.mu.shape)).flatten(1).mean(0)  # (16,) per unit
z_post_top = q_top.rsample().flatten(1)  # (N, 16) posterior codes of the top group
k_units = min(len(used_units(kl_top)), len(used))
d_posterior_top, d_prior_top = hole_distances(z_post_top, kl_top, k_units)
d_posterior_vae, d_prior_vae = hole_distances(z_post, kl_per_dim, k_units)
lvae_holes, vae_holes = d_prior_top / d_posterior_top, d_prior_vae / d_posterior_vae
print(f"Ladder VAE top group: {kl_top.sum():.1f} nats, {len(used_units(kl_top))} used units (the VAE: "
      f"{kl_per_dim.sum():.1f} nats in {len(used)})")
print(f"in {k_units} units, distance to the nearest real code, posterior / prior draws: Ladder VAE "
      f"{d_posterior_top:.2f} / {d_prior_top:.2f}, ratio {lvae_holes:.2f}; VAE {d_posterior_vae:.2f} / "
      f"{d_prior_vae:.2f}, ratio {vae_holes:.2f}")
if not SMOKE:
    assert kl_top.sum() < 0.5 * kl_per_dim.sum()  # the top group carries a fraction of the VAE's rate
    assert lvae_holes < 0.8 * vae_holes  # and its prior draws land closer to real codes, at equal dimension

# %% [markdown]
# ## 6. Posterior collapse, and two remedies
#
# A group *collapses* when its posterior equals its prior for every image: its KL is zero and it
# carries nothing. Early in training the decoder is weak, the KL is cheap to reduce, and many
# groups switch off and never recover. Two remedies:
#
# - **KL warm-up**: multiply the KL by $\beta$ rising from $\approx 0$ to 1 over the first steps, so the
#   model first learns to use $z$ (the LVAE paper calls it a temperature);
# - **free bits** (Kingma et al. 2016): do not penalise a group's KL below $\lambda$ nats —
#   $\sum_l \max(\lambda, \mathbb{E}_B[\mathrm{KL}_l])$, the batch mean taken *before* the max
#   (`hvae_lib.probability.kl_control.free_bits`) — so no group gains by going below it.
#
# Both change the training objective only; the model is still evaluated with the true ELBO.
#
# How to see collapse? Burda et al. (2016) call a latent unit $u$ *active* when its posterior mean
# varies over the data, $\mathrm{Cov}_x\big(\mathbb{E}_{q(u \mid x)}[u]\big) > 10^{-2}$; they counted
# active units per stochastic layer, in their two-layer models too, and Sønderby et al. (2016)
# counted them layer by layer in five-layer VAEs and Ladder VAEs.
#
# **Exercise 4.** Count the active units of each latent group. A forward pass `model(x)` returns,
# in `out.extras["posterior_means"]`, the posterior mean of every group, top first, each
# `(N, C_z, h, w)`: every channel × position is one unit, and in a lower group the mean is taken
# given one posterior sample of the groups above. For each group, the variance of each unit's mean
# over the $N$ images (the population variance: divide by $N$, `unbiased=False`), and the number of
# units whose variance exceeds `threshold`. Call the model once, on all of `x`, and return a `(L,)`
# tensor of counts. The collapse experiment below counts with your function.

# %% nbgrader={"grade": false, "grade_id": "ex04_active_units", "locked": false, "schema_version": 3, "solution": true, "task": false}
def count_active_units(model, x, threshold=0.01):
    """Active units per latent group, (L,): units whose posterior mean has a variance over the images x above threshold."""
    ### BEGIN SOLUTION
    with torch.no_grad():
        means = model(x).extras["posterior_means"]  # [(N, C_z, h, w)], top group first
    counts = []
    for m in means:
        variance = m.flatten(1).double().var(dim=0, unbiased=False)  # (units,): over the N images
        counts.append(int((variance > threshold).sum()))
    return torch.tensor(counts)
    ### END SOLUTION


# %%
def library_active_units(model, x, threshold=0.01):
    """hvae_lib's count, from the current random state without moving it on."""
    with torch.random.fork_rng():
        return diagnostics.active_units(model, x, threshold)[0]


def active_unit_cases(seed=8):
    images = torch.rand(64, 1, 16, 16, generator=torch.Generator().manual_seed(seed))
    blank_top = small_lvae(seed + 2)
    prior_below = small_lvae(seed + 3, (1, 2))
    with torch.no_grad():
        blank_top.bu_heads[0].weight.zero_()  # q(z_1 | x) the same for every image
        for head in prior_below.bu_heads[1:]:
            head.bias[2:] = 8.0  # bottom-up sigma e^8: the merge returns the prior
    return {"the precision merge": (small_lvae(seed), images),
            "the learned merge": (small_lvae(seed + 1, (2, 1), "learned"), images),
            "a top group that says nothing about x": (blank_top, images),
            "lower groups equal to their priors": (prior_below, images, 0.02)}


# %% nbgrader={"grade": true, "grade_id": "ex04_active_units_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
ok_active_units = check("count_active_units", count_active_units, library_active_units, active_unit_cases(),
                        forbid=("hvae_lib.analysis.diagnostics:active_units",))
### BEGIN HIDDEN TESTS
assert_matches("count_active_units", count_active_units, library_active_units, active_unit_cases(seed=28))
### END HIDDEN TESTS

# %% [markdown]
# An experiment: the Ladder VAE with the paper's precision-weighted merge (preset `lvae_fashion`)
# trained briefly (400 steps) three ways — plain, with KL warm-up over the 400 steps, and with
# warm-up plus free bits of 0.5 nats per group. All three run with *your* merge (Exercise 1), once
# its check passed, and their active units are counted with *your* function (Exercise 4). Watch the
# KL per group and the active units.
#
# **Predict, then run.** The plain run leaves some groups collapsed ($q = p$, KL zero; the cell
# below counts them). Of its 672 latent units, how many will count as active?

# %% nbgrader={"grade": false, "grade_id": "predict02_active_units", "locked": false, "schema_version": 3, "solution": true, "task": false}
def predicted_active_units():
    """Your guess: active units of the plain run, out of 672."""
    ### BEGIN SOLUTION
    # Nearly all 672, collapsed groups included. A collapsed group's posterior is its prior
    # p(z_l | z_<l), whose mean is computed from the groups above, and those depend on x: the mean
    # varies over the data although the group adds nothing.
    return 672
    ### END SOLUTION


# %%
short = {"max_steps": 400, "eval_every": 0, "sample_every": 0, "checkpoint_every": 0, "quiet": True}
student_merge = use_if_correct("merge_gaussians", merge_gaussians, merge_reference, ok_merge)
count_fn = use_if_correct("count_active_units", count_active_units, library_active_units, ok_active_units)


def merge_fn(bottom_up, top_down):
    """The model's precision merge, computed by the function chosen above."""
    return DiagonalGaussian(*student_merge(bottom_up.mu, bottom_up.log_sigma, top_down.mu, top_down.log_sigma))


def loss_with_free_bits(out, beta):
    """-log p(x|z) + beta * (free-bits KL at 0.5 nats per group), averaged over the batch."""
    return -out.log_px_z.mean() + beta * free_bits(out.kl_per_group, 0.5).sum()


variants = {
    "plain ELBO": ({}, None),
    "KL warm-up": ({"kl_warmup_steps": 400}, None),
    "warm-up + free bits": ({"kl_warmup_steps": 400}, loss_with_free_bits),
}
collapse = {}
for name, (changes, loss_fn) in variants.items():
    trainer, _ = train("lvae_fashion", f"ch02_collapse_{name.split()[0]}", {**short, **changes},
                       loss_fn=loss_fn, merge_fn=merge_fn)
    model = trainer.eval_model.eval()
    counts = count_fn(model, x_test[:1000])  # (L,) active units per group
    total = int(counts.sum())
    collapse[name] = (diagnostics.kl_per_group(model, x_test[:1000]), counts)
    print(f"{name:20s}: KL per group {[round(v, 1) for v in collapse[name][0].tolist()]}, "
          f"active units {counts.tolist()} (total {total})")

fig, axes = plt.subplots(1, 2, figsize=(12, 3.4))
width = 0.27
for i, (name, (kl, counts)) in enumerate(collapse.items()):
    groups = torch.arange(len(kl)) + (i - 1) * width
    axes[0].bar(groups, kl.numpy(), width, label=name)
    axes[1].bar(groups, counts.numpy(), width, label=name)
axes[0].set(xlabel="latent group (top = 0)", ylabel="KL (nats / image)", title="KL per group after 400 steps")
axes[1].set(xlabel="latent group (top = 0)", ylabel="active units", title="active units per group")
axes[1].legend()
plt.tight_layout()
collapsed = {name: int((kl < 0.1).sum()) for name, (kl, _) in collapse.items()}
print("collapsed groups (KL < 0.1 nats):", collapsed)
plain_kl, plain_counts = collapse["plain ELBO"]
reveal_prediction("active units of the plain run", predicted_active_units, int(plain_counts.sum()), " of 672")
if not SMOKE:
    assert collapsed["warm-up + free bits"] < collapsed["plain ELBO"]
    # The paragraph below, to a margin (3, 2 and 0 collapsed groups and 52 nats in our run):
    assert collapsed["plain ELBO"] >= 2 and collapsed["warm-up + free bits"] <= 1
    assert collapse["warm-up + free bits"][0].max() > 40  # most of the rate in one group
    dead = plain_kl < 0.1  # the plain run's collapsed groups
    units = torch.tensor([math.prod(shape) for shape in trainer.model.group_shapes])  # (L,) units per group
    assert dead.any() and plain_counts[dead].sum() >= 0.9 * units[dead].sum()  # collapsed, yet "active"

# %% [markdown]
# What we saw (the cell above prints what yours does, and asserts the pattern to a margin): the
# plain ELBO let three of the six groups collapse, the three lowest (the second 4×4 group and both
# 8×8 ones, KL 0.0 nats); KL warm-up left two collapsed (the second 2×2 and the second 4×4 group)
# and warm-up with free bits none (every group at 0.4 nats or more), with most of the rate moved
# into one 8×8 group (about 52 nats).
#
# The active-unit counts barely moved (nearly all 672 units in every run), and that is a lesson about
# what the statistic measures. It asks whether a unit's posterior mean depends on $x$, not whether
# the unit's group adds information. For a group with a fixed prior — the top one, or every layer
# of a one-layer VAE — the two coincide: a collapsed unit's posterior is $\mathcal{N}(0, 1)$ for
# every image, its mean is constant, and it counts as inactive. For a lower group of a hierarchy
# they part: the posterior of a collapsed group is its prior $p(z_l \mid z_{<l})$, whose mean is
# computed from the groups above and so varies with $x$. In the plain run nearly every unit of the
# collapsed groups counts as active (the cell above asserts at least 90% of them). Read a per-layer count of active
# units in a hierarchy with this in mind; the KL per group is the diagnostic that sees collapse.

# %% [markdown]
# ## 7. What each depth decides
#
# Take a test image, draw the top $k$ groups from its posterior and the rest from the prior. With
# $k = 0$ we get unrelated samples; with $k = L$ a reconstruction. The $k$ at which the rows start to
# resemble the image says which groups hold the global structure (the type of garment) and which
# only add detail.

# %%
torch.manual_seed(0)
x_row = x_test[:8]
diagnostics.plot_fixed_top_grid(lvae, x_row, ks=list(range(lvae.num_groups + 1)), temperature=0.8)
rows = diagnostics.fixed_top_grid(lvae, x_row.repeat(4, 1, 1, 1), ks=[0, lvae.num_groups])
distance = ((rows - x_row.repeat(4, 1, 1, 1)) ** 2).flatten(2).mean(2).mean(1)  # (2,) per k
print(f"mean squared distance to x: k = 0: {distance[0]:.4f}, k = L: {distance[1]:.4f}")
if not SMOKE:
    assert distance[1] < distance[0]  # fixing all groups reproduces the image

# %% [markdown]
# Finally, samples of both models side by side, the Ladder VAE's drawn with your top-down pass
# (Exercise 3). Pixels are drawn independently given $z$, so both look grainy; the structure is
# what to compare, and the likelihood means beside them show it without the pixel noise.

# %%
sampler = use_if_correct("sample_top_down", sample_top_down, library_sampler, ok_sampler)
torch.manual_seed(0)
with torch.no_grad():
    px_vae = vae.decode(torch.randn(36, vae.latent_dim))  # p(x|z) of 36 prior draws
    px_lvae = lvae.likelihood(sampler(lvae, 36, 1.0))
fig, axes = plt.subplots(1, 4, figsize=(20, 5))
show_grid(px_vae.sample(), f"Chapter 1 VAE ({vae_bpd:.2f} bits/dim): samples", ax=axes[0])
show_grid(px_vae.mean(), "... their likelihood means", ax=axes[1])
show_grid(px_lvae.sample(), f"Ladder VAE ({lvae_bpd:.2f} bits/dim): samples", ax=axes[2])
show_grid(px_lvae.mean(), "... their likelihood means", ax=axes[3])
plt.tight_layout()

# %% [markdown]
# ## Summary
#
# - One Gaussian latent leaves holes: its aggregate posterior does not fill the prior. In the
#   Ladder VAE the group with that same fixed prior carries a few nats instead of tens, and its
#   prior draws land closer to real codes (compared in the same number of units).
# - A hierarchy factorises prior and posterior group by group; its ELBO has one analytic KL per
#   group, evaluated at a sample of the groups above.
# - The Ladder VAE infers top-down along the generative path, merging bottom-up evidence with the
#   prior — by precision weighting in the paper, by a learned function in later models. Sampling
#   runs the same path with every group drawn from its prior.
# - Zero-initialised priors, residual branches scaled by $1/\sqrt{N}$ and zero biases make the
#   untrained hierarchy start with KLs near zero and a residual stream whose added variance levels
#   off with depth (0.004, 0.010 and 0.010 at 6, 24 and 96 blocks) instead of compounding.
# - At a similar parameter count and the same training, the Ladder VAE's test bits/dim beats the
#   single-latent VAE's on this seed (3.673 against 3.712, printed above), but over three seeds the
#   two are level within noise (mean difference -0.03, spread 0.18 bits/dim).
# - Posterior collapse shows in the KL per group; KL warm-up and free bits keep more of the
#   hierarchy in use. The active-unit count (Burda et al.) misses it in a lower group: a collapsed
#   group's posterior mean is its prior mean, which still varies with the groups above.
#
# **Next: Chapter 3** builds NVAE: the same top-down hierarchy with residual cells, depthwise
# convolutions, squeeze-and-excitation and BatchNorm done right, deep enough to model real images.
#
# Further reading: Sønderby et al. (2016), *Ladder Variational Autoencoders*; Kingma et al. (2016),
# *Improved Variational Inference with Inverse Autoregressive Flow* (free bits); Burda, Grosse &
# Salakhutdinov (2016), *Importance Weighted Autoencoders* (active units); Child (2021), *Very Deep
# VAEs* (the 1/√N scaling and zero-initialised priors); Maaløe et al. (2019), *BIVA*.
