"""What each resolution decides (Chapter 7, the VDVAE paper's Fig. 4): decoding with the posterior down to
a resolution and the prior below, and the KL per resolution."""
import pytest
import torch

from hvae_lib.analysis.latents import decode_by_level, latent_resolutions
from hvae_lib.analysis.resolution_study import coarse_and_fine_error, distance_to_image, kl_by_resolution, spread_across_draws
from hvae_lib.models.vae import ConvVAE
from hvae_lib.models.vdvae import VDVAE

# latent layers: 1x1 (layer 0), 4x4 (layers 1, 2), 8x8 (3, 4), 16x16 (5, 6)
SMALL = dict(width=16, zdim=4, num_mixtures=3, enc_blocks="16x1,16d2,8x2,8d2,4x1,4d4,1x1",
             dec_blocks="1x1,4m1,4x1,8m4,8x1,16m8,16x1")
LAYERS_AT = {1: [0], 4: [1, 2], 8: [3, 4], 16: [5, 6]}


def small_vdvae(seed=0, **changes):
    torch.manual_seed(seed)
    return VDVAE((1, 16, 16), 8, "logistic_mixture", **{**SMALL, **changes}).eval()


def images(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 16, 16), generator=g).float() / 255


def test_no_posterior_layer_is_plain_sampling_and_every_layer_is_the_reconstruction():
    model, x = small_vdvae(), images()
    cuts, rows = decode_by_level(model, x, draws=2, seed=7, temperature=0.8, pixels="sample")
    assert cuts == [0, 1, 4, 8, 16] and rows.shape == (5, 2, 3, 1, 16, 16)
    for j in range(2):  # row 0, draw j: model.sample after seed 7 + j, with the same temperature
        torch.manual_seed(7 + j)
        assert torch.equal(rows[0, j], model.sample(3, temperature=0.8))
    for k, r in enumerate(cuts[1:], start=1):  # row k: the model's own conditional sampling, same seed
        torch.manual_seed(7)
        assert torch.equal(rows[k, 0], model.sample_conditional(x, 1 + max(LAYERS_AT[r]), temperature=0.8))
    _, means = decode_by_level(model, x, draws=2, seed=7, pixels="mean")
    torch.manual_seed(7)
    assert torch.equal(means[-1, 0], model.reconstruct(x))  # posterior everywhere: the reconstruction path


def test_only_the_rows_that_read_the_image_depend_on_it_and_draws_differ():
    model = small_vdvae()
    _, a = decode_by_level(model, images(seed=0), draws=3, seed=0)
    _, b = decode_by_level(model, images(seed=1), draws=3, seed=0)
    assert torch.equal(a[0], b[0])  # the prior alone never sees x
    for k in range(1, a.shape[0]):
        assert not torch.allclose(a[k], b[k])  # one posterior layer is enough to see it
    assert not torch.allclose(a[:, 0], a[:, 1])  # seeds 0 and 1 draw different latents


def test_the_prior_at_temperature_zero_has_no_spread_and_the_global_random_state_is_kept():
    model, x = small_vdvae(), images()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    _, rows = decode_by_level(model, x, draws=4, temperature=0.0)
    assert torch.equal(torch.get_rng_state(), before)
    spread = spread_across_draws(rows)  # (5,)
    assert spread[0] == 0  # z = prior mean at t = 0 in every layer: the same image each draw
    assert torch.all(spread[1:] > 0)  # the posterior layers still draw (the posterior is not tempered)
    manual = ((rows - rows.mean(1, keepdim=True)) ** 2).sum(1) / 3  # unbiased variance over the 4 draws
    assert torch.allclose(spread, manual.flatten(1).mean(1))
    assert torch.allclose(distance_to_image(rows, x), ((rows - x) ** 2).flatten(1).mean(1))


def test_the_coarse_and_fine_errors_split_the_squared_error_exactly():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 16, 16, generator=g)
    rows = torch.rand(4, 2, 3, 1, 16, 16, generator=g)
    coarse, fine = coarse_and_fine_error(rows, x, factor=4)
    assert torch.allclose(coarse + fine, distance_to_image(rows, x), rtol=1e-5)  # orthogonal parts
    blocks = torch.rand(4, 2, 3, 1, 4, 4, generator=g).repeat_interleave(4, -1).repeat_interleave(4, -2)
    coarse, fine = coarse_and_fine_error(x + blocks, x, factor=4)  # off by a constant in every 4x4 block
    assert torch.allclose(fine, torch.zeros(4), atol=1e-10) and torch.all(coarse > 0.1)
    checker = (torch.arange(16)[:, None] + torch.arange(16)) % 2 * 2.0 - 1  # zero mean in every 4x4 block
    coarse, fine = coarse_and_fine_error(x + 0.1 * checker.expand(4, 2, 3, 1, 16, 16), x, factor=4)
    assert torch.allclose(coarse, torch.zeros(4), atol=1e-10) and torch.allclose(fine, torch.full((4,), 0.01))
    with pytest.raises(ValueError, match="positive divisor of the image size 16x16"):
        coarse_and_fine_error(rows, x, factor=3)


def test_kl_per_resolution_adds_the_layers_at_that_resolution():
    model, x = small_vdvae(), images(5)
    torch.manual_seed(3)
    per_layer = model(x).kl_per_group.double().mean(0)  # (7,)
    torch.manual_seed(3)
    levels, nats, shares = kl_by_resolution(model, x)
    assert levels == [1, 4, 8, 16] and latent_resolutions(model) == [1, 4, 4, 8, 8, 16, 16]
    expected = torch.stack([per_layer[LAYERS_AT[r]].sum() for r in levels]).float()
    assert torch.allclose(nats, expected, rtol=1e-5)
    assert torch.allclose(nats.sum(), per_layer.sum().float(), rtol=1e-5)  # the total KL
    assert abs(shares.sum().item() - 1) < 1e-6 and torch.all(shares > 0)


def test_a_model_whose_posterior_is_its_prior_has_no_kl_to_share():
    model = small_vdvae()
    with torch.no_grad():  # at initialisation every prior is N(0, I); zeroing the posterior's output makes q = p
        for block in model.dec_blocks:
            block.posterior.c4.weight.zero_()
    assert torch.equal(model(images()).kl_per_group, torch.zeros(3, 7))
    with pytest.raises(ValueError, match="total KL .* is 0 nats"):
        kl_by_resolution(model, images())


def test_bad_inputs_are_one_sentence_errors():
    model, x = small_vdvae(), images()
    with pytest.raises(ValueError, match="draws must be at least 1"):
        decode_by_level(model, x, draws=0)
    with pytest.raises(ValueError, match="pixels must be one of mean, sample"):
        decode_by_level(model, x, draws=1, pixels="mode")
    with pytest.raises(ValueError, match=r"shape \(B, 1, 16, 16\)"):
        decode_by_level(model, torch.zeros(2, 3, 16, 16), draws=1)
    vae = ConvVAE((1, 16, 16), 8, likelihood="bernoulli")
    with pytest.raises(ValueError, match="has no group_shapes"):
        decode_by_level(vae, x, draws=1)  # one group without a resolution: levels by group instead
    assert decode_by_level(vae, x, draws=1, by="group")[0] == [0, 1]
    with pytest.raises(ValueError, match="has no group_shapes"):
        kl_by_resolution(vae, x)
    backwards = small_vdvae()
    backwards.group_shapes = [(4, r, r) for r in [1, 4, 4, 8, 4, 16, 16]]
    with pytest.raises(ValueError, match="do not rise from the top down"):
        decode_by_level(backwards, x, draws=1)
    assert decode_by_level(backwards, x, draws=1, by="group")[0] == list(range(8))
    with pytest.raises(ValueError, match="at least two draws"):
        spread_across_draws(torch.zeros(5, 1, 3, 1, 16, 16))
    with pytest.raises(ValueError, match="decoded from x"):
        distance_to_image(torch.zeros(5, 2, 3, 1, 16, 16), torch.zeros(3, 1, 8, 8))
