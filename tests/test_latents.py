"""The latent interface of every family (encode to per-group latents, decode from given latents for the
top groups and the prior below) and the library's verbs on it (hvae_lib.analysis.latents)."""
import math

import pytest
import torch

from hvae_lib.analysis import latents as lib
from hvae_lib.models.lvae import LadderVAE
from hvae_lib.models.nvae import NVAE
from hvae_lib.models.vae import ConvVAE
from hvae_lib.models.vdvae import VDVAE


def jiggle(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():  # off the initial values (zero priors, small posteriors), so every network matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def make(family, seed=0):
    torch.manual_seed(seed)
    if family == "vae":
        model = ConvVAE((1, 16, 16), 8, latent_dim=4, channels=8)
    elif family == "lvae":
        model = LadderVAE((1, 16, 16), 8, groups_per_scale=(1, 1, 2), z_channels=2, channels=8, initial_downsamples=1)
    elif family == "nvae":
        model = NVAE((1, 16, 16), 8, num_latent_scales=2, num_groups_per_scale=1, num_latent_per_group=4,
                     num_channels_enc=8, num_channels_dec=8, num_mix=3)
    else:
        model = VDVAE((1, 16, 16), 8, width=16, zdim=4, num_mixtures=3, enc_blocks="16x1,16d2,8x1,8d2,4x1,4d4,1x1",
                      dec_blocks="1x1,4m1,4x1,8m4,8x1,16m8,16x1")
    return jiggle(model, seed + 100)


FAMILIES = ["vae", "lvae", "nvae", "vdvae"]
HIERARCHIES = ["lvae", "nvae", "vdvae"]


def images(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 16, 16), generator=g).float() / 255


@pytest.mark.parametrize("family", FAMILIES)
def test_posterior_latents_have_the_declared_shapes_and_the_mean_is_deterministic(family):
    model, x = make(family), images()
    shapes = model.latent_shapes()
    assert len(shapes) == model.num_groups
    drawn = model.posterior_latents(x)
    assert [tuple(z.shape) for z in drawn] == [(3, *s) for s in shapes]
    a, b = model.posterior_latents(x, use_mean=True), model.posterior_latents(x, use_mean=True)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, drawn))


@pytest.mark.parametrize("family", FAMILIES)
def test_decoding_the_drawn_latents_replays_the_posterior_pass(family):
    """Latents drawn from q and fed back give the same likelihood as drawing them inside the pass."""
    model, x = make(family), images()
    torch.manual_seed(5)
    zs = model.posterior_latents(x)
    replayed = model.decode_latents(zs).mean()
    torch.manual_seed(5)
    in_pass = model.decode_latents(None, n=3, features=model.encoder_features(x), num_posterior=model.num_groups).mean()
    torch.testing.assert_close(replayed, in_pass, rtol=1e-5, atol=1e-6)
    torch.manual_seed(5)
    if family == "vae":  # the ConvVAE reconstructs from the posterior's mean
        replayed = model.decode_latents(model.posterior_latents(x, use_mean=True)).mean()
    torch.testing.assert_close(replayed, model.reconstruct(x), rtol=1e-5, atol=1e-6)  # the model's own reconstruction


@pytest.mark.parametrize("family", HIERARCHIES)
def test_given_top_groups_are_kept_and_only_the_groups_below_are_drawn(family):
    model, x = make(family), images()
    top = model.posterior_latents(x, use_mean=True)[:1]
    torch.manual_seed(0)
    a = model.decode_latents(top, temperature=1.0).mean()
    torch.manual_seed(1)
    b = model.decode_latents(top, temperature=1.0).mean()
    assert not torch.allclose(a, b)  # the groups below are drawn
    cold = [model.decode_latents(top, temperature=0.0).mean() for _ in range(2)]
    assert torch.equal(*cold)  # at temperature 0 they sit at the prior's mean: nothing left to chance
    other = [top[0] + 3.0]  # another top group
    assert not torch.allclose(cold[0], model.decode_latents(other, temperature=0.0).mean())  # the top group matters
    zs = model.posterior_latents(x, use_mean=True)  # every group given: temperature has no say
    torch.testing.assert_close(model.decode_latents(zs, temperature=0.3).mean(), model.decode_latents(zs).mean())


@pytest.mark.parametrize("family", FAMILIES)
def test_a_temperature_per_group_equals_one_number_when_all_are_equal(family):
    model = make(family)
    torch.manual_seed(2)
    one = model.decode_latents(None, n=2, temperature=0.7).mean()
    torch.manual_seed(2)
    each = model.decode_latents(None, n=2, temperature=[0.7] * model.num_groups).mean()
    assert torch.equal(one, each)
    with pytest.raises(ValueError, match=f"needs {model.num_groups} values"):
        model.decode_latents(None, n=2, temperature=[0.7] * (model.num_groups + 1))


def test_the_per_group_temperature_reaches_the_right_group():
    model = make("vdvae")  # groups at 1, 4, 4, 8, 8, 16, 16
    t = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]  # only the top three draw
    torch.manual_seed(0)
    _, _, _, _, a = model.top_down(2, None, 0, t, return_latents=True)
    torch.manual_seed(1)
    _, _, _, _, b = model.top_down(2, None, 0, t, return_latents=True)
    assert all(not torch.equal(u, v) for u, v in zip(a[:3], b[:3]))
    torch.manual_seed(2)  # the top three fixed: the groups below sit at their prior means whatever the seed
    _, _, _, _, c = model.top_down(2, None, 0, t, latents=a[:3], return_latents=True)
    assert all(torch.equal(u, v) for u, v in zip(a, c))
    assert lib.per_group_temperatures(model, [1.0, 0.5, 0.25, 0.0], "resolution") == [1.0, 0.5, 0.5, 0.25, 0.25, 0.0, 0.0]
    assert lib.per_group_temperatures(model, 0.6, "group") == [0.6] * 7
    with pytest.raises(ValueError, match=r"needs 4 values \(levels by resolution: 1, 4, 8, 16\), got 2"):
        lib.per_group_temperatures(model, [1.0, 0.5], "resolution")


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_then_decode_is_reconstruct(family):
    model, x = make(family), images()
    latents = lib.encode(model, x)
    decoded = lib.decode(model, latents, draws=2, seed=3)  # (2, 3, 1, 16, 16)
    assert decoded.shape == (2, 3, 1, 16, 16) and torch.equal(decoded[0], decoded[1])  # means: nothing drawn
    assert torch.equal(lib.reconstruct(model, x, draws=2, seed=3), decoded)
    assert torch.equal(lib.reconstruct(model, x, num_groups=0, seed=3)[0], lib.sample_like(model, 3, seed=3)[0])
    sampled = lib.reconstruct(model, x, use_mean=False, pixels="sample", seed=4)
    assert torch.all((sampled * 255 - torch.round(sampled * 255)).abs() < 1e-4)  # pixels on the 8-bit grid


def test_slerp_keeps_the_ends_and_the_norm_and_falls_back_to_a_line():
    a = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [4.0, 0.0]])  # a right angle; and a parallel pair
    assert torch.equal(lib.slerp(a, b, 0.0), a) and torch.allclose(lib.slerp(a, b, 1.0), b)
    mid = lib.slerp(a, b, 0.5)
    assert torch.allclose(mid[0], torch.tensor([math.sqrt(0.5)] * 2))  # on the unit circle, half way round
    assert torch.allclose(mid[1], torch.tensor([3.0, 0.0]))  # parallel: the straight line
    assert torch.allclose(lib.lerp(a, b, 0.5)[0], torch.tensor([0.5, 0.5]))


@pytest.mark.parametrize("family", FAMILIES)
def test_interpolation_runs_from_one_reconstruction_to_the_other(family):
    model = make(family)
    xa, xb = images(2, seed=1), images(2, seed=2)
    frames = lib.interpolate(model, xa, xb, steps=5, rest="posterior", method="slerp")  # (5, 2, 1, 16, 16)
    assert frames.shape == (5, 2, 1, 16, 16)
    torch.testing.assert_close(frames[0], lib.reconstruct(model, xa)[0])
    torch.testing.assert_close(frames[-1], lib.reconstruct(model, xb)[0], rtol=1e-4, atol=1e-5)
    la, lb = lib.encode(model, xa), lib.encode(model, xb)
    torch.testing.assert_close(frames[2], lib.decode(model, [lib.slerp(a, b, 0.5) for a, b in zip(la, lb)])[0])
    assert not torch.equal(frames[1], frames[3])


@pytest.mark.parametrize("family", HIERARCHIES)
def test_interpolation_with_the_prior_below_uses_the_same_noise_at_every_step(family):
    model = make(family)
    xa, xb = images(1, seed=1), images(1, seed=2)
    frames = lib.interpolate(model, xa, xb, steps=4, num_groups=1, rest="prior", method="lerp", seed=9)
    top_a = lib.encode(model, xa)[:1]
    torch.testing.assert_close(frames[0], lib.decode(model, top_a, seed=9)[0])  # t = 0: a's top group, seed 9 below
    same_ends = lib.interpolate(model, xa, xa, steps=3, num_groups=1, rest="prior", seed=9)
    assert torch.equal(same_ends[0], same_ends[1]) and torch.equal(same_ends[1], same_ends[2])  # nothing but the top moves


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_by_level_ends_in_the_reconstruction_for_every_family(family):
    model, x = make(family), images()
    by = lib.default_level_kind(model)
    cuts, rows = lib.decode_by_level(model, x, draws=2, seed=7, by=by)
    assert len(cuts) == len(lib.level_cuts(model, by)) + 1 and rows.shape == (len(cuts), 2, 3, 1, 16, 16)
    torch.manual_seed(7)
    expected = model.decode_latents(model.posterior_latents(x)).mean() if family == "vae" else model.reconstruct(x)
    torch.testing.assert_close(rows[-1, 0], expected)  # the posterior everywhere: one draw of z, the mean image
    assert by == ("group" if family == "vae" else "resolution")


def test_levels_by_resolution_and_by_group():
    assert lib.level_cuts(make("nvae")) == [(4, 1), (8, 2)]
    assert lib.level_cuts(make("lvae")) == [(2, 1), (4, 2), (8, 4)]  # groups at 2, 4, 8, 8
    assert lib.level_cuts(make("vdvae")) == [(1, 1), (4, 3), (8, 5), (16, 7)]
    assert lib.level_cuts(make("vdvae"), "group") == [(k, k) for k in range(1, 8)]
    assert lib.level_names([0, 1, 4], "resolution") == ["prior everywhere", "posterior to 1×1", "posterior to 4×4"]
    with pytest.raises(ValueError, match="by must be one of resolution, group"):
        lib.level_cuts(make("vdvae"), "scale")


def test_bad_library_inputs_are_one_sentence():
    model, x = make("vdvae"), images()
    with pytest.raises(ValueError, match=r"between 0 and 7 \(this VDVAE's latent groups\), got 8"):
        lib.reconstruct(model, x, num_groups=8)
    with pytest.raises(ValueError, match="do not fit this VDVAE: it has 7 groups"):
        lib.decode(model, lib.encode(make("nvae"), x))
    with pytest.raises(ValueError, match="steps must be at least 2"):
        lib.interpolate(model, x, x, steps=1)
    with pytest.raises(ValueError, match="rest must be one of posterior, prior"):
        lib.interpolate(model, x, x, rest="both")
    with pytest.raises(ValueError, match=r"shape \(B, 1, 16, 16\)"):
        lib.encode(model, torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="has no latent interface"):
        lib.encode(torch.nn.Linear(2, 2), x)
