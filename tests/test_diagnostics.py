"""Diagnostics of latent groups (Chapter 2): KL per group, cumulative rate, active units, and
samples with the top k groups fixed to the posterior."""
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from hvae_lib.analysis.diagnostics import (
    active_units,
    cumulative_rate,
    fixed_top_grid,
    kl_per_group,
    plot_cumulative_rate,
    plot_fixed_top_grid,
)
from hvae_lib.models.lvae import LadderVAE  # noqa: E402
from hvae_lib.probability.objectives import ModelOutput  # noqa: E402


class KnownModel(nn.Module):
    """Every image is constant at a value v; the posterior means of its two groups are
    [v, 0.1 v, 3] (3 units) and [0] * 4, and its KL per group is [v, 2 v]."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        v = x.flatten(1)[:, 0]  # (B,)
        means = [torch.stack([v, 0.1 * v, torch.full_like(v, 3.0)], dim=1), torch.zeros(len(v), 4)]
        kl = torch.stack([v, 2 * v], dim=1)  # (B, 2)
        return ModelOutput(torch.zeros_like(v), kl, kl.sum(1), None, {"posterior_means": means})


def constant_images(values):
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).clone()  # (N, 1, 4, 4)


def test_active_units_counts_varying_means_only():
    """v alternates 0.2 / 0.8, so Var(v) = 0.09 > 0.01 (active), Var(0.1 v) = 0.0009 (inactive),
    and constant means have variance 0 (inactive)."""
    images = constant_images([0.2, 0.8] * 5)
    counts, total = active_units(KnownModel(), images, batch_size=3)
    assert counts.tolist() == [1, 0] and total == 1
    counts, total = active_units(KnownModel(), images, threshold=0.0005)
    assert counts.tolist() == [2, 0] and total == 2


def test_kl_per_group_is_the_dataset_mean_over_uneven_batches():
    values = [0.1, 0.3, 0.5, 0.9, 1.0, 0.0, 0.7]
    images = constant_images(values)
    dataset = [(img, 0) for img in images]  # a dataset of (image, label) items works as well
    expected = torch.tensor([sum(values) / 7, 2 * sum(values) / 7])
    assert torch.allclose(kl_per_group(KnownModel(), images, batch_size=3), expected, atol=1e-6)
    assert torch.allclose(kl_per_group(KnownModel(), dataset, batch_size=2), expected, atol=1e-6)
    with pytest.raises(ValueError, match="at least one image"):
        kl_per_group(KnownModel(), images[:0])


def test_cumulative_rate_plot_has_one_point_per_group():
    kl = torch.tensor([3.0, 1.0, 0.5, 2.0, 0.0])
    ax = plot_cumulative_rate(kl)
    xs, ys = ax.lines[0].get_xdata(), ax.lines[0].get_ydata()
    assert len(xs) == 5 and list(xs) == [0, 1, 2, 3, 4]
    assert torch.allclose(torch.tensor(ys).float(), torch.tensor([3.0, 4.0, 4.5, 6.5, 6.5]))
    assert "nats" in ax.get_ylabel() and "group" in ax.get_xlabel()
    plt.close("all")
    with pytest.raises(ValueError, match="vector"):
        plot_cumulative_rate(torch.zeros(2, 3))


def test_cumulative_rate_in_nats_and_in_bits_per_dimension():
    ln2 = math.log(2)
    kl = torch.tensor([784 * ln2, 0.0, 2 * 784 * ln2])  # 1 bit/dim, nothing, 2 bits/dim
    assert torch.allclose(cumulative_rate(kl), torch.tensor([784 * ln2, 784 * ln2, 3 * 784 * ln2]))
    assert torch.allclose(cumulative_rate(kl, num_dims=784), torch.tensor([1.0, 1.0, 3.0]))
    with pytest.raises(ValueError, match="vector"):
        cumulative_rate(torch.zeros(2, 3))


def sharp_lvae():
    """A LadderVAE whose posteriors and pixel likelihood are near point masses, so that with every
    group taken from q(z|x) a sample is the reconstruction, by construction."""
    torch.manual_seed(0)
    model = LadderVAE((3, 16, 16), 8, groups_per_scale=(1, 1, 2), z_channels=2, channels=8,
                      initial_downsamples=1, num_mix=1)
    with torch.no_grad():
        for head in model.bu_heads:  # bottom-up log sigma -> -7: the precision merge follows it
            head.weight[2:] = 0
            head.bias[2:] = -20
        model.head.proj.weight[4:] = 0  # logistic log-scales -7 and no colour coupling
        model.head.proj.bias[4:7] = -7
        model.head.proj.bias[7:] = 0
    return model


def test_fixed_top_grid_moves_from_samples_to_reconstructions():
    model = sharp_lvae()
    x = torch.rand(32, 3, 16, 16)
    recon = model.reconstruct(x)  # (32, 3, 16, 16)
    torch.manual_seed(1)
    grid = fixed_top_grid(model, x, ks=range(5))
    assert grid.shape == (5, 32, 3, 16, 16)
    distance = ((grid - recon) ** 2).mean(dim=(1, 2, 3, 4))  # (5,): k = 0 .. L
    assert distance[4] < 1e-5  # k = L: the reconstruction up to 8-bit rounding
    assert distance[0] > 100 * distance[4]
    assert all(distance[k + 1] < distance[k] for k in range(4)), distance


def test_active_units_and_kl_on_a_ladder_vae():
    model = sharp_lvae()
    x = torch.rand(20, 3, 16, 16)
    counts, total = active_units(model, x, batch_size=8)
    assert counts.shape == (4,) and total == int(counts.sum()) and total <= int(model.group_sizes.sum())
    assert kl_per_group(model, x).shape == (4,)
    assert model.training  # the diagnostics restore the mode they found


def test_plot_fixed_top_grid_labels_every_row():
    model = sharp_lvae()
    ax = plot_fixed_top_grid(model, torch.rand(3, 3, 16, 16), ks=[0, 2, 4], temperature=0.7)
    assert [t.get_text() for t in ax.texts] == ["x", "k = 0", "k = 2", "k = 4"]
    plt.close("all")
