"""openai's FFHQ-256 weights evaluated as they were trained (issue 24): the import chooses the official
grid and 8-bit encoder input, the loss equals openai's ``discretized_mix_logistic_loss(low_bit=True)``
(transcribed below from its vae_helpers.py, NHWC as there) to 1e-4, evaluate and results.json say
so, and training from scratch keeps the normalised 5-bit grid."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hvae_lib import evaluate
from hvae_lib.config import override
from hvae_lib.data.contract import Datasets, ImageDataset, dataset_info
from hvae_lib.import_vdvae import main as import_main
from hvae_lib.models.presets import get_preset
from hvae_lib.models.vdvae import VDVAE
from hvae_lib.models.vdvae_official import mixture_channel_order
from hvae_lib.training import engine
from hvae_lib.training.checkpoint import load_model

SMALL = dict(width=16, zdim=4, enc_blocks="32x1,32d2,16x1,16d2,8x1,8d8,1x1", dec_blocks="1x1,8m1,8x1,16m8,32m16",
             num_mixtures=3, input_mean=112.8666757481, input_std=69.84780273)


def openai_low_bit_loss(x_target: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """openai/vdvae's FFHQ-256 loss per dimension: x_target (B, H, W, 3) in [-1, 1], l (B, H, W, 10M)."""
    xs = list(x_target.shape)
    nr_mix = l.shape[-1] // 10
    logit_probs = l[..., :nr_mix]
    l = l[..., nr_mix:].reshape(xs + [nr_mix * 3])
    means, log_scales = l[..., :nr_mix], torch.clamp(l[..., nr_mix:2 * nr_mix], min=-7.0)
    coeffs = torch.tanh(l[..., 2 * nr_mix:3 * nr_mix])
    x = x_target.reshape(xs + [1]) + torch.zeros(xs + [nr_mix])
    m2 = (means[..., 1, :] + coeffs[..., 0, :] * x[..., 0, :]).reshape(xs[:3] + [1, nr_mix])
    m3 = (means[..., 2, :] + coeffs[..., 1, :] * x[..., 0, :] + coeffs[..., 2, :] * x[..., 1, :]).reshape(xs[:3] + [1, nr_mix])
    means = torch.cat([means[..., 0, :].reshape(xs[:3] + [1, nr_mix]), m2, m3], dim=3)
    centered, inv_stdv = x - means, torch.exp(-log_scales)
    plus_in, min_in = inv_stdv * (centered + 1 / 31), inv_stdv * (centered - 1 / 31)
    log_cdf_plus, log_one_minus_cdf_min = plus_in - F.softplus(plus_in), -F.softplus(min_in)
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    mid_in = inv_stdv * centered
    log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in)
    log_probs = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, torch.where(
        cdf_delta > 1e-5, torch.log(torch.clamp(cdf_delta, min=1e-12)), log_pdf_mid - np.log(15.5))))
    log_probs = log_probs.sum(dim=3) + torch.log_softmax(logit_probs, dim=-1)
    return -torch.logsumexp(log_probs, -1).sum(dim=[1, 2]) / np.prod(xs[1:])


def test_the_official_grid_is_openais_ffhq256_loss():
    torch.manual_seed(0)
    model = VDVAE((3, 32, 32), 8, official_grid=True, **SMALL).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    raw = torch.randint(0, 256, (3, 32, 32, 3))  # NHWC 8-bit, as openai's data
    raw[0, 0, :3] = torch.tensor([[0, 0, 0], [255, 255, 255], [7, 8, 248]])
    x = raw.permute(0, 3, 1, 2).float() / 255
    torch.manual_seed(1)
    out = model(x)
    features, _, _, _ = (lambda: (torch.manual_seed(1), model.top_down(3, model.encode(x), model.num_groups)))()[1]
    params = model.out_conv(features)[:, torch.argsort(mixture_channel_order(3))]  # official channel order
    target = (torch.floor(raw.float() / 8) * 8 - 127.5) / 127.5  # openai's preprocess_func for ffhq_256
    official = openai_low_bit_loss(target, params.permute(0, 2, 3, 1))
    torch.testing.assert_close(-out.log_px_z / x[0].numel(), official, rtol=1e-4, atol=0)
    # The library's own 5-bit grid scores something else on the same network.
    proper = VDVAE((3, 32, 32), 5, **SMALL)
    proper.load_state_dict(model.state_dict())
    five = torch.floor(raw.permute(0, 3, 1, 2).float() / 8) / 31
    torch.manual_seed(1)
    assert not torch.allclose(-proper(five).log_px_z / x[0].numel(), official, rtol=1e-2)
    with pytest.raises(ValueError, match="set data.bits=8"):
        VDVAE((3, 32, 32), 5, official_grid=True, **SMALL)


def test_the_import_chooses_the_official_protocol_for_ffhq256_and_says_so(tmp_path, monkeypatch, capsys):
    config = get_preset("vdvae_ffhq256")
    assert not config.model.official_grid and config.data.bits == 0  # training from scratch: the proper grid
    sets = ["width=16", "zdim=4", "num_mixtures=3", "enc_blocks=256x1,256d2,128x1,128d2,64x1,64d64,1x1",
            "dec_blocks=1x1,64m1,64x1,128m64,256m128"]
    small = override(config, sets)
    info = dataset_info("ffhq_256")
    torch.manual_seed(0)
    model = small.model.build(info.image_shape, info.bits, info.likelihood)
    from test_import_vdvae import official_layout  # tests/ is on sys.path (torch-fidelity installs a package named tests)

    torch.save(official_layout(model), tmp_path / "ffhq256-model-ema.th")
    args = [str(tmp_path / "ffhq256-model-ema.th"), "--preset", "vdvae_ffhq256", "--out", str(tmp_path / "run")]
    assert import_main(args + sum((["--set", s] for s in sets), [])) == 0
    assert "openai's FFHQ-256 grid" in capsys.readouterr().out
    _, imported, info8 = load_model(tmp_path / "run" / "checkpoint.pt")
    assert imported.model.official_grid and imported.data.bits == 8 and imported.data.vdvae_split and info8.bits == 8
    images = ImageDataset(torch.randint(0, 256, (4, 3, 256, 256), dtype=torch.uint8), torch.zeros(4))
    notes = {"ffhq_files": "ffhq-256.npy", "split": "openai/vdvae's seed-5 permutation"}
    monkeypatch.setattr(engine, "load_data", lambda c: Datasets(images, images, info8, images, notes))
    assert evaluate.main([str(tmp_path / "run" / "checkpoint.pt"), "--iw-samples", "0", "--quiet", "--limit", "2"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert "openai's FFHQ-256 grid" in result["grid"] and "seed-5" in result["split"]
    assert result["negative_elbo"]["weights"] == "EMA" and "Very Deep VAE paper's figure" in result["negative_elbo"]["label"]
    assert "single-sample negative ELBO, EMA weights" in captured.err
