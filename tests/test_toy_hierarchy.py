"""2-D Gaussian hierarchies (Chapter 7, Proposition 2): marginals that integrate to one and match
closed forms, and fits that improve with depth."""
import math

import pytest
import torch

from hvae_lib.models.exact.gaussian_hierarchy import (
    GaussianHierarchy,
    GaussianMixture2D,
    fit_hierarchy,
    grid_axis,
    grid_points,
    marginal_step,
    ring_of_gaussians,
    two_moons,
)


def random_hierarchy(layers, seed=0, scale=0.3):
    torch.manual_seed(seed)
    model = GaussianHierarchy(layers, hidden=16)
    with torch.no_grad():
        for net in model.nets:
            net[-1].weight.normal_(0, scale)  # leave the random-walk start: curved means, varying sigmas
            net[-1].bias[:2].normal_(0, 0.3)
    return model


def test_grid_marginal_of_every_layer_integrates_to_one():
    model = random_hierarchy(4)
    axis = grid_axis(limit=8.0, size=96)
    h = float(axis[1] - axis[0])
    with torch.no_grad():
        masses = [float(d.sum() * h * h) for d in model.grid_marginals(axis)]
    assert all(abs(m - 1) < 2e-3 for m in masses), masses


def test_constant_shift_hierarchy_has_the_closed_form_gaussian_marginal():
    """z_l = z_{l-1} + b_l + sigma_l eps: the marginal of z_L is N(m + sum b, s^2 + sum sigma^2)."""
    model = GaussianHierarchy(3, hidden=8, min_sigma=0.1)
    shifts, sigmas = [torch.tensor([0.5, -0.3]), torch.tensor([-0.2, 0.4])], [0.4, 0.6]
    with torch.no_grad():
        model.top_mu.copy_(torch.tensor([0.2, 0.1]))
        model.top_raw_sigma.fill_(model._raw(0.8))
        for net, b, s in zip(model.nets, shifts, sigmas):
            net[-1].weight.zero_()
            net[-1].bias.copy_(torch.tensor([*b.tolist(), model._raw(s), model._raw(s)]))
    mean = torch.tensor([0.2, 0.1]) + sum(shifts)
    std = math.sqrt(0.8**2 + sum(s**2 for s in sigmas))
    exact = GaussianMixture2D(mean[None], std)
    axis = grid_axis(limit=6.0, size=80)
    x = torch.randn(50, 2) * std + mean
    x_core = 0.5 * torch.randn(20, 2) * std + mean  # Monte Carlo is accurate where the mass is
    with torch.no_grad():
        density = model.grid_marginals(axis)[-1]  # (G, G)
        assert torch.allclose(density.flatten(), exact.log_prob(grid_points(axis)).exp(), atol=1e-4)
        assert torch.allclose(model.log_prob_grid(x, axis), exact.log_prob(x), atol=1e-3)
        torch.manual_seed(0)
        assert torch.allclose(model.log_prob_mc(x_core, k=1_000_000), exact.log_prob(x_core), atol=0.02)
        assert torch.allclose(model.sample(20000).std(0), torch.full((2,), std), atol=0.03)


def test_marginal_step_is_the_double_sum():
    g = torch.Generator().manual_seed(1)
    axis = grid_axis(limit=2.0, size=7)
    density = torch.rand(7, 7, generator=g)
    mu, sigma = torch.randn(7, 7, 2, generator=g), 0.3 + torch.rand(7, 7, 2, generator=g)
    h = float(axis[1] - axis[0])
    points, src_mu, src_sigma = grid_points(axis), mu.reshape(-1, 2), sigma.reshape(-1, 2)
    brute = torch.zeros(49)
    for i in range(49):
        for j in range(49):
            n = torch.exp(-0.5 * ((points[j] - src_mu[i]) / src_sigma[i]) ** 2) / (src_sigma[i] * math.sqrt(2 * math.pi))
            brute[j] += density.flatten()[i] * h * h * n.prod()
    assert torch.allclose(marginal_step(density, axis, mu, sigma).flatten(), brute, rtol=1e-4, atol=1e-7)


def test_grid_and_monte_carlo_marginals_agree():
    model = random_hierarchy(3, seed=2)
    with torch.no_grad():
        x = model.sample(40)  # where the model puts its mass (far in a tail K samples say little)
        grid = model.log_prob_grid(x, grid_axis(limit=7.0, size=96))
        torch.manual_seed(0)
        mc = model.log_prob_mc(x, k=1_000_000)
    assert (grid - mc).abs().max() < 0.03


@pytest.mark.parametrize("target", [ring_of_gaussians(), two_moons()])
def test_targets_are_normalised_densities(target):
    axis = grid_axis(limit=5.0, size=200)
    h = float(axis[1] - axis[0])
    assert abs(float(target.log_prob(grid_points(axis)).exp().sum() * h * h) - 1) < 1e-3
    x = target.sample(5000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5000, 2) and x.abs().max() < 5


def test_fit_recovers_a_single_gaussian_with_one_layer():
    target = GaussianMixture2D(torch.tensor([[1.0, -0.5]]), 0.7)
    model = GaussianHierarchy(1)
    fit_hierarchy(model, target, steps=300, lr=3e-2, seed=0)
    mu, sigma = model.top()
    assert torch.allclose(mu.detach(), torch.tensor([1.0, -0.5]), atol=0.1)
    assert torch.allclose(sigma.detach(), torch.tensor([0.7, 0.7]), atol=0.1)


def test_two_layers_beat_one_on_the_ring():
    target = ring_of_gaussians()
    axis = grid_axis(limit=4.0, size=32)
    x = target.sample(1000, generator=torch.Generator().manual_seed(9))
    nll = {}
    for layers in (1, 2):
        torch.manual_seed(0)
        model = GaussianHierarchy(layers, hidden=16, min_sigma=0.25)
        fit_hierarchy(model, target, steps=150, axis=axis, batch_size=128, lr=1e-2)
        with torch.no_grad():
            nll[layers] = -model.log_prob_grid(x, axis).mean().item()
    assert nll[2] < nll[1] - 0.5, nll


def test_bad_arguments_get_one_clear_sentence():
    with pytest.raises(ValueError, match="num_layers >= 1"):
        GaussianHierarchy(0)
    with pytest.raises(ValueError, match="between 2 and 3"):
        GaussianHierarchy(3).conditional(1, torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        GaussianHierarchy(2).log_prob_grid(torch.zeros(4, 3), grid_axis(size=8))
    with pytest.raises(ValueError, match="G = 8"):
        marginal_step(torch.zeros(8, 8), grid_axis(size=8), torch.zeros(8, 8, 3), torch.ones(8, 8, 2))
