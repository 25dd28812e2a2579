"""Proposition 1's D-layer VAE (Chapter 7): its ELBO is the AR log-likelihood, image by image."""
import math

import pytest
import torch

from hvae_lib.models.exact.binary_ar import BinaryAR, all_binary_vectors
from hvae_lib.models.exact.d_layer_vae import DLayerVAE, bernoulli_kl
from hvae_lib.probability.objectives import elbo, importance_weighted_bound


def random_ar(d, hidden=16, seed=0, scale=1.0, dtype=torch.float32):
    torch.manual_seed(seed)
    ar = BinaryAR(d, hidden=hidden).to(dtype)
    with torch.no_grad():
        for p in ar.parameters():
            p.normal_(0, scale)  # a sharply non-uniform AR model, far from its initialisation
    return ar


def test_bernoulli_kl_matches_the_definition_and_point_masses():
    q = torch.tensor([0.3, 0.9, 0.5])
    logits = torch.tensor([-1.0, 2.0, 0.0])
    p = torch.sigmoid(logits)
    by_hand = q * (q / p).log() + (1 - q) * ((1 - q) / (1 - p)).log()
    assert torch.allclose(bernoulli_kl(q, logits), by_hand, atol=1e-6)
    assert torch.allclose(bernoulli_kl(p, logits), torch.zeros(3), atol=1e-6)  # KL(p || p) = 0
    # a point mass on 1 (on 0) costs -log p (-log (1 - p)), with no NaN from 0 log 0
    assert torch.allclose(bernoulli_kl(torch.ones(3), logits), -p.log(), atol=1e-6)
    assert torch.allclose(bernoulli_kl(torch.zeros(3), logits), -(1 - p).log(), atol=1e-6)


def test_copy_vae_elbo_equals_the_ar_log_likelihood_on_every_image():
    ar = random_ar(9, scale=1.5)
    vae = DLayerVAE(ar)
    x = all_binary_vectors(9)  # all 512 images
    out = vae(x)
    bound = elbo(out, 9).elbo  # Chapter 1's ELBO, unchanged
    assert torch.all(out.log_px_z == 0)  # the decoder returns z = x exactly
    assert (bound - ar.log_prob(x)).abs().max() < 1e-5  # float32
    # each layer's KL is the AR model's cross-entropy at that pixel
    assert (out.kl_per_group + ar.conditional_log_probs(x)).abs().max() < 1e-5
    assert torch.allclose(vae.exact_elbo(x).elbo, bound)
    assert torch.allclose(vae.log_marginal(x), ar.log_prob(x))


def test_copy_vae_equality_holds_to_double_precision():
    ar = random_ar(12, hidden=24, scale=1.5, dtype=torch.float64)
    x = (torch.rand(64, 12) < 0.5).double()
    vae = DLayerVAE(ar)
    terms = vae.exact_elbo(x)
    assert terms.elbo.dtype == torch.float64
    assert (terms.elbo - ar.log_prob(x)).abs().max() < 1e-12


def test_copy_decoder_rejects_any_other_image():
    vae = DLayerVAE(random_ar(4))
    x = torch.tensor([[1.0, 0, 1, 1]])
    px = vae.decode(x)
    assert px.log_prob(x).item() == 0
    assert px.log_prob(torch.tensor([[1.0, 0, 1, 0]])).item() == -math.inf


def test_learned_vae_exact_terms_are_consistent():
    torch.manual_seed(4)
    vae = DLayerVAE(random_ar(6, seed=4), learned=True, hidden=16)
    X = all_binary_vectors(6)
    terms = vae.exact_elbo(X)
    assert torch.all(terms.elbo <= terms.log_px + 1e-5)  # a lower bound on every image
    assert abs(terms.log_px.double().exp().sum().item() - 1) < 1e-5  # p(x) sums to one over all 64 images
    # the layer KLs, computed with matrix products, add up to KL(q || p) computed over all latents
    Z = all_binary_vectors(6)
    lq = vae.posterior_logits(X)
    log_q = -torch.nn.functional.binary_cross_entropy_with_logits(
        lq[:, None, :].expand(-1, len(Z), -1), Z[None].expand(len(X), -1, -1), reduction="none").sum(-1)  # (B, K)
    kl_direct = (log_q.exp() * (log_q - vae.prior.log_prob(Z)[None])).sum(1)
    assert torch.allclose(terms.kl_per_layer.sum(1), kl_direct, atol=1e-4)
    assert torch.all(terms.kl_per_layer > -1e-6)


def test_learned_vae_single_sample_and_importance_weighted_estimates_agree_with_the_exact_terms():
    vae = DLayerVAE(random_ar(6, seed=5, scale=0.5), learned=True, hidden=16)
    x = (torch.rand(8, 6, generator=torch.Generator().manual_seed(5)) < 0.5).float()
    torch.manual_seed(0)
    with torch.no_grad():
        terms = vae.exact_elbo(x)
        mc = torch.stack([elbo(vae(x), 6).elbo for _ in range(4000)]).mean(0)
        iw = importance_weighted_bound(vae, x, k=20000, chunk_size=2000)
    assert torch.all(terms.log_px - terms.elbo > 1.0)  # a loose bound, so the comparison below means something
    assert (mc - terms.elbo).abs().max() < 0.1  # the one-sample ELBO is unbiased
    assert (iw - terms.log_px).abs().max() < 0.06  # the IW bound closes on the exact log p(x)


def test_learned_vae_set_to_copy_recovers_the_ar_likelihood():
    """A learned encoder and decoder with saturated identity weights are the copy in the limit."""
    d, c, k = 5, 10.0, 10.0
    ar = random_ar(d, seed=6)
    vae = DLayerVAE(ar, learned=True, hidden=d)
    with torch.no_grad():
        for net in (vae.encoder, vae.decoder):
            net[0].weight.copy_(c * torch.eye(d))
            net[0].bias.zero_()
            net[2].weight.copy_(k * torch.eye(d))
            net[2].bias.fill_(-k * c / 2)  # logit +-50: q(z|x) and p(x|z) are point masses to e^-50
    x = all_binary_vectors(d)
    terms = vae.exact_elbo(x)
    assert (terms.elbo - ar.log_prob(x)).abs().max() < 1e-4
    assert (terms.log_px - ar.log_prob(x)).abs().max() < 1e-4


def test_latent_effects_of_the_copy_are_the_identity_and_follow_the_decoder():
    x = (torch.rand(30, 5, generator=torch.Generator().manual_seed(8)) < 0.5).float()
    assert torch.equal(DLayerVAE(random_ar(5)).latent_effects(x), torch.eye(5))
    torch.manual_seed(8)
    learned = DLayerVAE(random_ar(5), learned=True, hidden=8)
    with torch.no_grad():
        learned.decoder[2].weight[3].zero_()  # pixel 3's logit ignores the latents...
    effects = learned.latent_effects(x)
    assert effects.shape == (5, 5) and torch.all(effects[:, 3] == 0)  # ...so no latent controls it
    assert torch.all(effects.sum(1) > 0)


def test_sampling_the_copy_vae_gives_the_ar_distribution():
    ar = random_ar(3, seed=7)
    vae = DLayerVAE(ar)
    torch.manual_seed(0)
    x = vae.sample(20000)
    codes = (x * 2 ** torch.arange(3)).sum(1).long()
    freq = torch.bincount(codes, minlength=8).float() / len(x)
    assert (freq - ar.log_prob(all_binary_vectors(3)).exp()).abs().max() < 0.02


def test_sampling_from_uniforms_follows_the_prior_and_the_decoder():
    ar = random_ar(3, seed=7)
    copy_vae, learned = DLayerVAE(ar), DLayerVAE(ar, learned=True, hidden=8)
    g = torch.Generator().manual_seed(0)
    u_latent, u_pixel = torch.rand(20000, 3, generator=g), torch.rand(20000, 3, generator=g)
    x, z, log_pz = copy_vae.sample_from_uniforms(u_latent, u_pixel)
    assert torch.equal(x, z) and torch.equal(z, ar.sample_from_uniforms(u_latent))  # the AR sampler's draws
    assert torch.allclose(log_pz, ar.log_prob(z), atol=1e-5)  # and their log-probability, accumulated
    x, z2, _ = learned.sample_from_uniforms(u_latent, u_pixel)
    assert torch.equal(z2, z)  # the same prior, the same uniforms: the same latents
    codes = (x * 2 ** torch.arange(3)).sum(1).long()
    freq = torch.bincount(codes, minlength=8).float() / len(x)
    with torch.no_grad():
        p_x = learned.log_marginal(all_binary_vectors(3)).exp()  # (8,) the exact marginal of the learned model
    sigma = (p_x * (1 - p_x) / len(x)).sqrt()
    assert ((freq - p_x).abs() < 5 * sigma + 1e-4).all()  # each frequency within 5 standard errors


def test_bad_inputs_get_one_clear_sentence():
    vae = DLayerVAE(random_ar(4))
    with pytest.raises(ValueError, match=r"vectors of 4 binary pixels"):
        vae(torch.zeros(3, 5))
    with pytest.raises(TypeError, match="BinaryAR"):
        DLayerVAE(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="D <= 16"):
        DLayerVAE(BinaryAR(17, hidden=16), learned=True).exact_elbo(torch.zeros(1, 17))
