"""The saved-tensor counter: exact on layers whose saved tensors are known."""
import torch
from torch import nn

from hvae_lib.memory.saved_tensors import (
    count_saved_tensors,
    gradient_bytes,
    optimizer_state_bytes,
    parameter_bytes,
    saved_bytes_by_site,
)


def test_linear_layer_saves_its_input_and_weight():
    layer = nn.Linear(64, 32)
    x = torch.randn(16, 64, requires_grad=True)
    out, saved = count_saved_tensors(lambda: layer(x), layer.parameters())
    assert out.shape == (16, 32)
    assert saved.activation_bytes == 16 * 64 * 4  # the input, for the weight's gradient
    assert saved.parameter_bytes == 32 * 64 * 4  # the weight, for the input's gradient


def test_a_storage_saved_twice_counts_once():
    x = torch.randn(1000, requires_grad=True)
    _, saved = count_saved_tensors(lambda: (x * x).sum())  # mul saves x as both operands
    assert saved.num_tensors == 2 and saved.activation_bytes == 1000 * 4


def test_no_grad_saves_nothing():
    layer = nn.Linear(8, 8)
    with torch.no_grad():
        _, saved = count_saved_tensors(lambda: layer(torch.randn(4, 8)), layer.parameters())
    assert saved.total_bytes == 0 and saved.num_tensors == 0


def test_parameter_and_adam_state_bytes():
    model = nn.Linear(10, 5)  # 55 parameters
    assert parameter_bytes(model) == 55 * 4
    opt = torch.optim.Adam(model.parameters())
    assert optimizer_state_bytes(opt) == 0  # state appears at the first step
    model(torch.randn(3, 10)).sum().backward()
    opt.step()
    assert optimizer_state_bytes(opt) == 2 * 55 * 4 + 2 * 4  # exp_avg, exp_avg_sq, and a step counter each


# ---------------------------------------------------------------- by site (Chapter 5)
class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(8, 16)
        self.second = nn.Sequential(nn.Linear(16, 4), nn.Tanh())

    def forward(self, x):
        h = self.second(self.first(x))  # (B, 4)
        return (h * h).sum()  # the root's own code saves h (already saved by tanh: counted once, there)


def test_saved_bytes_by_site_attributes_each_storage_to_the_innermost_module():
    model = TwoLayers()
    x = torch.randn(5, 8, requires_grad=True)
    result, sites = saved_bytes_by_site(lambda: model(x), model)
    _, total = count_saved_tensors(lambda: model(x), model.parameters())
    assert result.shape == ()
    # The source is the first file outside torch up the stack: here, this file's forward.
    assert sites == {("first", "test_memory"): 5 * 8 * 4,  # its input (the parameters are left out)
                     ("second.0", "test_memory"): 5 * 16 * 4,  # first's output, saved by the second linear
                     ("second.1", "test_memory"): 5 * 4 * 4}  # tanh's output, saved once (the root reuses it)
    assert sum(sites.values()) == total.activation_bytes


def test_saved_bytes_by_site_gives_code_outside_submodules_to_the_root_and_removes_its_hooks():
    model = nn.Sequential(nn.Linear(3, 3))
    x = torch.randn(4, 3, requires_grad=True)
    _, sites = saved_bytes_by_site(lambda: torch.exp(model(x)).sum(), model)
    assert sites == {("0", "test_memory"): 4 * 3 * 4, ("", "test_memory"): 4 * 3 * 4}  # x, then exp's output
    assert not model[0]._forward_hooks and not model[0]._forward_pre_hooks


def test_gradient_bytes_counts_what_backward_left():
    model = nn.Linear(10, 5)
    assert gradient_bytes(model) == 0
    model(torch.randn(2, 10)).sum().backward()
    assert gradient_bytes(model) == parameter_bytes(model) == 55 * 4
