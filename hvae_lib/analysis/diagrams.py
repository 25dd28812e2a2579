"""Diagrams drawn from the modules themselves (Chapter 3): a residual cell's layers and NVAE's
bidirectional encoder. Because every box is read off the model (its layers, channels, groups and
resolutions), a diagram cannot drift from the code it shows.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from torch import nn

from hvae_lib.layers.cells import SqueezeExcite, Swish

ENCODER_COLOUR, SHARED_COLOUR, LATENT_COLOUR = "#cfe2f3", "#fce5cd", "#d9ead3"


def layer_label(module: nn.Module) -> str:
    """A short name for one layer of a cell's branch: 'BN 16', 'Swish', 'Conv 3x3 16->32 /2', 'dwConv 5x5 96', 'SE'."""
    if isinstance(module, nn.Sequential):  # the encoder cell's BN-Swish-Conv units
        return " - ".join(layer_label(m) for m in module)
    if isinstance(module, nn.BatchNorm2d):
        return f"BN {module.num_features}"
    if isinstance(module, (Swish, nn.SiLU)):
        return "Swish"
    if isinstance(module, SqueezeExcite):
        return "SE"
    if isinstance(module, nn.Upsample):
        return "Upsample x2"
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size[0]
        stride = f" /{module.stride[0]}" if module.stride[0] > 1 else ""
        if module.groups > 1 and module.groups == module.in_channels:
            return f"dwConv {k}x{k} {module.in_channels}{stride}"
        return f"Conv {k}x{k} {module.in_channels}->{module.out_channels}{stride}"
    return type(module).__name__


def branch_labels(cell: nn.Module) -> list[str]:
    """The labels of a cell's branch, one per layer, in order (encoder cells: one per BN-Swish-Conv unit
    split into its three layers)."""
    labels = []
    for m in cell.branch:
        labels += [layer_label(s) for s in m] if isinstance(m, nn.Sequential) else [layer_label(m)]
    return labels


def _box(ax, x, y, text, colour, width=2.6, height=0.5, fontsize=8):
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.02",
                                facecolor=colour, edgecolor="0.3", linewidth=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, start, end, colour="0.3", style="-|>", **kwargs):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=9, color=colour, linewidth=0.9, **kwargs))


def draw_cell(cell: nn.Module, ax=None, title: str | None = None, colour: str = SHARED_COLOUR) -> list[str]:
    """Draw a residual cell top to bottom: input, its branch layer by layer, the factor 0.1 and the sum
    with the skip path. Returns the branch labels drawn."""
    ax = ax or plt.gca()
    labels = branch_labels(cell)
    n = len(labels)
    ys = [-(i + 1) for i in range(n)]
    ax.text(0, 0, "x", ha="center", va="center", fontsize=10)
    previous = (0, -0.15)
    for y, label in zip(ys, labels):
        _box(ax, 0, y, label, "white" if label in ("Swish",) else colour)
        _arrow(ax, previous, (0, y + 0.25))
        previous = (0, y - 0.25)
    y_sum = -(n + 1.3)
    ax.text(0.25, (ys[-1] + y_sum) / 2, "x 0.1", fontsize=8, va="center")
    _arrow(ax, previous, (0, y_sum + 0.22))
    ax.add_patch(plt.Circle((0, y_sum), 0.22, facecolor="white", edgecolor="0.3"))
    ax.text(0, y_sum, "+", ha="center", va="center", fontsize=11)
    skip = "identity" if isinstance(cell.skip, nn.Identity) else type(cell.skip).__name__
    ax.plot([0, 1.9, 1.9], [-0.15, -0.15, y_sum], color="0.45", linewidth=0.9, linestyle="--")
    _arrow(ax, (1.9, y_sum), (0.22, y_sum), colour="0.45")
    ax.text(1.95, -0.5, f"skip: {skip}", fontsize=8, rotation=90, va="top")
    _arrow(ax, (0, y_sum - 0.22), (0, y_sum - 0.7))
    ax.text(0, y_sum - 0.9, "output", ha="center", va="center", fontsize=9)
    ax.set(xlim=(-1.6, 2.4), ylim=(y_sum - 1.1, 0.4), title=title or type(cell).__name__)
    ax.axis("off")
    return labels


def nvae_rows(model) -> list[tuple[str, str, str]]:
    """One row per level of an NVAE, top to bottom: (bottom-up box, top-down box, what links them).

    The bottom-up column lists the encoder features e_l (and the layers that make them); the
    top-down column lists each group's cells, prior and posterior; the link is the posterior's
    input. Read from the model: groups, their shapes, cells per group and per scale.
    """
    rows = []
    scales = list(reversed(range(len(model.groups_per_scale))))  # coarsest scale first
    group_index = 0
    for s in scales:
        for g in reversed(range(model.groups_per_scale[s])):
            group = model.groups[group_index]
            z, h, w = model.group_shapes[group_index]
            n_enc = len(model.enc_scales[s][g])
            enc = f"e_{group_index}: {'down cell, ' if g == 0 and s > 0 else ''}{n_enc} encoder cell{'s' * (n_enc > 1)}"
            enc += f"{' + ELU-Conv1x1-ELU' if group_index == 0 else ''}, {h}x{w}"
            if group.is_top:
                dec = f"h_0 (learned, {h}x{w}); p(z_0) = N(0, I)"
            else:
                dec = f"{len(group.cells)} gen. cell{'s' * (len(group.cells) > 1)}; prior p(z_{group_index} | z_<{group_index})"
            given = "x" if group.is_top else f"z_<{group_index}, x"
            dec += f"\nq(z_{group_index} | {given}); z_{group_index}: {z}x{h}x{w} merged in"
            if group.up is not None:
                dec += "; up cell x2"
            rows.append((enc, dec, "posterior reads e + state"))
            group_index += 1
    return rows


def draw_nvae(model, ax=None) -> list[tuple[str, str, str]]:
    """NVAE's bidirectional encoder as two columns: the bottom-up tower (encoder only, blue; read from
    the bottom) and the top-down tower (shared by inference and generation, orange; read from the
    top), with one row per latent group and the encoder feature e_l feeding q(z_l). Returns the rows."""
    ax = ax or plt.gca()
    rows = nvae_rows(model)
    n = len(rows)
    c, h, w = model.image_shape
    enc_x, dec_x, width = 0.0, 5.2, 3.9
    top = n * 1.2
    for i, (enc, dec, _) in enumerate(rows):
        y = top - 1.2 * i
        _box(ax, enc_x, y, enc, ENCODER_COLOUR, width=width, height=0.75, fontsize=7.5)
        _box(ax, dec_x, y, dec, SHARED_COLOUR, width=width + 0.6, height=0.75, fontsize=7.5)
        _arrow(ax, (enc_x + width / 2, y), (dec_x - (width + 0.6) / 2, y), colour="C2")
        if i > 0:
            _arrow(ax, (enc_x, y + 0.38), (enc_x, y + 1.2 - 0.38))  # bottom-up: upwards
            _arrow(ax, (dec_x, y + 1.2 - 0.38), (dec_x, y + 0.38))  # top-down: downwards
    pre = len(model.preprocess)
    halvings = sum(not isinstance(cell.skip, nn.Identity) for cell in model.preprocess)
    side = model.canvas[0] // 2**halvings
    y_bottom = top - 1.2 * n
    _box(ax, enc_x, y_bottom, f"x {c}x{h}x{w}, padded to {model.canvas[0]}x{model.canvas[1]}; stem Conv3x3;\n"
         f"{pre} pre-processing cell{'s' * (pre > 1)} -> {side}x{side}", ENCODER_COLOUR, width=width, height=0.75,
         fontsize=7.5)
    _arrow(ax, (enc_x, y_bottom + 0.38), (enc_x, y_bottom + 1.2 - 0.38))
    post = sum(1 for _ in model.postprocess)
    _box(ax, dec_x, y_bottom, f"{post} post-processing cell{'s' * (post > 1)}; ELU-Conv3x3\n-> p(x | z) "
         f"({model.head.kind.replace('_', ' ')})", SHARED_COLOUR, width=width + 0.6, height=0.75, fontsize=7.5)
    _arrow(ax, (dec_x, y_bottom + 1.2 - 0.38), (dec_x, y_bottom + 0.38))
    ax.text(enc_x, top + 0.75, "bottom-up tower (encoder only)", ha="center", fontsize=9, weight="bold")
    ax.text(dec_x, top + 0.75, "top-down tower (generative model, shared)", ha="center", fontsize=9, weight="bold")
    ax.text((enc_x + dec_x) / 2 + 0.1, top + 0.45, "e_l feeds q(z_l)", ha="center", fontsize=8, color="C2")
    ax.text((enc_x + dec_x) / 2, y_bottom - 0.75, "inference: both towers, z_l from q.  generation: the top-down "
            "tower alone, z_l from p.", ha="center", fontsize=8)
    ax.set(xlim=(enc_x - width / 2 - 0.2, dec_x + width / 2 + 0.6), ylim=(y_bottom - 1.0, top + 1.1))
    ax.axis("off")
    return rows
