"""NVAE's building blocks: residual normal, spectral and BN regularisers, cells (Chapters 3-4)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hvae_lib.analysis.operator_norm import conv_operator_norm, reshaped_kernel_norm
from hvae_lib.layers.cells import (
    EncoderCell,
    FactorizedReduce,
    GenerativeCell,
    SqueezeExcite,
    generative_cell,
    use_generative_cell,
)
from hvae_lib.layers.norms import BatchNorm2d, WNConv2d, bn_regularizer, frozen_running_stats
from hvae_lib.layers.spectral import SpectralRegularizer, power_iteration
from hvae_lib.probability.residual_normal import NVAENormal, residual_kl


def test_residual_normal_kl_equals_gaussian_kl_of_implied_q_and_p():
    torch.manual_seed(0)
    prior_raw, delta_raw = 3 * torch.randn(4, 6, 5, 5), 3 * torch.randn(4, 6, 5, 5)
    p = NVAENormal.from_params(prior_raw)
    q = NVAENormal.residual(prior_raw, delta_raw)
    generic = q.to_diagonal().kl(p.to_diagonal())
    torch.testing.assert_close(q.kl(p), generic, rtol=1e-5, atol=1e-5)
    # The implied q is N(mu_p + dmu, sigma_p * dsigma) with the effective corrections.
    dmu, dsigma = q.mu - p.mu, q.sigma / p.sigma
    torch.testing.assert_close(q.kl(p), residual_kl(dmu, dsigma, p.sigma))
    # Official parameterisation: soft clamp at 5, sigma = exp(log_sigma) + 0.01.
    mu_raw, ls_raw = (prior_raw + delta_raw).chunk(2, dim=1)
    torch.testing.assert_close(q.mu, 5 * torch.tanh(mu_raw / 5))
    torch.testing.assert_close(q.sigma, torch.exp(5 * torch.tanh(ls_raw / 5)) + 0.01)


def test_residual_kl_is_zero_for_a_zero_correction_whatever_the_prior():
    torch.manual_seed(1)
    prior_raw = 4 * torch.randn(2, 8, 3, 3)
    q = NVAENormal.residual(prior_raw, torch.zeros_like(prior_raw))
    assert q.kl(NVAENormal.from_params(prior_raw)).abs().max() < 1e-6
    sigma_p = torch.rand(10) + 0.1
    assert torch.all(residual_kl(torch.zeros(10), torch.ones(10), sigma_p).abs() < 1e-7)


def test_log_prob_matches_diagonal_gaussian_and_temperature_scales_sigma():
    torch.manual_seed(2)
    n = NVAENormal.from_params(torch.randn(3, 4, 2, 2))
    z = torch.randn(3, 2, 2, 2)
    torch.testing.assert_close(n.log_prob(z), n.to_diagonal().log_prob(z))
    hot = NVAENormal.from_raw(n.mu, torch.zeros_like(n.mu), temperature=0.5)
    torch.testing.assert_close(hot.sigma, torch.full_like(n.mu, 0.5 * 1.01))


def _random_convs():
    return [WNConv2d(6, 10, 3), nn.Conv2d(12, 12, 5, padding=2, groups=12, bias=False), nn.Conv2d(7, 3, 1),
            WNConv2d(6, 10, 3), nn.Conv2d(4, 9, 3)]


def test_power_iteration_matches_the_largest_singular_value():
    torch.manual_seed(3)
    convs = _random_convs()
    reg = SpectralRegularizer(convs)
    for _ in range(10):
        estimate = reg.singular_values()
    exact = []
    for conv in convs:
        weight = conv.effective_weight() if hasattr(conv, "effective_weight") else conv.weight
        exact.append(torch.linalg.matrix_norm(weight.reshape(weight.shape[0], -1), ord=2))
    torch.testing.assert_close(estimate, torch.stack(exact).detach(), rtol=2e-3, atol=1e-5)
    total = reg()
    total.backward()  # differentiable in the weights
    assert convs[0].weight.grad is not None and convs[0].log_weight_norm.grad is not None
    assert reg.started  # the long first run happened once


def test_power_iteration_warm_started_from_the_top_vector_stays_there():
    """power_iteration (the loop SpectralRegularizer runs): from the top left singular vector, one round
    gives the top pair; from a random start, the rounds converge to it; zero rounds return v as given."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 6, 10, generator=g, dtype=torch.float64)  # (N, R, C)
    left, values, right = torch.linalg.svd(w)
    u, v = power_iteration(w, left[:, :, 0], torch.zeros(3, 10, dtype=torch.float64), 1)
    sign = torch.sign((u * left[:, :, 0]).sum(1, keepdim=True))
    torch.testing.assert_close(u * sign, left[:, :, 0])
    torch.testing.assert_close(v * sign, right[:, 0, :])
    u, v = power_iteration(w, F.normalize(torch.randn(3, 6, generator=g, dtype=torch.float64), dim=1), v, 300)
    torch.testing.assert_close((torch.bmm(w, v.unsqueeze(2)).squeeze(2) * u).sum(1), values[:, 0])
    v0 = torch.randn(3, 10, dtype=torch.float64)
    assert power_iteration(w, u, v0, 0)[1] is v0


def test_spectral_vectors_are_buffers_and_a_reload_continues_identically():
    torch.manual_seed(4)
    net = nn.Sequential(*_random_convs())
    net.reg = SpectralRegularizer(list(net.children()))
    net.reg()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    assert any(k.startswith("reg.u_") for k in state) and any(k.startswith("reg.v_") for k in state)
    assert "reg.started" in state
    continued = net.reg()

    torch.manual_seed(99)  # a different random start, overwritten by the checkpoint
    clone = nn.Sequential(*_random_convs())
    clone.reg = SpectralRegularizer(list(clone.children()))
    clone.load_state_dict(state)
    torch.testing.assert_close(clone.reg(), continued, rtol=0, atol=0)
    fresh = nn.Sequential(*_random_convs())
    fresh.load_state_dict({k: v for k, v in state.items() if not k.startswith("reg.")}, strict=False)
    fresh.reg = SpectralRegularizer(list(fresh.children()), first_iterations=1)
    assert not torch.equal(fresh.reg(), continued)  # without the buffers the estimate differs


def test_bn_regulariser_is_the_sum_of_max_abs_gamma():
    bns = [BatchNorm2d(4), BatchNorm2d(3)]
    with torch.no_grad():
        bns[0].weight.copy_(torch.tensor([0.5, -2.0, 1.0, 0.1]))
        bns[1].weight.copy_(torch.tensor([0.3, 0.7, -0.2]))
    assert bn_regularizer(bns).item() == pytest.approx(2.0 + 0.7)
    assert bns[0].momentum == 0.05


def test_frozen_running_stats_gives_train_outputs_without_updating_statistics():
    torch.manual_seed(5)
    bn, x = BatchNorm2d(3), torch.randn(8, 3, 4, 4) * 3 + 1
    with frozen_running_stats():
        y = bn(x)
    assert torch.equal(bn.running_mean, torch.zeros(3)) and bn.num_batches_tracked.item() == 0
    torch.testing.assert_close(y, bn(x))  # the normal train-mode output, which does update
    assert bn.num_batches_tracked.item() == 1


def test_weight_norm_conv_has_one_norm_per_output_channel():
    torch.manual_seed(6)
    conv = WNConv2d(5, 7, 3)
    with torch.no_grad():
        conv.log_weight_norm.copy_(torch.randn(7, 1, 1, 1))
    norms = conv.effective_weight().flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, conv.log_weight_norm.exp().flatten(), rtol=1e-4, atol=1e-6)
    assert sum(p.numel() for p in conv.parameters()) == 7 * 5 * 9 + 7 + 7  # weight, bias, log-norm


def test_squeeze_excite_gate_is_in_unit_interval_and_keeps_the_shape():
    torch.manual_seed(7)
    se, x = SqueezeExcite(32), 5 * torch.randn(4, 32, 6, 6)
    gate = se.gate(x)
    assert gate.shape == (4, 32) and torch.all((gate > 0) & (gate < 1))
    assert se(x).shape == x.shape
    assert se.net[0].out_features == 4  # max(32 / 16, 4)


def test_generative_cell_is_depthwise_and_cheaper_than_a_dense_5x5_cell():
    cell = GenerativeCell(16)
    depthwise = [m for m in cell.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (5, 5)]
    assert len(depthwise) == 1 and depthwise[0].groups == depthwise[0].in_channels == 96
    params = sum(p.numel() for p in cell.parameters())
    dense = GenerativeCell(16)
    dense.branch[4] = nn.Conv2d(96, 96, 5, padding=2, bias=False)  # the same cell with a dense 5x5 conv
    assert params < sum(p.numel() for p in dense.parameters()) / 30
    assert params < sum(p.numel() for p in nn.Conv2d(16, 16, 5).parameters())  # even one dense 5x5 at width C
    # Layout: BN, 1x1 up, BN, Swish, dw 5x5, BN, Swish, 1x1 down, BN, SE.
    names = [type(m).__name__ for m in cell.branch]
    assert names == ["BatchNorm2d", "Conv2d", "BatchNorm2d", "Swish", "Conv2d", "BatchNorm2d", "Swish", "Conv2d",
                     "BatchNorm2d", "SqueezeExcite"]
    x = torch.randn(2, 16, 8, 8)
    assert cell(x).shape == x.shape
    up = GenerativeCell(16, upsample=True)
    assert up(x).shape == (2, 8, 16, 16) and isinstance(up.branch[0], nn.Upsample)


@pytest.mark.parametrize("upsample,use_se", [(False, True), (True, True), (False, False)])
def test_generative_cell_function_is_skip_plus_a_tenth_of_the_branch_and_can_be_swapped(upsample, use_se):
    torch.manual_seed(11)
    cell, x = GenerativeCell(8, upsample=upsample, use_se=use_se), torch.randn(3, 8, 6, 6)
    expected = cell.skip(x) + 0.1 * cell.branch(x)  # the Sequential, layer by layer
    torch.testing.assert_close(cell(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(generative_cell(x, cell.layers()), expected, rtol=0, atol=0)
    layers = cell.layers()
    assert [layers.expand.kernel_size, layers.depthwise.kernel_size, layers.project.kernel_size] == [(1, 1), (5, 5), (1, 1)]
    assert layers.depthwise.groups == 48 and isinstance(layers.se, SqueezeExcite) == use_se
    # A function set on the cell replaces its forward; None restores the library's.
    stack = nn.Sequential(GenerativeCell(8), GenerativeCell(8), EncoderCell(8))
    wrong = lambda x, layers: layers.skip(x) + 0.2 * layers.se(layers.bn_out(layers.project(layers.expand(x))))  # noqa: E731
    before = stack(x)
    assert use_generative_cell(stack, wrong) == 2
    assert not torch.allclose(stack(x), before)
    assert use_generative_cell(stack, None) == 2
    torch.testing.assert_close(stack(x), before, rtol=0, atol=0)


def test_operator_norm_of_a_conv_matches_its_dense_matrix_and_differs_from_the_reshaped_kernel_norm():
    """Against the exact norm of the convolution's matrix (built by autograd), for a dense, a
    strided and a depthwise kernel; and the analytic anchor of a constant 3x3 kernel, whose
    operator norm tends to 9 on large images while its reshaped norm is 3."""
    torch.manual_seed(12)
    for weight, size, stride, groups in [(torch.randn(6, 3, 3, 3), 6, 1, 1), (torch.randn(4, 3, 3, 3), 8, 2, 1),
                                         (torch.randn(5, 1, 5, 5), 6, 1, 5)]:
        c_in = weight.shape[1] * groups
        dense = torch.autograd.functional.jacobian(
            lambda v: F.conv2d(v.view(1, c_in, size, size), weight.double(), stride=stride,
                               padding=weight.shape[-1] // 2, groups=groups).flatten(),
            torch.zeros(c_in * size * size, dtype=torch.float64))  # (C_out H' W', C_in H W)
        exact = torch.linalg.matrix_norm(dense, ord=2)
        estimate = conv_operator_norm(weight, (size, size), stride=stride, groups=groups, iterations=1000)
        assert estimate <= exact * (1 + 1e-9) and estimate == pytest.approx(exact.item(), rel=1e-4)
    ones = torch.ones(1, 1, 3, 3)
    assert reshaped_kernel_norm(ones) == pytest.approx(3.0)
    assert 8.9 < conv_operator_norm(ones, (64, 64)) <= 9.0  # k = 3 times the reshaped norm, up to the border
    # A depthwise kernel whose channels share one filter: the reshaped matrix overstates by sqrt(C).
    shared = torch.randn(1, 1, 3, 3).expand(16, 1, 3, 3).contiguous()
    assert reshaped_kernel_norm(shared) == pytest.approx(4 * reshaped_kernel_norm(shared[:1]).item(), rel=1e-5)
    assert conv_operator_norm(shared, (16, 16), groups=16) == pytest.approx(
        conv_operator_norm(shared[:1], (16, 16)).item(), rel=1e-3)
    with pytest.raises(ValueError, match="conv kernel"):
        conv_operator_norm(torch.randn(3, 3), (4, 4))


def test_encoder_cells_keep_or_halve_the_resolution():
    torch.manual_seed(8)
    x = torch.randn(2, 8, 8, 8)
    cell = EncoderCell(8)
    convs = [m for m in cell.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3), (3, 3)] and all(isinstance(c, WNConv2d) for c in convs)
    assert cell(x).shape == x.shape
    with torch.no_grad():  # skip + 0.1 * branch
        torch.testing.assert_close(cell(x), x + 0.1 * cell.branch(x))
    assert EncoderCell(8, downsample=True)(x).shape == (2, 16, 4, 4)


def test_factorized_reduce_equals_four_shifted_strided_convs():
    torch.manual_seed(9)
    fr, x = FactorizedReduce(6, 12), torch.randn(2, 6, 8, 8)
    act = F.silu(x)
    shifted = (act, act[:, :, 1:, 1:], act[:, :, :, 1:], act[:, :, 1:, :])
    expected = torch.cat([F.conv2d(s, c.effective_weight(), c.bias, stride=2) for c, s in zip(fr.convs, shifted)], 1)
    torch.testing.assert_close(fr(x), expected)


def test_factorized_reduce_backward_in_channels_last_with_few_channels():
    # torch's channels-last strided 1x1 conv crashed here for 2-7 input channels; ours must not.
    fr = FactorizedReduce(4, 8).to(memory_format=torch.channels_last)
    x = torch.randn(4, 4, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    fr(x).sum().backward()
    assert math.isfinite(x.grad.sum().item())
