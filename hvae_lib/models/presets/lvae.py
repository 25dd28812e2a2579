"""Presets of the Chapter 2 Ladder VAE."""
from __future__ import annotations

from hvae_lib.config import Config, DataConfig, OptimConfig, RunConfig, preset
from hvae_lib.models.lvae import LVAEConfig
from hvae_lib.models.presets.vae import vae_fashion


@preset("lvae_fashion", "Chapter 2 Ladder VAE on Fashion-MNIST: 6 groups over 3 scales (2x2, 4x4, 8x8), "
        "118k parameters like vae_fashion's 107k, trained with vae_fashion's optimiser settings")
def lvae_fashion() -> Config:
    config = vae_fashion()  # the same data, optimiser, schedule and logging as Chapter 1
    config.model = LVAEConfig(groups_per_scale=(2, 2, 2), z_channels=4, channels=20, blocks_per_group=1,
                              initial_downsamples=2, merge="precision", num_mix=5)
    return config


preset("lvae_fashion_learned", "lvae_fashion with the learned merge (a Conv3x3 of [top-down state, bottom-up "
       "features], as later conv LVAEs): 126k parameters", parent="lvae_fashion", merge="learned")

preset("lvae_tiny", "Ladder VAE on 16x16 procedural shapes, 30 steps: a seconds-long CPU smoke run",
       parent="lvae_fashion", name="shapes", resolution=16, train_limit=512, test_limit=128, batch_size=32,
       max_steps=30, warmup_steps=5, log_every=5, eval_every=10, eval_batches=2, checkpoint_every=10,
       sample_every=0, num_samples=16, channels=8, z_channels=2, groups_per_scale=(1, 1, 2), initial_downsamples=1)


@preset("lvae_mnist", "Conv Ladder VAE on binarised MNIST (28x28 in a 32x32 canvas, Bernoulli) sized as addtt/ladder-vae-pytorch's "
        "12-layer model (their test NLL: 78.3 nats, 1000 IW samples): 12 groups of 32 channels, 4 each at "
        "2x2/4x4/8x8, 64 hidden channels, 4 residual blocks per group each way, learned merge; 8.5M parameters; "
        "needs the MNIST download")
def lvae_mnist() -> Config:
    # Read from addtt's README and defaults: a stride-2 stem, then a downsampling before each third
    # of the 12 layers (the README's 3-layer command is --downsample 1 1 1; "the final feature map
    # is always 2x2"), so latents at 8x8, 4x4 and 2x2 (our initial_downsamples=2 is their stem plus
    # the first of those); z 32 and 64 filters everywhere, 4 blocks per layer, the 'residual'
    # (learned) merge, Adamax lr 3e-4, batch 64, and free bits 1 nat per layer with more than 6
    # layers (ours floors each group's batch-mean KL; their boilr helper floors each image's).
    # Left out: their gated blocks, BatchNorm, dropout 0.2, generative skip connections and learned
    # top prior (about 1M parameters per layer there). The number of steps is ours.
    return Config(
        model=LVAEConfig(groups_per_scale=(4, 4, 4), z_channels=32, channels=64, blocks_per_group=4,
                         initial_downsamples=2, merge="learned", num_mix=1),
        data=DataConfig(name="mnist"),
        optim=OptimConfig(optimizer="adamax", lr=3e-4, batch_size=64, max_steps=500_000, warmup_steps=100,
                          schedule="constant", free_bits=1.0),
        run=RunConfig(log_every=100, eval_every=5000, checkpoint_every=5000, sample_every=5000),
    )
