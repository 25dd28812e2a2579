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
# 3. the KL divergence between two Gaussians in closed form (*derivation 1*, then *exercise 1*
#    computes it);
# 4. likelihoods for 8-bit images — the discretised logistic mixture (*exercise 2*) — and what
#    *bits per dimension* means;
# 5. the training loop: learning-rate schedule, loss, gradient clipping, update (*exercise 3*, which
#    then trains a convolutional VAE on Fashion-MNIST), and the training engine the rest of the
#    course uses, which is that loop plus checkpoints and logs; how to look at what the VAE learnt;
# 6. the importance-weighted bound, and how it closes the ELBO's gap (*exercise 4*, which then
#    evaluates the VAE).
#
# Three "predict, then run" questions ask you to guess a number before the cell that measures it.
#
# **What to expect.** In full mode your loop trains the VAE for 2000 steps (about 0.13 s a step on
# an idle 2-core CPU, where a run of the whole notebook took 313 s, 605 s of CPU time on two threads), and the VAE reaches
# about **3.71 bits/dim** on the Fashion-MNIST test set (the exact figure is printed below, and it
# is the figure `make train` gives: the same steps). With `HVAE_SMOKE=1` it runs on a few hundred
# images in well under a minute: the numbers are then meaningless, but every cell runs.
#
# The library `hvae_lib` holds the finished implementation of everything here. Each exercise asks
# you to write one piece and checks it against the library. Three of them then do real work: your
# likelihood scores the trained VAE, your loop trains it and your bound evaluates it, once their
# checks pass; until then the chapter carries on with the library's versions, so the notebook runs
# top to bottom even before you start.

# %%
import copy
import math
import shutil
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hvae_lib.analysis.plotting import show_grid
from hvae_lib.config import OptimConfig, override
from hvae_lib.data import load_dataset
from hvae_lib.exercises import assert_matches, check, resolve, reveal_prediction, smoke_mode, use_if_correct
from hvae_lib.models.exact.linear_gaussian import LinearGaussianModel
from hvae_lib.models.presets import get_preset
from hvae_lib.models.vae import ConvVAE
from hvae_lib.probability.gaussian import DiagonalGaussian, sum_except_batch
from hvae_lib.probability.likelihoods import DiscretizedLogisticMixture
from hvae_lib.probability.objectives import ModelOutput, elbo, importance_weighted_bound, nats_to_bpd
from hvae_lib.training.checkpoint import save_atomic
from hvae_lib.training.engine import Trainer, build_data_and_model
from hvae_lib.training.run_log import GlobalBatches
from hvae_lib.training.simple_loop import engine_checkpoint

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
# **Derivation 1.** Derive this formula from the definition
# $\mathrm{KL}(q\,\|\,p) = \mathbb{E}_{z \sim q}[\log q(z) - \log p(z)]$ for one dimension, with
# $\log \mathcal{N}(z; \mu, \sigma^2) = -\tfrac12 \log(2\pi\sigma^2) - (z - \mu)^2 / (2\sigma^2)$.
# Say which moments of $q$ you use, and why a diagonal Gaussian's KL is the sum of these terms
# over its dimensions. Write your answer in the cell below (Markdown and LaTeX).

# %% [markdown] nbgrader={"grade": true, "grade_id": "derive01_gaussian_kl", "locked": false, "points": 3, "schema_version": 3, "solution": true, "task": false}
# YOUR ANSWER HERE

# %% [markdown]
# The networks output $\log\sigma$ rather than $\sigma$ (it can be any real number, and the KL
# needs $\log\sigma$ anyway); the library bounds it smoothly so $\sigma$ can neither vanish nor
# explode.
#
# **Exercise 1.** Implement your formula elementwise from the log-sigmas. Work with `log_sigma`
# directly — `torch.exp(2 * (log_sigma_q - log_sigma_p))` is the variance ratio — rather than
# computing `sigma` and taking logs again. The check compares it with the library's
# `DiagonalGaussian.kl` on random inputs of several shapes (so neither it nor
# `torch.distributions.kl_divergence` may be called here).

# %% nbgrader={"grade": false, "grade_id": "ex01_gaussian_kl", "locked": false, "schema_version": 3, "solution": true, "task": false}
def gaussian_kl(mu_q, log_sigma_q, mu_p, log_sigma_p):
    """Elementwise KL( N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2) ) in nats; all inputs share one shape."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %%
def kl_cases(seed=1):
    """Random (mu_q, log_sigma_q, mu_p, log_sigma_p) of several shapes, and q = p."""
    g = torch.Generator().manual_seed(seed)
    draw = lambda shape: tuple(torch.randn(shape, generator=g) for _ in range(4))  # noqa: E731
    same = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    return {"a vector": draw((5,)), "a matrix": draw((3, 7)), "images (B, C, H, W)": draw((2, 4, 6, 6)),
            "one element": draw((1,)), "q equal to p": (*same, *same)}


def library_kl(mu_q, log_sigma_q, mu_p, log_sigma_p):
    return DiagonalGaussian(mu_q, log_sigma_q).kl(DiagonalGaussian(mu_p, log_sigma_p))


# %% nbgrader={"grade": true, "grade_id": "ex01_gaussian_kl_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
ok_gaussian_kl = check("gaussian_kl", gaussian_kl, library_kl, kl_cases(),
                       forbid=("hvae_lib.probability.gaussian:DiagonalGaussian.kl", "torch.distributions.kl:kl_divergence"))

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
# **Exercise 2.** The log-likelihood of grey images under the discretised logistic mixture, the
# likelihood of every model in this course (its decoder outputs the parameters, per pixel). For
# $M$ components with mixture weights $\pi_k = \mathrm{softmax}(\text{logits})_k$, means $m_k$ and
# scales $s_k = e^{\log s_k}$,
#
# $$P(x) = \sum_{k=1}^{M} \pi_k\, P_k(x), \qquad \log p(\text{image}) = \sum_{\text{pixels}} \log P(x).$$
#
# Map `x` from $[0, 1]$ to $v = 2x - 1$ in $[-1, 1]$; with half a bin $h = 1/(2^b - 1)$,
# $P_k(v) = \sigma\big((v + h - m_k)/s_k\big) - \sigma\big((v - h - m_k)/s_k\big)$, except at the
# edges: the lowest value ($v = -1$) gets $\sigma((v + h - m_k)/s_k)$ and the highest ($v = 1$)
# $1 - \sigma((v - h - m_k)/s_k)$. Work in log space throughout:
#
# - the edge bins with `F.logsigmoid` ($\log(1 - \sigma(u)) = \log\sigma(-u)$);
# - the mixture with `torch.log_softmax` of the logits and `torch.logsumexp` over the components;
# - **far in a tail** — a pixel many scales away from $m_k$ — both sigmoids round to the same float
#   and their difference to 0 (or to a few ulps of noise). Where the difference is below $10^{-5}$,
#   use the density at the bin's centre times the bin's width instead:
#   $\log P_k \approx u - \log s_k - 2\,\mathrm{softplus}(u) + \log(2h)$ with $u = (v - m_k)/s_k$
#   (the logistic density is $\sigma(u)\,\sigma(-u) / s_k$); elsewhere, the log of the difference;
# - clamp the log-scales below at $-7$ first, as the library does.
#
# `params` has $4M$ channels in the library's layout: $M$ logits, $M$ means, $M$ log-scales and
# $M$ colour coefficients that grey images do not use. Return $\log p$ per image in nats, `(B,)`.
# The check compares your function with the library's `DiscretizedLogisticMixture` (which it may
# not call), on kinds of case that test each of the points above.

# %% nbgrader={"grade": false, "grade_id": "ex02_logistic_mixture", "locked": false, "schema_version": 3, "solution": true, "task": false}
def logistic_mixture_log_prob(x, params, bits=8):
    """log p(x) in nats per image, (B,), for grey images x (B, 1, H, W) in [0, 1] on the 2^bits grid,
    under the discretised logistic mixture with params (B, 4M, H, W): M logits, M means, M log-scales, M unused."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %%
def mixture_cases(seed=2):
    """(x, params, bits) of each kind: images of 3 x 1 x 5 x 5 pixels, both edge values in each."""
    g = torch.Generator().manual_seed(seed)

    def case(bits, m, offset, log_scales, edges_far=False):
        x = torch.randint(1, 2**bits - 1, (3, 1, 5, 5), generator=g) / (2**bits - 1)
        x[:, 0, 0, :2] = torch.tensor([0.0, 1.0])  # both edge bins in every image
        v = 2 * x - 1
        means = (v + offset * torch.randn(3, m, 5, 5, generator=g)).clamp(-1, 1)  # (B, M, H, W)
        if edges_far:  # the edge pixels' components sit at the other end, a hundred scales away
            means[:, :, 0, :2] = torch.tensor([0.9, -0.9])
        low, high = log_scales
        scales = low + (high - low) * torch.rand(3, m, 5, 5, generator=g)
        logits = torch.randn(3, m, 5, 5, generator=g)
        return x, torch.cat([logits, means, scales, torch.randn(3, m, 5, 5, generator=g)], dim=1), bits

    return {"8 bits, 5 components near the data": case(8, 5, 0.1, (-3, -1)),
            "a 5-bit image": case(5, 3, 0.2, (-3, -1)),
            "one component": case(8, 1, 0.05, (-4, -2)),
            "edge values far from the means": case(8, 2, 0.05, (-5, -4), edges_far=True),
            "far in a tail": case(8, 2, 0.6, (-4.5, -4.5)),
            "log-scales below -7 (clamped)": case(8, 2, 0.002, (-9, -7.5))}


def library_mixture(x, params, bits):
    return DiscretizedLogisticMixture(params, channels=1, bits=bits).log_prob(x)


# %% nbgrader={"grade": true, "grade_id": "ex02_logistic_mixture_test", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
ok_mixture = check("logistic_mixture_log_prob", logistic_mixture_log_prob, library_mixture, mixture_cases(), atol=1e-3,
                   forbid=("hvae_lib.probability.likelihoods:DiscretizedLogisticMixture",))

# %% [markdown]
# Two anchors for these units, computed with your mixture once its check passed (the library's
# until then). A uniform model of 8-bit data scores 8 bits/dim; and the discretised logistic
# mixture is a proper distribution — summed over all 256 values of a pixel, its probabilities
# give one, for any parameters.

# %%
mixture_log_prob = use_if_correct("logistic_mixture_log_prob", logistic_mixture_log_prob, library_mixture, ok_mixture)
levels = torch.arange(256).float() / 255  # every 8-bit value
x_all = levels.view(256, 1, 1, 1)  # (256, 1, 1, 1): one pixel per "image"
uniform_log_p = torch.full((256,), -math.log(256))
print(f"uniform model: {nats_to_bpd(-uniform_log_p, 1).mean():.3f} bits/dim")
assert torch.allclose(nats_to_bpd(-uniform_log_p, 1), torch.tensor(8.0))

params = torch.tensor([0.5, -1.0, 0.2, -0.7, 0.3, 0.9, -2.0, -4.0, -6.5, 0, 0, 0]).view(1, 12, 1, 1)  # 3 components
total = mixture_log_prob(x_all, params.expand(256, 12, 1, 1), 8).exp().sum()
print(f"sum of P(x) over all 256 values, a mixture of 3 logistics: {total:.6f}")
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
# pixel, the likelihood of Exercise 2. About 110 000 parameters. The preset `vae_fashion` (the one
# `make train` runs) names the data, the model and the optimiser settings; the library builds the
# first two from it as its training engine does, from the same seed.

# %%
config = get_preset("vae_fashion")  # the preset behind `make train`
if SMOKE:
    config = override(config, {"max_steps": 20, "train_limit": 512, "test_limit": 256, "batch_size": 64,
                               "eval_every": 10, "eval_batches": 2, "log_every": 5, "warmup_steps": 5})
data = load_dataset(config.data.name, train_limit=config.data.train_limit or None, test_limit=config.data.test_limit or None)
print(data.info)
print(f"{len(data.train)} training and {len(data.test)} test images")
x_test = torch.stack([data.test[i][0] for i in range(64)])  # (64, 1, 28, 28)
assert x_test.shape == (64, 1, 28, 28) and 0 <= x_test.min() and x_test.max() <= 1
show_grid(x_test, "Fashion-MNIST test images");

# %% [markdown]
# **Exercise 3: the training loop.** Write the loop that trains the VAE. It gets the model, an
# optimiser over its parameters, `batches` (a function: `batches(step)` is the batch of that step,
# `(B, 1, 28, 28)` in $[0, 1]$) and `optim`, the preset's optimiser settings (`optim.lr`,
# `optim.warmup_steps`, `optim.lr_min`, `optim.max_steps`, `optim.grad_clip`,
# `optim.kl_warmup_steps`, `optim.kl_warmup_start`). For each `step` from 0 to `max_steps - 1`:
#
# 1. **The learning rate.** A linear warm-up, $\text{lr} \cdot (\text{step} + 1) / W$ while
#    step $< W$ = `warmup_steps`, then a cosine from lr down to `lr_min` over the remaining
#    $T - W$ steps ($T$ = `max_steps`):
#    $\text{lr}_{\min} + (\text{lr} - \text{lr}_{\min}) \cdot \tfrac12\big(1 + \cos(\pi\,(\text{step} - W) / (T - W))\big)$.
#    Set it in every `optimizer.param_groups[i]["lr"]` before the step.
# 2. **The KL weight** $\beta$ ("KL warm-up", Chapter 2): linear from `kl_warmup_start` to 1 over the
#    first `kl_warmup_steps` steps, $\beta = \beta_0 + (1 - \beta_0)\,\text{step} / K$ while step $< K$,
#    and 1 from then on (always 1 when $K = 0$, as in this preset).
# 3. **The loss.** A forward pass `out = model(x)` encodes the batch, draws one $z \sim q(z \mid x)$
#    per image, and returns `out.log_px_z` $= \log p(x \mid z)$, shape `(B,)`, and
#    `out.kl_per_group`, the KL of each latent group, `(B, L)` (one group here, $L = 1$; Chapter 2's
#    hierarchy has several). Minimise the mean over the batch of $-\log p(x \mid z) + \beta
#    \sum_l \mathrm{KL}_l$, in nats: $\beta = 1$ makes it the negative ELBO of Section 1.
# 4. **The update.** Zero the gradients, backpropagate, clip the norm of all the gradients together
#    at `grad_clip` with `torch.nn.utils.clip_grad_norm_` (it returns the norm *before* clipping;
#    `grad_clip = 0` means no clipping), and step the optimiser.
# 5. **The record** of the step, a dict of floats: `"loss"` (what you minimised), `"bpd"` (the batch's
#    negative ELBO with $\beta = 1$ in bits/dim, Section 4), `"grad_norm"`, `"lr"` and `"beta"`.
#
# Return the list of records. Write the schedules yourself: the library's `lr_factor`,
# `kl_warmup_beta`, `make_scheduler`, its loop and its `Trainer` are what the check compares with.
# The check runs your loop and the library's for 6 steps on a tiny VAE, from the same weights,
# batches and random numbers, on four kinds of case; one uses plain SGD, where a clipped gradient
# changes the step (Adamax's first steps hardly depend on the gradient's scale). Then your loop
# trains this chapter's VAE.

# %% nbgrader={"grade": false, "grade_id": "ex03_train_vae", "locked": false, "schema_version": 3, "solution": true, "task": false}
def train_vae(model, optimizer, batches, optim):
    """Train model for optim.max_steps steps; returns a list of dicts (loss, bpd, grad_norm, lr, beta), one per step."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %%
def loop_cases(seed=0, steps=6, warmup=2):
    """A tiny ConvVAE on 8x8 images, an optimiser, 4 fixed batches of 8 and a schedule, per kind of case."""
    def case(seed, sgd=False, **changes):
        torch.manual_seed(seed)
        tiny = ConvVAE((1, 8, 8), 8, latent_dim=4, channels=4, num_downsamples=1, num_mix=2)
        images = torch.randint(0, 256, (32, 1, 8, 8), generator=torch.Generator().manual_seed(seed)) / 255
        settings = OptimConfig(lr=1e-2, lr_min=1e-3, warmup_steps=warmup, max_steps=steps, **changes)
        optimizer = (torch.optim.SGD if sgd else torch.optim.Adamax)(tiny.parameters(), lr=settings.lr)
        return tiny, optimizer, lambda step: images[8 * (step % 4):8 * (step % 4) + 8], settings

    return {"warm-up, then cosine": case(seed),
            "KL warm-up": case(seed + 1, kl_warmup_steps=steps - 2),
            "a clipped gradient (plain SGD, so the clip shows)": case(seed + 2, sgd=True, grad_clip=1.0),
            "no clipping (grad_clip = 0)": case(seed + 3, grad_clip=0.0)}


def library_loop(model, optimizer, batches, optim):
    """hvae_lib's loop (training.simple_loop.train_loop) on copies of the model and optimiser, from the
    same random state, so that your loop then starts where it started."""
    model_copy = copy.deepcopy(model)
    optimizer_copy = type(optimizer)(model_copy.parameters(), **optimizer.defaults)
    optimizer_copy.load_state_dict(optimizer.state_dict())
    with torch.random.fork_rng():
        return resolve("hvae_lib.training.simple_loop:train_loop")(model_copy, optimizer_copy, batches, optim)


# %% nbgrader={"grade": true, "grade_id": "ex03_train_vae_test", "locked": true, "points": 5, "schema_version": 3, "solution": false, "task": false}
ok_train_vae = check("train_vae", train_vae, library_loop, loop_cases(), rtol=1e-3,
                     forbid=("hvae_lib.training.simple_loop:train_loop", "hvae_lib.training.optim:lr_factor",
                             "hvae_lib.training.optim:make_scheduler", "hvae_lib.probability.kl_control:kl_warmup_beta",
                             "hvae_lib.training.engine:Trainer"))

# %% [markdown]
# Now train: your loop once its check passed (the library's until then). The data, the model and
# the random state come from the preset's seed as the engine makes them, so the initial weights
# and every $z$ drawn are those of `make train`; the optimiser is Adamax as the preset says; and the
# batches are the ones the engine would draw: batch `step` is a fixed slice of a shuffle seeded by
# `(seed, epoch)`. A progress bar counts the steps.

# %%
train_fn = use_if_correct("train_vae", train_vae, "hvae_lib.training.simple_loop:train_loop", ok_train_vae)
torch.manual_seed(config.run.seed)
data, model = build_data_and_model(config)  # Fashion-MNIST and a ConvVAE, as the engine builds them
print(f"ConvVAE with {sum(p.numel() for p in model.parameters()):,} parameters")
optimizer = torch.optim.Adamax(model.parameters(), lr=config.optim.lr, betas=config.optim.betas, eps=config.optim.eps)
batch_order = GlobalBatches(data.train, config.optim.batch_size, config.run.seed)
progress = tqdm(total=config.optim.max_steps, desc="training the VAE")


def batches(step):
    progress.update()
    return batch_order.get(step)  # (B, 1, 28, 28)


start = time.perf_counter()
history = train_fn(model, optimizer, batches, config.optim)
progress.close()
seconds = time.perf_counter() - start
model.eval()
print(f"{len(history)} steps in {seconds / 60:.1f} min ({seconds / len(history):.3f} s a step); "
      f"training bits/dim of the last 25 batches: {sum(r['bpd'] for r in history[-25:]) / len(history[-25:]):.3f}")
assert len(history) == config.optim.max_steps and history[-1]["bpd"] < history[0]["bpd"]

# %% [markdown]
# The training curve: the negative ELBO of each batch in bits/dim (and its average over 25 steps),
# and the learning rate your loop set.

# %%
bpd = torch.tensor([r["bpd"] for r in history])  # (T,)
window = max(1, min(25, len(bpd) // 4))
smooth = bpd.unfold(0, window, 1).mean(1)  # (T - window + 1,) running mean
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.2))
ax1.plot(bpd, lw=0.5, alpha=0.5, label="each batch")
ax1.plot(range(window - 1, len(bpd)), smooth, label=f"mean of {window}")
ax1.set(xlabel="step", ylabel="negative ELBO (bits/dim)", ylim=(None, min(8, bpd[0].item())), title="training ELBO")
ax1.legend()
ax2.plot([r["lr"] for r in history])
ax2.set(xlabel="step", ylabel="learning rate", title="warm-up, then cosine")
plt.tight_layout()
assert smooth[-1] < smooth[0]  # training lowered the loss

# %% [markdown]
# ### The training engine: your loop, plus checkpoints and logs
#
# From now on the course trains with `hvae_lib.training.engine.Trainer`, the code behind
# `make train` and the GPU runs. Its step is the one you wrote: it too sets the schedule's rate,
# draws the batch of the step, minimises the same loss, clips and updates. Around it, it adds what
# a long run needs:
#
# - a **checkpoint** every few hundred steps, written atomically (a crash leaves the old one or the
#   new one, never half of one), and an **exact resume**: the batch of a step, the schedule and the
#   random state are restored, so a resumed run takes the same steps as an uninterrupted one; Ctrl-C
#   stops it after the step under way and saves first;
# - **logs**: `metrics.jsonl` and TensorBoard events, a progress bar, the test set's bits/dim every
#   `eval_every` steps, `samples.png`, and `results.json` at the end;
# - for bigger runs: mixed precision, several GPUs (DDP), an exponential moving average of the
#   weights, and the Very Deep VAE's gradient skipping (Chapter 6).
#
# First, that it takes the same steps: the engine, started from the same seed, for the first 100
# steps of the same schedule, against your loop's records.

# %%
check_steps = min(100, config.optim.max_steps)
engine_config = override(config, {"max_steps": check_steps, "schedule_steps": config.optim.max_steps, "quiet": True})
engine = Trainer(engine_config, RUNS / ("ch01_engine_check_smoke" if SMOKE else "ch01_engine_check"), resume=False)
engine_losses = torch.tensor([engine.train_step()["loss"] for _ in range(check_steps)])  # (N,)
loop_losses = torch.tensor([r["loss"] for r in history[:check_steps]])
gap = ((engine_losses - loop_losses).abs() / engine_losses.abs()).max().item()
print(f"the engine's first {check_steps} losses against your loop's: largest relative difference {gap:.1e}")
assert gap < 1e-3  # the same computation (0 when your loop writes the loss as the engine does)

# %% [markdown]
# Then what it adds. `simple_loop.engine_checkpoint` writes your loop's run — weights, optimiser
# state, the schedule at step 2000 — in the engine's checkpoint format, and the engine resumes it.
# At `max_steps` nothing is left to train, so it saves, draws `samples.png`, evaluates the whole
# test set and writes `results.json` into `runs/ch01_vae/`, where Chapter 2 finds the model.

# %%
run_dir = RUNS / ("ch01_vae_smoke" if SMOKE else "ch01_vae")
shutil.rmtree(run_dir, ignore_errors=True)
run_dir.mkdir(parents=True)
save_atomic(engine_checkpoint(model, optimizer, config, data.info, len(history)), run_dir / "checkpoint.pt")
trainer = Trainer(config, run_dir)  # resume=True: it reads the checkpoint
print(f"the engine resumed at step {trainer.step} of {config.optim.max_steps}")
result = trainer.fit()
vae_bpd = result["test_bpd"]
print(f"test negative ELBO: {result['test_neg_elbo_nats']:.1f} nats per image = {vae_bpd:.3f} bits/dim "
      f"({result['test_images']} images); the run folder: {sorted(p.name for p in run_dir.iterdir())}")
assert trainer.step == config.optim.max_steps and (run_dir / "results.json").exists()
assert all(torch.equal(p, q) for p, q in zip(trainer.model.parameters(), model.parameters()))  # your weights
assert vae_bpd < 8, "a trained model must beat the uniform 8 bits/dim"
if not SMOKE:
    assert abs(vae_bpd - 3.71) < 0.03  # "about 3.71 bits/dim", the figure stated above and in the README

# %% [markdown]
# Your likelihood of Exercise 2 on the trained model: its reconstruction term $\log p(x \mid z)$
# for 500 test images, from the decoder's parameters, against the model's own.

# %%
x_eval = torch.stack([data.test[i][0] for i in range(min(500, len(data.test)))])  # (N, 1, 28, 28)
torch.manual_seed(0)
with torch.no_grad():
    z = model.encode(x_eval).rsample()  # (N, 16): one posterior draw per image
    params = model.head.proj(model.decoder_features(z))  # (N, 20, 28, 28): 5 logits, means, log-scales, coefficients
    log_px_yours = mixture_log_prob(x_eval, params, data.info.bits)  # (N,)
    log_px_model = model.decode(z).log_prob(x_eval)
print(f"log p(x|z), mean over {len(x_eval)} test images: {log_px_yours.mean():.2f} nats with your likelihood, "
      f"{log_px_model.mean():.2f} with the model's")
assert torch.allclose(log_px_yours, log_px_model, rtol=1e-4, atol=1e-2)

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
# $\mathcal{L}_1$ is the ELBO and $\mathcal{L}_K$ never decreases with $K$. It tends to $\log p(x)$
# as $K \to \infty$ when the weights $p(x, z)/q(z \mid x)$ are bounded (Burda et al.'s Theorem 1:
# then their average converges to its mean $p(x)$); an encoder whose tails are much lighter than
# the posterior's can make the weights unbounded, and the convergence slow. The papers of this
# course report their test likelihoods differently: NVAE gives the importance-weighted bound with
# $K = 1000$, while the Very Deep VAE gives the single-sample ELBO, $\mathcal{L}_1$. Compare the
# two kinds of number with that in mind.
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
# Both bounds are random. So that the check can compare them exactly, it runs them on the
# linear-Gaussian toy model with its noise *replayed*: the toy below remembers, for each of its
# points, a list of $K$ draws of $\varepsilon$, and the $n$-th time it sees a point it uses the
# $n$-th draw, however the points are batched or repeated. Your bound and the library's then
# average the same $K$ weights, and must agree to rounding. One kind of case shifts every
# $\log p(x \mid z)$ by $-2000$ nats, the size of a Fashion-MNIST image's.

# %%
toy = LinearGaussianModel(posterior_error=0.25)


class ReplayedNoise(torch.nn.Module):
    """The toy model whose n-th pass over point b draws z = mu + sigma * eps[b, n mod K]; ``offset`` is
    subtracted from every log p(x|z)."""

    def __init__(self, x, k, seed, offset=0.0):
        super().__init__()
        self.x, self.offset = x, offset
        self.eps = torch.randn(len(x), k, 2, generator=torch.Generator().manual_seed(seed))  # (B, K, Z)
        self.seen = [0] * len(x)

    def forward(self, x):
        point = torch.cdist(x.flatten(1), self.x.flatten(1)).argmin(dim=1).tolist()  # which point each row is
        draw = []
        for b in point:
            draw.append(self.seen[b] % self.eps.shape[1])
            self.seen[b] += 1
        q = toy.encode(x)
        p = DiagonalGaussian.standard(q.mu.shape)
        z = q.mu + q.sigma * self.eps[point, draw]  # (N, Z)
        px = toy.decode(z)
        return ModelOutput(px.log_prob(x) - self.offset, q.kl(p).sum(1, keepdim=True),
                           sum_except_batch(q.log_prob(z) - p.log_prob(z)), px)


def bound_cases(seed=0, ks=(1, 20, 500), offset=2000.0):
    torch.manual_seed(seed)
    x = toy.sample(16)  # (16, 4, 1, 1)
    cases = {"one sample (K = 1: the ELBO)": ks[0], "a few samples": ks[1], "many samples": ks[2]}
    cases = {kind: (ReplayedNoise(x, k, seed + i), x, k) for i, (kind, k) in enumerate(cases.items())}
    cases["log-weights near -2000 nats (exp underflows)"] = (ReplayedNoise(x, ks[1], seed + 9, offset), x, ks[1])
    return cases


# %% nbgrader={"grade": true, "grade_id": "ex04_iw_bound_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
ok_iw_bound = check("iw_bound", iw_bound, "hvae_lib.probability.objectives:importance_weighted_bound", bound_cases())

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
iw_fn = use_if_correct("iw_bound", iw_bound, "hvae_lib.probability.objectives:importance_weighted_bound", ok_iw_bound)
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
# - Likelihoods of images must be discrete — the discretised logistic mixture, computed in log
#   space with a fallback far in the tails; bits/dim compares models at the same bit depth, with
#   the uniform model at exactly the bit depth.
# - A training loop is a schedule, a loss, a clipped gradient and an update. Your loop trained the
#   VAE of this chapter to the test bits/dim printed above on Fashion-MNIST; the engine `Trainer`
#   takes the same steps and adds checkpoints, exact resumes, logs and evaluation.
# - The importance-weighted bound improves on the ELBO a little; it tends to $\log p(x)$ when the
#   importance weights are bounded. NVAE reports it ($K = 1000$), the Very Deep VAE the ELBO.
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
