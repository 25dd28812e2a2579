"""Sampling cost (Chapter 7): the counted passes are what the architectures imply."""
import pytest
import torch

from hvae_lib.models.exact import sampling_cost
from hvae_lib.models.exact.binary_ar import BinaryAR
from hvae_lib.models.exact.d_layer_vae import DLayerVAE
from hvae_lib.models.exact.sampling_cost import count_calls, median_times, multiresolution_vae, sampling_cost_rows


@pytest.mark.parametrize("d", [4, 9, 25])
def test_autoregressive_sampling_takes_d_passes(d):
    ar = BinaryAR(d, hidden=32)
    with count_calls(net=ar) as counts:
        ar.sample(3)
    assert counts["net"] == d
    with count_calls(net=ar) as counts:
        ar.log_prob(torch.zeros(3, d))  # scoring a known image: one pass
    assert counts["net"] == 1


def test_d_layer_vae_sampling_takes_one_prior_pass_per_layer():
    vae = DLayerVAE(BinaryAR(9, hidden=16))
    with count_calls(prior=vae.prior) as counts:
        vae.sample(2)
    assert counts["prior"] == 9 == vae.num_layers
    learned = DLayerVAE(BinaryAR(9, hidden=16), learned=True)
    with count_calls(prior=learned.prior, decoder=learned.decoder) as counts:
        learned.sample(2)
    assert counts == {"prior": 9, "decoder": 1}  # D layers, then one parallel decoder pass


@pytest.mark.parametrize("side", [4, 8, 16])
def test_multiresolution_vae_samples_in_one_pass_whatever_the_size(side):
    lvae = multiresolution_vae(side, channels=8)
    modules = {f"prior{l}": p for l, p in enumerate(lvae.priors)} | {"head": lvae.head}
    with count_calls(**modules) as counts:
        lvae.sample(2)
    assert counts["head"] == 1
    assert all(counts[f"prior{l}"] == 1 for l in range(len(lvae.priors)))  # each layer's prior once
    assert lvae.num_groups == 4 < side * side


def test_count_calls_removes_its_hooks_and_rejects_non_modules():
    ar = BinaryAR(4, hidden=4)
    with count_calls(net=ar):
        pass
    assert not ar._forward_hooks
    with pytest.raises(TypeError, match="nn.Modules"):
        with count_calls(net=lambda x: x):
            pass


def test_median_times_interleaves_counts_and_takes_medians(monkeypatch):
    clock = iter(range(1000))
    monkeypatch.setattr(sampling_cost.time, "perf_counter", lambda: next(clock))
    order = []
    ar = BinaryAR(5, hidden=4)
    samplers = {"a": lambda: order.append("a"), "b": lambda: (order.append("b"), ar.sample(1))}
    times, calls = median_times(samplers, repeats=3, warmup=0, count={"b": {"net": ar}})
    assert order == ["a", "b"] * 4  # one warm-up round (forced by counting), then three interleaved rounds
    assert times == {"a": 1, "b": 1}  # each timed call spans one tick of the fake clock
    assert calls == {"b": {"net": 5}}


def test_sampling_cost_rows_report_the_architectures_passes():
    rows = sampling_cost_rows(sides=(2, 4), batch=2, repeats=1)
    assert len(rows) == 6 and all(r["batch"] == 2 for r in rows)
    by = {(r["model"], r["D"]): r for r in rows}
    for d in (4, 16):
        assert by[("autoregressive", d)]["passes"] == d
        assert by[("D-layer VAE", d)]["passes"] == d and by[("D-layer VAE", d)]["layers"] == d
        assert by[("multi-resolution VAE", d)]["passes"] == 1 and by[("multi-resolution VAE", d)]["layers"] == 4
    assert all(r["seconds_per_sample"] > 0 for r in rows)
