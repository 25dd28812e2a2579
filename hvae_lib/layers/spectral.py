"""Spectral regularisation L_SR = sum_i s_i over every convolution (Chapter 4).

s_i is the largest singular value of conv i's weight reshaped to a C_out x (C_in/groups * k * k)
matrix (NVAE's convention; for a depthwise conv that is C x k*k). Bounding it bounds how much
each layer can amplify a change of its input, which keeps the KL terms of a deep hierarchy from
exploding. s_i is estimated by power iteration, warm-started from the previous step's singular
vectors: ``iterations`` steps per call and ``first_iterations`` on the very first call.

The singular vectors u, v are registered buffers (one stacked pair per weight shape, so convs of
equal shape are iterated together by batched matmuls), so they travel in ``state_dict``: a resumed
run continues with the same vectors instead of restarting the power iteration.

Cost: a weight-normalised conv publishes the weight its forward applied (:class:`LastWeight`), and
the regulariser reuses it, as the official code reuses ``weight_normalized``: the weights are not
normalised a second time, and the only weight-sized tensor it makes is the stack of each shape's
kernels, which autograd does not keep (the gradient of u^T W v with u, v fixed is u v^T).
"""
from __future__ import annotations

import weakref

import torch
from torch import nn


class LastWeight:
    """The weight a convolution applied in its latest forward, kept for the spectral regulariser.

    :meth:`take` hands it out once, and only while it is current: the parameters it was computed
    from are unchanged (their in-place version counters) and its graph has not been through a
    backward pass (a hook on its ``grad_fn`` drops it), so a gradient through it is always valid.
    Copies and pickles of a model start empty.
    """

    __slots__ = ("weight", "versions", "params", "kept", "__weakref__")

    def __init__(self):
        self.weight, self.versions, self.params, self.kept = None, (), (), 0

    def keep(self, weight: torch.Tensor, *params: torch.Tensor) -> None:
        """Remember ``weight``, computed from ``params`` by a forward that records a graph."""
        if weight.grad_fn is None:  # no graph (no_grad, or frozen parameters): nothing to reuse
            return
        self.weight, self.params, self.versions = weight, params, tuple(p._version for p in params)
        self.kept += 1
        # The hook holds neither the holder nor the node (a cycle through the graph would leak it).
        holder, kept = weakref.ref(self), self.kept
        weight.grad_fn.register_prehook(lambda grads: _drop(holder, kept))

    def take(self) -> torch.Tensor | None:
        """The kept weight if it is still current, else None; either way the holder is emptied."""
        weight, current = self.weight, tuple(p._version for p in self.params) == self.versions
        self.weight, self.versions, self.params = None, (), ()
        return weight if current else None

    def __deepcopy__(self, memo):
        return LastWeight()

    def __reduce__(self):
        return LastWeight, ()


def _drop(holder: weakref.ref, kept: int) -> None:
    """A backward reached the weight kept as number ``kept``: its graph is spent, forget it."""
    h = holder()
    if h is not None and h.kept == kept:
        h.weight, h.versions, h.params = None, (), ()


def conv_weight(conv: nn.Conv2d) -> torch.Tensor:
    """The kernel a conv applies: ``effective_weight()`` (weight norm) or ``masked_weight()`` (the
    flows' masked convs) when it has one, else ``weight``."""
    for name in ("effective_weight", "masked_weight"):
        method = getattr(conv, name, None)
        if callable(method):
            return method()
    return conv.weight


def forward_weight(conv: nn.Conv2d) -> torch.Tensor:
    """The kernel of ``conv``: the one its latest forward applied when still current (see
    :class:`LastWeight`), else computed afresh by :func:`conv_weight`."""
    holder = getattr(conv, "last_weight", None)
    weight = holder.take() if holder is not None else None
    return conv_weight(conv) if weight is None else weight


def power_iteration(w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, iterations: int):
    """``iterations`` rounds of v <- W^T u / |W^T u|, u <- W v / |W v| on a stack of matrices
    w (N, R, C), from the left vectors u (N, R); returns (u, v), (N, R) and (N, C). With no round,
    ``v`` is returned as given. Norms below 1e-3 are clamped, as the official code does (Chapter 4)."""
    for _ in range(iterations):
        v = torch.bmm(u.unsqueeze(1), w).squeeze(1)  # (N, C) W^T u
        v = v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_min_(1e-3)
        u = torch.bmm(w, v.unsqueeze(2)).squeeze(2)  # (N, R) W v
        u = u / torch.linalg.vector_norm(u, dim=1, keepdim=True).clamp_min_(1e-3)
    return u, v


class SpectralRegularizer(nn.Module):
    """sum_i s_i for the given convolutions, s_i = u_i^T W_i v_i after power iteration (Chapter 4).

    The convs are referenced, not owned (their parameters stay where they are in the model).
    Calling the module updates u, v in place (no gradient) and returns the sum, differentiable in
    the weights, in float32.

    The power iteration runs on each kernel's columns in (k, k, C_in) order, a free view of a
    channels-last kernel; s_i does not depend on the order of the columns, and v is stored in
    NVAE's (C_in, k, k) order, so the buffers mean the same whatever the memory layout.
    """

    def __init__(self, convs: list[nn.Conv2d], iterations: int = 4, first_iterations: int = 40):
        super().__init__()
        self.iterations, self.first_iterations = iterations, first_iterations
        self._convs = list(convs)  # a plain list: not submodules, so no parameter appears twice
        self._groups: dict[str, list[int]] = {}  # "RxC" -> indices of the convs with that matrix shape
        self._kernel: dict[str, tuple[int, int, int]] = {}  # "RxC" -> (C_in / groups, k_h, k_w)
        for i, conv in enumerate(self._convs):
            rows, cols = conv.weight.shape[0], conv.weight[0].numel()
            self._groups.setdefault(f"{rows}x{cols}", []).append(i)
            self._kernel[f"{rows}x{cols}"] = tuple(conv.weight.shape[1:])
        for key, members in self._groups.items():
            rows, cols = (int(s) for s in key.split("x"))
            self.register_buffer(f"u_{key}", nn.functional.normalize(torch.randn(len(members), rows), dim=1, eps=1e-3))
            self.register_buffer(f"v_{key}", nn.functional.normalize(torch.randn(len(members), cols), dim=1, eps=1e-3))
        self.register_buffer("started", torch.tensor(False))
        # Where each conv's s_i lands in singular_values(): the groups' order, inverted.
        order = [i for members in self._groups.values() for i in members]
        self.register_buffer("_order", torch.argsort(torch.tensor(order)), persistent=False)
        self._started_now: bool | None = None  # a host copy of `started`; None: read the buffer
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_started_now", None))

    @property
    def num_convs(self) -> int:
        return len(self._convs)

    def _is_started(self) -> bool:
        if self._started_now is None:  # once per run (or load): reading a GPU flag waits for the GPU
            self._started_now = bool(self.started)
        return self._started_now

    def _columns_last(self, v: torch.Tensor, key: str, inverse: bool = False) -> torch.Tensor:
        """v (N, C_in*k*k) between NVAE's (C_in, k, k) column order and the (k, k, C_in) order."""
        c_in, kh, kw = self._kernel[key]
        if c_in == 1 or kh * kw == 1:  # 1x1 and depthwise kernels: the two orders coincide
            return v
        if inverse:
            return v.view(-1, kh, kw, c_in).permute(0, 3, 1, 2).reshape(v.shape[0], -1)
        return v.view(-1, c_in, kh, kw).permute(0, 2, 3, 1).reshape(v.shape[0], -1)

    def _group_sigmas(self, update: bool) -> list[torch.Tensor]:
        """s of every shape group, [(N_g,)] in the groups' order; ``update`` runs the power iteration first."""
        num_iter = self.iterations if self._is_started() else self.first_iterations
        out = []
        with torch.autocast(self.started.device.type, enabled=False):
            for key, members in self._groups.items():
                kernels = [forward_weight(self._convs[i]).float().permute(0, 2, 3, 1) for i in members]
                weights = torch.stack(kernels).flatten(2)  # (N_g, R, C): one copy, in (k, k, C_in) column order
                u_buf, v_buf = getattr(self, f"u_{key}"), getattr(self, f"v_{key}")
                u, v = u_buf, self._columns_last(v_buf, key)  # (N_g, R), (N_g, C)
                if update:
                    with torch.no_grad():
                        u, v = power_iteration(weights.detach(), u, v, num_iter)
                        u_buf.copy_(u)
                        v_buf.copy_(self._columns_last(v, key, inverse=True))
                # u^T W v; with u, v constants autograd keeps only them (the gradient is u v^T)
                out.append((torch.bmm(weights, v.unsqueeze(2)).squeeze(2) * u).sum(1))  # (N_g,)
        if update and not self._is_started():
            self.started.fill_(True)
            self._started_now = True
        return out

    def singular_values(self, update: bool = True) -> torch.Tensor:
        """Estimated s_i, (N,) in the order the convs were given; ``update`` runs the power iteration first."""
        return torch.cat(self._group_sigmas(update))[self._order]

    def forward(self) -> torch.Tensor:
        """L_SR / lambda = sum_i s_i (a float32 scalar), after updating u, v."""
        return torch.stack([s.sum() for s in self._group_sigmas(update=True)]).sum()
