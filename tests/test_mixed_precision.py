"""Half precision (Chapter 5): the likelihood, KL and log-ratio terms stay float32 under autocast.

The convolutions may run in bf16 or fp16, but every model hands the ELBO's terms over in float32,
computed from float32 parameters: a per-image log-likelihood is a sum of thousands of pixel terms
(fp16's largest value is 65504, bf16 has 8 significant bits), and the KL of a nearly inactive
latent unit is a difference of numbers close to 1.
"""
import pytest
import torch

import hvae_lib.models.presets  # noqa: F401  (registers the presets)
from hvae_lib.config import override
from hvae_lib.models.presets import get_preset
from hvae_lib.probability.likelihoods import DiscretizedLogisticMixture
from hvae_lib.probability.residual_normal import residual_kl

MODELS = {"vae": ("vae_tiny", {}, "logistic_mixture"), "lvae": ("lvae_tiny", {}, "logistic_mixture"),
          "nvae": ("nvae_tiny", {}, "logistic_mixture"), "nvae_flow": ("nvae_tiny", {"num_flows": 1}, "logistic_mixture"),
          "nvae_bernoulli": ("nvae_tiny", {}, "bernoulli")}


def build(preset, changes, likelihood):
    config = override(get_preset(preset), changes)
    torch.manual_seed(0)
    bits = 1 if likelihood == "bernoulli" else 8
    model = config.model.build((3, 16, 16), bits, likelihood).train()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 2**bits, (8, 3, 16, 16), generator=g).float() / (2**bits - 1)  # (B, C, H, W)
    return model, x


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", list(MODELS))
def test_elbo_terms_are_float32_and_close_to_fp32_under_autocast(name, dtype):
    model, x = build(*MODELS[name])
    conv_dtypes = set()
    hooks = [m.register_forward_hook(lambda m, i, o: conv_dtypes.add(o.dtype))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    outputs = []
    for enabled in (False, True):
        torch.manual_seed(2)
        with torch.autocast("cpu", dtype=dtype, enabled=enabled):
            outputs.append(model(x))
    for h in hooks:
        h.remove()
    assert dtype in conv_dtypes  # the convolutions did run in half precision
    full, half = outputs
    for term in ("log_px_z", "kl_per_group", "log_q_minus_log_p"):
        got, ref = getattr(half, term), getattr(full, term)
        assert got.dtype == torch.float32, f"{term} is {got.dtype} under {dtype} autocast"
        assert torch.isfinite(got).all()
        # Half-precision convolutions move the terms a little; the terms themselves are not rounded.
        torch.testing.assert_close(got, ref, rtol=2e-2, atol=0.5)


def test_the_mixture_computes_in_float32_by_default_and_in_lower_precision_only_when_asked():
    torch.manual_seed(0)
    params = torch.randn(4, 2 * 4, 8, 8)  # (B, M (1 + 3C), H, W): 2 components, grey
    x = torch.randint(0, 256, (4, 1, 8, 8)).float() / 255
    reference = DiscretizedLogisticMixture(params, 1).log_prob(x)
    from_half = DiscretizedLogisticMixture(params.half(), 1).log_prob(x)
    assert from_half.dtype == torch.float32
    torch.testing.assert_close(from_half, DiscretizedLogisticMixture(params.half().float(), 1).log_prob(x))
    in_bf16 = DiscretizedLogisticMixture(params, 1, dtype=torch.bfloat16).log_prob(x)
    assert in_bf16.dtype == torch.bfloat16
    assert (in_bf16.float() - reference).abs().max() > 1e-3  # rounding shows up in nats per image


def test_the_residual_kl_of_a_nearly_inactive_unit_is_lost_in_fp16():
    # dsigma = 1 + 1e-3: KL = 0.5 (dsigma^2 - log dsigma^2 - 1) ~ dsigma_err^2 = 1e-6 nats; fp16 cannot
    # even represent 1 + 1e-3 (its spacing near 1 is 2^-10), so the correction vanishes.
    delta_sigma, sigma_p = torch.tensor([1.001]), torch.tensor([1.0])
    exact = residual_kl(torch.zeros(1), delta_sigma, sigma_p)
    assert 9e-7 < exact.item() < 1.1e-6
    assert residual_kl(torch.zeros(1).half(), delta_sigma.half(), sigma_p.half()).item() == 0.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_every_distribution_lifts_half_precision_network_outputs_to_float32(dtype):
    from hvae_lib.probability.gaussian import DiagonalGaussian
    from hvae_lib.probability.likelihoods import Bernoulli
    from hvae_lib.probability.residual_normal import NVAENormal

    raw = torch.randn(2, 8, 4, 4).to(dtype)  # (B, 2Z, H, W), as a half-precision conv hands it over
    tensors = {
        "NVAENormal.from_params": vars(NVAENormal.from_params(raw)),
        "NVAENormal.residual": vars(NVAENormal.residual(raw, raw)),
        "DiagonalGaussian.from_params": vars(DiagonalGaussian.from_params(raw)),
        "Bernoulli": {"logits": Bernoulli(raw).logits},
        "DiscretizedLogisticMixture": {k: v for k, v in vars(DiscretizedLogisticMixture(raw, 1)).items()
                                       if isinstance(v, torch.Tensor)},
    }
    for where, fields in tensors.items():
        for name, value in fields.items():
            assert value.dtype == torch.float32, f"{where}: {name} is {value.dtype}"
