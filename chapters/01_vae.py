# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 1 — The variational autoencoder
#
# Every model in this course — the Ladder VAE, NVAE, the Very Deep VAE — is a variational
# autoencoder with a more elaborate latent space. This chapter builds the plain one and the tools
# the rest of the course measures with.
#
# **You will learn**
# 1. where the evidence lower bound (ELBO) comes from, and which gap it leaves;
# 2. the reparameterisation trick, and why it beats the score-function gradient;
# 3. the KL divergence between two Gaussians in closed form (*exercise 1*);
# 4. likelihoods for 8-bit images and what *bits per dimension* means (*exercise 2*);
# 5. the training loss (*exercise 3*, which then trains a convolutional VAE on Fashion-MNIST), and
#    how to look at what the VAE learnt;
# 6. the importance-weighted bound, and how it closes the ELBO's gap (*exercise 4*, which then
#    evaluates the VAE).
#
# Three "predict, then run" questions ask you to guess a number before the cell that measures it.
#
# **What to expect.** In full mode the chapter trains for 2000 steps (about 0.11 s a step on an idle
# 2-core CPU, where a run of the whole notebook took 5.2 minutes), and the VAE reaches about
# **3.71 bits/dim** on the Fashion-MNIST test set (the exact figure is printed below). With `HVAE_SMOKE=1` it runs on a few hundred images in well under a minute: the numbers
# are then meaningless, but every cell runs.
#
# The library `hvae_lib` holds the finished implementation of everything here. Each exercise asks
# you to write one piece and checks it against the library. Two of them then do real work: your
# loss trains the VAE and your bound evaluates it, once their checks pass; until then the chapter
# carries on with the library's versions, so the notebook runs top to bottom even before you start.

# %%
import math
import os
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from hvae_lib.analysis.plotting import read_metrics, show_grid
from hvae_lib.config import override
from hvae_lib.data import load_dataset
from hvae_lib.exercises import assert_matches, check, reveal_prediction, smoke_mode, use_if_correct
from hvae_lib.models.exact.linear_gaussian import LinearGaussianModel
from hvae_lib.models.presets import get_preset
from hvae_lib.probability.gaussian import DiagonalGaussian, sum_except_batch
from hvae_lib.probability.kl_control import kl_objective
from hvae_lib.probability.likelihoods import DiscretizedLogisticMixture
from hvae_lib.probability.objectives import ModelOutput, elbo, importance_weighted_bound, nats_to_bpd
from hvae_lib.training.engine import Trainer

SMOKE = smoke_mode()  # HVAE_SMOKE=1: tiny data, few steps (CI)
torch.manual_seed(0)
RUNS = Path("runs")
print(f"smoke mode: {SMOKE}; torch {torch.__version__}; {torch.get_num_threads()} CPU threads")

# %% [markdown]
# ## 1. The ELBO and where the KL comes from
#
# A latent variable model draws a code $z \sim p(z)$ and then an image $x \sim p_\theta(x \mid z)$.
# Its likelihood $p_\theta(x) = \int p_\theta(x \mid z)\, p(z)\, dz$ is an integral we cannot
# compute for a neural decoder. Bring in any distribution $q_\phi(z \mid x)$ — the *encoder* — and
# write
#
# $$\log p_\theta(x) = \underbrace{\mathbb{E}_{q}\big[\log p_\theta(x \mid z)\big] - \mathrm{KL}\big(q_\phi(z \mid x)\,\|\,p(z)\big)}_{\text{ELBO}(x)} \; + \; \mathrm{KL}\big(q_\phi(z \mid x)\,\|\,p_\theta(z \mid x)\big).$$
#
# The last term is a KL divergence, so it is never negative: the ELBO is a lower bound on
# $\log p_\theta(x)$, tight exactly when the encoder matches the true posterior. Training maximises
# the ELBO over both networks at once. Its two terms pull against each other: the
# *reconstruction* term wants $z$ to say everything about $x$; the *rate* term
# $\mathrm{KL}(q \,\|\, p)$ charges, in nats, for every bit of information $z$ carries about $x$.
#
# The library's toy model is linear-Gaussian: $z \sim \mathcal{N}(0, I_2)$, $x = Wz + b + $ noise in
# 4 dimensions. Its $\log p(x)$, its exact posterior and its ELBO are all known in closed form. The
# exact posterior is a Gaussian with a full covariance: its two coordinates are correlated. Our
# encoder, like every encoder in this course, is a *diagonal* Gaussian, so it cannot represent that
# correlation, and even the best diagonal encoder leaves a gap. In two dimensions the gap is
# exactly $-\tfrac12 \log(1 - \rho^2)$ nats for a posterior correlation $\rho$. This toy's
# posterior is almost uncorrelated, so the best diagonal encoder makes the ELBO *nearly* tight,
# not exactly. A worse encoder (`posterior_error=0.25`) leaves a clear gap:

# %%
torch.manual_seed(123)
x_toy = LinearGaussianModel(posterior_error=0.0).sample(2000)  # (2000, 4, 1, 1): 4-d vectors
with torch.no_grad():
    for error in (0.0, 0.25):
        toy = LinearGaussianModel(posterior_error=error)
        exact = toy.exact_log_px(x_toy).mean().item()
        bound = toy.exact_elbo(x_toy).mean().item()  # the ELBO in closed form
        sampled = torch.stack([elbo(toy(x_toy), toy.num_dims).elbo.mean() for _ in range(20)]).mean().item()
        print(f"encoder error {error:4.2f}: log p(x) = {exact:7.3f}   ELBO = {bound:7.3f} (sampled: {sampled:7.3f})"
              f"   gap = {exact - bound:.4f} nats")
        assert abs(sampled - bound) < 0.02  # the one-sample estimates average to the closed form
        if error == 0.0:
            _, cov = toy.exact_posterior(x_toy)
            rho = (cov[0, 1] / cov.diagonal().prod().sqrt()).item()
            print(f"  the exact posterior's correlation is rho = {rho:.3f}: -0.5 log(1 - rho^2) = "
                  f"{-0.5 * math.log(1 - rho**2):.4f} nats, the price of a diagonal encoder")
            assert abs((exact - bound) - (-0.5 * math.log(1 - rho**2))) < 1e-4
            assert 0 < exact - bound < 0.01  # nearly tight, not exactly
        else:
            assert exact - bound > 0.3  # a wrong encoder leaves a clear gap

# %% [markdown]
# ## 2. Reparameterisation
#
# To train the encoder we need gradients of $\mathbb{E}_{q_\phi}[f(z)]$ with respect to $\phi$.
# Writing $z = \mu + \sigma \varepsilon$ with $\varepsilon \sim \mathcal{N}(0, I)$ moves the
# randomness out of the parameters: $\nabla_\phi \mathbb{E}_\varepsilon[f(\mu + \sigma\varepsilon)]
# = \mathbb{E}_\varepsilon[\nabla_\phi f(\mu + \sigma \varepsilon)]$, and autograd does the rest.
# The alternative, the score-function (REINFORCE) estimator $\mathbb{E}_q[f(z) \nabla_\phi \log q(z)]$,
# needs no derivative of $f$ but is far noisier. Compare both on $f(z) = z^2$ at $\mu = 1.5$,
# where the true gradient $\partial_\mu \mathbb{E}[z^2] = 2\mu = 3$.
#
# **Predict, then run.** Both estimators average to 3. How many times larger is the standard
# deviation of one score-function sample than that of one reparameterised sample? (The moments of
# $\varepsilon$ are all you need: $\mathbb{E}[\varepsilon^2] = 1$, $\mathbb{E}[\varepsilon^4] = 3$,
# $\mathbb{E}[\varepsilon^6] = 15$, odd moments 0.)

# %% nbgrader={"grade": false, "grade_id": "predict01_score_noise", "locked": false, "schema_version": 3, "solution": true, "task": false}
def predicted_std_ratio():
    """Your guess: std of the score-function sample / std of the reparameterised sample."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %%
mu, n = 1.5, 10_000
eps = torch.randn(n)
reparam = 2 * (mu + eps)  # d/dmu of (mu + eps)^2, one per sample
score = (mu + eps) ** 2 * eps  # f(z) * d/dmu log N(z; mu, 1) = f(z) * (z - mu)
print(f"reparameterised: mean {reparam.mean():.3f}, std {reparam.std():.2f}")
print(f"score function : mean {score.mean():.3f}, std {score.std():.2f}")
reveal_prediction("std ratio, score function / reparameterised", predicted_std_ratio, round((score.std() / reparam.std()).item(), 2))
assert abs(reparam.mean() - 3) < 0.1 and abs(score.mean() - 3) < 0.5  # both unbiased
assert score.std() > 2 * reparam.std()  # but the score function is much noisier

# %% [markdown]
# ## 3. The Gaussian KL in closed form
#
# With a diagonal Gaussian encoder $q = \mathcal{N}(\mu_q, \sigma_q^2)$ and prior
# $p = \mathcal{N}(\mu_p, \sigma_p^2)$, the rate needs no sampling: per dimension,
#
# $$\mathrm{KL}(q\,\|\,p) = \log\frac{\sigma_p}{\sigma_q} + \frac{\sigma_q^2 + (\mu_q - \mu_p)^2}{2\sigma_p^2} - \frac12 .$$
#
# The networks output $\log\sigma$ rather than $\sigma$ (it can be any real number, and the KL
# needs $\log\sigma$ anyway); the library bounds it smoothly so $\sigma$ can neither vanish nor
# explode.
#
# **Exercise 1.** Implement the elementwise KL from the log-sigmas. Work with `log_sigma`
# directly — `torch.exp(2 * (log_sigma_q - log_sigma_p))` is the variance ratio — rather than
# computing `sigma` and taking logs again.

# %% nbgrader={"grade": false, "grade_id": "ex01_gaussian_kl", "locked": false, "schema_version": 3, "solution": true, "task": false}
def gaussian_kl(mu_q, log_sigma_q, mu_p, log_sigma_p):
    """Elementwise KL( N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2) ) in nats; all inputs share one shape."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %%
def kl_cases(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    shapes = [(5,), (3, 7), (2, 4, 6, 6), (1,)]
    return [tuple(torch.randn(s, generator=g) for _ in range(4)) for s in shapes[:n]]


def library_kl(mu_q, log_sigma_q, mu_p, log_sigma_p):
    return DiagonalGaussian(mu_q, log_sigma_q).kl(DiagonalGaussian(mu_p, log_sigma_p))


# %% nbgrader={"grade": true, "grade_id": "ex01_gaussian_kl_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
ok_gaussian_kl = check("gaussian_kl", gaussian_kl, library_kl, kl_cases())

# %% [markdown]
# Two facts to check on the library's version (which the rest of the course uses): the KL of a
# Gaussian with itself is zero, and the formula agrees with `torch.distributions` everywhere else.

# %%
q = DiagonalGaussian(torch.randn(1000), torch.randn(1000))
p = DiagonalGaussian(torch.randn(1000), torch.randn(1000))
reference = torch.distributions.kl_divergence(torch.distributions.Normal(q.mu, q.sigma), torch.distributions.Normal(p.mu, p.sigma))
print(f"KL(q || q) max: {q.kl(q).abs().max():.2e}; largest difference to torch.distributions: {(q.kl(p) - reference).abs().max():.2e}")
assert q.kl(q).abs().max() < 1e-6
assert torch.allclose(q.kl(p), reference, atol=1e-4, rtol=1e-4)

# %% [markdown]
# ## 4. Image likelihoods and bits per dimension
#
# Fashion-MNIST pixels are 8-bit: 256 grey levels. A likelihood for them must be a *discrete*
# distribution over those levels — a Gaussian density on real numbers can score arbitrarily high
# on discrete data, which makes its numbers meaningless. The course uses two:
#
# - **Bernoulli** for binary images (binarised MNIST): one probability per pixel.
# - **The discretised logistic mixture** (PixelCNN++, NVAE) for any bit depth: a mixture of
#   logistic distributions on $[-1, 1]$, and the probability of pixel value $k$ is the mass of its
#   bin of width $2/(2^b - 1)$; the two edge bins stretch to $\pm\infty$ so the $2^b$ probabilities
#   sum to one.
#
# **Bits per dimension** turns a negative log-likelihood of $D = C \times H \times W$ values into a
# per-pixel figure: $\text{bpd} = -\log p(x) \,/\, (D \ln 2)$. It reads as "how many bits a
# compressor built on this model would spend per pixel". A model that gives each of the 256 levels
# probability $1/256$ spends exactly 8 bits: any useful model of 8-bit data must beat 8. (A
# 5-bit dataset has a uniform baseline of 5: never compare bits/dim across bit depths.)
#
# **Exercise 2.** Implement the log-probability of one discretised logistic (a single mixture
# component) for grey images. `x` holds pixel values in $[0, 1]$ on the $2^b$ grid; map them to
# $[-1, 1]$ first. The bin of value $v$ is $[v - h, v + h]$ with $h = 1/(2^b - 1)$, so the
# probability is $\sigma((v + h - m)/s) - \sigma((v - h - m)/s)$, except at the edges: the lowest
# value gets $\sigma((v + h - m)/s)$ and the highest $1 - \sigma((v - h - m)/s)$. Return log-probabilities
# per pixel (clamp the probability away from zero before the log, e.g. at `1e-12`).

# %% nbgrader={"grade": false, "grade_id": "ex02_discretized_logistic", "locked": false, "schema_version": 3, "solution": true, "task": false}
def discretized_logistic_log_prob(x, mean, log_scale, bits=8):
    """log P(x) per pixel under a logistic(mean, exp(log_scale)) on [-1, 1] discretised to 2^bits bins.

    x: (B, 1, H, W) in [0, 1]; mean, log_scale: (B, 1, H, W). Returns (B, 1, H, W) in nats.
    """
    # YOUR CODE HERE
    raise NotImplementedError()


# %%
def logistic_reference(x, mean, log_scale, bits=8):
    """The library's mixture with a single component, summed per image."""
    params = torch.cat([torch.zeros_like(mean), mean, log_scale, torch.zeros_like(mean)], dim=1)  # (B, 4, H, W)
    return DiscretizedLogisticMixture(params, channels=1, bits=bits).log_prob(x)


def logistic_cases(seed=2):
    g = torch.Generator().manual_seed(seed)
    cases = []
    for bits in (8, 5, 8):
        x = torch.randint(0, 2**bits, (3, 1, 6, 6), generator=g) / (2**bits - 1)
        x[0, 0, 0] = 0.0  # make sure both edge bins are tested
        x[0, 0, 1] = 1.0
        mean = (2 * x - 1 + 0.1 * torch.randn(3, 1, 6, 6, generator=g)).clamp(-1, 1)  # near the data
        log_scale = torch.rand(3, 1, 6, 6, generator=g) * 2 - 3  # scales from e^-3 to e^-1
        cases.append((x, mean, log_scale, bits))
    return cases


# %% nbgrader={"grade": true, "grade_id": "ex02_discretized_logistic_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
ok_logistic = check("discretized_logistic_log_prob", lambda *a: sum_except_batch(discretized_logistic_log_prob(*a)),
                    logistic_reference, logistic_cases(), atol=1e-3)

# %% [markdown]
# Two anchors for these units. A uniform model of 8-bit data scores 8 bits/dim; and the
# discretised logistic is a proper distribution — summed over all 256 values of a pixel, its
# probabilities give one.

# %%
levels = torch.arange(256).float() / 255  # every 8-bit value
x_all = levels.view(256, 1, 1, 1)  # (256, 1, 1, 1): one pixel per "image"
uniform_log_p = torch.full((256,), -math.log(256))
print(f"uniform model: {nats_to_bpd(-uniform_log_p, 1).mean():.3f} bits/dim")
assert torch.allclose(nats_to_bpd(-uniform_log_p, 1), torch.tensor(8.0))

params = torch.tensor([0.0, 0.3, -2.0, 0.0]).view(1, 4, 1, 1).expand(256, 4, 1, 1)  # mean 0.3, scale e^-2
total = DiscretizedLogisticMixture(params, channels=1, bits=8).log_prob(x_all).exp().sum()
print(f"sum of P(x) over all 256 values: {total:.6f}")
assert abs(total - 1) < 1e-4

# %% [markdown]
# ## 5. Training a VAE on Fashion-MNIST
#
# The data: 60 000 training and 10 000 test images of clothing, 28×28, 8-bit grey, as tensors in
# $[0, 1]$. On Debian it comes offline from the package `dataset-fashion-mnist` (`make setup`
# installs it when it can).
#
# The model, `hvae_lib.models.vae.ConvVAE`: a convolutional encoder halves the resolution twice
# (28 → 14 → 7) and outputs $(\mu, \log\sigma)$ of a 16-dimensional $z$; the decoder mirrors it with
# nearest-neighbour upsampling and ends in a discretised logistic mixture of 5 components per
# pixel. About 110 000 parameters. The training engine (`hvae_lib.training.engine.Trainer`, the same code
# as `make train` and the GPU runs) shows a progress bar, evaluates the test set every 500 steps,
# and writes a checkpoint, `metrics.jsonl` and `samples.png` to the run folder.

# %%
data = load_dataset("fashion_mnist", train_limit=512 if SMOKE else None, test_limit=256 if SMOKE else None)
print(data.info)
print(f"{len(data.train)} training and {len(data.test)} test images")
x_test = torch.stack([data.test[i][0] for i in range(64)])  # (64, 1, 28, 28)
assert x_test.shape == (64, 1, 28, 28) and 0 <= x_test.min() and x_test.max() <= 1
show_grid(x_test, "Fashion-MNIST test images");

# %% [markdown]
# **Exercise 3.** The training loss. A forward pass `out = model(x)` encodes the batch, draws one
# $z \sim q(z \mid x)$ per image and returns the two terms of the ELBO: `out.log_px_z`
# $= \log p(x \mid z)$ of shape `(B,)` and `out.kl_per_group`, the KL of each latent group, of shape
# `(B, L)` (this VAE has one group, $L = 1$; Chapter 2's hierarchy has several). Write the loss the
# optimiser minimises: the negative ELBO of each image, $-\log p(x \mid z) + \beta \sum_l
# \mathrm{KL}_l$, averaged over the batch, in nats. $\beta = 1$ gives the ELBO itself; Chapter 2
# ramps $\beta$ up from almost zero at the start of training ("KL warm-up").
#
# The training engine then trains the VAE with your function (until it passes its check, with the
# library's).

# %% nbgrader={"grade": false, "grade_id": "ex03_negative_elbo", "locked": false, "schema_version": 3, "solution": true, "task": false}
def negative_elbo(out, beta=1.0):
    """mean over the batch of -log p(x|z) + beta * sum over groups of KL, in nats per image: a scalar."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %%
def library_loss(out, beta=1.0):
    """What hvae_lib's training engine minimises (without free bits or KL balancing)."""
    return elbo(out, 1).recon + kl_objective(out.kl_per_group, beta)


def loss_cases(seed=3):
    g = torch.Generator().manual_seed(seed)
    cases = []
    for batch, groups, beta in ((8, 1, 1.0), (5, 3, 1.0), (4, 2, 0.3), (6, 1, 0.0)):
        log_px_z = -2000 + 50 * torch.randn(batch, generator=g)  # (B,) nats, as for a Fashion-MNIST image
        kl_per_group = 20 * torch.rand(batch, groups, generator=g)  # (B, L) KLs are never negative
        cases.append((ModelOutput(log_px_z, kl_per_group, kl_per_group.sum(1), None), beta))
    return cases


def as_vector(fn):
    """fn's loss as a (1,) tensor for the checker, refusing anything but a scalar."""
    def run(out, beta):
        loss = fn(out, beta)
        if isinstance(loss, torch.Tensor) and loss.dim() != 0:
            raise ValueError(f"expected a scalar (the batch mean), got a tensor of shape {tuple(loss.shape)}")
        return loss.reshape(1)
    return run


# %% nbgrader={"grade": true, "grade_id": "ex03_negative_elbo_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
ok_negative_elbo = check("negative_elbo", as_vector(negative_elbo), as_vector(library_loss), loss_cases())

# %% [markdown]
# Now train. `use_if_correct` hands your loss to the engine once its check passed (the library's
# until then), and the engine runs the rest: batches, the optimiser, logging, evaluation.

# %%
config = get_preset("vae_fashion")  # the preset behind `make train`
if SMOKE:
    config = override(config, {"max_steps": 20, "train_limit": 512, "test_limit": 256, "batch_size": 64,
                               "eval_every": 10, "eval_batches": 2, "log_every": 5, "warmup_steps": 5})
run_dir = RUNS / ("ch01_vae_smoke" if SMOKE else "ch01_vae")
shutil.rmtree(run_dir, ignore_errors=True)  # train afresh each time the notebook runs
loss_fn = use_if_correct("negative_elbo", negative_elbo, library_loss, ok_negative_elbo)
trainer = Trainer(config, run_dir, resume=False, loss_fn=loss_fn)
print(f"ConvVAE with {sum(p.numel() for p in trainer.model.parameters()):,} parameters")
result = trainer.fit()
vae_bpd = result["test_bpd"]
print(f"test negative ELBO: {result['test_neg_elbo_nats']:.1f} nats per image = {vae_bpd:.3f} bits/dim")
assert vae_bpd < 8, "a trained model must beat the uniform 8 bits/dim"
if not SMOKE:
    assert vae_bpd < 4.3

# %% [markdown]
# The training curve: the negative ELBO in bits/dim on training batches (averaged over 25 steps)
# and on the test set. The KL — the rate — rises as the encoder learns to put information in $z$.

# %%
records = read_metrics(run_dir / "metrics.jsonl")
train = [r for r in records if r["split"] == "train"]
test = [r for r in records if r["split"] == "test"]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.2))
ax1.plot([r["step"] for r in train], [r["bpd"] for r in train], label="train batches")
ax1.plot([r["step"] for r in test], [r["test_bpd"] for r in test], "o-", label="test set")
ax1.set(xlabel="step", ylabel="negative ELBO (bits/dim)", ylim=(None, min(8, train[0]["bpd"])), title="ELBO")
ax1.legend()
ax2.plot([r["step"] for r in train], [r["kl"] for r in train])
ax2.set(xlabel="step", ylabel="KL (nats / image)", title="rate: KL(q(z|x) || p(z))")
plt.tight_layout()
assert train[-1]["bpd"] < train[0]["bpd"]  # training lowered the loss

# %% [markdown]
# ## 6. What did it learn? Samples, likelihood means, reconstructions, a latent traversal
#
# A *sample* takes $z \sim \mathcal{N}(0, I)$, decodes it to $p(x \mid z)$, and draws every pixel
# from that distribution, independently of its neighbours given $z$. The decoder cannot say "this
# pixel is exactly as bright as the next one", so the pixels scatter: samples look *grainy*. The
# *likelihood mean* $\mathbb{E}[x \mid z]$ of the same $z$ shows what the model has learned about
# the image: a smooth, *blurry* garment, the average of everything this code could stand for.
# Lowering the *temperature* $t$ (scaling the prior's $\sigma$ by $t$) trades diversity for
# typicality. *Reconstructions* take the posterior mean of a test image's code and show the
# likelihood mean: what survives the 16-number bottleneck (shapes and shading; textures and logos
# mostly do not).
#
# The grain and the blur can be measured: the mean absolute difference between neighbouring
# pixels is large for noise, small for smooth images.

# %%
def roughness(images):
    """Mean |difference| between horizontally and vertically neighbouring pixels."""
    return 0.5 * ((images[..., 1:] - images[..., :-1]).abs().mean() + (images[..., 1:, :] - images[..., :-1, :]).abs().mean()).item()


model = trainer.eval_model.eval()
torch.manual_seed(0)
with torch.no_grad():
    px = model.decode(torch.randn(36, model.latent_dim))  # p(x|z) for 36 prior draws
    samples, means = px.sample(), px.mean()  # (36, 1, 28, 28) each
    recon = model.reconstruct(x_test[:36])
fig, axes = plt.subplots(1, 5, figsize=(20, 4.4))
show_grid(samples, "samples, t = 1.0", ax=axes[0])
show_grid(means, "their likelihood means", ax=axes[1])
show_grid(model.sample(36, temperature=0.6), "samples, t = 0.6", ax=axes[2])
show_grid(x_test[:36], "test images", ax=axes[3])
show_grid(recon, "reconstructions", ax=axes[4])
plt.tight_layout()
print(f"roughness: samples {roughness(samples):.3f}, test images {roughness(x_test):.3f}, "
      f"likelihood means {roughness(means):.3f}")
assert roughness(samples) > roughness(means)  # drawing the pixels adds independent noise
if not SMOKE:
    assert roughness(samples) > roughness(x_test) > roughness(means)  # grainy samples, blurry means
mse_recon = ((recon - x_test[:36]) ** 2).mean().item()
mse_shuffled = ((recon - x_test[:36].roll(1, dims=0)) ** 2).mean().item()
print(f"mean squared error: reconstruction {mse_recon:.4f}, against a different image {mse_shuffled:.4f}")
if not SMOKE:
    assert mse_recon < 0.5 * mse_shuffled  # reconstructions resemble their own input

# %% [markdown]
# Which of the 16 latent dimensions does the model use? The KL per dimension, averaged over test
# images, says how many nats each carries; an unused dimension sits at zero KL (its posterior is
# the prior for every image — *posterior collapse* of single units, a theme of Chapter 2). Walking
# along the two most informative dimensions, from −3σ to +3σ with the others at a test image's
# posterior mean, shows what each encodes.
#
# **Predict, then run.** How many of the 16 dimensions will carry more than 0.1 nats?

# %% nbgrader={"grade": false, "grade_id": "predict02_used_dims", "locked": false, "schema_version": 3, "solution": true, "task": false}
def predicted_used_dims():
    """Your guess: how many of the 16 latent dimensions carry more than 0.1 nats."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %%
with torch.no_grad():
    x_eval = torch.stack([data.test[i][0] for i in range(min(1000, len(data.test)))])
    posterior = model.encode(x_eval)
    kl_per_dim = posterior.kl(DiagonalGaussian.standard(posterior.mu.shape)).mean(0)  # (Z,)
order = kl_per_dim.argsort(descending=True)
fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1.2, 1, 1]})
axes[0].bar(range(len(kl_per_dim)), kl_per_dim.numpy())
axes[0].set(xlabel="latent dimension", ylabel="KL (nats)", title="information per dimension")
steps = torch.linspace(-3, 3, 9)
with torch.no_grad():
    for ax, dim in zip(axes[1:], order[:2].tolist()):
        z = posterior.mu[:4].repeat_interleave(len(steps), 0).clone()  # (4 * 9, Z)
        z[:, dim] = steps.repeat(4)
        show_grid(model.decode(z).mean(), f"dimension {dim}: -3 ... +3", nrow=len(steps), ax=ax)
plt.tight_layout()
used_dims = int((kl_per_dim > 0.1).sum())
print(f"KL per dimension: {kl_per_dim.min():.2f} to {kl_per_dim.max():.2f} nats")
reveal_prediction("dimensions carrying more than 0.1 nats", predicted_used_dims, used_dims, f" of {len(kl_per_dim)}")
if not SMOKE:
    assert used_dims == len(kl_per_dim)  # every dimension is in use
assert torch.isclose(kl_per_dim.sum(), posterior.kl(DiagonalGaussian.standard(posterior.mu.shape)).sum(1).mean(), rtol=1e-4)

# %% [markdown]
# ## 7. The importance-weighted bound
#
# The ELBO's gap is $\mathrm{KL}(q \,\|\, p(z \mid x))$. Burda et al. (2016) tighten it without
# changing the model: draw $K$ samples $z_k \sim q(z \mid x)$ and average the *importance
# weights* $w_k = p(x, z_k) / q(z_k \mid x)$ inside the log,
#
# $$\mathcal{L}_K(x) = \mathbb{E}\Big[\log \frac1K \sum_{k=1}^K \frac{p(x \mid z_k)\, p(z_k)}{q(z_k \mid x)}\Big] \le \log p(x).$$
#
# $\mathcal{L}_1$ is the ELBO, $\mathcal{L}_K$ grows with $K$, and it tends to $\log p(x)$. The
# papers of this course report test likelihoods this way (NVAE uses $K = 1000$).
#
# **Exercise 4.** Implement $\mathcal{L}_K$ for a batch. Each model's forward pass draws one $z$
# per image and returns `out.log_px_z` $= \log p(x \mid z)$ and `out.log_q_minus_log_p`
# $= \log q(z \mid x) - \log p(z)$, each of shape `(B,)`. Run the model $K$ times (or once on `x`
# repeated $K$ times), stack the log-weights into a `(K, B)` tensor and average the weights *in log
# space* with `torch.logsumexp` — exponentiating log-weights of −2000 nats underflows to zero.
# The chapter then evaluates the Fashion-MNIST VAE with your bound.

# %% nbgrader={"grade": false, "grade_id": "ex04_iw_bound", "locked": false, "schema_version": 3, "solution": true, "task": false}
def iw_bound(model, x, k):
    """The importance-weighted bound log (1/K) sum_k p(x, z_k) / q(z_k | x) per image: (B,) in nats."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% [markdown]
# The check runs your bound and the library's on the linear-Gaussian toy model with many samples:
# both are random, so they are compared with a tolerance (and against the exact $\log p(x)$).

# %%
toy = LinearGaussianModel(posterior_error=0.25)
x_small = toy.sample(64)


def bound_with_k(fn, k):
    def run(x):
        torch.manual_seed(0)
        return fn(toy, x, k).mean().reshape(1)
    return run


# %% nbgrader={"grade": true, "grade_id": "ex04_iw_bound_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
ok_iw_bound = check("iw_bound", bound_with_k(iw_bound, 500), bound_with_k(importance_weighted_bound, 500), [(x_small,)], atol=0.03)

# %% [markdown]
# On the toy model the exact $\log p(x)$ is known, so we can watch the bound close the gap:

# %%
ks = [1, 3, 10, 30, 100, 300, 1000]
torch.manual_seed(1)
bounds = [importance_weighted_bound(toy, x_toy, k, chunk_size=100).mean().item() for k in ks]
exact = toy.exact_log_px(x_toy).mean().item()
plt.figure(figsize=(5, 3.2))
plt.semilogx(ks, bounds, "o-", label=r"$\mathcal{L}_K$")
plt.axhline(exact, color="k", ls="--", label=r"exact $\log p(x)$")
plt.xlabel("K (importance samples)")
plt.ylabel("nats per example")
plt.legend()
for k, b in zip(ks, bounds):
    print(f"K = {k:5d}: {b:8.4f}   gap {exact - b:.4f}")
assert all(a < b + 0.01 for a, b in zip(bounds, bounds[1:]))  # the bound rises with K
assert bounds[-1] <= exact + 0.01 and exact - bounds[-1] < 0.1 * (exact - bounds[0])  # and closes >90% of the gap

# %% [markdown]
# And on the Fashion-MNIST VAE, with your bound: the importance-weighted bound is a better (lower)
# figure in bits/dim than the ELBO. The improvement measures how far the encoder is from the true
# posterior.
#
# **Predict, then run.** How many bits/dim lower than the ELBO will $\mathcal{L}_{100}$ be on
# 500 test images? (One bit/dim is 784 ln 2 ≈ 543 nats per image.)

# %% nbgrader={"grade": false, "grade_id": "predict03_iw_gain", "locked": false, "schema_version": 3, "solution": true, "task": false}
def predicted_iw_gain():
    """Your guess: ELBO minus L_100, in bits/dim (positive: the bound is tighter)."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %%
iw_fn = use_if_correct("iw_bound", iw_bound, importance_weighted_bound, ok_iw_bound)
n_eval, k_eval = (64, 10) if SMOKE else (500, 100)
x_eval = torch.stack([data.test[i][0] for i in range(min(n_eval, len(data.test)))])
torch.manual_seed(0)
with torch.no_grad():
    elbo_bpd = nats_to_bpd(-elbo(model(x_eval), data.info.num_dims).elbo.mean(), data.info.num_dims).item()
    iw_bpd = nats_to_bpd(-iw_fn(model, x_eval, k_eval).mean(), data.info.num_dims).item()
print(f"on {len(x_eval)} test images: ELBO {elbo_bpd:.4f} bits/dim, IW bound (K = {k_eval}) {iw_bpd:.4f} bits/dim")
reveal_prediction("ELBO - L_100", predicted_iw_gain, round(elbo_bpd - iw_bpd, 4), " bits/dim")
assert iw_bpd < elbo_bpd

# %% [markdown]
# ## Summary
#
# - The ELBO is $\log p(x)$ minus the KL from the encoder to the true posterior; it trades
#   reconstruction against rate, both in nats.
# - Reparameterisation gives low-variance gradients through samples; the Gaussian KL needs none.
# - Likelihoods of images must be discrete; bits/dim compares models at the same bit depth, with
#   the uniform model at exactly the bit depth.
# - The VAE of this chapter, trained with your loss, reaches the test bits/dim printed above on
#   Fashion-MNIST; the importance-weighted bound improves on the ELBO a little.
# - All 16 of its latent dimensions carry information: for 784 pixels, 16 numbers are a tight
#   bottleneck. Its samples are grainy, because each pixel is drawn independently given $z$,
#   while its likelihood means are blurry: it has learned the shapes of garments, not their texture.
#
# **Next: Chapter 2** replaces the single latent vector by a *hierarchy* of latent groups — the
# Ladder VAE — and compares its bits/dim with this chapter's at a similar parameter budget.
#
# Further reading: Kingma & Welling (2014), *Auto-Encoding Variational Bayes*; Rezende et al.
# (2014); Burda, Grosse & Salakhutdinov (2016), *Importance Weighted Autoencoders*; Salimans et al.
# (2017), *PixelCNN++* for the discretised logistic mixture.
