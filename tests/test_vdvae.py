"""The Very Deep VAE (Chapter 6): architecture strings, the official initialisation, the model contract,
the paper presets' sizes, and training under the engine."""
import math

import pytest
import torch
import torch.nn.functional as F

import hvae_lib.models.presets.vdvae  # noqa: F401  (registers the VDVAE presets)
from hvae_lib.config import override
from hvae_lib.config.ranges import ConfigError
from hvae_lib.data.contract import dataset_info
from hvae_lib.memory.saved_tensors import count_saved_tensors
from hvae_lib.models import build_model
from hvae_lib.models.presets import get_preset
from hvae_lib.models.vdvae import VDVAE
from hvae_lib.models.vdvae_arch import (
    DecoderBlockSpec,
    EncoderBlockSpec,
    parse_decoder,
    parse_encoder,
    parse_widths,
    width_for_budget,
)
from hvae_lib.training.engine import Trainer

CIFAR_ENC = "32x11,32d2,16x6,16d2,8x6,8d2,4x3,4d4,1x3"
CIFAR_DEC = "1x1,4m1,4x2,8m4,8x5,16m8,16x10,32m16,32x21"
SMALL = dict(width=16, zdim=4, num_mixtures=3, enc_blocks="16x1,16d2,8x2,8d2,4x1,4d4,1x1",
             dec_blocks="1x1,4m1,4x1,8m4,8x1,16m8,16x1")


def small_vdvae(image_shape=(3, 16, 16), bits=8, seed=0, **changes):
    torch.manual_seed(seed)
    return VDVAE(image_shape, bits, "logistic_mixture", **{**SMALL, **changes})


def images(n=4, shape=(3, 16, 16), bits=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    levels = 2**bits - 1
    return torch.randint(0, levels + 1, (n, *shape), generator=g).float() / levels


# ----------------------------------------------------------------------------- architecture strings

def test_the_cifar10_strings_parse_into_typed_blocks():
    enc, dec = parse_encoder(CIFAR_ENC, 32), parse_decoder(CIFAR_DEC, 32)
    assert len(enc) == 11 + 1 + 6 + 1 + 6 + 1 + 3 + 1 + 3 == 33
    assert enc[11] == EncoderBlockSpec(32, 2) and enc[11].out_resolution == 16
    assert enc[-4] == EncoderBlockSpec(4, 4) and enc[-1] == EncoderBlockSpec(1)
    assert len(dec) == 43
    assert dec[:3] == [DecoderBlockSpec(1), DecoderBlockSpec(4, 1), DecoderBlockSpec(4)]
    assert [d.resolution for d in dec].count(32) == 22 and dec[-22] == DecoderBlockSpec(32, 16)
    widths = parse_widths("512:32,256:64", 16)
    assert (widths[512], widths[256], widths[1024], widths[8]) == (32, 64, 16, 16)


@pytest.mark.parametrize("role, text, bad", [
    ("encoder", "32x3,32y2,16x3", "32y2"),  # unknown operator
    ("encoder", "32x3,32d3,16x3", "32d3"),  # pooling factor does not divide the resolution
    ("encoder", "32x3,16x3", "16x3"),  # at the wrong resolution
    ("encoder", "32x3,32m2", "32m2"),  # mix-in belongs to the decoder
    ("encoder", "32x0", "32x0"),  # zero blocks
    ("encoder", "32x3,,16x3", "''"),  # empty token
    ("decoder", "1x1,4m1,32d2", "32d2"),  # downsampling belongs to the encoder
    ("decoder", "1x1,4m3,32m4", "4m3"),  # mixes in a resolution not seen before
    ("decoder", "1x1,4m1,8m4", "8m4"),  # does not end at the image resolution
    ("decoder", "1x1,64m1", "64m1"),  # above the image resolution
    ("decoder", "1x1,x4", "x4"),
])
def test_a_bad_token_is_a_one_sentence_error_naming_it(role, text, bad):
    parse = parse_encoder if role == "encoder" else parse_decoder
    with pytest.raises(ValueError) as err:
        parse(text, 32)
    message = str(err.value)
    assert "\n" not in message and message.endswith(".")
    assert bad in message and role in message


def test_bad_strings_reach_the_user_as_config_errors():
    config = override(get_preset("vdvae_tiny"), ["dec_blocks=1x1,4m1,8m2,16m8"])
    with pytest.raises(ConfigError, match="'8m2'"):
        build_model(config, dataset_info("shapes", 16))
    config = override(get_preset("vdvae_tiny"), ["enc_blocks=16x1,16d4,4x1"])  # never reaches 8 or 1
    with pytest.raises(ConfigError, match="resolution 1, but the encoder string"):
        build_model(config, dataset_info("shapes", 16))
    for key, value in (("width", "0"), ("bottleneck_multiple", "0"), ("unpool", "bilinear"), ("input_std", "0")):
        with pytest.raises(ConfigError, match=f"model.{key}"):
            build_model(override(get_preset("vdvae_tiny"), [f"{key}={value}"]), dataset_info("shapes", 16))


# ----------------------------------------------------------------------------- parameter counts

@pytest.mark.parametrize("name, expected", [
    ("vdvae_cifar10", 39_145_700), ("vdvae_imagenet32", 119_280_868), ("vdvae_imagenet64", 125_005_860),
    ("vdvae_ffhq256", 114_874_852), ("vdvae_ffhq1024", 109_366_904),
])
def test_paper_presets_have_the_official_parameter_counts(name, expected):
    """Counts measured by instantiating openai/vdvae's VAE with each official preset; built here on the
    meta device from the dataset's description alone (no memory, no dataset)."""
    config = get_preset(name)
    with torch.device("meta"):
        model = build_model(config, dataset_info(config.data.name))
    assert sum(p.numel() for p in model.parameters()) == expected


def test_paper_presets_carry_the_official_optimiser():
    table = {  # lr, global batch, grad_clip, skip_threshold, ema_rate (openai/vdvae hps.py)
        "vdvae_cifar10": (2e-4, 32, 200, 400, 0.9999), "vdvae_imagenet32": (1.5e-4, 256, 200, 300, 0.999),
        "vdvae_imagenet64": (1.5e-4, 128, 220, 380, 0.999), "vdvae_ffhq256": (1.5e-4, 32, 130, 180, 0.999),
        "vdvae_ffhq1024": (7e-5, 32, 360, 500, 0.999)}
    for name, (lr, batch, clip, skip, ema) in table.items():
        o = get_preset(name).optim
        assert (o.optimizer, tuple(o.betas), o.eps, o.weight_decay, o.warmup_steps, o.schedule) == \
            ("adamw", (0.9, 0.9), 1e-8, 0.01, 100, "constant"), name
        assert (o.lr, o.batch_size, o.grad_clip, o.skip_threshold, o.ema_rate, o.loss_per_dim) == \
            (lr, batch, clip, skip, ema, True), name


# ----------------------------------------------------------------------------- initialisation

def test_the_block_is_a_bottleneck_with_1x1_convolutions_at_low_resolution():
    model = small_vdvae()
    block = model.encoder.enc_blocks[0]  # at 16x16, width 16
    assert [tuple(c.weight.shape) for c in (block.c1, block.c2, block.c3, block.c4)] == \
        [(4, 16, 1, 1), (4, 4, 3, 3), (4, 4, 3, 3), (16, 4, 1, 1)]
    top = model.dec_blocks[0]  # 1x1: every convolution is 1x1
    assert all(c.kernel_size == (1, 1) for c in top.modules() if isinstance(c, torch.nn.Conv2d))
    assert all(torch.all(c.bias == 0) for c in model.modules() if isinstance(c, torch.nn.Conv2d))


def test_one_over_sqrt_n_scaling_is_exactly_the_official_one():
    """Same seed with and without the scaling: the last conv of every residual branch and the z
    projection differ by exactly sqrt(1/N) (N blocks of that tower); every other weight is equal."""
    scaled, plain = small_vdvae(seed=3), small_vdvae(seed=3, scale_residuals=False)
    n_enc, n_dec = len(scaled.encoder.enc_blocks), len(scaled.dec_blocks)
    assert (n_enc, n_dec) == (8, 7)
    expect = {}
    for i in range(n_enc):
        expect[f"encoder.enc_blocks.{i}.c4.weight"] = math.sqrt(1 / n_enc)
    for i in range(n_dec):
        expect[f"dec_blocks.{i}.resnet.c4.weight"] = math.sqrt(1 / n_dec)
        expect[f"dec_blocks.{i}.z_proj.weight"] = math.sqrt(1 / n_dec)
    plain_sd = plain.state_dict()
    for key, value in scaled.state_dict().items():
        torch.testing.assert_close(value, plain_sd[key] * expect.get(key, 1.0), rtol=0, atol=0, msg=key)


def test_at_initialisation_every_prior_is_standard_normal_and_the_kl_is_that_of_q_against_it():
    model = small_vdvae().eval()
    prior_out, q_out = [], []
    hooks = [b.prior.c4.register_forward_hook(lambda m, i, o: prior_out.append(o)) for b in model.dec_blocks]
    hooks += [b.posterior.c4.register_forward_hook(lambda m, i, o: q_out.append(o)) for b in model.dec_blocks]
    out = model(images())
    for h in hooks:
        h.remove()
    assert len(prior_out) == model.num_groups and all(torch.all(o == 0) for o in prior_out)  # mu_p = 0, log sigma_p = 0
    for layer, o in enumerate(q_out):
        mu, log_sigma = o.chunk(2, dim=1)
        kl = 0.5 * (mu**2 + torch.exp(2 * log_sigma) - 1 - 2 * log_sigma)  # KL(q || N(0, 1))
        torch.testing.assert_close(out.kl_per_group[:, layer], kl.sum(dim=(1, 2, 3)))


def _top_down_variance(depth: int, scaled: bool) -> float:
    """Variance of the top-down state after ``depth`` latent layers at 8x8, sampling from the priors."""
    torch.manual_seed(0)
    model = VDVAE((3, 8, 8), 8, width=64, zdim=16, enc_blocks="8x1", dec_blocks=f"8x{depth}", num_mixtures=1,
                  scale_residuals=scaled)
    with torch.no_grad():
        return model.top_down(32, None, 0)[0].var().item()


def test_residual_stream_variance_stays_bounded_with_the_scaling_and_grows_without():
    """At initialisation each layer adds z_proj(z), z ~ N(0, I), of variance Z var(w) = 1/3 with PyTorch's
    default weights: N/3 after N layers unscaled, 1/3 whatever N with the 1/sqrt(N) scaling."""
    depths = (2, 8, 32, 128)
    with_scaling = [_top_down_variance(n, True) for n in depths]
    without = [_top_down_variance(n, False) for n in depths]
    assert all(abs(v - 1 / 3) < 0.05 for v in with_scaling), with_scaling
    assert all(abs(v / (n / 3) - 1) < 0.15 for v, n in zip(without, depths)), without


# ----------------------------------------------------------------------------- the model's contract

def test_forward_returns_the_model_contract():
    model = small_vdvae()
    out = model(images())
    assert model.layer_resolutions == [1, 4, 4, 8, 8, 16, 16] and model.num_groups == 7
    assert model.group_shapes[2] == (4, 4, 4) and model.num_layers_through(8) == 5
    assert out.log_px_z.shape == (4,) and out.kl_per_group.shape == (4, 7) and out.log_q_minus_log_p.shape == (4,)
    assert out.extras["group_sizes"].tolist() == [4, 64, 64, 256, 256, 1024, 1024]
    assert [tuple(m.shape) for m in out.extras["posterior_means"]][:2] == [(4, 4, 1, 1), (4, 4, 4, 4)]
    assert torch.all(out.kl_per_group > -1e-6) and torch.isfinite(out.log_px_z).all()  # >= 0 up to rounding
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        model(torch.rand(2, 3, 32, 32))


def test_log_q_minus_log_p_averages_to_the_analytic_kl():
    """E_q[log q(z) - log p(z)] = KL: the one-sample estimate the importance-weighted bound uses agrees
    on average with the analytic KL (which itself varies with the z drawn in the layers above)."""
    model = small_vdvae().eval()
    torch.manual_seed(1)
    with torch.no_grad():
        out = model(images(1).expand(4000, -1, -1, -1))
    gap = out.log_q_minus_log_p - out.kl_per_group.sum(1)  # (N,), mean zero
    assert abs(gap.mean()) < 4 * gap.std() / math.sqrt(len(gap))
    assert gap.std() > 0  # a genuine Monte Carlo estimate, not the analytic KL again


def test_sampling_and_conditional_sampling():
    model = small_vdvae().eval()
    x = images(3)
    torch.manual_seed(5)
    a = model.sample(3, temperature=0.7)
    torch.manual_seed(5)
    b = model.sample_conditional(x, 0, temperature=0.7)  # no posterior layer: the same draw as sample()
    assert torch.equal(a, b) and a.shape == (3, 3, 16, 16)
    assert torch.equal(a, torch.round(a * 255) / 255)  # on the 8-bit grid
    assert model.sample_conditional(x, model.num_groups).shape == x.shape
    with pytest.raises(ValueError, match="between 0 and 7"):
        model.sample_conditional(x, 8)


def test_learned_unpooling_and_lower_bit_depths():
    model = small_vdvae(unpool="learned")
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules()) == 3  # 4m1, 8m4, 16m8
    assert torch.isfinite(model(images()).log_px_z).all()
    five_bit = small_vdvae(bits=5)
    x = images(bits=5)
    assert five_bit(x).likelihood.bits == 5
    s = five_bit.sample(2)
    assert torch.equal(s, torch.round(s * 31) / 31)  # on the 5-bit grid


def test_grouped_layers_lower_the_stochastic_depth_and_keep_every_layer_and_parameter():
    """layers_per_group k (the paper's Table 1, left): the layers of each resolution in groups of k that
    all read the group's first state, their increments summed; k = 1 is the ordinary model, exactly."""
    plain, one = small_vdvae(), small_vdvae(layers_per_group=1)
    x = images()
    torch.manual_seed(3)
    a = plain(x)
    torch.manual_seed(3)
    b = one(x)
    assert torch.equal(a.log_px_z, b.log_px_z) and torch.equal(a.kl_per_group, b.kl_per_group)
    assert plain.stochastic_depth == plain.num_groups == 7
    deep = dict(dec_blocks="1x2,4m1,4x5,8m4,8x2,16m8,16x1")  # 2 at 1x1, 6 at 4x4, 3 at 8x8, 2 at 16x16
    sizes = {}
    for k, depth in ((1, 13), (2, 1 + 3 + 2 + 1), (3, 1 + 2 + 1 + 1), (6, 4)):
        model = small_vdvae(layers_per_group=k, **deep)
        sizes[k] = sum(p.numel() for p in model.parameters())
        assert model.num_groups == 13 and model.stochastic_depth == depth, k
    assert len(set(sizes.values())) == 1  # the same layers and parameters whatever the grouping
    # Within a group every layer reads the same state: record each block's input.
    model = small_vdvae(layers_per_group=3, **deep)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # move the zero-initialised priors so that states differ
    inputs, outputs = [], []

    def record(module, args, out):  # returns None: the block's output is kept
        inputs.append(args[0])
        outputs.append(out[0])

    hooks = [blk.register_forward_hook(record) for blk in model.dec_blocks]
    out = model(x)
    for h in hooks:
        h.remove()
    starts = model.group_starts
    assert starts == [True, False, True, False, False, True, False, False, True, False, False, True, False]
    for i in range(1, 13):
        assert torch.equal(inputs[i], inputs[i - 1]) == (not starts[i]), i
    # the 4x4 group of layers 2-4 hands on its input plus the sum of its layers' increments
    summed = inputs[2] + sum(outputs[j] - inputs[2] for j in (2, 3, 4))
    assert torch.allclose(inputs[5], summed, atol=1e-5) and not torch.allclose(inputs[5], outputs[4], atol=1e-3)
    assert out.kl_per_group.shape == (4, 13) and torch.isfinite(out.log_px_z).all()
    assert model.sample(2).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="layers_per_group"):
        small_vdvae(layers_per_group=0)
    config = override(get_preset("vdvae_tiny"), {"layers_per_group": 2})
    assert build_model(config, dataset_info("shapes", resolution=16)).stochastic_depth == 4  # 1, 4x2, 8x2, 16x2


def test_width_for_budget_picks_the_closest_multiple():
    quadratic = lambda w: 10 * w * w  # noqa: E731
    assert width_for_budget(quadratic, 10 * 26 * 26) == 24  # 5760 and 7840 around 6760: 24 is closer
    assert width_for_budget(quadratic, 10 * 28 * 28, multiple=4) == 28  # exactly
    assert width_for_budget(lambda w: w, 6) == 4  # a tie (4 and 8) goes to the smaller width
    assert width_for_budget(quadratic, 10**12, max_width=64) == 64  # capped
    assert width_for_budget(quadratic, 0) == 4
    # Real models: a shallower decoder needs a wider model for the same budget.
    def size(dec_blocks):
        def count(width):
            with torch.device("meta"):
                return sum(p.numel() for p in VDVAE((1, 28, 28), 8, width=width, zdim=4, num_mixtures=5,
                                                    enc_blocks="28x1,28d2,14x2,14d2,7x2,7d7,1x1",
                                                    dec_blocks=dec_blocks).parameters())
        return count
    deep, shallow = size("1x1,7m1,7x12,14m7,28m14"), size("1x1,7m1,14m7,28m14")
    budget = deep(16)
    width = width_for_budget(shallow, budget)
    assert width > 16 and abs(shallow(width) - budget) <= min(abs(shallow(w) - budget) for w in (width - 4, width + 4))
    with pytest.raises(ValueError, match="multiple"):
        width_for_budget(quadratic, 100, multiple=0)


def test_custom_widths_pad_and_slice_channels():
    model = small_vdvae(custom_width_str="8:24,4:32,1:32")
    assert model.encoder.enc_blocks[-1].c1.in_channels == 32  # 1x1 block at width 32
    assert model.dec_blocks[-1].z_proj.out_channels == 16  # 16x16 at the default width
    assert torch.isfinite(model(images()).log_px_z).all()


def test_gradient_checkpointing_gives_the_same_gradients_and_saves_less():
    x = images(4)
    grads, saved = {}, {}
    for ckpt in (False, True):
        model = small_vdvae(seed=2)
        model.grad_checkpointing = ckpt
        torch.manual_seed(7)
        out, s = count_saved_tensors(lambda: model(x), list(model.parameters()))
        (-(out.log_px_z - out.kl_per_group.sum(1)).mean()).backward()
        grads[ckpt] = torch.cat([p.grad.flatten() for p in model.parameters()])
        saved[ckpt] = s.activation_bytes
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-5, atol=1e-7)
    assert saved[True] < saved[False] / 2


# ----------------------------------------------------------------------------- under the engine

def test_loss_per_dim_divides_the_training_loss_by_the_data_dimensions(tmp_path):
    losses = {}
    for per_dim in (False, True):
        config = override(get_preset("vdvae_tiny"), ["quiet=true", "max_steps=1", f"loss_per_dim={per_dim}"])
        trainer = Trainer(config, tmp_path / str(per_dim), resume=False)
        losses[per_dim] = trainer.train_step()
    assert losses[True]["loss"] == pytest.approx(losses[False]["loss"] / (3 * 16 * 16), rel=1e-5)
    assert losses[True]["grad_norm"] == pytest.approx(losses[False]["grad_norm"] / (3 * 16 * 16), rel=1e-4)


def test_trains_under_the_engine_in_bf16_with_checkpointing(tmp_path):
    config = override(get_preset("vdvae_tiny"), ["quiet=true", "max_steps=6", "eval_every=0", "checkpoint_every=0",
                                                 "precision=bf16", "grad_checkpointing=true", "log_every=3", "ema_rate=0"])
    trainer = Trainer(config, tmp_path / "run", resume=False)
    assert trainer.model.grad_checkpointing
    first = trainer.train_step()
    result = trainer.fit()
    assert first["skipped"] == 0 and trainer.total_skips == 0
    assert math.isfinite(result["test_bpd"]) and result["test_bpd"] < first["bpd"]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


@pytest.mark.slow
def test_trains_under_two_gloo_processes_like_one_process(tmp_path):
    """torchrun --nproc_per_node=2 on CPU (gloo) against one process, vdvae_tiny, global batch 32, with the
    worker of test_distributed.py (z replaced by the posterior mean, a NaN loss on the last rank at step 3
    that both ranks must agree to skip): identical weights on both ranks, equal to one process's."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from test_distributed import SETS, WORKER

    root = Path(__file__).resolve().parent.parent
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    dumps = {n: tmp_path / f"dump{n}" for n in (1, 2)}
    for d in dumps.values():
        d.mkdir()
    sets = sum((["--set", s] for s in SETS), [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), "--preset", "vdvae_tiny", "--out", str(tmp_path / "two"), *sets],
                         cwd=root, env={**env, "DUMP": str(dumps[2])}, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(script), "--preset", "vdvae_tiny", "--out", str(tmp_path / "one"), *sets],
                         cwd=root, env={**env, "DUMP": str(dumps[1])}, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    rank0, rank1, single = (torch.load(p, weights_only=True) for p in
                            (dumps[2] / "rank0.pt", dumps[2] / "rank1.pt", dumps[1] / "rank0.pt"))
    for k in single:
        assert torch.equal(rank0[k], rank1[k]), f"ranks disagree on {k}"
        assert torch.allclose(rank0[k], single[k], rtol=1e-4, atol=1e-5), f"{k}: DDP differs from one process"
    from hvae_lib.training.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "two" / "checkpoint.pt")["total_skips"] == 1
