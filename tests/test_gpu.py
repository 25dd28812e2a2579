"""What only a GPU can show: the engine's precisions, checkpointing and sampling on CUDA.

Skipped where no CUDA device is visible (as on the course's CPU machines and in CI); run on a GPU
with ``pytest tests/test_gpu.py``. Throughput and memory at the paper sizes are measured by
``benchmarks/engine_gpu.py`` and recorded in ``benchmarks/RESULTS.md``.
"""
import json
import math

import pytest
import torch

import hvae_lib.models.presets.nvae  # noqa: F401  (registers the NVAE presets)
from hvae_lib.config import override
from hvae_lib.layers.bn_readjust import cached_temperatures, sample_with_readjusted_bn
from hvae_lib.models.nvae import NVAE
from hvae_lib.models.presets import get_preset
from hvae_lib.training.checkpoint import load_model
from hvae_lib.training.engine import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SMALL = dict(num_latent_scales=2, num_groups_per_scale=2, ada_groups=True, num_latent_per_group=4,
             num_channels_enc=4, num_channels_dec=4, num_preprocess_cells=1, num_postprocess_cells=1, num_mix=3)


def tiny_nvae(*assignments):
    return override(get_preset("nvae_tiny"), ["device=cuda", "quiet=true", "eval_every=0", "test_limit=64",
                                              *assignments])


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_nvae_trains_on_the_gpu_with_checkpointing_and_loads_on_the_cpu(tmp_path, precision):
    config = tiny_nvae("max_steps=12", "checkpoint_every=12", f"precision={precision}", "grad_checkpointing=true")
    trainer = Trainer(config, tmp_path, resume=False)
    assert next(trainer.model.parameters()).is_cuda
    final = trainer.fit()
    assert math.isfinite(final["test_neg_elbo_nats"])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses and all(math.isfinite(v) for v in losses)
    # fp16's scaler starts at 2^10 (NVAE's choice): on an H100, 2 of these 12 steps overflowed and were
    # skipped, against 7 from torch's default 2^16.
    assert trainer.total_skips <= (3 if precision == "fp16" else 0)
    model, _, _ = load_model(tmp_path / "checkpoint.pt", device="cpu")  # a GPU checkpoint opens on a CPU
    assert not next(model.parameters()).is_cuda
    with torch.no_grad():
        x = model.sample(4, 0.8)  # (4, 3, 16, 16)
    assert x.shape == (4, 3, 16, 16) and torch.isfinite(x).all()


def test_gradient_checkpointing_gives_the_same_gradients_on_the_gpu():
    x = torch.rand(4, 3, 16, 16, device="cuda")
    grads, stats = [], []
    for on in (False, True):
        torch.manual_seed(0)
        model = NVAE((3, 16, 16), 8, "logistic_mixture", **SMALL).cuda()
        model.grad_checkpointing = on
        torch.manual_seed(5)  # the same z noise: checkpointing must replay the CUDA RNG when it recomputes
        out = model(x)
        (out.kl_per_group.sum(1) - out.log_px_z).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        stats.append([b.clone() for b in model.buffers()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)  # cuDNN may pick different algorithms
    for a, b in zip(*stats):  # recomputation must not count a batch twice
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_sampling_with_readjusted_bn_on_the_gpu_is_cached():
    torch.manual_seed(0)
    model = NVAE((3, 16, 16), 8, "logistic_mixture", **SMALL).cuda().eval()
    first = sample_with_readjusted_bn(model, 4, temperature=0.7, num_passes=3, batch_size=4)
    assert first.is_cuda and first.shape == (4, 3, 16, 16) and torch.isfinite(first).all()
    assert cached_temperatures(model) == [0.7]
