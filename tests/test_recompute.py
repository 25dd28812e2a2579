"""Recomputation in the backward pass (Chapter 5): checkpointed blocks and NVAE's fused BN-Swish."""
import copy

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from hvae_lib.layers.cells import EncoderCell, GenerativeCell, Swish, generative_cell, use_generative_cell
from hvae_lib.layers.norms import BatchNorm2d, frozen_running_stats
from hvae_lib.memory.recompute import BNSwish, checkpoint_block, fuse_bn_swish
from hvae_lib.memory.saved_tensors import count_saved_tensors
from hvae_lib.models.nvae import NVAE


def cell_stack(seed=0):
    torch.manual_seed(seed)
    return nn.ModuleList([EncoderCell(8), GenerativeCell(8), EncoderCell(8)]).double()


def run(cells, x, block_fn):
    """Output, input gradient, parameter gradients and BN buffers after one forward and backward."""
    x = x.clone().requires_grad_()
    h = x
    for cell in cells:
        h = block_fn(cell, h)
    (h * torch.linspace(-1, 1, h.numel(), dtype=h.dtype).view_as(h)).sum().backward()
    return h.detach(), x.grad, [p.grad for p in cells.parameters()], [b.clone() for b in cells.buffers()]


def test_checkpoint_block_gives_the_plain_gradients_and_updates_bn_once():
    x = torch.randn(4, 8, 6, 6, dtype=torch.float64)
    plain = run(cell_stack(), x, lambda cell, h: cell(h))
    recomputed = run(cell_stack(), x, checkpoint_block)
    torch.testing.assert_close(recomputed[0], plain[0])
    torch.testing.assert_close(recomputed[1], plain[1])
    for a, b in zip(recomputed[2], plain[2]):
        torch.testing.assert_close(a, b)
    for a, b in zip(recomputed[3], plain[3]):  # running means, variances and batch counts
        torch.testing.assert_close(a, b)


def test_a_plain_checkpoint_counts_the_batch_twice_in_bn():
    cells = cell_stack()
    x = torch.randn(4, 8, 6, 6, dtype=torch.float64)
    run(cells, x, lambda cell, h: checkpoint(cell, h, use_reentrant=False))  # what checkpoint_block guards against
    counts = {int(m.num_batches_tracked) for m in cells.modules() if isinstance(m, BatchNorm2d)}
    assert counts == {2}


def test_checkpoint_block_saves_only_block_inputs():
    cells = cell_stack()
    x = torch.randn(4, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    one_map = x.numel() * x.element_size()

    def forward(block_fn):
        h = x
        for cell in cells:
            h = block_fn(cell, h)
        return h

    _, plain = count_saved_tensors(lambda: forward(lambda c, h: c(h)), cells.parameters())
    _, recomputed = count_saved_tensors(lambda: forward(checkpoint_block), cells.parameters())
    assert recomputed.activation_bytes == 3 * one_map  # the input of each of the three cells
    assert plain.activation_bytes > 10 * recomputed.activation_bytes


def bn_swish_pair(momentum=0.05, seed=0):
    torch.manual_seed(seed)
    bn = BatchNorm2d(5, momentum=momentum).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    return nn.Sequential(bn, Swish())


@pytest.mark.parametrize("momentum", [0.05, None])
def test_fused_bn_swish_matches_bn_then_swish(momentum):
    plain = bn_swish_pair(momentum)
    fused = copy.deepcopy(plain)
    assert fuse_bn_swish(fused) == 1 and isinstance(fused[0], BNSwish) and isinstance(fused[1], nn.Identity)
    x = torch.randn(6, 5, 4, 4, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    weights = torch.randn(6, 5, 4, 4, dtype=torch.float64)
    results = []
    for module in (plain, fused):
        xi = x.clone().requires_grad_()
        outs = [module(xi) for _ in range(2)]  # two batches: the running statistics move twice
        sum((o * weights).sum() for o in outs).backward()
        results.append([outs[1], xi.grad, module[0].weight.grad, module[0].bias.grad, *module[0].buffers()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    plain.eval(), fused.eval()
    torch.testing.assert_close(fused(x), plain(x))


def test_fused_bn_swish_saves_one_tensor_less_and_respects_frozen_statistics():
    plain = bn_swish_pair()
    fused = copy.deepcopy(plain)
    fuse_bn_swish(fused)
    x = torch.randn(6, 5, 4, 4, dtype=torch.float64, requires_grad=True)
    _, saved_plain = count_saved_tensors(lambda: plain(x), plain.parameters())
    _, saved_fused = count_saved_tensors(lambda: fused(x), fused.parameters())
    one_map = x.numel() * x.element_size()
    difference = saved_plain.activation_bytes - saved_fused.activation_bytes
    assert 0 <= difference - one_map <= 4 * 5 * 8  # BN's output is not kept; the rest is per-channel statistics
    before = [b.clone() for b in fused.buffers()]
    with frozen_running_stats():
        fused(x)
    assert all(torch.equal(a, b) for a, b in zip(before, fused.buffers()))


def test_fusing_an_nvae_keeps_its_state_dict_and_gradients_and_saves_memory():
    torch.manual_seed(0)
    model = NVAE((1, 16, 16), 8, "logistic_mixture", num_latent_scales=2, num_groups_per_scale=1,
                 num_latent_per_group=4, num_channels_enc=4, num_channels_dec=4, num_preprocess_cells=1,
                 num_postprocess_cells=1, num_mix=3).double()
    fused = copy.deepcopy(model)
    bn_before = [id(m) for m in fused._bn_layers]
    pairs = fuse_bn_swish(fused)
    swishes = sum(isinstance(m, Swish) for m in model.modules())
    assert 0 < pairs <= swishes and sum(isinstance(m, BNSwish) for m in fused.modules()) == pairs
    assert list(fused.state_dict()) == list(model.state_dict())
    assert [id(m) for m in fused._bn_layers] == bn_before  # the BN regulariser still sees the same layers
    x = torch.randint(0, 256, (4, 1, 16, 16)).double() / 255
    grads, saved = [], []
    for m in (model, fused):
        torch.manual_seed(1)
        out, counted = count_saved_tensors(lambda: m(x), m.parameters())
        (out.kl_per_group.sum(1) - out.log_px_z).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
        saved.append(counted.activation_bytes)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-8, atol=1e-10)
    assert saved[1] < 0.9 * saved[0]
    with pytest.raises(ValueError, match="fused"):  # a cell function would apply each Swish twice
        use_generative_cell(fused, generative_cell)


def test_fused_bn_swish_runs_under_bf16_autocast():
    layer = BNSwish(6)
    x = torch.randn(4, 6, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = nn.Conv2d(6, 6, 1)(x)  # bf16, as the conv before a BN hands it over
        out = layer(y)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and torch.isfinite(layer.weight.grad).all()
