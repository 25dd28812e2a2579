"""Spectral regularisation L_SR = sum_i s_i over every convolution (Chapter 4).

s_i is the largest singular value of conv i's weight reshaped to a C_out x (C_in/groups * k * k)
matrix (NVAE's convention; for a depthwise conv that is C x k*k). Bounding it bounds how much
each layer can amplify a change of its input, which keeps the KL terms of a deep hierarchy from
exploding. s_i is estimated by power iteration, warm-started from the previous step's singular
vectors: ``iterations`` steps per call and ``first_iterations`` on the very first call.

The singular vectors u, v are registered buffers (one stacked pair per weight shape, so convs of
equal shape are iterated together by batched matmuls), so they travel in ``state_dict``: a resumed
run continues with the same vectors instead of restarting the power iteration.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_weight(conv: nn.Conv2d) -> torch.Tensor:
    """The kernel a conv applies: ``effective_weight()`` (weight norm) or ``masked_weight()`` (the
    flows' masked convs) when it has one, else ``weight``."""
    for name in ("effective_weight", "masked_weight"):
        method = getattr(conv, name, None)
        if callable(method):
            return method()
    return conv.weight


class SpectralRegularizer(nn.Module):
    """sum_i s_i for the given convolutions, s_i = u_i^T W_i v_i after power iteration (Chapter 4).

    The convs are referenced, not owned (their parameters stay where they are in the model).
    Calling the module updates u, v in place (no gradient) and returns the sum, differentiable in
    the weights, in float32.
    """

    def __init__(self, convs: list[nn.Conv2d], iterations: int = 4, first_iterations: int = 40):
        super().__init__()
        self.iterations, self.first_iterations = iterations, first_iterations
        self._convs = list(convs)  # a plain list: not submodules, so no parameter appears twice
        self._groups: dict[str, list[int]] = {}  # "RxC" -> indices of the convs with that matrix shape
        for i, conv in enumerate(self._convs):
            rows, cols = conv.weight.shape[0], conv.weight[0].numel()
            self._groups.setdefault(f"{rows}x{cols}", []).append(i)
        for key, members in self._groups.items():
            rows, cols = (int(s) for s in key.split("x"))
            self.register_buffer(f"u_{key}", F.normalize(torch.randn(len(members), rows), dim=1, eps=1e-3))
            self.register_buffer(f"v_{key}", F.normalize(torch.randn(len(members), cols), dim=1, eps=1e-3))
        self.register_buffer("started", torch.tensor(False))

    @property
    def num_convs(self) -> int:
        return len(self._convs)

    def singular_values(self, update: bool = True) -> torch.Tensor:
        """Estimated s_i, (N,) in the order the convs were given; ``update`` runs the power iteration first."""
        sigmas = torch.zeros(len(self._convs), device=self.started.device)
        num_iter = self.iterations if bool(self.started) else self.first_iterations
        device_type = self.started.device.type
        with torch.autocast(device_type, enabled=False):
            for key, members in self._groups.items():
                weights = torch.stack([conv_weight(self._convs[i]).float().flatten(1) for i in members])  # (N_g, R, C)
                u, v = getattr(self, f"u_{key}"), getattr(self, f"v_{key}")
                if update:
                    with torch.no_grad():
                        w = weights.detach()
                        for _ in range(num_iter):
                            v.copy_(F.normalize(torch.bmm(u.unsqueeze(1), w).squeeze(1), dim=1, eps=1e-3))  # (N_g, C)
                            u.copy_(F.normalize(torch.bmm(w, v.unsqueeze(2)).squeeze(2), dim=1, eps=1e-3))  # (N_g, R)
                s = torch.einsum("nr,nrc,nc->n", u, weights, v)  # (N_g,) u^T W v
                sigmas = sigmas.index_put((torch.tensor(members, device=sigmas.device),), s)
        if update:
            self.started.fill_(True)
        return sigmas

    def forward(self) -> torch.Tensor:
        """L_SR / lambda = sum_i s_i (a float32 scalar), after updating u, v."""
        return self.singular_values(update=True).sum()
