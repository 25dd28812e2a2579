"""Presets of NVAE (Chapters 3-4): a seconds-long smoke run, the chapters' Fashion-MNIST model, and
the paper's configurations: MNIST, CIFAR-10, CelebA-64, ImageNet-32, CelebA-HQ-256 and FFHQ-256.

The paper presets translate NVlabs/NVAE's README command lines flag for flag (their parameter counts
match the official model built from those commands exactly: MNIST 33,363,134; CIFAR-10 130,852,480
with one flow; CelebA-64 153,281,364; ImageNet-32 268,509,444; CelebA-HQ-256 and FFHQ-256
330,798,664 each) and its optimiser: Adamax, lr 1e-2 with eps 1e-3 and weight decay 3e-4, 5 warm-up epochs, cosine to
1e-4, KL warm-up over the first 30% of training from 1e-4, KL balancing, no gradient clipping,
no EMA. Steps = epochs x images / global batch (the batch per GPU times the README's GPUs). Where a
command anneals ``--weight_decay_norm`` (ImageNet-32, CelebA-HQ, FFHQ), lambda follows the KL
warm-up from ``weight_decay_norm_init`` as in the official loop. Every data set but MNIST is
flipped left-right at random during training (the official transforms).

NVlabs' released checkpoints of these models import with ``python -m hvae_lib.import_nvae``
(:mod:`hvae_lib.models.nvae_official`).
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


def _paper_run(steps_per_epoch: int) -> RunConfig:
    return RunConfig(precision="bf16", log_every=100, eval_every=20 * steps_per_epoch, eval_batches=0,
                     checkpoint_every=4 * steps_per_epoch, sample_every=20 * steps_per_epoch)


def _paper_model(channels: int, scales: int, groups: int, flows: int, wd_norm: float, **changes) -> NVAEConfig:
    """The model flags the README's CelebA, ImageNet and FFHQ commands share: 2 pre-/post-processing
    cells in 1 block, 2 cells per group, 20 latent channels per group, SE, the residual normal."""
    settings = dict(num_latent_scales=scales, num_groups_per_scale=groups, num_latent_per_group=20,
                    num_channels_enc=channels, num_channels_dec=channels, num_cell_per_cond_enc=2,
                    num_cell_per_cond_dec=2, num_preprocess_blocks=1, num_preprocess_cells=2,
                    num_postprocess_blocks=1, num_postprocess_cells=2, num_mix=10, num_flows=flows,
                    weight_decay_norm=wd_norm)
    settings.update(changes)
    return NVAEConfig(**settings)


@preset("nvae_celeba64", "The paper's NVAE on CelebA-64 with 1 flow (153.3M parameters; official: 8 V100s, ~92 h)")
def nvae_celeba64() -> Config:
    # python train.py --dataset celeba_64 --num_channels_enc 64 --num_channels_dec 64 --epochs 90
    #   --num_postprocess_cells 2 --num_preprocess_cells 2 --num_latent_scales 3 --num_latent_per_group 20
    #   --num_cell_per_cond_enc 2 --num_cell_per_cond_dec 2 --num_preprocess_blocks 1 --num_postprocess_blocks 1
    #   --weight_decay_norm 1e-1 --num_groups_per_scale 20 --batch_size 16 --num_nf 1 --ada_groups
    #   --num_process_per_node 8 --use_se --res_dist
    steps_per_epoch = 162_770 // 128  # 16 per GPU on 8 GPUs
    return Config(
        model=_paper_model(64, 3, 20, 1, 1e-1, ada_groups=True),
        data=DataConfig(name="celeba_64", horizontal_flip=True),
        optim=_nvae_optim(batch_size=128, max_steps=90 * steps_per_epoch, warmup_steps=5 * steps_per_epoch,
                          grad_clip=0.0),
        run=_paper_run(steps_per_epoch),
    )


@preset("nvae_imagenet32", "The paper's NVAE on ImageNet-32 with 1 flow (268.5M parameters; official: 24 V100s, ~70 h)")
def nvae_imagenet32() -> Config:
    # python train.py --dataset imagenet_32 --num_channels_enc 192 --num_channels_dec 192 --epochs 45
    #   --num_postprocess_cells 2 --num_preprocess_cells 2 --num_latent_scales 1 --num_latent_per_group 20
    #   --num_cell_per_cond_enc 2 --num_cell_per_cond_dec 2 --num_preprocess_blocks 1 --num_postprocess_blocks 1
    #   --num_groups_per_scale 28 --batch_size 24 --num_nf 1 --warmup_epochs 1 --weight_decay_norm 1e-2
    #   --weight_decay_norm_anneal --weight_decay_norm_init 1e0 --num_process_per_node 8 --num_proc_node 3
    steps_per_epoch = 1_281_147 // 576  # 24 per GPU on 24 GPUs
    max_steps = 45 * steps_per_epoch
    return Config(
        model=_paper_model(192, 1, 28, 1, 1e-2, weight_decay_norm_init=1.0,
                           weight_decay_norm_anneal_steps=int(0.3 * max_steps)),
        data=DataConfig(name="imagenet32", horizontal_flip=True, imagenet_variant="oord"),
        optim=_nvae_optim(batch_size=576, max_steps=max_steps, warmup_steps=steps_per_epoch, grad_clip=0.0),
        run=_paper_run(steps_per_epoch),
    )


def _nvae_256(dataset: str, images: int, epochs: int, wd_norm: float, lr: float) -> Config:
    # The README's CelebA-HQ-256 and FFHQ-256 commands: --num_channels_enc 30 --num_channels_dec 30
    #   --num_latent_scales 5 --num_groups_per_scale 16 --ada_groups --min_groups_per_scale 4 --num_nf 2
    #   --batch_size 4 --weight_decay_norm_anneal --weight_decay_norm_init 1. --num_x_bits 5 on 24 GPUs
    steps_per_epoch = images // 96  # 4 per GPU on 24 GPUs
    max_steps = epochs * steps_per_epoch
    return Config(
        model=_paper_model(30, 5, 16, 2, wd_norm, ada_groups=True, min_groups_per_scale=4, weight_decay_norm_init=1.0,
                           weight_decay_norm_anneal_steps=int(0.3 * max_steps)),
        data=DataConfig(name=dataset, horizontal_flip=True),
        optim=_nvae_optim(batch_size=96, max_steps=max_steps, warmup_steps=5 * steps_per_epoch, grad_clip=0.0, lr=lr),
        run=_paper_run(steps_per_epoch),
    )


@preset("nvae_celebahq256", "The paper's NVAE on CelebA-HQ-256 at 5 bits with 2 flows (330.8M parameters; official: "
        "24 V100s, ~94 h)")
def nvae_celebahq256() -> Config:
    # --dataset celeba_256 --epochs 300 --weight_decay_norm 1e-2 (27,000 training images)
    return _nvae_256("celebahq_256", 27_000, 300, 1e-2, 1e-2)


@preset("nvae_ffhq256", "The paper's NVAE on FFHQ-256 at 5 bits with 2 flows (330.8M parameters; official: "
        "24 V100s, ~160 h)")
def nvae_ffhq256() -> Config:
    # --dataset ffhq --epochs 200 --weight_decay_norm 1e-1 --learning_rate 8e-3 (63,000 training images)
    return _nvae_256("ffhq_256", 63_000, 200, 1e-1, 8e-3)
