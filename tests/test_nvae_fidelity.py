"""What NVAE at paper scale must do as the official training does (issue 14): CIFAR-10 flips,
MNIST scored on its real pixels, the mixture's colour mean, BN readjustment of the decoder only,
and the likelihood at t = 1 when sampling. (Synchronised BatchNorm: tests/test_sync_bn.py.)"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hvae_lib import sample as sample_cli
from hvae_lib import train
from hvae_lib.config import override
from hvae_lib.data.contract import Datasets, ImageDataset, dataset_info
from hvae_lib.layers.bn_readjust import readjusted_bn, sample_with_readjusted_bn
from hvae_lib.layers.norms import batchnorm_layers
from hvae_lib.models.nvae import NVAE
from hvae_lib.models.presets import get_preset
from hvae_lib.probability.likelihoods import DiscretizedLogisticMixture
from hvae_lib.probability.objectives import elbo, nats_to_bpd
from hvae_lib.training.engine import Trainer
from hvae_lib.training.run_log import GlobalBatches

SMALL = dict(num_latent_scales=2, num_groups_per_scale=2, ada_groups=True, num_latent_per_group=4,
             num_channels_enc=4, num_channels_dec=4, num_preprocess_cells=1, num_postprocess_cells=1, num_mix=3)


def small_nvae(image_shape=(3, 16, 16), bits=8, likelihood="logistic_mixture", **changes):
    torch.manual_seed(0)
    return NVAE(image_shape, bits, likelihood, **{**SMALL, **changes})


def images(n=4, shape=(3, 16, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g).float() / 255


# ----------------------------------------------------------------------------- CIFAR-10 flips
def asymmetric_dataset(n=40):
    """Images whose left and right halves differ, each tagged by its index in pixel (0, 0, 0)."""
    x = torch.zeros(n, 1, 2, 4, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    x[:, 0, 1, :2] = 200  # bottom-left bright, bottom-right dark
    return ImageDataset(x, torch.zeros(n, dtype=torch.long))


def test_random_horizontal_flips_replay_exactly_and_shard_like_one_process():
    data = asymmetric_dataset()
    flipping = GlobalBatches(data, batch_size=20, seed=5, horizontal_flip=True)
    plain = GlobalBatches(data, batch_size=20, seed=5)
    flipped_counts = []
    for step in (0, 1, 7):
        batch, original = flipping.get(step), plain.get(step)  # (B, 1, 2, 4)
        mirrored = (batch != original).flatten(1).any(1)
        assert torch.equal(batch[mirrored], original[mirrored].flip(-1))  # a flip is a left-right mirror
        assert torch.equal(mirrored, flipping.flips(step))
        flipped_counts.append(int(mirrored.sum()))
        # A fresh loader (a resumed run) flips the same images; two ranks flip their shares alike.
        assert torch.equal(GlobalBatches(data, 20, 5, horizontal_flip=True).get(step), batch)
        shards = [GlobalBatches(data, 20, 5, rank=r, world=2, horizontal_flip=True).get(step) for r in (0, 1)]
        assert torch.equal(shards[0], batch[0::2]) and torch.equal(shards[1], batch[1::2])
    assert 0 < sum(flipped_counts) < 60 and len(set(flipped_counts)) > 1  # about half, not always the same
    assert not torch.equal(flipping.flips(0), flipping.flips(1))


def test_the_cifar10_paper_preset_flips_and_the_engine_passes_it_on(tmp_path, monkeypatch):
    assert get_preset("nvae_cifar10").data.horizontal_flip and not get_preset("nvae_mnist").data.horizontal_flip
    config = override(get_preset("nvae_tiny"), ["horizontal_flip=true", "quiet=true", "batch_size=8"])
    info = dataset_info("shapes", 16)
    split = ImageDataset(torch.randint(0, 256, (16, *info.image_shape), dtype=torch.uint8), torch.zeros(16).long())
    monkeypatch.setattr("hvae_lib.training.engine.load_data", lambda c: Datasets(split, split, info))
    assert Trainer(config, tmp_path, resume=False).batches.horizontal_flip


# ----------------------------------------------------------------------------- MNIST's real pixels
MNIST_MODELS = {  # every family that takes MNIST, at a test size
    "vae": ("vae_mnist", ["channels=4", "latent_dim=2"]),
    "lvae": ("lvae_mnist", ["channels=4", "z_channels=2", "groups_per_scale=(1,1,1)", "blocks_per_group=1"]),
    "nvae": ("nvae_mnist", ["num_channels_enc=2", "num_channels_dec=2", "num_groups_per_scale=1", "num_latent_per_group=2",
                            "num_preprocess_cells=1", "num_postprocess_cells=1", "num_cell_per_cond_enc=1",
                            "num_cell_per_cond_dec=1"]),
}


@pytest.mark.parametrize("family", sorted(MNIST_MODELS))
def test_binarised_mnist_is_scored_on_its_784_real_pixels(family):
    """log p(x|z) sums exactly 784 Bernoulli terms, the number bits/dim divides by; the padding some
    architectures need (NVAE and the Ladder VAE work on 32x32) never enters the likelihood."""
    preset, changes = MNIST_MODELS[family]
    info = dataset_info("mnist")
    model = override(get_preset(preset), changes).model.build(info.image_shape, info.bits, info.likelihood)
    x = torch.bernoulli(torch.full((3, *info.image_shape), 0.3), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    out = model(x)
    logits = out.likelihood.logits  # (B, 1, 28, 28)
    assert logits[0].numel() == info.num_dims == 784
    expected = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)  # (B,)
    torch.testing.assert_close(out.log_px_z, expected)
    bpd = elbo(out, info.num_dims).bpd
    torch.testing.assert_close(bpd, nats_to_bpd(-(out.log_px_z - out.kl_per_group.sum(1)).mean(), 784))


def test_nvae_pads_binary_images_with_background_as_the_official_pipeline():
    model = small_nvae((1, 28, 28), bits=1, likelihood="bernoulli", num_preprocess_blocks=2, num_postprocess_blocks=2)
    seen = []
    model.stem.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    x = torch.ones(2, 1, 28, 28)
    model(x)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert torch.all(seen[0][:, :, border] == -1) and torch.all(seen[0][:, :, 2:30, 2:30] == 1)  # 0 pads, 1 stays


# ----------------------------------------------------------------------------- the colour mean
def test_mixture_mean_applies_the_rgb_coefficient_chain():
    """One pixel, two components: mixture-weighted means and coefficients, then
    x_R = m_R, x_G = m_G + a x_R, x_B = m_B + b x_R + g x_G (NVAE's DiscMixLogistic.mean)."""
    probs = torch.tensor([0.25, 0.75])
    means = torch.tensor([[0.2, 0.6], [-0.4, 0.0], [0.1, 0.3]])  # (C, M)
    raw_coeffs = torch.tensor([[0.5, 1.0], [-0.3, 0.2], [0.8, -0.6]])  # (C, M): a, b, g before tanh
    params = torch.cat([probs.log(), means.t().flatten(), torch.zeros(6), raw_coeffs.t().flatten()]).view(1, -1, 1, 1)
    d = DiscretizedLogisticMixture(params, 3)
    m, c = (means * probs).sum(1), (torch.tanh(raw_coeffs) * probs).sum(1)  # (C,) each
    r = m[0]
    g = m[1] + c[0] * r
    b = m[2] + c[1] * r + c[2] * g
    torch.testing.assert_close(d.mean().flatten(), (torch.stack([r, g, b]) + 1) / 2)


def test_mixture_mean_is_what_a_noiseless_sample_draws():
    torch.manual_seed(0)
    params = torch.randn(2, DiscretizedLogisticMixture.param_channels(3, 2), 4, 4)
    params[:, 0], params[:, 1] = 30.0, -30.0  # component 0 almost surely
    params[:, 2 + 6:2 + 12] = -7.0  # tiny scales: the sample is its mean up to rounding
    d = DiscretizedLogisticMixture(params, 3)
    assert (d.sample() - d.mean()).abs().max() <= 1 / 255 + 1e-3


# ----------------------------------------------------------------------------- BN readjustment
def test_bn_readjustment_leaves_the_encoder_statistics_alone():
    model = small_nvae()
    model.train()
    model(images(8))  # the encoder's BN layers now hold training statistics
    encoder = [m for part in (model.preprocess, model.enc_scales, model.enc_down) for m in batchnorm_layers(part)]
    decoder = batchnorm_layers(model.groups)
    own = [(m.running_mean.clone(), m.running_var.clone()) for m in encoder + decoder]
    x = images(2, seed=1)
    with readjusted_bn(model, temperature=0.6, num_passes=3, batch_size=4):
        for m, (mean, var) in zip(encoder, own):
            assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
        assert any(not torch.equal(m.running_var, var) for m, (_, var) in zip(decoder, own[len(encoder):]))
        features = model.encode(x)
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(features[0], model.encode(x)[0])  # encodes as outside the context


# ----------------------------------------------------------------------------- likelihood temperature
def test_sampling_draws_the_pixels_at_t_1_unless_told_otherwise():
    model = small_nvae((1, 16, 16), bits=1, likelihood="bernoulli").eval()

    def drawn(**options):
        torch.manual_seed(3)
        return model.sample(6, temperature=0.5, **options)

    def by_hand(t_likelihood):
        torch.manual_seed(3)
        with torch.no_grad():
            s = model.top_down(6, None, 0, 0.5)[0]
            return model.head(s, t_likelihood).sample(t_likelihood)

    assert torch.equal(drawn(), by_hand(1.0))  # the official default: prior at t, pixels at 1
    assert torch.equal(drawn(likelihood_temperature=0.5), by_hand(0.5))
    assert not torch.equal(by_hand(1.0), by_hand(0.05))
    readjusted = []
    for options in ({}, {"likelihood_temperature": 1.0}, {"likelihood_temperature": 0.05}):
        torch.manual_seed(3)
        readjusted.append(sample_with_readjusted_bn(model, 6, 0.5, num_passes=2, batch_size=4, **options))
    assert torch.equal(readjusted[0], readjusted[1]) and not torch.equal(readjusted[0], readjusted[2])


def test_the_sample_command_takes_a_likelihood_temperature_for_nvae_only(tmp_path, capsys):
    for preset in ("nvae_tiny", "vae_tiny"):
        assert train.main(["--preset", preset, "--out", str(tmp_path / preset), "--set", "max_steps=1",
                           "--set", "quiet=true", "--set", "eval_every=0", "--set", "test_limit=16"]) == 0
    png = tmp_path / "grid.png"
    args = ["--n", "4", "--temperature", "0.7", "--likelihood-temperature", "0.5", "--out", str(png)]
    assert sample_cli.main([str(tmp_path / "nvae_tiny" / "checkpoint.pt"), *args]) == 0 and png.exists()
    capsys.readouterr()
    assert sample_cli.main([str(tmp_path / "vae_tiny" / "checkpoint.pt"), *args]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error:") and "NVAE" in message and "\n" not in message
