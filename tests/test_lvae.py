"""The Chapter 2 Ladder VAE: the precision-weighted merge, KLs that add up, the one-group reduction
to the Chapter 1 VAE, training under the engine, shapes and clear errors."""
import math

import pytest
import torch

import hvae_lib.models.presets.lvae  # noqa: F401  (registers the lvae presets)
from hvae_lib.config import from_dict, override, to_dict
from hvae_lib.models.lvae import LadderVAE, precision_weighted_merge
from hvae_lib.models.presets import get_preset
from hvae_lib.probability.gaussian import DiagonalGaussian, sum_except_batch
from hvae_lib.probability.objectives import elbo
from hvae_lib.training.engine import Trainer


def random_gaussian(shape, seed, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    return DiagonalGaussian(torch.randn(shape, generator=g), torch.randn(shape, generator=g) * spread)


def small_lvae(merge="precision", groups=(1, 2), shape=(1, 16, 16), **kwargs):
    torch.manual_seed(0)
    return LadderVAE(shape, 8, "logistic_mixture", groups_per_scale=groups, z_channels=2, channels=8,
                     initial_downsamples=1, merge=merge, **kwargs)


def test_precision_merge_matches_the_closed_form_product():
    bu, td = random_gaussian((6, 5), 0), random_gaussian((6, 5), 1)
    q = precision_weighted_merge(bu, td)
    var_l, var_t = bu.sigma**2, td.sigma**2
    var = 1 / (1 / var_l + 1 / var_t)
    assert torch.allclose(q.sigma**2, var, rtol=1e-5)
    assert torch.allclose(q.mu, (bu.mu / var_l + td.mu / var_t) * var, rtol=1e-4, atol=1e-5)
    assert (q.sigma <= torch.minimum(bu.sigma, td.sigma) + 1e-6).all()


def test_precision_merge_is_the_normalised_product_of_densities():
    """log p1(z) + log p2(z) - log N(z; mu, sigma) is the same at every z: the log normaliser,
    log N(mu_1; mu_2, sigma_1^2 + sigma_2^2)."""
    bu, td = random_gaussian((4, 3), 2), random_gaussian((4, 3), 3)
    q = precision_weighted_merge(bu, td)
    zs = torch.linspace(-4, 4, 9).view(9, 1, 1) * 2 + q.mu  # (9, 4, 3) points around the merged mean
    gap = bu.log_prob(zs) + td.log_prob(zs) - q.log_prob(zs)  # (9, 4, 3)
    assert gap.std(dim=0).max() < 1e-4
    normaliser = DiagonalGaussian(td.mu, 0.5 * torch.log(bu.sigma**2 + td.sigma**2)).log_prob(bu.mu)
    assert torch.allclose(gap[0], normaliser, atol=1e-4)


def test_precision_merge_is_stable_at_extreme_sigmas():
    bu = DiagonalGaussian(torch.tensor([1.0, 1.0]), torch.tensor([-40.0, 40.0]))
    td = DiagonalGaussian(torch.tensor([-1.0, -1.0]), torch.tensor([40.0, -40.0]))
    q = precision_weighted_merge(bu, td)
    assert torch.isfinite(q.mu).all() and torch.isfinite(q.log_sigma).all()
    assert torch.allclose(q.mu, torch.tensor([1.0, -1.0])) and torch.allclose(q.log_sigma, torch.tensor([-40.0, -40.0]))


def test_merge_fn_replaces_the_precision_merge_and_is_not_saved():
    """Chapter 2 trains with the student's merge: model.merge_fn is what the precision merge calls."""
    import copy

    model = small_lvae("precision")
    x = torch.randint(0, 256, (4, 1, 16, 16)) / 255
    torch.manual_seed(2)
    reference = model(x)
    calls = []

    def mine(bottom_up, top_down):
        calls.append(bottom_up.mu.shape)
        return precision_weighted_merge(bottom_up, top_down)

    model.merge_fn = mine
    torch.manual_seed(2)
    assert torch.equal(model(x).log_px_z, reference.log_px_z)
    assert len(calls) == model.num_groups - 1  # once per group below the top
    assert copy.deepcopy(model).merge_fn is mine and "merge_fn" not in str(model.state_dict().keys())
    model.merge_fn = lambda bottom_up, top_down: top_down  # posterior = prior: the lower groups carry nothing
    assert (model(x).kl_per_group[:, 1:] == 0).all()
    assert LadderVAE.merge_fn is not model.merge_fn  # only this instance changed
    learned = small_lvae("learned")
    learned.merge_fn = lambda *_: (_ for _ in ()).throw(AssertionError("the learned merge must not call merge_fn"))
    learned(x)


def test_initialisation_zero_priors_and_scaled_residual_branches():
    """The docstring's three promises: p(z_l | z_<l) = N(0, I) and small KLs at the start, and
    residual branches scaled by 1/sqrt(N), N = 2 * L * blocks_per_group."""
    model = small_lvae("learned", groups=(1, 2), blocks_per_group=2)
    for prior in model.priors:
        p = DiagonalGaussian.from_params(prior(torch.randn(3, 8, 4, 4)))
        assert torch.equal(p.mu, torch.zeros_like(p.mu)) and torch.equal(p.log_sigma, torch.zeros_like(p.log_sigma))
    x = torch.randint(0, 256, (16, 1, 16, 16)) / 255
    with torch.no_grad():
        assert model(x).kl_per_group.mean(0).sum() < 2.0
    from hvae_lib.models.lvae import ResBlock

    scale = (2 * model.num_groups * 2) ** -0.5
    torch.manual_seed(7)
    plain = ResBlock(8, 1.0)
    torch.manual_seed(7)
    scaled = ResBlock(8, scale)
    assert torch.allclose(scaled.conv2.weight, plain.conv2.weight * scale) and torch.equal(scaled.conv1.weight, plain.conv1.weight)
    assert all(len(blocks) == 2 for blocks in model.td_blocks)
    assert all(not block.conv1.bias.any() and not block.conv2.bias.any() for block in model.td_blocks[0])


def test_scaled_residual_blocks_add_a_variance_that_does_not_grow_with_depth():
    """Chapter 2's claim: with 1/sqrt(N) and zero biases, N blocks add about the same variance to a
    unit-variance stream at N = 24 as at N = 96 (with PyTorch's default biases it grew 2x from 24 to
    96); unscaled, it grows faster than N."""
    from hvae_lib.models.lvae import ResBlock

    x = torch.randn(16, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    added = {}
    for n in (24, 96):
        for scaled in (False, True):
            torch.manual_seed(1)
            stack = torch.nn.Sequential(*[ResBlock(8, n**-0.5 if scaled else 1.0) for _ in range(n)])
            with torch.no_grad():
                added[n, scaled] = (stack(x).var() - x.var()).item()
    assert 0.67 < added[96, True] / added[24, True] < 1.5, added
    assert added[96, False] > 4 * added[24, False], added


@pytest.mark.parametrize("merge", ["precision", "learned"])
def test_analytic_kls_sum_to_the_monte_carlo_log_ratio(merge):
    """E_q[log q(z|x) - log p(z)] = sum over groups of E[KL_l]: averaged over many posterior samples
    of the same images, the difference is zero within the Monte Carlo error."""
    model = small_lvae(merge)
    with torch.no_grad():
        for head in [*model.priors, *model.bu_heads, *model.merges]:  # away from q = p of initialisation
            torch.nn.init.normal_(head.weight, std=0.05)
            torch.nn.init.zeros_(head.bias)
        x = (torch.randint(0, 256, (2, 1, 16, 16)) / 255).repeat(1024, 1, 1, 1)  # (2048, 1, 16, 16)
        torch.manual_seed(1)
        out = model(x)
    kl_total = out.kl_per_group.sum(dim=1)  # (B,)
    diff = out.log_q_minus_log_p - kl_total
    stderr = diff.std() / math.sqrt(len(diff))
    assert kl_total.mean() > 20  # a KL large enough for the comparison to mean something
    assert abs(diff.mean()) < 4 * stderr + 1e-3 * kl_total.mean(), (diff.mean(), stderr)
    assert out.kl_per_group.shape == (2048, 3) and (out.kl_per_group >= 0).all()


def test_one_group_lvae_is_the_chapter1_vae():
    """With one group the prior is N(0, I), the posterior is the bottom-up estimate, and the ELBO is
    log p(x|z) - KL(q || N(0, I)) computed here from the model's parts (Chapter 1's formula)."""
    model = small_lvae(groups=(1,))
    x = torch.randint(0, 256, (5, 1, 16, 16)) / 255
    torch.manual_seed(3)
    out = model(x)
    q = model.estimate(0, model.bottom_up(x)[0])  # (5, 2, 8, 8)
    p = DiagonalGaussian.standard(q.mu.shape)
    torch.manual_seed(3)
    z = q.rsample()
    decoded, _, _, _ = model.top_down(5, None, 0, latents=[z])
    expected = model.likelihood(decoded).log_prob(x) - sum_except_batch(q.kl(p))
    assert torch.allclose(elbo(out, model.num_dims).elbo, expected, atol=1e-3)
    assert torch.allclose(out.kl_per_group[:, 0], sum_except_batch(q.kl(p)), atol=1e-4)
    assert torch.allclose(out.log_q_minus_log_p, sum_except_batch(q.log_prob(z) - p.log_prob(z)), atol=1e-3)
    assert torch.equal(out.extras["posterior_means"][0], q.mu)
    assert out.extras["group_sizes"].tolist() == [2 * 8 * 8]
    learned = small_lvae("learned", groups=(1,))  # with nothing to merge, the two merges are one model
    learned.load_state_dict(model.state_dict())
    torch.manual_seed(3)
    assert torch.equal(learned(x).log_px_z, out.log_px_z)


@pytest.mark.parametrize("merge", ["precision", "learned"])
def test_both_merges_train_under_the_engine_in_bf16_with_checkpointing(merge, tmp_path):
    # A small batch: CPUs without native bf16 run bf16 convolutions on a slow fallback path.
    config = override(get_preset("lvae_tiny"), ["merge=" + merge, "precision=bf16", "grad_checkpointing=true",
                                                "batch_size=8", "quiet=true"])
    trainer = Trainer(config, tmp_path, resume=False)
    assert trainer.model.grad_checkpointing and trainer.model.merge == merge
    records = [trainer.train_step() for _ in range(3)]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and not r["skipped"] for r in records)
    assert records[0]["kl_per_group"].shape == (4,)


@pytest.mark.parametrize("merge", ["precision", "learned"])
def test_grad_checkpointing_gives_identical_gradients(merge):
    model = small_lvae(merge)
    x = torch.randint(0, 256, (4, 1, 16, 16)) / 255
    grads = []
    for flag in (False, True):
        model.grad_checkpointing = flag
        model.zero_grad()
        torch.manual_seed(1)
        elbo(model(x), model.num_dims).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_fashion_mnist_shape_is_padded_and_cropped_back():
    model = LadderVAE((1, 28, 28), 8, groups_per_scale=(1, 1, 1), z_channels=2, channels=8, initial_downsamples=2)
    assert model.canvas == (32, 32) and model.num_dims == 784
    assert [s[1:] for s in model.group_shapes] == [(2, 2), (4, 4), (8, 8)]
    out = model(torch.randint(0, 256, (3, 1, 28, 28)) / 255)
    assert out.log_px_z.shape == (3,) and out.kl_per_group.shape == (3, 3)
    assert out.likelihood.mean().shape == (3, 1, 28, 28)
    assert (elbo(out, model.num_dims).elbo < 0).all()
    samples = model.sample(2)
    assert samples.shape == (2, 1, 28, 28) and 0 <= samples.min() and samples.max() <= 1


def test_wrong_input_and_config_are_one_clear_sentence():
    model = small_lvae()
    with pytest.raises(ValueError) as err:
        model(torch.rand(2, 3, 32, 32))
    message = str(err.value)
    assert "(B, 1, 16, 16)" in message and "(2, 3, 32, 32)" in message and "\n" not in message
    with pytest.raises(ValueError, match="between 0 and 3"):
        model.sample_conditional(torch.rand(2, 1, 16, 16), 4)
    with pytest.raises(ValueError, match="merge must be one of precision, learned"):
        small_lvae("average")
    with pytest.raises(ValueError, match="groups_per_scale"):
        small_lvae(groups=(2, 0))


def test_temperature_and_conditional_sampling():
    model = small_lvae()
    with torch.no_grad():
        for prior in model.priors:
            torch.nn.init.normal_(prior.weight, std=0.2)
        features, _, _, _ = model.top_down(3, None, 0, temperature=0.0)  # every z at its prior mean
        assert torch.equal(features[0], features[1]) and torch.equal(features[0], features[2])
        x = torch.randint(0, 256, (3, 1, 16, 16)) / 255
        torch.manual_seed(5)
        full = model.top_down(3, model.bottom_up(x), 3, temperature=0.0)[0]
        torch.manual_seed(5)
        assert torch.equal(full, model.top_down(3, model.bottom_up(x), 3, temperature=1.0)[0])  # no prior draws
    for k in range(4):
        assert model.sample_conditional(x, k, 0.5).shape == x.shape


def test_presets_and_overrides_build_the_model_they_describe():
    config = override(get_preset("lvae_tiny"), ["groups_per_scale=1,2", "merge=learned"])
    assert config.model.groups_per_scale == (1, 2)
    assert from_dict(to_dict(config)) == config  # the tuple survives a checkpoint's plain dict
    model = config.model.build((3, 16, 16), 8, "logistic_mixture")
    assert model.num_groups == 3 and len(model.merges) == 2
    fashion = get_preset("lvae_fashion")
    assert fashion.optim == get_preset("vae_fashion").optim and fashion.data == get_preset("vae_fashion").data
    for name in ("lvae_fashion", "lvae_fashion_learned"):  # within 20% of vae_fashion's 107,476 parameters
        model = get_preset(name).model.build((1, 28, 28), 8, "logistic_mixture")
        assert 100_000 < sum(p.numel() for p in model.parameters()) < 129_000
    assert get_preset("lvae_fashion_learned").model.merge == "learned"
    mnist = get_preset("lvae_mnist").model.build((1, 32, 32), 1, "bernoulli")
    assert mnist.num_groups == 12 and [s[1] for s in mnist.group_shapes] == [2] * 4 + [4] * 4 + [8] * 4
