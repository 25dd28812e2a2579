"""Where a training step's memory goes (Chapter 5): parameters, optimiser state, and the activations
autograd saves for the backward pass.

Saved activations are counted with ``torch.autograd.graph.saved_tensors_hooks``: the pack hook sees
every tensor the forward pass stores for backward. Several saved tensors may share one storage (a
view, or the same tensor saved by two ops), so each distinct storage is counted once, at its full
size. Parameters are counted apart: they live in memory whether or not autograd saves them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn


@dataclass
class SavedTensors:
    """What one forward pass saved for backward."""

    activation_bytes: int  # distinct storages that are not parameters
    parameter_bytes: int  # distinct parameter storages that were saved (weights an op needs again)
    num_tensors: int  # pack-hook calls, i.e. saved tensors before de-duplication

    @property
    def total_bytes(self) -> int:
        return self.activation_bytes + self.parameter_bytes


def count_saved_tensors(fn: Callable[[], Any], parameters=()) -> tuple[Any, SavedTensors]:
    """Run ``fn()`` and count the bytes autograd saves for its backward pass.

    Returns ``(fn's result, SavedTensors)``; storages of ``parameters`` are reported apart. The
    storages are held until the count is done, so a freed one cannot be counted again under a
    reused address.
    """
    param_ptrs = {p.untyped_storage().data_ptr() for p in parameters}
    storages: dict[int, torch.UntypedStorage] = {}
    calls = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    params = sum(s.nbytes() for ptr, s in storages.items() if ptr in param_ptrs)
    acts = sum(s.nbytes() for ptr, s in storages.items() if ptr not in param_ptrs)
    return result, SavedTensors(acts, params, calls)


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters (each storage once)."""
    return sum({p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}.values())


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimiser's per-parameter state (Adam's two moments, Adamax's moment and norm, ...)."""
    return sum(v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values()
               if isinstance(v, torch.Tensor))
