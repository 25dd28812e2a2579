"""The convolutional VAE of Chapter 1: one Gaussian latent vector, a conv encoder and decoder."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hvae_lib.config import ModelConfig, model_family
from hvae_lib.config.ranges import key
from hvae_lib.models.base import LatentVariableModel, batch_size_of, group_temperatures
from hvae_lib.probability.gaussian import DiagonalGaussian, sum_except_batch
from hvae_lib.probability.likelihoods import LikelihoodHead
from hvae_lib.probability.objectives import ModelOutput


def conv_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.SiLU())


class ConvVAE(LatentVariableModel):
    """q(z|x) = N(mu(x), sigma(x)^2), p(z) = N(0, I), p(x|z) from a conv decoder (Chapter 1).

    The encoder halves the resolution ``num_downsamples`` times, flattens and predicts
    (mu, log sigma) of a ``latent_dim`` vector; the decoder mirrors it with nearest-neighbour
    upsampling and ends in a likelihood head (Bernoulli or discretised logistic mixture).
    """

    def __init__(
        self,
        image_shape=(1, 28, 28),
        bits: int = 8,
        latent_dim: int = 16,
        channels: int = 16,
        num_downsamples: int = 2,
        likelihood: str = "logistic_mixture",
        num_mix: int = 5,
    ):
        super().__init__(image_shape, bits)
        c, h, w = self.image_shape
        factor = 2**num_downsamples
        if h % factor or w % factor:
            raise ValueError(
                f"ConvVAE halves the resolution {num_downsamples} times, so H and W must be multiples of "
                f"{factor}; got {h}x{w}. Choose num_downsamples so that {factor} divides both."
            )
        self.latent_dim = latent_dim
        self.bottom = (channels * factor // 2, h // factor, w // factor)  # (C', H', W') at the bottleneck
        enc, c_in, width = [conv_block(c, channels)], channels, channels
        for i in range(num_downsamples):
            width = channels * 2**i
            enc += [conv_block(c_in, width, stride=2), conv_block(width, width)]
            c_in = width
        self.encoder = nn.Sequential(*enc)
        flat = self.bottom[0] * self.bottom[1] * self.bottom[2]
        self.to_posterior = nn.Linear(flat, 2 * latent_dim)
        self.from_latent = nn.Sequential(nn.Linear(latent_dim, flat), nn.SiLU())
        dec = []
        for i in reversed(range(num_downsamples)):
            width = channels * 2 ** max(i - 1, 0)
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), conv_block(c_in, width), conv_block(width, width)]
            c_in = width
        self.decoder = nn.Sequential(*dec)
        self.head = LikelihoodHead(c_in, c, likelihood, bits=bits, num_mix=num_mix)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """q(z|x) for images x in [0, 1]; the network sees them centred in [-1, 1]."""
        self.check_input(x)
        h = 2 * x - 1
        for block in self.encoder:
            h = self.checkpointed(block, h)
        return DiagonalGaussian.from_params(self.to_posterior(h.flatten(1)))  # (B, Z) each

    def decoder_features(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(z).view(z.shape[0], *self.bottom)  # (B, C', H', W')
        for block in self.decoder:
            h = self.checkpointed(block, h)
        return h  # (B, C, H, W)

    def decode(self, z: torch.Tensor):
        """p(x|z): the likelihood distribution for latents z of shape (B, Z)."""
        return self.head(self.decoder_features(z))

    def prior(self, n: int, device=None) -> DiagonalGaussian:
        return DiagonalGaussian.standard((n, self.latent_dim), device=device)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        q = self.encode(x)
        p = self.prior(x.shape[0], x.device)
        z = q.rsample()  # (B, Z)
        h = self.decoder_features(z)
        px = self.head(h)
        if self.grad_checkpointing:  # the mixture's log-prob holds a quarter of the activations: recompute it too
            log_px = self.checkpointed(lambda h, x: self.head(h).log_prob(x), h, x)  # (B,)
        else:
            log_px = px.log_prob(x)
        kl = q.kl(p).sum(dim=1, keepdim=True)  # (B, 1): one latent group
        log_ratio = sum_except_batch(q.log_prob(z) - p.log_prob(z))  # (B,)
        return ModelOutput(log_px, kl, log_ratio, px, extras={"posterior": q, "z": z})

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, device=None) -> torch.Tensor:
        device = device or next(self.parameters()).device
        z = self.prior(n, device).rsample(temperature)
        return self.decode(z).sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image at the posterior mean: what the model keeps of x."""
        return self.decode(self.encode(x).mu).mean()

    # ------------------------------------------------------------------ the latent interface (one group)
    def latent_shapes(self) -> list[tuple[int, ...]]:
        return [(self.latent_dim,)]

    def encoder_features(self, x: torch.Tensor) -> DiagonalGaussian:
        """q(z|x) (:meth:`encode`): all the single group's posterior needs."""
        return self.encode(x)

    def posterior_latents(self, x: torch.Tensor, use_mean: bool = False) -> list[torch.Tensor]:
        q = self.encode(x)
        return [q.mu if use_mean else q.rsample()]  # [(B, Z)]

    def decode_latents(self, latents=None, n=None, temperature=1.0, features=None, num_posterior: int = 0):
        if not 0 <= num_posterior <= 1:
            raise ValueError(f"num_posterior must be 0 or 1 (a ConvVAE has one latent group), got {num_posterior}.")
        (t,) = group_temperatures(temperature, 1)
        given = latents[0] if latents else None
        if given is not None:
            z = given
        elif num_posterior:
            if features is None:
                raise ValueError("decode_latents needs the encoder features of x to draw z from the posterior.")
            z = features.rsample()
        else:
            z = self.prior(batch_size_of(None, None, n), next(self.parameters()).device).rsample(t)
        return self.decode(z)


@model_family("vae")
@dataclass
class VAEConfig(ModelConfig):
    """Hyperparameters of :class:`ConvVAE` (the model key ``model.*`` of a preset)."""

    family: str = "vae"
    latent_dim: int = key(16, at_least=1)
    channels: int = key(16, at_least=1)
    num_downsamples: int = key(2, at_least=0)
    num_mix: int = key(5, at_least=1)

    def build(self, image_shape, bits, likelihood):
        return ConvVAE(image_shape, bits, self.latent_dim, self.channels, self.num_downsamples, likelihood, self.num_mix)
