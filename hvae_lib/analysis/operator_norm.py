"""A convolution's operator norm against the reshaped-kernel norm that spectral regularisation uses (Chapter 4).

A convolution with kernel W of shape (C_out, C_in / groups, k, k) is a linear map A from
(C_in, H, W) images to (C_out, H', W') images. Its operator norm ||A|| = max_x ||A x|| / ||x|| is
what limits how much the layer can amplify a change of its input. NVAE's regulariser penalises
instead s = ||W_mat||_2, the largest singular value of W reshaped to a C_out x (C_in / groups k^2)
matrix. The two are different numbers:

- a stride-1 dense convolution reads every input pixel in k^2 windows, and on a large image
  s <= ||A|| <= k s: the reshaped norm can *understate* the operator norm by up to a factor k
  (a constant k x k kernel reaches it; with circular padding ||A|| is the largest spectral norm of
  the kernel's Fourier transform over frequencies, whose mean square is s^2 at most);
- a grouped (depthwise) convolution acts on each group separately, ||A|| = max over groups,
  while the reshaped matrix stacks every group's rows over one set of columns, so s can
  *overstate* it.

:func:`conv_operator_norm` estimates ||A|| by power iteration on A^T A, with A^T applied by
autograd (a vector-Jacobian product), so stride, padding and groups need no special case.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def reshaped_kernel_norm(weight: torch.Tensor) -> torch.Tensor:
    """s = largest singular value of ``weight`` (C_out, C_in/groups, k, k) reshaped to C_out x (C_in/groups k^2)."""
    return torch.linalg.matrix_norm(weight.detach().flatten(1).double(), ord=2).to(weight.dtype)


def conv_operator_norm(weight: torch.Tensor, input_size: tuple[int, int], stride: int = 1, padding: int | None = None,
                       groups: int = 1, iterations: int = 200, seed: int = 0) -> torch.Tensor:
    """||A||_2 of x -> conv2d(x, weight, stride, padding, groups) on (C_in, H, W) inputs, zero padding
    ("same", k // 2, by default): power iteration v <- A^T A v / ||A^T A v|| from a seeded random
    start, then ||A v||. A 0-dim float64 tensor; an estimate from below that converges to ||A||."""
    if weight.dim() != 4:
        raise ValueError(f"conv_operator_norm expects a conv kernel (C_out, C_in/groups, k, k), got shape {tuple(weight.shape)}.")
    w = weight.detach().double()
    padding = w.shape[-1] // 2 if padding is None else padding
    c_in = w.shape[1] * groups
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(1, c_in, *input_size, generator=g, dtype=torch.float64)  # (1, C_in, H, W)
    v = v / v.norm()

    def apply(x):
        return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)  # (1, C_out, H', W')

    for _ in range(iterations):
        x = v.requires_grad_(True)
        y = apply(x)
        (ata_v,) = torch.autograd.grad(y, x, grad_outputs=y)  # A^T A v, (1, C_in, H, W)
        v = (ata_v / ata_v.norm().clamp_min(1e-300)).detach()
    return apply(v).norm().detach()
