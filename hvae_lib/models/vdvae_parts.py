"""Parts of the Very Deep VAE (Child 2021; Chapter 6): the bottleneck block, the encoder, the top-down block.

Module and parameter names follow openai/vdvae's ``vae.py`` where a name is clear (``c1``..``c4``,
``prior``, ``z_proj``, ``resnet``); the official ``enc`` (the posterior's network) is ``posterior``
here, and :mod:`hvae_lib.import_vdvae` maps one onto the other. Layout is NCHW throughout (the
official model takes NHWC images and permutes them).

Initialisation is the official one, exactly (:func:`official_init_`): every convolution has PyTorch's
default weights and a zero bias; the last convolution of every residual branch (``c4`` of the
encoder's blocks and of the decoder's ``resnet``) and the z projection are multiplied by
sqrt(1 / N), N the number of blocks in that tower (Chapter 6, "1/sqrt(N) scaling"); the prior's last
convolution starts at zero, so at initialisation every prior is N(0, I) and adds nothing to the state.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hvae_lib.models.vdvae_arch import EncoderBlockSpec
from hvae_lib.probability.gaussian import DiagonalGaussian


def conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    """A 'same' convolution (the official get_conv; :func:`official_init_` sets its initial values)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)


class Block(nn.Module):
    """The bottleneck residual block (Chapter 6, Fig. 3 of the paper):

        out = [x +] c4(gelu(c3(gelu(c2(gelu(c1(gelu(x))))))))   then average-pooled by ``down_rate``

    c1: 1x1 to the bottleneck width (width / 4), c2 and c3: 3x3 (1x1 at resolution 2 and below, where a
    3x3 would mostly see padding), c4: 1x1 back out. No normalisation layers.
    """

    def __init__(self, in_width: int, middle_width: int, out_width: int, down_rate: int | None = None,
                 residual: bool = False, use_3x3: bool = True):
        super().__init__()
        self.down_rate, self.residual = down_rate, residual
        k = 3 if use_3x3 else 1
        self.c1 = conv(in_width, middle_width, 1)
        self.c2 = conv(middle_width, middle_width, k)
        self.c3 = conv(middle_width, middle_width, k)
        self.c4 = conv(middle_width, out_width, 1)

    def branch(self, h: torch.Tensor) -> torch.Tensor:
        """c4(gelu(c3(gelu(c2(gelu(h)))))) given h = c1(gelu(x)): the block after its first convolution."""
        h = self.c2(F.gelu(h))
        h = self.c3(F.gelu(h))
        return self.c4(F.gelu(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(self.c1(F.gelu(x)))  # (B, C_out, H, W)
        if self.residual:
            out = x + out
        if self.down_rate is not None:
            out = F.avg_pool2d(out, kernel_size=self.down_rate, stride=self.down_rate)
        return out


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is in half precision (autocast), else unchanged (float32 or float64)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def official_init_(model: nn.Module, scale_residuals: bool = True) -> None:
    """openai/vdvae's initialisation of a VDVAE, in place (Chapter 6, "1/sqrt(N) scaling"):

    - every convolution keeps PyTorch's default weights and gets a zero bias;
    - the prior's last convolution starts at zero, so every prior is N(0, I) and adds nothing to the state;
    - with ``scale_residuals``, the last convolution of every residual branch (c4 of the encoder's blocks
      and of the decoder's ``resnet``) and the z projection are multiplied by sqrt(1 / N), N the number
      of blocks in that tower (the encoder's, or the decoder's latent layers).
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.bias.zero_()
        for block in model.dec_blocks:
            block.prior.c4.weight.zero_()
        if scale_residuals:
            for block in model.encoder.enc_blocks:
                block.c4.weight.mul_(math.sqrt(1 / len(model.encoder.enc_blocks)))
            for block in model.dec_blocks:
                block.resnet.c4.weight.mul_(math.sqrt(1 / len(model.dec_blocks)))
                block.z_proj.weight.mul_(math.sqrt(1 / len(model.dec_blocks)))


def pad_channels(x: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad the channels of (B, C, H, W) up to ``width`` (where a lower resolution is wider)."""
    return F.pad(x, (0, 0, 0, 0, 0, width - x.shape[1])) if x.shape[1] < width else x


class Encoder(nn.Module):
    """The bottom-up tower: a 3x3 stem, then the encoder string's blocks (all residual). Returns the
    activation at every resolution it visits: the output of the last block that ends there."""

    def __init__(self, image_channels: int, specs: list[EncoderBlockSpec], widths: dict[int, int],
                 bottleneck_multiple: float):
        super().__init__()
        self.widths = widths
        self.in_conv = conv(image_channels, widths[specs[0].resolution], 3)
        self.enc_blocks = nn.ModuleList(
            Block(widths[s.resolution], int(widths[s.resolution] * bottleneck_multiple), widths[s.resolution],
                  down_rate=s.down_rate, residual=True, use_3x3=s.resolution > 2) for s in specs)

    def forward(self, x: torch.Tensor, run=None) -> dict[int, torch.Tensor]:
        """{resolution: (B, C_r, r, r)} from normalised images (B, C, H, W); ``run(block, h)`` runs a
        block (the model passes its gradient-checkpointing wrapper)."""
        h = self.in_conv(x)  # (B, C, H, W)
        activations = {h.shape[2]: h}
        for block in self.enc_blocks:
            h = run(block, h) if run is not None else block(h)
            h = pad_channels(h, self.widths[h.shape[2]])
            activations[h.shape[2]] = h
        return activations


class TopDownBlock(nn.Module):
    """One latent layer of the top-down tower (Chapter 6, Fig. 3 of the paper). Given the state s:

        q(z | s, x) = N(m_q, exp(l_q)^2), (m_q, l_q) = posterior([s, e_r])   e_r: the encoder at this resolution
        (m_p, l_p, f) = prior(s);  p(z | s) = N(m_p, exp(l_p)^2);  s <- s + f
        z ~ q (inference) or p (generation);  s <- resnet(s + z_proj(z))

    ``posterior``, ``prior`` and ``resnet`` are :class:`Block`\\ s (the last residual); the log-sigmas are
    used as they come out, without a clamp, as in the official code.
    """

    def __init__(self, width: int, middle_width: int, zdim: int, resolution: int):
        super().__init__()
        self.zdim, self.resolution = zdim, resolution
        use_3x3 = resolution > 2
        self.posterior = Block(2 * width, middle_width, 2 * zdim, use_3x3=use_3x3)  # the official 'enc'
        self.prior = Block(width, middle_width, 2 * zdim + width, use_3x3=use_3x3)
        self.z_proj = conv(zdim, width, 1)
        self.resnet = Block(width, middle_width, width, residual=True, use_3x3=use_3x3)

    def forward(self, s: torch.Tensor, encoder_gelu: torch.Tensor | None, temperature: float = 1.0,
                z: torch.Tensor | None = None, posterior_mean: bool = False, return_z: bool = False):
        """One layer on state s (B, C, r, r). ``encoder_gelu`` is gelu(e_r) (B, C, r, r), or None to draw
        z from the prior at ``temperature`` (which scales its sigma); a given ``z`` (B, Z, r, r) is used
        instead of a prior draw, and with ``posterior_mean`` the posterior's mean instead of its draw.

        Returns (new state, KL per image (B,), log q(z) - log p(z) per image (B,), posterior mean
        (B, Z, r, r), detached); without ``encoder_gelu`` the last three are None. With ``return_z``
        the z the layer used comes fifth.
        """
        z_dim = self.zdim
        s_gelu = F.gelu(s)  # shared by the prior and the posterior: both start with gelu of the state
        prior_out = self.prior.branch(self.prior.c1(s_gelu))  # (B, 2Z + C, r, r)
        p = DiagonalGaussian(at_least_fp32(prior_out[:, :z_dim]), at_least_fp32(prior_out[:, z_dim:2 * z_dim]))
        s = s + prior_out[:, 2 * z_dim:]
        if encoder_gelu is None:
            z = p.rsample(temperature) if z is None else z  # (B, Z, r, r)
            out = self.resnet(s + self.z_proj(z.to(s.dtype))), None, None, None
            return (*out, z) if return_z else out
        # c1 of [s, e] split into its two halves: gelu([s, e]) = [gelu(s), gelu(e)], and no concatenation
        # is stored for backward.
        w = self.posterior.c1.weight  # (M, 2C, 1, 1)
        c = s_gelu.shape[1]
        h = F.conv2d(s_gelu, w[:, :c], self.posterior.c1.bias) + F.conv2d(encoder_gelu, w[:, c:])
        q_out = at_least_fp32(self.posterior.branch(h))  # (B, 2Z, r, r)
        q = DiagonalGaussian(q_out[:, :z_dim], q_out[:, z_dim:])
        z = q.mu if posterior_mean else q.rsample()  # (B, Z, r, r): mu + sigma * eps, the official draw
        kl = q.kl(p).sum(dim=(1, 2, 3))  # (B,)
        with torch.no_grad():  # for the importance-weighted bound: log q(z) - log p(z) at this z
            log_ratio = (p.log_sigma - q.log_sigma + 0.5 * ((z - p.mu) * torch.exp(-p.log_sigma)) ** 2
                         - 0.5 * ((z - q.mu) * torch.exp(-q.log_sigma)) ** 2).sum(dim=(1, 2, 3))
        s = self.resnet(s + self.z_proj(z.to(s.dtype)))
        return (s, kl, log_ratio, q.mu.detach(), z) if return_z else (s, kl, log_ratio, q.mu.detach())


class Unpool(nn.Module):
    """From the state at a lower resolution to a higher one: nearest-neighbour (the paper's choice,
    parameter-free; the first channels are kept where the higher resolution is narrower) or learned
    (a stride-``factor`` transposed convolution, the "learned upsampler" of the paper's Fig. 5)."""

    def __init__(self, kind: str, factor: int, in_width: int, out_width: int):
        super().__init__()
        self.kind, self.factor, self.out_width = kind, factor, out_width
        self.up = nn.ConvTranspose2d(in_width, out_width, factor, stride=factor) if kind == "learned" else None

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        if self.up is not None:
            return self.up(s)
        return F.interpolate(s[:, :self.out_width], scale_factor=self.factor, mode="nearest")
