"""Where a training step's memory goes (Chapter 5): parameters, gradients, optimiser state, and the
activations autograd saves for the backward pass.

Saved activations are counted with ``torch.autograd.graph.saved_tensors_hooks``: the pack hook sees
every tensor the forward pass stores for backward. Several saved tensors may share one storage (a
view, or the same tensor saved by two ops), so each distinct storage is counted once, at its full
size. Parameters are counted apart: they live in memory whether or not autograd saves them.
:func:`saved_bytes_by_site` splits the count by the module (and source file) that saved each
tensor. A gradient-checkpointed block saves only its inputs; what it recomputes is never counted.
"""
from __future__ import annotations

import os
import sys
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


def gradient_bytes(model: nn.Module) -> int:
    """Bytes of the gradients currently held in ``p.grad`` (each storage once)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return sum({g.untyped_storage().data_ptr(): g.untyped_storage().nbytes() for g in grads}.values())


def _caller_source(frame) -> str:
    """The file stem of the innermost frame outside torch and this module (who asked for the op)."""
    while frame is not None:
        path = frame.f_code.co_filename
        if not (path.startswith(_TORCH_DIR) or path == __file__ or path.startswith("<")):
            return os.path.splitext(os.path.basename(path))[0]
        frame = frame.f_back
    return "?"


_TORCH_DIR = os.path.dirname(torch.__file__)


def saved_bytes_by_site(fn: Callable[[], Any], model: nn.Module) -> tuple[Any, dict[tuple[str, str], int]]:
    """Run ``fn()`` and attribute the activation bytes autograd saves to where they were saved.

    Returns ``(fn's result, {(module, source): bytes})``: ``module`` is the qualified name of the
    innermost submodule of ``model`` whose forward was running ("" for the model's own code), and
    ``source`` the file stem of the Python code that called the op (``"cells"``, ``"likelihoods"``,
    ``"residual_normal"``, ...). Each storage is counted once, where it was first saved; parameter
    storages are left out, as in :func:`count_saved_tensors`, whose ``activation_bytes`` the values
    sum to.
    """
    stack: list[str] = []
    names = {m: name for name, m in model.named_modules()}
    handles = []

    def enter(name: str) -> Callable:
        def hook(module, args) -> None:
            stack.append(name)
        return hook

    def leave(module, args, output) -> None:
        stack.pop()

    for m, name in names.items():
        if name:  # the root's own code is the "" site
            handles.append(m.register_forward_pre_hook(enter(name)))
            handles.append(m.register_forward_hook(leave, always_call=True))
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, tuple[torch.UntypedStorage, tuple[str, str]]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in storages:
            storages[storage.data_ptr()] = (storage, (stack[-1] if stack else "", _caller_source(sys._getframe(1))))
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            result = fn()
    finally:
        for h in handles:
            h.remove()
    by_site: dict[tuple[str, str], int] = {}
    for ptr, (storage, site) in storages.items():
        if ptr not in param_ptrs:
            by_site[site] = by_site.get(site, 0) + storage.nbytes()
    return result, by_site

