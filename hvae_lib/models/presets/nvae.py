"""Presets of NVAE (Chapters 3-4): a seconds-long smoke run, the chapters' Fashion-MNIST model, and
the paper's MNIST and CIFAR-10 configurations.

The paper presets translate NVlabs/NVAE's README command lines flag for flag (their parameter counts
match the official code exactly: 33,363,134 for MNIST, 130,852,480 for CIFAR-10 with one flow) and
its optimiser: Adamax, lr 1e-2 with eps 1e-3 and weight decay 3e-4, 5 warm-up epochs, cosine to
1e-4, KL warm-up over the first 30% of training from 1e-4, KL balancing, no gradient clipping,
no EMA. Steps = epochs x images / global batch.
"""
from __future__ import annotations

from hvae_lib.config import Config, DataConfig, OptimConfig, RunConfig, preset
from hvae_lib.models.nvae import NVAEConfig


def _nvae_optim(batch_size: int, max_steps: int, warmup_steps: int, **changes) -> OptimConfig:
    """NVAE's optimiser and KL schedule for a run of ``max_steps`` steps."""
    settings = dict(optimizer="adamax", lr=1e-2, eps=1e-3, weight_decay=3e-4, warmup_steps=warmup_steps,
                    schedule="cosine", lr_min=1e-4, batch_size=batch_size, max_steps=max_steps,
                    kl_warmup_steps=int(0.3 * max_steps), kl_warmup_start=1e-4, kl_balancing=True)
    settings.update(changes)
    return OptimConfig(**settings)


@preset("nvae_fashion", "Chapters 3-4 NVAE on Fashion-MNIST: the paper's MNIST layout, 8x narrower, 2000 CPU steps")
def nvae_fashion() -> Config:
    # Like the official MNIST model (28x28 padded to 32x32, two pre-processing blocks, latents at
    # 4x4 and 8x8) with 4 instead of 32 channels, one cell where it has 2-3, and 4 groups instead of 15.
    return Config(
        model=NVAEConfig(num_latent_scales=2, num_groups_per_scale=2, num_latent_per_group=8,
                         num_channels_enc=4, num_channels_dec=4, num_cell_per_cond_enc=1, num_cell_per_cond_dec=1,
                         num_preprocess_blocks=2, num_preprocess_cells=1, num_postprocess_blocks=2,
                         num_postprocess_cells=1, num_mix=5, weight_decay_norm=1e-2),
        data=DataConfig(name="fashion_mnist"),
        # No clipping, as the official code: gradient norms of a per-image loss in nats run to the
        # thousands, so the engine's default clip at 200 would act as a much lower learning rate.
        optim=_nvae_optim(batch_size=64, max_steps=2000, warmup_steps=100, grad_clip=0.0),
        run=RunConfig(log_every=25, eval_every=500, eval_batches=10, checkpoint_every=500, sample_every=500),
    )


preset("nvae_fashion_1500", "Chapters 3-4's run of nvae_fashion: 1500 steps, KL warm-up over 30% of them (about 6 CPU minutes)",
       parent="nvae_fashion", max_steps=1500, kl_warmup_steps=450)

preset("nvae_fashion_1500_bare", "Chapter 4's ablation: nvae_fashion_1500 without the residual normal and spectral "
       "regularisation (nor the BN regulariser, which shares its lambda)",
       parent="nvae_fashion_1500", residual_normal=False, weight_decay_norm=0.0)

preset("nvae_tiny", "NVAE on 16x16 procedural shapes, 30 steps: a seconds-long CPU smoke run",
       parent="nvae_fashion", name="shapes", resolution=16, train_limit=512, test_limit=128, batch_size=32,
       max_steps=30, warmup_steps=5, kl_warmup_steps=10, log_every=5, eval_every=10, eval_batches=2,
       checkpoint_every=10, sample_every=0, num_samples=16, num_preprocess_blocks=1, num_postprocess_blocks=1,
       num_latent_per_group=4, num_groups_per_scale=1, num_mix=3)


@preset("nvae_mnist", "The paper's NVAE on binarised MNIST (33.4M parameters; official: 2 V100s, ~21 h)")
def nvae_mnist() -> Config:
    # python train.py --dataset mnist --batch_size 200 --epochs 400 --num_latent_scales 2 --num_groups_per_scale 10
    #   --num_postprocess_cells 3 --num_preprocess_cells 3 --num_cell_per_cond_enc 2 --num_cell_per_cond_dec 2
    #   --num_latent_per_group 20 --num_preprocess_blocks 2 --num_postprocess_blocks 2 --weight_decay_norm 1e-2
    #   --num_channels_enc 32 --num_channels_dec 32 --num_nf 0 --ada_groups --num_process_per_node 2 --use_se --res_dist
    steps_per_epoch = 60_000 // 400  # 200 per GPU on 2 GPUs
    return Config(
        model=NVAEConfig(num_latent_scales=2, num_groups_per_scale=10, ada_groups=True, num_latent_per_group=20,
                         num_channels_enc=32, num_channels_dec=32, num_cell_per_cond_enc=2, num_cell_per_cond_dec=2,
                         num_preprocess_blocks=2, num_preprocess_cells=3, num_postprocess_blocks=2,
                         num_postprocess_cells=3, num_flows=0, weight_decay_norm=1e-2),
        data=DataConfig(name="mnist"),
        optim=_nvae_optim(batch_size=400, max_steps=400 * steps_per_epoch, warmup_steps=5 * steps_per_epoch,
                          grad_clip=0.0),
        run=RunConfig(precision="bf16", log_every=100, eval_every=20 * steps_per_epoch, eval_batches=0,
                      checkpoint_every=4 * steps_per_epoch, sample_every=20 * steps_per_epoch),
    )


@preset("nvae_cifar10", "The paper's NVAE on CIFAR-10 with 1 flow (130.9M parameters; official: 8 V100s, ~55 h)")
def nvae_cifar10() -> Config:
    # python train.py --dataset cifar10 --num_channels_enc 128 --num_channels_dec 128 --epochs 400
    #   --num_postprocess_cells 2 --num_preprocess_cells 2 --num_latent_scales 1 --num_latent_per_group 20
    #   --num_cell_per_cond_enc 2 --num_cell_per_cond_dec 2 --num_preprocess_blocks 1 --num_postprocess_blocks 1
    #   --num_groups_per_scale 30 --batch_size 32 --weight_decay_norm 1e-2 --num_nf 1 --num_process_per_node 8
    #   --use_se --res_dist
    steps_per_epoch = 50_000 // 256  # 32 per GPU on 8 GPUs
    return Config(
        model=NVAEConfig(num_latent_scales=1, num_groups_per_scale=30, num_latent_per_group=20,
                         num_channels_enc=128, num_channels_dec=128, num_cell_per_cond_enc=2, num_cell_per_cond_dec=2,
                         num_preprocess_blocks=1, num_preprocess_cells=2, num_postprocess_blocks=1,
                         num_postprocess_cells=2, num_mix=10, num_flows=1, weight_decay_norm=1e-2),
        data=DataConfig(name="cifar10", horizontal_flip=True),  # the official RandomHorizontalFlip
        optim=_nvae_optim(batch_size=256, max_steps=400 * steps_per_epoch, warmup_steps=5 * steps_per_epoch,
                          grad_clip=0.0),
        run=RunConfig(precision="bf16", log_every=100, eval_every=20 * steps_per_epoch, eval_batches=0,
                      checkpoint_every=4 * steps_per_epoch, sample_every=20 * steps_per_epoch),
    )
