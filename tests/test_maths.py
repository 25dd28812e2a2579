"""Analytic anchors for the Chapter 1 maths: Gaussians, likelihoods, bits/dim and the IW bound."""
import math

import pytest
import torch

from hvae_lib.models.exact.linear_gaussian import LinearGaussianModel
from hvae_lib.probability.gaussian import DiagonalGaussian, soft_clamp
from hvae_lib.probability.likelihoods import Bernoulli, DiscretizedLogisticMixture, LikelihoodHead
from hvae_lib.probability.objectives import elbo, importance_weighted_bound, nats_to_bpd


def random_gaussian(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return DiagonalGaussian(torch.randn(shape, generator=g), torch.randn(shape, generator=g) * 0.5)


def test_kl_of_identical_gaussians_is_zero():
    q = random_gaussian((8, 5), 0)
    assert torch.allclose(q.kl(q), torch.zeros(8, 5), atol=1e-6)


def test_kl_matches_torch_distributions():
    q, p = random_gaussian((16, 7), 1), random_gaussian((16, 7), 2)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(q.mu, q.sigma), torch.distributions.Normal(p.mu, p.sigma))
    assert torch.allclose(q.kl(p), ref, atol=1e-5)
    assert (q.kl(p) >= 0).all()


def test_log_prob_matches_torch_distributions():
    q = random_gaussian((4, 3), 3)
    z = torch.randn(4, 3)
    ref = torch.distributions.Normal(q.mu, q.sigma).log_prob(z)
    assert torch.allclose(q.log_prob(z), ref, atol=1e-5)


def test_rsample_moments_and_temperature():
    torch.manual_seed(0)
    q = DiagonalGaussian(torch.full((200_000,), 1.5), torch.full((200_000,), math.log(2.0)))
    z = q.rsample()
    assert abs(z.mean().item() - 1.5) < 0.02 and abs(z.std().item() - 2.0) < 0.02
    assert abs(q.rsample(temperature=0.5).std().item() - 1.0) < 0.02
    assert torch.equal(q.rsample(temperature=0.0), q.mu)


def test_rsample_is_differentiable():
    mu = torch.zeros(3, requires_grad=True)
    log_sigma = torch.zeros(3, requires_grad=True)
    DiagonalGaussian(mu, log_sigma).rsample().sum().backward()
    assert torch.equal(mu.grad, torch.ones(3)) and log_sigma.grad.abs().sum() > 0


def test_from_params_bounds_log_sigma():
    params = torch.tensor([[0.0, 1e4], [0.0, -1e4]]).T.reshape(2, 2)  # (B=2, 2): mu, raw log sigma
    g = DiagonalGaussian.from_params(torch.tensor([[0.0, 1e4], [0.0, -1e4]]), log_sigma_bound=7.0)
    assert g.log_sigma.abs().max() <= 7.0 and torch.isfinite(g.sigma).all()
    assert torch.allclose(soft_clamp(torch.tensor([0.1]), 5.0), torch.tensor([0.1]), atol=1e-4)
    assert params.shape == (2, 2)


def all_values(bits, shape=(1, 1, 2, 2)):
    """Every pixel value of a 2^bits grid as a batch: (2^bits, C, H, W) with constant images."""
    levels = 2**bits
    return (torch.arange(levels).float() / (levels - 1)).view(levels, 1, 1, 1).expand(levels, *shape[1:])


@pytest.mark.parametrize("bits,channels", [(1, 1), (5, 1), (8, 1), (1, 3), (5, 3)])  # RGB: every triple
def test_logistic_mixture_is_normalised(bits, channels):
    """Summed over all 2^bits values of a pixel, the probabilities are one (per channel, per pixel)."""
    torch.manual_seed(bits)
    m = 4
    params = torch.randn(1, DiscretizedLogisticMixture.param_channels(channels, m), 1, 1)
    levels = 2**bits
    vals = torch.arange(levels).float() / (levels - 1)
    if channels == 1:
        x = vals.view(levels, 1, 1, 1)
    else:  # every (r, g, b) triple, on a coarse grid to keep it small
        x = torch.cartesian_prod(vals, vals, vals).view(-1, 3, 1, 1)  # all (2^bits)^3 colours
    d = DiscretizedLogisticMixture(params.expand(x.shape[0], -1, -1, -1), channels, bits)
    total = torch.logsumexp(d.log_prob(x), dim=0).exp()
    assert abs(total.item() - 1.0) < 2e-3


@pytest.mark.parametrize("bits", [8, 5])
def test_uniform_likelihood_is_bit_depth_bits_per_dim(bits):
    """The library's mixture made uniform (2^bits equal components, one narrow logistic centred on
    each pixel value) gives every value probability 2^-bits, so any image scores exactly `bits`."""
    levels = 2**bits
    per_pixel = torch.cat([torch.zeros(levels),  # equal mixture logits
                           torch.linspace(-1, 1, levels),  # component means: the pixel values in [-1, 1]
                           torch.full((levels,), -12.0),  # log-scales: 6e-6, far inside a bin
                           torch.zeros(levels)])  # (coefficients, unused for one channel)
    x = torch.randint(0, levels, (4, 1, 8, 8), generator=torch.Generator().manual_seed(bits)) / (levels - 1)
    params = per_pixel.view(1, -1, 1, 1).expand(4, -1, 8, 8)  # (B, M (1 + 3), H, W)
    log_px = DiscretizedLogisticMixture(params, 1, bits, log_scale_min=-12.0).log_prob(x)  # (B,)
    torch.testing.assert_close(nats_to_bpd(-log_px, 8 * 8), torch.full((4,), float(bits)), rtol=1e-5, atol=1e-5)
    bernoulli = Bernoulli(torch.zeros(4, 1, 8, 8)).log_prob(torch.randint(0, 2, (4, 1, 8, 8)).float())
    torch.testing.assert_close(nats_to_bpd(-bernoulli, 64), torch.ones(4))  # a fair coin: 1 bit/dim


def test_logistic_sample_on_bit_grid_and_concentrates():
    params = torch.zeros(2, DiscretizedLogisticMixture.param_channels(1, 2), 4, 4)
    params[:, 2:4] = 0.5  # means at 0.5 -> pixel value 0.75
    params[:, 4:6] = -7  # tiny scales
    x = DiscretizedLogisticMixture(params, 1, 5).sample()
    assert torch.allclose(x * 31, (x * 31).round()) and (x - 0.75).abs().max() < 1 / 31 + 1e-6


def test_bernoulli_log_prob():
    logits = torch.tensor([[[[0.0, 2.0]]]])  # (1, 1, 1, 2)
    x = torch.tensor([[[[1.0, 0.0]]]])
    expected = math.log(0.5) + math.log(1 - 1 / (1 + math.exp(-2.0)))
    assert abs(Bernoulli(logits).log_prob(x).item() - expected) < 1e-6


def test_unknown_likelihood_is_one_clear_error():
    with pytest.raises(ValueError, match="expected one of bernoulli, logistic_mixture"):
        LikelihoodHead(8, 1, "gaussian")


def test_iw_bound_is_above_elbo_and_approaches_exact_log_px():
    torch.manual_seed(0)
    model = LinearGaussianModel(data_dim=4, latent_dim=2)
    x = model.sample(256)
    exact = model.exact_log_px(x).mean().item()
    with torch.no_grad():
        elbo_value = torch.stack([elbo(model(x), model.num_dims).elbo for _ in range(20)]).mean().item()
    iw = {k: importance_weighted_bound(model, x, k, chunk_size=64).mean().item() for k in (1, 10, 1000)}
    assert abs(iw[1] - elbo_value) < 0.4  # K = 1 is a one-sample (noisy) estimate of the ELBO
    assert elbo_value < iw[10] < iw[1000] <= exact + 1e-3
    assert exact - elbo_value > 0.1  # the encoder is imperfect, so there is a gap to close
    assert exact - iw[1000] < 0.1 * (exact - elbo_value)  # K = 1000 closes >90% of it


def test_toy_posterior_and_elbo_in_closed_form():
    """Bayes' rule holds at any z: log p(z) + log p(x|z) - log p(z|x) = log p(x). The closed-form
    ELBO is log p(x) - KL(q || p(z|x)), and the sampled ELBO averages to it."""
    torch.manual_seed(0)
    model = LinearGaussianModel(data_dim=5, latent_dim=3, posterior_error=0.1)
    x = model.sample(64)
    mean, cov = model.exact_posterior(x)
    z = torch.randn(64, 3)
    posterior = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    with torch.no_grad():
        log_joint = model.decode(z).log_prob(x) + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    assert torch.allclose(log_joint - posterior.log_prob(z), model.exact_log_px(x), atol=1e-3)
    q = model.encode(x)
    q_full = torch.distributions.MultivariateNormal(q.mu.detach(), covariance_matrix=torch.diag_embed(q.sigma.detach() ** 2))
    gap = torch.distributions.kl_divergence(q_full, posterior)
    assert torch.allclose(model.exact_log_px(x) - model.exact_elbo(x), gap, atol=1e-3)
    with torch.no_grad():
        sampled = torch.stack([elbo(model(x), model.num_dims).elbo for _ in range(400)]).mean(0)
    assert abs((sampled - model.exact_elbo(x)).mean()) < 0.05


def test_the_best_diagonal_encoder_leaves_a_small_gap():
    """With posterior_error=0 the encoder is the best diagonal Gaussian (variances 1 / Lambda_ii):
    its gap is 0.5 (sum log Lambda_ii - log det Lambda) > 0, and any other diagonal variance is worse."""
    model = LinearGaussianModel(posterior_error=0.0)
    x = model.sample(16)
    precision = model.posterior_precision()
    expected = 0.5 * (torch.log(precision.diagonal()).sum() - torch.logdet(precision))
    gap = model.exact_log_px(x) - model.exact_elbo(x)
    assert 0 < expected < 0.01 and torch.allclose(gap, expected.expand(16), atol=1e-4)
    with torch.no_grad():
        model.q_log_sigma.add_(0.1)
    assert (model.exact_log_px(x) - model.exact_elbo(x) > gap + 1e-3).all()


def test_iw_bound_chunking_does_not_change_the_result():
    model = LinearGaussianModel()
    x = model.sample(8)
    torch.manual_seed(1)
    a = importance_weighted_bound(model, x, 12, chunk_size=12)
    torch.manual_seed(1)
    b = importance_weighted_bound(model, x, 12, chunk_size=5)
    assert a.shape == (8,) and torch.isfinite(b).all()
    # Different chunking draws different samples, but both estimate the same bound closely.
    assert (a - b).abs().mean() < 0.5
    with pytest.raises(ValueError, match="k >= 1"):
        importance_weighted_bound(model, x, 0)
