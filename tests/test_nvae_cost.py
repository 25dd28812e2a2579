"""NVAE's training step is cheap and still exact (issue 15): the weight-normalised convs form each
weight once, the spectral regulariser reuses it, and nothing changes the maths.

The reference below is the straightforward implementation: W = exp(g) V / (||V|| + 1e-5) computed
from the flattened kernel wherever it is needed, and a per-conv power iteration on W.flatten(1).
"""
import copy
import weakref

import pytest
import torch
import torch.nn.functional as F
from state_compare import state_equal
from torch import nn

from hvae_lib.config import override
from hvae_lib.layers.norms import WNConv2d
from hvae_lib.layers.spectral import conv_weight
from hvae_lib.memory.saved_tensors import count_saved_tensors
from hvae_lib.models.nvae import NVAE
from hvae_lib.models.presets import get_preset
from hvae_lib.probability.kl_control import kl_objective
from hvae_lib.probability.objectives import elbo
from hvae_lib.training.checkpoint import load_checkpoint
from hvae_lib.training.engine import Trainer

SMALL = dict(num_latent_scales=2, num_groups_per_scale=2, num_latent_per_group=4, num_channels_enc=8,
             num_channels_dec=8, num_preprocess_cells=1, num_postprocess_cells=1, num_mix=3, num_flows=1)


def small_nvae(**changes):
    torch.manual_seed(0)
    return NVAE((3, 16, 16), 8, "logistic_mixture", **{**SMALL, **changes})


def images(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 16, 16), generator=g).float() / 255


def reference_weight(conv: nn.Conv2d) -> torch.Tensor:
    """The kernel, computed the plain way every time (the flows' masked kernels as they are)."""
    if isinstance(conv, WNConv2d):
        norm = conv.weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # (C_out, 1, 1, 1)
        return conv.log_weight_norm.exp() * conv.weight / (norm + 1e-5)
    return conv_weight(conv)


def reference_spectral(model: NVAE, num_iter: int):
    """sum_i u_i^T W_i v_i after ``num_iter`` power iterations per conv on W_i.flatten(1), started
    from the model's buffers; returns (sum, [(u_i, v_i)])."""
    reg = model.spectral
    total, vectors = 0.0, []
    for key, members in reg._groups.items():
        for row, i in enumerate(members):
            w = reference_weight(reg._convs[i]).flatten(1)  # (R, C) in (C_in, k, k) column order
            u, v = getattr(reg, f"u_{key}")[row].clone(), getattr(reg, f"v_{key}")[row].clone()
            with torch.no_grad():
                for _ in range(num_iter):
                    v = F.normalize(w.t() @ u, dim=0, eps=1e-3)
                    u = F.normalize(w @ v, dim=0, eps=1e-3)
            total = total + u @ w @ v
            vectors.append((u, v))
    return total, vectors


def training_loss(model, x, regulariser):
    out = model(x)
    terms = elbo(out, model.num_dims)
    kl = kl_objective(out.kl_per_group, 1.0, 0.0, True, out.extras["kl_balance_alpha"])
    return terms.recon + kl + regulariser()


def reference_regulariser(model, num_iter, vectors):
    """lambda * (sum_i s_i + sum over BN layers of max |gamma|), the plain way."""
    spectral, found = reference_spectral(model, num_iter)
    vectors.extend(found)
    bn = sum(m.weight.abs().max() for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    return model.weight_decay_norm * (spectral + bn)


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("channels_last", [True, False])
def test_loss_gradients_and_power_iteration_match_the_reference(checkpointing, channels_last):
    model = small_nvae(weight_decay_norm=0.1)
    if not channels_last:
        model.to(memory_format=torch.contiguous_format)
    model.grad_checkpointing = checkpointing
    reference = copy.deepcopy(model)
    reference.grad_checkpointing = False
    x = images()
    plain_forward = WNConv2d.forward
    for step in range(2):  # the long first power iteration, then the warm-started one
        vectors = []
        model.zero_grad()
        torch.manual_seed(step)
        loss = training_loss(model, x, lambda: model.regularization(step))
        loss.backward()
        reference.zero_grad()
        torch.manual_seed(step)
        WNConv2d.forward = lambda self, x: self._conv_forward(x, reference_weight(self), self.bias)
        try:
            ref_loss = training_loss(reference, x, lambda: reference_regulariser(reference, 40 if step == 0 else 4, vectors))
        finally:
            WNConv2d.forward = plain_forward
        ref_loss.backward()

        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-3)
        ref_grads = dict(reference.named_parameters())
        for name, p in model.named_parameters():  # float rounding, relative to the gradient's scale
            ref = ref_grads[name].grad
            assert (p.grad - ref).abs().max() <= 1e-4 * ref.abs().max() + 1e-6, name
        reg, found = model.spectral, iter(vectors)  # the stored vectors are the reference's, in its column order
        for key, members in reg._groups.items():
            for row in range(len(members)):
                u, v = next(found)
                torch.testing.assert_close(getattr(reg, f"u_{key}")[row], u, rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(getattr(reg, f"v_{key}")[row], v, rtol=1e-4, atol=1e-5)
        with torch.no_grad():  # a small update, the same in both, so the next step starts alike
            for p in model.parameters():
                p.sub_(1e-3 * p.grad.sign())
        reference.load_state_dict(model.state_dict())
    assert model.spectral.started


def test_the_regulariser_reuses_the_forward_weight_only_while_it_is_current():
    model = small_nvae()
    conv = model.stem
    x = images()
    model(x)
    assert conv.last_weight.weight is not None
    kept = conv.last_weight.weight
    torch.testing.assert_close(kept, reference_weight(conv))
    model.regularization(0)
    assert conv.last_weight.weight is None  # handed out once
    # A forward, its backward, then the regulariser: the kept weight's graph is spent, so it is dropped.
    out = model(x)
    kept = weakref.ref(conv.last_weight.weight)
    (out.kl_per_group.sum() - out.log_px_z.sum()).backward()
    assert conv.last_weight.weight is None
    del out
    assert kept() is None  # nothing holds the spent weight (or its graph) past the step
    model.regularization(1).backward()  # recomputed: no "backward through the graph a second time"
    # A parameter changed after the forward: the kept weight is stale and not used.
    model(x)
    with torch.no_grad():
        conv.weight.mul_(2)
    reg = model.spectral.singular_values(update=False)
    torch.testing.assert_close(reg, copy.deepcopy(model).spectral.singular_values(update=False))
    # A copy of a model with a kept weight starts empty (deepcopy of a graph would fail).
    model(x)
    assert copy.deepcopy(model).stem.last_weight.weight is None


def test_under_no_grad_nothing_is_kept():
    model = small_nvae()
    with torch.no_grad():
        model(images())
    assert all(m.last_weight.weight is None for m in model.modules() if hasattr(m, "last_weight"))


# Bytes autograd saves for one training forward + loss (regularisers included) of the NVAE below,
# measured after issue 15 (torch 2.14, fp32, channels-last): its activations plus one weight-sized
# tensor per weight-normalised conv. Before, each such conv also kept its scaled kernel and a
# flattened copy, and the regulariser normalised every kernel again: 33,609,240 bytes (2.1x).
PINNED_SAVED_BYTES = 15_955_128


def test_saved_for_backward_stays_pinned():
    """Within 3%: one more weight-sized copy per conv (about 20% here) or a lost one shows."""
    model = small_nvae(num_flows=0, num_channels_enc=32, num_channels_dec=32)
    x = images(2)
    torch.manual_seed(0)
    _, saved = count_saved_tensors(lambda: training_loss(model, x, lambda: model.regularization(0)), model.parameters())
    assert abs(saved.activation_bytes - PINNED_SAVED_BYTES) <= 0.03 * PINNED_SAVED_BYTES, saved.activation_bytes


def test_a_resumed_nvae_run_ends_bit_for_bit_where_an_uninterrupted_one_does(tmp_path):
    """6 steps straight against 3 + 3 with a stop between: parameters, BN statistics, the power
    iteration's vectors and the optimiser state are equal bit for bit (the kept weights and the
    regulariser's host-side flag must not make the resumed run differ)."""
    sets = ["quiet=true", "eval_every=0", "sample_every=0", "log_every=3", "checkpoint_every=3", "test_limit=32"]
    Trainer(override(get_preset("nvae_tiny"), ["max_steps=6", *sets]), tmp_path / "straight", resume=False).fit()
    Trainer(override(get_preset("nvae_tiny"), ["max_steps=3", "schedule_steps=6", *sets]), tmp_path / "halves").fit()
    Trainer(override(get_preset("nvae_tiny"), ["max_steps=6", *sets]), tmp_path / "halves").fit()
    a, b = (load_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("straight", "halves"))
    assert any(k.startswith("spectral.v_") for k in a["model"])
    for key in ("model", "optimizer"):
        assert state_equal(a[key], b[key]), f"{key} differs after resuming"
