"""Presets of the Chapter 1 ConvVAE."""
from __future__ import annotations

from hvae_lib.config import Config, DataConfig, OptimConfig, RunConfig, preset
from hvae_lib.models.vae import VAEConfig


@preset("vae_fashion", "Chapter 1 ConvVAE on Fashion-MNIST; the default of `make train` (about 4 minutes on 2 CPU cores)")
def vae_fashion() -> Config:
    return Config(
        model=VAEConfig(latent_dim=16, channels=16),
        data=DataConfig(name="fashion_mnist"),
        optim=OptimConfig(optimizer="adamax", lr=2e-3, batch_size=128, max_steps=2000, warmup_steps=100),
        run=RunConfig(log_every=25, eval_every=500, checkpoint_every=500, sample_every=500),
    )


preset("vae_tiny", "ConvVAE on 16x16 procedural shapes, 30 steps: a seconds-long CPU smoke run",
       parent="vae_fashion", name="shapes", resolution=16, train_limit=512, test_limit=128, batch_size=32,
       max_steps=30, warmup_steps=5, log_every=5, eval_every=10, eval_batches=2, checkpoint_every=10,
       sample_every=0, num_samples=16, channels=8, latent_dim=4)

preset("vae_mnist", "ConvVAE on dynamically binarised MNIST (28x28, Bernoulli likelihood); needs the MNIST download",
       parent="vae_fashion", name="mnist")

preset("vae_cifar10", "ConvVAE on CIFAR-10 (discretised logistic mixture over RGB); needs the CIFAR-10 download",
       parent="vae_fashion", name="cifar10", latent_dim=64, channels=32, num_downsamples=3, num_mix=10)
