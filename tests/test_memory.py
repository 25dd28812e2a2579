"""The saved-tensor counter: exact on layers whose saved tensors are known."""
import torch
from torch import nn

from hvae_lib.memory import count_saved_tensors, optimizer_state_bytes, parameter_bytes


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
