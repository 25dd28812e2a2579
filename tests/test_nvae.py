"""The NVAE model, its presets and BN readjustment (Chapters 3-4)."""
import math

import pytest
import torch
from torch import nn

import hvae_lib.models.presets.nvae  # noqa: F401  (registers the NVAE presets)
from hvae_lib.config import override
from hvae_lib.data.contract import dataset_info
from hvae_lib.layers.bn_readjust import cached_temperatures, readjusted_bn, sample_with_readjusted_bn
from hvae_lib.layers.norms import WNConv2d
from hvae_lib.models.nvae import NVAE
from hvae_lib.models.nvae_parts import groups_per_scale
from hvae_lib.models.presets import get_preset
from hvae_lib.probability.residual_normal import NVAENormal, residual_kl
from hvae_lib.training.engine import Trainer

SMALL = dict(num_latent_scales=2, num_groups_per_scale=2, ada_groups=True, num_latent_per_group=4,
             num_channels_enc=4, num_channels_dec=4, num_preprocess_cells=1, num_postprocess_cells=1, num_mix=3)


def small_nvae(image_shape=(3, 16, 16), bits=8, likelihood="logistic_mixture", **changes):
    torch.manual_seed(0)
    return NVAE(image_shape, bits, likelihood, **{**SMALL, **changes})


def images(n=4, shape=(3, 16, 16), bits=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    levels = 2**bits - 1
    return torch.randint(0, levels + 1, (n, *shape), generator=g).float() / levels


def test_groups_per_scale_equal_and_adaptive():
    assert groups_per_scale(2, 10, adaptive=True) == [10, 5]  # the official MNIST model
    assert groups_per_scale(3, 20, adaptive=True) == [20, 10, 5]  # CelebA-64
    assert groups_per_scale(5, 16, adaptive=True, minimum=4) == [16, 8, 4, 4, 4]
    assert groups_per_scale(1, 30, adaptive=False) == [30]


def test_forward_returns_the_model_contract():
    model = small_nvae()
    out = model(images())
    assert model.groups_per_scale == [2, 1] and model.num_groups == 3
    assert out.log_px_z.shape == (4,) and out.kl_per_group.shape == (4, 3) and out.log_q_minus_log_p.shape == (4,)
    # Adaptive groups: 2 at the fine 8x8 scale, 1 at the coarse 4x4 scale, listed top (coarse) first.
    assert out.extras["group_sizes"].tolist() == [4 * 16, 4 * 64, 4 * 64]
    assert out.extras["kl_balance_alpha"].tolist() == [1.0, 2.0, 2.0]  # official: 4^scale / groups at that scale
    assert [tuple(m.shape) for m in out.extras["posterior_means"]] == [(4, 4, 4, 4), (4, 4, 8, 8), (4, 4, 8, 8)]
    assert torch.all(out.kl_per_group >= 0) and torch.isfinite(out.log_px_z).all()


def test_kl_is_known_in_closed_form_when_the_encoder_outputs_nothing():
    """Zero posterior convs: q equals the prior for every residual group (KL 0), and the top group's
    q is N(0, 1.01^2) (sigma = exp(0) + 0.01, the official sigma floor) against our top prior N(0, 1),
    the paper's: 0.5 (1.01^2 - 1 - 2 log 1.01) per element. (The official code builds its top prior
    with the same floor, N(0, 1.01^2), so there this KL would be 0.)"""
    model = small_nvae()
    with torch.no_grad():
        for group in model.groups:
            group.posterior.weight.zero_()
            group.posterior.bias.zero_()
    top_prior = NVAENormal.standard((2, 3))
    assert torch.equal(top_prior.mu, torch.zeros(2, 3)) and torch.equal(top_prior.sigma, torch.ones(2, 3))
    out = model(images())
    per_element = 0.5 * (1.01**2 - 1 - 2 * math.log(1.01))
    torch.testing.assert_close(out.kl_per_group[:, 0], torch.full((4,), 64 * per_element))
    assert out.kl_per_group[:, 1:].abs().max() < 1e-5


def test_without_the_residual_normal_q_is_the_encoders_alone_and_kl_function_is_used():
    """residual_normal=False: zero posterior convs give q = N(0, 1.01^2) in every group, so each
    group's KL is that of N(0, 1.01^2) against its own prior, not 0; kl_function computes the KL."""
    x = images()
    model = small_nvae(residual_normal=False)
    with torch.no_grad():
        for group in model.groups:
            group.posterior.weight.zero_()
            group.posterior.bias.zero_()
    priors = []
    hooks = [g.prior.register_forward_hook(lambda m, i, out: priors.append(out)) for g in model.groups if g.prior is not None]
    torch.manual_seed(0)
    out = model(x)
    for h in hooks:
        h.remove()
    for l, prior in zip((1, 2), priors):
        q = NVAENormal.from_params(torch.zeros_like(prior))  # N(0, 1.01^2), (B, Z, h, w)
        expected = q.to_diagonal().kl(NVAENormal.from_params(prior).to_diagonal()).flatten(1).sum(1)  # (B,)
        torch.testing.assert_close(out.kl_per_group[:, l], expected, rtol=1e-4, atol=1e-4)
        assert expected.min() > 0.1
    model.kl_function = lambda dmu, dsigma, sigma_p: 2 * residual_kl(dmu, dsigma, sigma_p)
    torch.manual_seed(0)
    torch.testing.assert_close(model(x).kl_per_group, 2 * out.kl_per_group)
    config = override(get_preset("nvae_tiny"), {"residual_normal": False})
    assert config.model.residual_normal is False and config.model.build((1, 16, 16), 8, "logistic_mixture").residual_normal is False
    assert get_preset("nvae_tiny").model.residual_normal is True


def test_bn_momentum_is_005_everywhere_and_every_conv_is_regularised():
    model = small_nvae()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(bn.momentum == 0.05 for bn in bns)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert model.spectral.num_convs == len(convs)
    assert sum(isinstance(c, WNConv2d) for c in convs) > len(convs) / 2


def test_padding_to_the_canvas_and_cropping_the_likelihood():
    model = small_nvae((1, 28, 28), num_preprocess_blocks=2, num_postprocess_blocks=2)  # factor 8: 28 -> 32
    assert model.canvas == (32, 32)
    out = model(images(shape=(1, 28, 28)))
    assert out.likelihood.logit_probs.shape[-2:] == (28, 28)  # log p(x|z) covers the 784 real pixels
    assert model.sample(2).shape == (2, 1, 28, 28)
    assert small_nvae((1, 28, 28)).canvas == (28, 28)  # factor 4 divides 28: no padding needed


def test_wrong_input_shape_is_a_one_line_error():
    with pytest.raises(ValueError) as err:
        small_nvae()(torch.rand(2, 1, 16, 16))
    assert "(B, 3, 16, 16)" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="num_postprocess_blocks"):
        small_nvae(num_postprocess_blocks=2)


def test_temperature_reaches_every_prior_and_the_likelihood():
    model = small_nvae((1, 16, 16), bits=1, likelihood="bernoulli").eval()
    with torch.no_grad():
        torch.manual_seed(1)
        a = model.top_down(3, temperature=0.0)[0]
        torch.manual_seed(2)
        b = model.top_down(3, temperature=0.0)[0]
        c = model.top_down(3, temperature=1.0)[0]
        assert torch.equal(a, b) and not torch.allclose(a, c)  # t = 0: every z is its prior mean
        cold, warm = model.head(a, temperature=0.5), model.head(a)
        torch.testing.assert_close(cold.logits, 2 * warm.logits)
    x = model.sample(5, temperature=0.7)
    assert x.shape == (5, 1, 16, 16) and set(x.unique().tolist()) <= {0.0, 1.0}


def test_sample_conditional_uses_the_posterior_for_the_top_groups():
    model = small_nvae().eval()
    x = images(2)
    with torch.no_grad():
        features = model.encode(x)
        torch.manual_seed(3)
        fixed = model.top_down(2, features, num_posterior=3, temperature=0.0)[0]
        torch.manual_seed(4)
        again = model.top_down(2, features, num_posterior=3, temperature=0.0)[0]
    assert not torch.equal(fixed, again)  # posterior groups keep their own noise whatever t is
    for k in (0, 1, 3):
        assert model.sample_conditional(x, k, temperature=0.8).shape == x.shape
    with pytest.raises(ValueError, match="between 0 and 3"):
        model.sample_conditional(x, 4)


def test_flows_turn_the_kl_into_log_q_minus_log_p():
    model = small_nvae(num_flows=1)
    assert sum(len(g.flows) for g in model.groups) == 3
    out = model(images())
    torch.testing.assert_close(out.kl_per_group.sum(1), out.log_q_minus_log_p)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) > count(small_nvae())
    # The official flow cells ignore the encoder feature; flow_context=True feeds it in (IAF-style).
    with_context = small_nvae(num_flows=1, flow_context=True)
    assert count(with_context) > count(model)
    out = with_context(images())
    torch.testing.assert_close(out.kl_per_group.sum(1), out.log_q_minus_log_p)


def test_regularization_is_lambda_times_spectral_plus_bn_and_anneals():
    model = small_nvae(weight_decay_norm=0.1)
    model.regularization(0)  # first call: the long power iteration
    spectral = model.spectral.singular_values(update=False).sum()
    bn = sum(m.weight.abs().max() for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    torch.testing.assert_close(model.regularization(1), 0.1 * (spectral + bn), rtol=1e-3, atol=1e-4)
    annealed = small_nvae(weight_decay_norm=1e-2, weight_decay_norm_init=1.0, weight_decay_norm_anneal_steps=100)
    assert annealed.norm_coefficient(0) == pytest.approx(1.0, rel=1e-3)
    assert annealed.norm_coefficient(50) == pytest.approx(math.exp(0.5 * math.log(1e-2)), rel=1e-2)
    assert annealed.norm_coefficient(200) == pytest.approx(1e-2)


def test_spectral_buffers_travel_with_the_model_state():
    model = small_nvae()
    model.regularization(0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(k.startswith("spectral.u_") for k in state)
    expected = model.regularization(1)
    reloaded = small_nvae()
    reloaded.load_state_dict(state)
    torch.testing.assert_close(reloaded.regularization(1), expected, rtol=0, atol=0)


def test_gradient_checkpointing_gives_identical_gradients_and_bn_statistics():
    x = images(4)
    grads, stats = [], []
    for on in (False, True):
        model = small_nvae()
        model.grad_checkpointing = on
        torch.manual_seed(5)
        out = model(x)
        (out.kl_per_group.sum(1) - out.log_px_z).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        stats.append([b.clone() for b in model.buffers()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(*stats):  # recomputation must not count a batch twice
        torch.testing.assert_close(a, b)


def test_trains_under_the_engine_in_bf16_with_checkpointing(tmp_path):
    config = override(get_preset("nvae_tiny"), {"precision": "bf16", "grad_checkpointing": True, "max_steps": 4,
                                                 "log_every": 2, "eval_every": 0, "checkpoint_every": 0,
                                                 "quiet": True, "test_limit": 32})
    final = Trainer(config, tmp_path, resume=False).fit()
    assert math.isfinite(final["test_neg_elbo_nats"])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert all(math.isfinite(__import__("json").loads(line).get("loss", 0.0)) for line in lines)


def test_bn_readjustment_is_cached_per_temperature_and_restores_the_model():
    model = small_nvae()
    model.train()
    model(images(8))  # some training-time statistics
    own = [b.clone() for b in model.buffers()]
    calls = []
    original = model.sample
    model.sample = lambda n, t=1.0: calls.append(t) or original(n, t)

    with readjusted_bn(model, temperature=0.6, num_passes=3, batch_size=4):
        assert not model.training
        readjusted = [m.running_var.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(calls) == 3
    assert any(not torch.allclose(r, m.running_var) for r, m in
               zip(readjusted, [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]))
    assert model.training and all(torch.equal(a, b) for a, b in zip(own, model.buffers()))

    sample_with_readjusted_bn(model, 2, temperature=0.6, num_passes=3, batch_size=4)
    assert len(calls) == 3 + 1  # cached: only the final sampling call ran
    assert cached_temperatures(model) == [0.6]
    sample_with_readjusted_bn(model, 2, temperature=0.9, num_passes=3, batch_size=4)
    assert len(calls) == 4 + 3 + 1  # a new temperature re-estimates
    with torch.no_grad():
        next(model.parameters()).add_(0.01)  # training moved on: the cache is stale
    assert cached_temperatures(model) == []
    sample_with_readjusted_bn(model, 2, temperature=0.6, num_passes=3, batch_size=4)
    assert len(calls) == 8 + 3 + 1


PAPER_COUNTS = {  # (NVlabs' model built from the README's command, the paper's figure where it gives one)
    "nvae_mnist": (33_363_134, 33.4e6), "nvae_cifar10": (130_852_480, 130.9e6), "nvae_celeba64": (153_281_364, None),
    "nvae_imagenet32": (268_509_444, 268e6), "nvae_celebahq256": (330_798_664, None), "nvae_ffhq256": (330_798_664, None),
}


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_paper_presets_have_the_official_parameter_counts(name):
    """Exact counts from instantiating NVlabs/NVAE's AutoEncoder with the README's command lines
    (CIFAR-10 includes its flow cells: 1,636,800 parameters); the paper reports 33.4M, 130.9M and
    (ImageNet-32) 268M."""
    config = get_preset(name)
    info = dataset_info(get_preset(name).data.name)  # MNIST: 28x28, padded to the 32x32 canvas inside
    shape, bits, kind = info.image_shape, info.bits, info.likelihood
    with torch.device("meta"):
        model = config.model.build(shape, bits, kind)
    count = sum(p.numel() for p in model.parameters())
    official, paper = PAPER_COUNTS[name]
    assert paper is None or abs(count - paper) / paper < 0.02
    assert count == official


def test_a_group_function_replaces_the_posterior_group_step():
    """NVAE.group_function (Chapter 3's exercise) computes every posterior group: set to the library's
    posterior_group it changes nothing, bit for bit; a model with flows refuses one."""
    from hvae_lib.models.nvae_parts import posterior_group

    model = get_preset("nvae_tiny").model.build((1, 16, 16), 8, "logistic_mixture")
    x = torch.rand(4, 1, 16, 16)
    torch.manual_seed(3)
    plain = model(x)
    calls = []

    def recorded(group, s, enc):
        calls.append(group)
        return posterior_group(group, s, enc)

    model.group_function = recorded
    torch.manual_seed(3)
    hooked = model(x)
    assert len(calls) == model.num_groups
    assert torch.equal(plain.log_px_z, hooked.log_px_z) and torch.equal(plain.kl_per_group, hooked.kl_per_group)
    assert torch.equal(plain.log_q_minus_log_p, hooked.log_q_minus_log_p)
    with_flows = override(get_preset("nvae_tiny"), ["num_flows=1"]).model.build((1, 16, 16), 8, "logistic_mixture")
    with_flows.group_function = recorded
    with pytest.raises(ValueError, match="group_function"):
        with_flows(x)
