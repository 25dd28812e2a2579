"""NVAE's residual cells (Chapter 3): the encoder cell, the generative cell, their down/up variants,
squeeze-and-excitation, and the pre-/post-processing stacks around the latent hierarchy.

Every cell computes ``skip(x) + 0.1 * branch(x)``: the small factor keeps each cell close to the
identity at initialisation, so a deep stack starts as a well-conditioned function.

Cell layouts (NVlabs/NVAE ``res_mbconv`` architecture):

- encoder cell: BN-Swish-Conv3x3-BN-Swish-Conv3x3-SE (regular, weight-normalised convs);
- generative cell: BN-Conv1x1(C->EC)-BN-Swish-dwConv5x5-BN-Swish-Conv1x1(EC->C)-BN-SE, an inverted
  residual with expansion E (6 in the latent tower, 3 in post-processing); depthwise convolutions
  widen the receptive field cheaply and helped in the decoder (they hurt in the encoder);
- down cells: stride 2 in the first conv, channels doubled, skip = factorised reduce;
- up cells: nearest-neighbour upsampling first, channels halved, skip = bilinear upsample + Conv1x1.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from hvae_lib.layers.norms import BatchNorm2d, WNConv2d


class Swish(nn.Module):
    """swish(x) = x * sigmoid(x) (a.k.a. SiLU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


class SqueezeExcite(nn.Module):
    """x * g(x): a per-channel gate g in (0, 1) from the global average of x (Hu et al. 2018).

    g = sigmoid(Linear(ReLU(Linear(mean_HW(x))))) with a hidden width of max(C / 16, 4).
    """

    def __init__(self, channels: int):
        super().__init__()
        hidden = max(channels // 16, 4)
        self.net = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.mean(dim=(2, 3)))  # (B, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)[:, :, None, None]


class FactorizedReduce(nn.Module):
    """Skip path of a down cell: Swish, then four stride-2 Conv1x1 on the input shifted by (0|1, 0|1)
    pixels, concatenated to C_out channels, so no input pixel is dropped by the stride.

    A stride-2 Conv1x1 is a Conv1x1 of every second pixel; it is written that way because this
    torch's channels-last CPU kernel for strided 1x1 convs crashes in backward for 2-7 input channels.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        quarter = c_out // 4
        widths = (quarter, quarter, quarter, c_out - 3 * quarter)
        self.convs = nn.ModuleList(WNConv2d(c_in, w, 1) for w in widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(x)
        phases = (x[:, :, ::2, ::2], x[:, :, 1::2, 1::2], x[:, :, ::2, 1::2], x[:, :, 1::2, ::2])  # each (B, C, H/2, W/2)
        return torch.cat([conv(p) for conv, p in zip(self.convs, phases)], dim=1)  # (B, C_out, H/2, W/2)


class UpsampleSkip(nn.Module):
    """Skip path of an up cell: bilinear 2x upsampling, then Conv1x1 C_in -> C_out (no bias)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = WNConv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))


def bn_swish_conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(BatchNorm2d(c_in), Swish(), WNConv2d(c_in, c_out, 3, stride=stride))


class EncoderCell(nn.Module):
    """Residual cell of the bottom-up encoder: x + 0.1 * SE(conv(swish(BN(conv(swish(BN(x))))))).

    ``downsample=True`` makes it a down cell: stride 2, C -> 2C, factorised-reduce skip.
    """

    def __init__(self, channels: int, downsample: bool = False, use_se: bool = True):
        super().__init__()
        c_out = 2 * channels if downsample else channels
        self.skip = FactorizedReduce(channels, c_out) if downsample else nn.Identity()
        layers = [bn_swish_conv(channels, c_out, stride=2 if downsample else 1), bn_swish_conv(c_out, c_out)]
        if use_se:
            layers.append(SqueezeExcite(c_out))
        self.branch = nn.Sequential(*layers)
        self.out_channels = c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + 0.1 * self.branch(x)


class GenerativeCell(nn.Module):
    """Residual cell of the top-down decoder, an inverted residual with a depthwise k x k conv:
    x + 0.1 * SE(BN(Conv1x1(swish(BN(dwConv(swish(BN(Conv1x1(BN(x)))))))))).

    ``upsample=True`` makes it an up cell: nearest 2x upsampling first, C -> C/2, and a
    bilinear-upsample + Conv1x1 skip. The hidden width is ``expansion * C_in``.

    The forward pass is ``skip(x) + 0.1 * branch(x)``, which :func:`generative_cell` computes from
    the layers by role; a cell whose ``function`` is set computes ``function(x, self.layers())``
    instead (Chapter 3 trains NVAE with the student's; see :func:`use_generative_cell`). The library's
    path runs the ``branch`` Sequential itself because that is what Chapter 5's
    :func:`~hvae_lib.memory.recompute.fuse_bn_swish` rewrites (BN + Swish into one op, the Swish into an
    identity), which a function calling ``silu`` after each BN would apply twice.
    """

    function = None  # None: the library's generative_cell

    def __init__(self, channels: int, upsample: bool = False, expansion: int = 6, kernel_size: int = 5,
                 use_se: bool = True):
        super().__init__()
        c_out = channels // 2 if upsample else channels
        hidden = expansion * channels
        self.skip = UpsampleSkip(channels, c_out) if upsample else nn.Identity()
        layers = [nn.Upsample(scale_factor=2, mode="nearest")] if upsample else []
        layers += [
            BatchNorm2d(channels),
            nn.Conv2d(channels, hidden, 1, bias=False), BatchNorm2d(hidden), Swish(),
            nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden, bias=False),
            BatchNorm2d(hidden), Swish(),
            nn.Conv2d(hidden, c_out, 1, bias=False), BatchNorm2d(c_out),
        ]
        if use_se:
            layers.append(SqueezeExcite(c_out))
        self.branch = nn.Sequential(*layers)
        self.out_channels = c_out

    def layers(self) -> SimpleNamespace:
        """The cell's layers by role: upsample, bn_in, expand, bn_expand, depthwise, bn_depthwise,
        project, bn_out, se, skip (upsample and se are identities when the cell has none)."""
        bns = [m for m in self.branch if isinstance(m, nn.BatchNorm2d)]
        convs = [m for m in self.branch if isinstance(m, nn.Conv2d)]
        upsample = self.branch[0] if isinstance(self.branch[0], nn.Upsample) else _IDENTITY
        se = self.branch[-1] if isinstance(self.branch[-1], SqueezeExcite) else _IDENTITY
        return SimpleNamespace(upsample=upsample, bn_in=bns[0], expand=convs[0], bn_expand=bns[1], depthwise=convs[1],
                               bn_depthwise=bns[2], project=convs[2], bn_out=bns[3], se=se, skip=self.skip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.function is None:
            return self.skip(x) + 0.1 * self.branch(x)  # = generative_cell(x, self.layers()), fused or not
        return self.function(x, self.layers())


_IDENTITY = nn.Identity()


def generative_cell(x: torch.Tensor, layers: SimpleNamespace) -> torch.Tensor:
    """NVAE's generative cell from its layers (:meth:`GenerativeCell.layers`), Chapter 3:
    skip(x) + 0.1 * SE(BN(Conv1x1(swish(BN(dwConv(swish(BN(Conv1x1(BN(up(x))))))))))). x: (B, C, H, W)."""
    h = layers.expand(layers.bn_in(layers.upsample(x)))  # (B, EC, H', W')
    h = layers.depthwise(F.silu(layers.bn_expand(h)))  # (B, EC, H', W')
    h = layers.bn_out(layers.project(F.silu(layers.bn_depthwise(h))))  # (B, C_out, H', W')
    return layers.skip(x) + 0.1 * layers.se(h)


def use_generative_cell(module: nn.Module, function=None) -> int:
    """Make every GenerativeCell under ``module`` compute ``function(x, cell.layers())`` (None: the
    library's :func:`generative_cell` again). Returns how many cells it set (Chapter 3's exercise)."""
    cells = [m for m in module.modules() if isinstance(m, GenerativeCell)]
    if function is not None and any(isinstance(m, nn.Identity) for cell in cells for m in cell.branch):
        raise ValueError("use_generative_cell: this model's BatchNorm and Swish layers were fused "
                         "(recompute.fuse_bn_swish), which a cell function cannot see; set the function "
                         "on an unfused model.")
    for cell in cells:
        cell.function = function
    return len(cells)


def preprocess_cells(channels: int, num_blocks: int, cells_per_block: int, use_se: bool = True):
    """The encoder's pre-processing stack (before any latent group): ``num_blocks`` blocks of
    ``cells_per_block`` encoder cells, the last of each a down cell. Returns (cells, out_channels)."""
    cells = nn.ModuleList()
    for _ in range(num_blocks):
        for c in range(cells_per_block):
            cell = EncoderCell(channels, downsample=c == cells_per_block - 1, use_se=use_se)
            channels = cell.out_channels
            cells.append(cell)
    return cells, channels


def postprocess_cells(channels: int, num_blocks: int, cells_per_block: int, use_se: bool = True):
    """The decoder's post-processing stack (after the last latent group): ``num_blocks`` blocks of
    ``cells_per_block`` generative cells with expansion 3, the first of each an up cell."""
    cells = nn.ModuleList()
    for _ in range(num_blocks):
        for c in range(cells_per_block):
            cell = GenerativeCell(channels, upsample=c == 0, expansion=3, use_se=use_se)
            channels = cell.out_channels
            cells.append(cell)
    return cells, channels
