"""The IAF cells of "NVAE w/ flow" (Chapter 4): masks make Jacobians triangular, log-dets are exact."""

import pytest
import torch
from einops import rearrange
from torch.autograd.functional import jacobian

from hvae_lib.probability.flows import IAFCell, MaskedConv2d, PairedIAF, autoregressive_mask

C, H, W, CTX = 4, 4, 4, 3  # tiny latent: 64 ordered elements


def to_order(z):
    """(1, C, H, W) -> (H*W*C,): pixel-major raster order, then channel (= group) inside a pixel."""
    return rearrange(z, "1 c h w -> (h w c)")


def from_order(v, c=C, h=H, w=W):
    return rearrange(v, "(h w c) -> 1 c h w", h=h, w=w, c=c)


def randomize_(module, seed):
    """Weight norms of order one and random biases, so s and mu are far from their small initial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("log_weight_norm"):
                p.copy_(torch.empty_like(p).uniform_(-0.5, 0.5, generator=g))
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module


def make(cls, seed=0, **kw):
    torch.manual_seed(seed)
    return randomize_(cls(C, CTX, 8, **kw), seed).double()


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, C, H, W, generator=g, dtype=torch.float64), torch.randn(1, CTX, H, W, generator=g, dtype=torch.float64)


def flow_jacobian(flow, z, ctx):
    return jacobian(lambda v: to_order(flow(from_order(v), ctx)[0]), to_order(z))  # (D, D)


def nonzero_fraction(jac, strictly_lower):
    """Share of the strictly lower (or upper) triangle of ``jac`` that is nonzero."""
    part = torch.ones_like(jac, dtype=torch.bool)
    part = part.tril(-1) if strictly_lower else part.triu(1)
    return (jac[part] != 0).float().mean().item()


# ---- masks ----------------------------------------------------------------------------------

@pytest.mark.parametrize("k, zero_diagonal, expected", [(3, True, 4), (3, False, 5), (5, True, 12), (5, False, 13), (1, True, 0)])
def test_single_channel_mask_keeps_exactly_the_earlier_pixels(k, zero_diagonal, expected):
    mask = autoregressive_mask(1, 1, k, ar_groups=1, zero_diagonal=zero_diagonal)
    assert mask.sum().item() == expected
    assert mask[0, 0, : k // 2].sum() == (k // 2) * k  # every row above
    assert mask[0, 0, k // 2 + 1 :].sum() == 0  # no row below


@pytest.mark.parametrize("c_in, c_out, groups", [(2, 6, 1), (6, 2, 1), (6, 6, 6), (4, 8, 1)])
def test_mirror_mask_is_the_forward_mask_flipped_everywhere(c_in, c_out, groups):
    for zero_diagonal in (False, True):
        fwd = autoregressive_mask(c_in, c_out, 3, 2, groups, zero_diagonal)
        mir = autoregressive_mask(c_in, c_out, 3, 2, groups, zero_diagonal, mirror=True)
        assert torch.equal(mir, fwd.flip(0, 1, 2, 3))


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("zero_diagonal", [False, True])
def test_masked_conv_reads_exactly_the_allowed_inputs(mirror, zero_diagonal):
    """Linear layer, so its Jacobian is the kernel: nonzero exactly on earlier (p, group) within reach."""
    c_in, c_out, groups, h, w = 2, 4, 2, 5, 5
    torch.manual_seed(0)
    conv = MaskedConv2d(c_in, c_out, 3, groups, zero_diagonal=zero_diagonal, mirror=mirror).double()
    x = torch.randn(1, c_in, h, w, dtype=torch.float64)
    jac = jacobian(lambda v: rearrange(conv(rearrange(v, "(h w c) -> 1 c h w", h=h, w=w)), "1 c h w -> (h w c)"),
                   rearrange(x, "1 c h w -> (h w c)"))  # (H*W*C_out, H*W*C_in)
    pix_o, ch_o = torch.arange(h * w * c_out).div(c_out, rounding_mode="floor"), torch.arange(h * w * c_out) % c_out
    pix_i, ch_i = torch.arange(h * w * c_in).div(c_in, rounding_mode="floor"), torch.arange(h * w * c_in) % c_in
    key_o = (pix_o * groups + ch_o // (c_out // groups)).view(-1, 1)
    key_i = (pix_i * groups + ch_i // (c_in // groups)).view(1, -1)
    if mirror:
        key_o, key_i = -key_o, -key_i
    allowed = key_i < key_o if zero_diagonal else key_i <= key_o
    near = ((pix_o.view(-1, 1) // w - pix_i.view(1, -1) // w).abs() <= 1) & ((pix_o.view(-1, 1) % w - pix_i.view(1, -1) % w).abs() <= 1)
    assert torch.equal(jac != 0, allowed & near)


def test_masked_conv_is_weight_normalised_with_mask_as_buffer():
    conv = MaskedConv2d(4, 8, 3, 4, zero_diagonal=True, init_scale=0.1)
    norms = conv.masked_weight().flatten(1).norm(dim=1)
    assert torch.allclose(norms, conv.log_weight_norm.exp().flatten(), rtol=1e-4)
    assert (norms < 0.11).all()  # 0.1 * (||w|| + 0.01) / ||w||, a little over 0.1
    assert "mask" in dict(conv.named_buffers()) and "mask" not in dict(conv.named_parameters())
    assert (conv.masked_weight() * (1 - conv.mask) == 0).all()


# ---- Jacobians of the cells ---------------------------------------------------------------------

def test_volume_preserving_cell_is_unit_lower_triangular():
    cell = make(IAFCell)
    z, ctx = inputs()
    jac = flow_jacobian(cell, z, ctx)
    assert torch.equal(jac.triu(1), torch.zeros_like(jac))
    assert torch.equal(jac.diagonal(), torch.ones(C * H * W, dtype=jac.dtype))
    assert nonzero_fraction(jac, strictly_lower=True) > 0.8  # it really uses the past
    _, log_det = cell(z, ctx)
    assert log_det.shape == (1,)
    assert torch.allclose(torch.linalg.slogdet(jac).logabsdet, log_det, atol=1e-12)


def test_affine_cell_is_lower_triangular_with_diagonal_exp_minus_s():
    cell = make(IAFCell, volume_preserving=False)
    z, ctx = inputs()
    jac = flow_jacobian(cell, z, ctx)
    assert torch.equal(jac.triu(1), torch.zeros_like(jac))
    _, s = cell.shift_and_log_scale(z, ctx)
    assert s.abs().max() > 0.3  # a scale worth testing
    assert torch.allclose(jac.diagonal(), torch.exp(-to_order(s)).double(), rtol=1e-5)
    _, log_det = cell(z, ctx)
    assert torch.allclose(torch.linalg.slogdet(jac).logabsdet, log_det, atol=1e-10)
    assert torch.allclose(log_det, -s.sum().reshape(1), atol=1e-5)


@pytest.mark.parametrize("volume_preserving", [True, False])
def test_mirror_cell_is_triangular_in_the_reversed_order(volume_preserving):
    cell = make(IAFCell, mirror=True, volume_preserving=volume_preserving)
    z, ctx = inputs()
    jac = flow_jacobian(cell, z, ctx)
    assert torch.equal(jac.tril(-1), torch.zeros_like(jac))
    assert nonzero_fraction(jac, strictly_lower=False) > 0.8
    _, log_det = cell(z, ctx)
    assert torch.allclose(torch.linalg.slogdet(jac).logabsdet, log_det, atol=1e-10)


@pytest.mark.parametrize("volume_preserving", [True, False])
def test_paired_cells_couple_everything_yet_report_the_exact_log_det(volume_preserving):
    flow = make(PairedIAF, volume_preserving=volume_preserving)
    z, ctx = inputs()
    jac = flow_jacobian(flow, z, ctx)
    assert min(nonzero_fraction(jac, True), nonzero_fraction(jac, False)) > 0.8  # far from triangular
    _, log_det = flow(z, ctx)
    sign, logabsdet = torch.linalg.slogdet(jac)
    assert sign > 0
    assert torch.allclose(logabsdet, log_det, atol=1e-10)
    if volume_preserving:
        assert log_det.item() == 0.0 and abs(logabsdet.item()) < 1e-8
    else:
        assert abs(log_det.item()) > 1.0  # a volume change worth checking


# ---- behaviour ----------------------------------------------------------------------------------

@pytest.mark.parametrize("flow_cls", [IAFCell, PairedIAF])
def test_affine_flow_inverts_by_fixed_point(flow_cls):
    flow = make(flow_cls, volume_preserving=False)
    z, ctx = inputs()
    z_new, _ = flow(z, ctx)
    assert (z_new - z).abs().max() > 0.1
    assert torch.allclose(flow.inverse(z_new, ctx), z, atol=1e-9)


def test_context_changes_the_output_and_none_is_refused():
    flow = make(PairedIAF, volume_preserving=False)
    z, ctx = inputs()
    z1, ld1 = flow(z, ctx)
    z2, ld2 = flow(z, ctx + 1.0)
    assert (z1 - z2).abs().max() > 1e-2 and (ld1 - ld2).abs().max() > 1e-3
    with pytest.raises(ValueError, match="context of shape"):
        flow(z, None)
    with pytest.raises(ValueError, match="context of shape"):
        flow(z, ctx[..., :2, :2])
    no_context = IAFCell(C, 0)
    assert no_context(z.float())[0].shape == z.shape
    with pytest.raises(ValueError, match="context_channels=0"):
        no_context(z.float(), ctx.float())


def test_fresh_cell_is_close_to_the_identity():
    """Head weight norm 0.1 and zero bias: |mu_c(p)| <= ||w_c|| * ||features(p)|| (Cauchy-Schwarz)."""
    torch.manual_seed(0)
    cell = IAFCell(8, CTX)
    z, ctx = torch.randn(2, 8, 6, 6), torch.randn(2, CTX, 6, 6)
    mu, s = cell.shift_and_log_scale(z, ctx)
    assert torch.equal(s, torch.zeros_like(s))
    h = torch.nn.functional.elu(cell.depthwise(torch.nn.functional.elu(cell.expand(z) + cell.context_proj(ctx))))
    row_norms = cell.head.masked_weight().flatten(1).norm(dim=1)  # (C_z,)
    assert (row_norms < 0.11).all()
    bound = row_norms.view(1, -1, 1, 1) * h.norm(dim=1, keepdim=True)  # (B, C_z, H, W)
    assert (mu.abs() <= bound + 1e-6).all()
    z_new, log_det = cell(z, ctx)
    assert torch.equal(z_new, z - mu) and torch.equal(log_det, torch.zeros(2))


def test_bf16_autocast_gives_float32_log_det_and_finite_output():
    torch.manual_seed(0)
    z, ctx = torch.randn(2, C, H, W), torch.randn(2, CTX, H, W)
    fresh, randomized = (PairedIAF(C, CTX, 8, volume_preserving=False) for _ in range(2))
    for flow, tolerance in ((fresh, 1e-2), (randomize_(randomized, 0), 0.05)):
        reference, reference_log_det = flow(z, ctx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z_new, log_det = flow(z, ctx)
        assert z_new.dtype == torch.float32 and log_det.dtype == torch.float32 and log_det.shape == (2,)
        assert torch.isfinite(z_new).all() and torch.isfinite(log_det).all()
        # z - mu is formed in float32, so only mu and s carry bf16 rounding (amplified by exp(-s) when s is large).
        assert (z_new - reference).norm() <= tolerance * reference.norm()
        assert (log_det - reference_log_det).abs().max() <= tolerance * reference_log_det.abs().max() + 1e-2
        (z_new.sum() + log_det.sum()).backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in flow.parameters())


def test_bad_sizes_raise_one_clear_error():
    with pytest.raises(ValueError, match="multiple of z_channels"):
        IAFCell(4, 3, hidden_channels=10)
    with pytest.raises(ValueError, match="odd kernel_size"):
        MaskedConv2d(2, 2, 4, ar_groups=2)
    with pytest.raises(ValueError, match="multiple of ar_groups"):
        MaskedConv2d(3, 6, 3, ar_groups=2)
    with pytest.raises(ValueError, match=r"expects z of shape \(B, 4, H, W\)"):
        IAFCell(4, 0)(torch.randn(1, 3, 4, 4))
