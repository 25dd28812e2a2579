"""Importing openai/vdvae's released state_dicts (Chapter 6): key mapping, the output channels' order,
the DDP prefix, preset detection, and one-sentence errors. The official layout is written here by hand
from the official module tree (vae.py: encoder.in_conv, encoder.enc_blocks.i.c1..c4,
decoder.dec_blocks.i.{enc,prior,resnet}.c1..c4, decoder.dec_blocks.i.z_proj, decoder.bias_xs.j,
decoder.gain, decoder.bias, decoder.out_net.out_conv), independently of the importer's mapping;
``benchmarks/vdvae_import_check.py`` compares with the official code itself."""
import pytest
import torch

import hvae_lib.models.presets.vdvae  # noqa: F401
from hvae_lib.config import override
from hvae_lib.data.contract import Datasets, ImageDataset, dataset_info
from hvae_lib.import_vdvae import main
from hvae_lib.models.presets import get_preset
from hvae_lib.models.vdvae import VDVAE
from hvae_lib.models.vdvae_official import find_preset, mixture_channel_order
from hvae_lib.sample import main as sample_main
from hvae_lib.training import engine
from hvae_lib.training.checkpoint import load_model

TINY = ["--set", "width=16", "--set", "zdim=4", "--set", "enc_blocks=32x1,32d2,16x1,16d2,8x1,8d8,1x1",
        "--set", "dec_blocks=1x1,8m1,8x1,16m8,32m16"]


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = VDVAE((3, 32, 32), 8, width=16, zdim=4, enc_blocks="32x1,32d2,16x1,16d2,8x1,8d8,1x1",
                  dec_blocks="1x1,8m1,8x1,16m8,32m16", num_mixtures=10, input_mean=120.63838, input_std=64.16736)
    with torch.no_grad():  # off the initial values, so that a wrong mapping cannot hide behind zeros
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def official_layout(model) -> dict:
    """Our state_dict written in openai/vdvae's names and output-channel order."""
    m, c = model.num_mixtures, 3
    bias_res = sorted(int(k) for k in model.bias_xs.keys())
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("encoder."):
            out[key] = value
        elif key.startswith("dec_blocks."):
            out["decoder." + key.replace(".posterior.", ".enc.")] = value
        elif key.startswith("bias_xs."):
            out[f"decoder.bias_xs.{bias_res.index(int(key.split('.')[1]))}"] = value
        elif key in ("gain", "bias"):
            out[f"decoder.{key}"] = value
        elif key.startswith("out_conv."):
            official = torch.empty_like(value)
            official[:m] = value[:m]
            for k in range(3):  # means, log-scales, coefficients
                for j in range(m):
                    for ch in range(c):
                        official[m + ch * 3 * m + k * m + j] = value[m + k * m * c + j * c + ch]
            out["decoder.out_net.out_conv." + key.split(".", 1)[1]] = official
    return out


def test_the_mixture_channel_order_puts_each_official_channel_where_ours_reads_it():
    """Official channel for (means/log-scales/coefficients k, component m, colour c) is M + c*3M + k*M + m."""
    m = 2
    order = mixture_channel_order(m)
    official_meaning = {0: "logit0", 1: "logit1"}
    for c in range(3):
        for k, what in enumerate(("mean", "logscale", "coeff")):
            for j in range(m):
                official_meaning[m + c * 3 * m + k * m + j] = f"{what}{j}c{c}"
    ours = [official_meaning[i] for i in order.tolist()]
    assert ours[:2] == ["logit0", "logit1"]
    assert ours[2:8] == ["mean0c0", "mean0c1", "mean0c2", "mean1c0", "mean1c1", "mean1c2"]  # ours: (k m c)
    assert ours[8] == "logscale0c0" and ours[-1] == "coeff1c2"


@pytest.mark.parametrize("ddp_prefix", [False, True])
def test_an_official_state_dict_imports_and_evaluates_like_the_source(tmp_path, ddp_prefix):
    source = tiny_model().eval()
    state = official_layout(source)
    if ddp_prefix:
        state = {f"module.{k}": v for k, v in state.items()}
    torch.save(state, tmp_path / "cifar10-model-ema.th")
    assert main([str(tmp_path / "cifar10-model-ema.th"), "--preset", "vdvae_cifar10", *TINY, "--out", str(tmp_path / "run")]) == 0
    model, config, info = load_model(tmp_path / "run" / "checkpoint.pt")
    assert config.model.width == 16 and info.name == "cifar10"
    assert (model.input_mean, model.input_std) == (120.63838, 64.16736)  # the official CIFAR-10 normalisation
    x = torch.randint(0, 256, (3, 3, 32, 32)).float() / 255
    torch.manual_seed(4)
    expected = source(x)
    torch.manual_seed(4)
    got = model(x)
    torch.testing.assert_close(got.kl_per_group, expected.kl_per_group, rtol=0, atol=0)
    torch.testing.assert_close(got.log_px_z, expected.log_px_z, rtol=0, atol=0)
    assert main([str(tmp_path / "cifar10-model-ema.th"), "--preset", "vdvae_cifar10", *TINY, "--out", str(tmp_path / "run")]) == 0


def test_raw_and_ema_weights_and_the_checkpoint_serves_sample_and_fine_tuning(tmp_path, monkeypatch):
    raw, ema = tiny_model(1), tiny_model(2)
    torch.save({f"module.{k}": v for k, v in official_layout(raw).items()}, tmp_path / "m-model.th")
    torch.save(official_layout(ema), tmp_path / "m-model-ema.th")
    assert main([str(tmp_path / "m-model-ema.th"), "--model", str(tmp_path / "m-model.th"), "--preset",
                 "vdvae_cifar10", *TINY, "--out", str(tmp_path / "run")]) == 0
    ckpt = tmp_path / "run" / "checkpoint.pt"
    as_raw, _, _ = load_model(ckpt, prefer_ema=False)
    as_ema, _, _ = load_model(ckpt)
    assert torch.equal(as_raw.gain, raw.gain) and torch.equal(as_ema.gain, ema.gain)
    assert sample_main([str(ckpt), "--n", "4", "--out", str(tmp_path / "s.png"), "--device", "cpu"]) == 0
    assert (tmp_path / "s.png").is_file()
    # Fine-tuning: the engine resumes the imported checkpoint at step 0 (on random CIFAR-shaped images here).
    info = dataset_info("cifar10")
    images = ImageDataset(torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8), torch.zeros(64))
    monkeypatch.setattr(engine, "load_data", lambda config: Datasets(images, images, info))
    sets = [s for s in TINY if s != "--set"] + ["batch_size=8", "max_steps=1", "quiet=true", "eval_every=0"]
    trainer = engine.Trainer(override(get_preset("vdvae_cifar10"), sets), tmp_path / "run", resume=True)
    assert trainer.step == 0 and torch.equal(trainer.model.gain, raw.gain) and torch.equal(trainer.ema.gain, ema.gain)
    assert trainer.train_step()["skipped"] == 0


def test_the_paper_preset_is_found_from_the_tensors():
    config = get_preset("vdvae_imagenet32")
    with torch.device("meta"):
        model = config.model.build((3, 32, 32), 8, "logistic_mixture")
    state = official_layout(model)
    assert find_preset(state) == "vdvae_imagenet32"
    assert find_preset({f"module.{k}": v for k, v in state.items()}) == "vdvae_imagenet32"


def test_foreign_files_are_one_line_errors(tmp_path, capsys):
    def run(path, *extra):
        code = main([str(path), *extra, "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err
        return err

    assert "there is no file" in run(tmp_path / "missing.th")
    (tmp_path / "junk.th").write_bytes(b"\x00junk")
    assert "could not be read as a PyTorch file" in run(tmp_path / "junk.th")
    torch.save({"a": torch.zeros(2)}, tmp_path / "other.th")
    assert "fits none of the VDVAE paper presets" in run(tmp_path / "other.th")
    state = official_layout(tiny_model())
    torch.save(state, tmp_path / "tiny.th")
    assert "does not fit the vdvae_cifar10 preset's model" in run(tmp_path / "tiny.th", "--preset", "vdvae_cifar10")
    del state["decoder.gain"]
    torch.save(state, tmp_path / "tiny.th")
    assert "lacks 'gain'" in run(tmp_path / "tiny.th", "--preset", "vdvae_cifar10", *TINY)
    assert "unknown preset" in run(tmp_path / "tiny.th", "--preset", "vdvae_nope")
    assert "nvae preset" in run(tmp_path / "tiny.th", "--preset", "nvae_tiny")
    assert not (tmp_path / "run").exists()
