"""Presets of the Very Deep VAE (Chapter 6): a seconds-long smoke run, the chapter's Fashion-MNIST model,
and the paper's five configurations.

The paper presets translate openai/vdvae's ``hps.py`` value for value. Their parameter counts equal
the official model's, instantiated with each official preset (a test checks them): CIFAR-10
39,145,700; ImageNet-32 119,280,868; ImageNet-64 125,005,860; FFHQ-256 114,874,852; FFHQ-1024
109,366,904. The optimiser is the official one: AdamW (apex's FusedAdam in decoupled mode), betas
(0.9, 0.9), eps 1e-8, linear warm-up over 100 steps then a constant rate, the global gradient norm
clipped at ``grad_clip`` and the update skipped above ``skip_threshold``, an EMA of the weights for
evaluation, fp32. The loss is the negative ELBO per data dimension (``loss_per_dim``), as the
official loss, so that the thresholds and Adam's eps mean what they mean there. Weight decay is
0.01 everywhere: ``hps.py`` sets it for CIFAR-10 and every other preset inherits it (the paper's
Table 4 lists 0.0 for the others). The global batch is the official batch per GPU times the GPUs
of the paper (16 x 2, 8 x 32, 4 x 32, 1 x 32, 1 x 32); ``max_steps`` is the paper's iterations.

The data follow openai/vdvae's ``data.py``: CIFAR-10 and FFHQ-256 hold out its validation split
(``data.vdvae_split``: periodic evaluations and ``best.pt`` on validation, the test set once at
the end), and ImageNet is van den Oord et al.'s downsampling (``data.imagenet_variant``: the other
variant loads with a one-line warning).

Differences in the loop, on purpose: the warm-up's first step uses lr/100 where the official first
step uses 0; a run whose every update is skipped stops with an error after
``max_consecutive_skips`` where the official loop goes on without learning (openai/vdvae#25).
"""
from __future__ import annotations

from hvae_lib.config import Config, DataConfig, OptimConfig, RunConfig, preset
from hvae_lib.models.vdvae import VDVAEConfig


def _vdvae_optim(lr: float, batch_size: int, max_steps: int, grad_clip: float, skip_threshold: float,
                 ema_rate: float, **changes) -> OptimConfig:
    settings = dict(optimizer="adamw", lr=lr, betas=(0.9, 0.9), eps=1e-8, weight_decay=0.01, warmup_steps=100,
                    schedule="constant", batch_size=batch_size, max_steps=max_steps, grad_clip=grad_clip,
                    skip_threshold=skip_threshold, ema_rate=ema_rate, loss_per_dim=True)
    settings.update(changes)
    return OptimConfig(**settings)


def _paper_run(every: int) -> RunConfig:
    return RunConfig(precision="fp32", log_every=100, eval_every=every, eval_batches=0, checkpoint_every=every // 2,
                     sample_every=every, num_samples=16)


@preset("vdvae_cifar10", "The paper's VDVAE on CIFAR-10 (39.1M parameters, 43 latent layers; official: 2 V100s, 6 days)")
def vdvae_cifar10() -> Config:
    # hps.py 'cifar10' over the argparse defaults; data.py's CIFAR-10 shift and scale.
    return Config(
        model=VDVAEConfig(width=384, zdim=16, enc_blocks="32x11,32d2,16x6,16d2,8x6,8d2,4x3,4d4,1x3",
                          dec_blocks="1x1,4m1,4x2,8m4,8x5,16m8,16x10,32m16,32x21", bottleneck_multiple=0.25,
                          no_bias_above=64, num_mixtures=10, input_mean=120.63838, input_std=64.16736),
        data=DataConfig(name="cifar10", vdvae_split=True),  # 45,000 train, 5,000 validation, as data.py
        optim=_vdvae_optim(lr=2e-4, batch_size=32, max_steps=1_100_000, grad_clip=200.0, skip_threshold=400.0,
                           ema_rate=0.9999),
        run=_paper_run(10_000),
    )


@preset("vdvae_imagenet32", "The paper's VDVAE on ImageNet-32 (119.3M parameters, 78 latent layers; official: 32 V100s, 2.5 weeks)")
def vdvae_imagenet32() -> Config:
    config = vdvae_cifar10()
    config.model = VDVAEConfig(width=512, zdim=16, enc_blocks="32x15,32d2,16x9,16d2,8x8,8d2,4x6,4d4,1x6",
                               dec_blocks="1x2,4m1,4x4,8m4,8x9,16m8,16x19,32m16,32x40", num_mixtures=10,
                               input_mean=116.2373, input_std=69.37404)
    config.data = DataConfig(name="imagenet32", imagenet_variant="oord")  # the .npy files of setup_imagenet.sh
    config.optim = _vdvae_optim(lr=1.5e-4, batch_size=256, max_steps=1_700_000, grad_clip=200.0,
                                skip_threshold=300.0, ema_rate=0.999)
    return config


@preset("vdvae_imagenet64", "The paper's VDVAE on ImageNet-64 (125.0M parameters, 75 latent layers; official: 32 V100s, 2.5 weeks)")
def vdvae_imagenet64() -> Config:
    config = vdvae_imagenet32()
    config.model = VDVAEConfig(width=512, zdim=16,
                               enc_blocks="64x11,64d2,32x20,32d2,16x9,16d2,8x8,8d2,4x7,4d4,1x5",
                               dec_blocks="1x2,4m1,4x3,8m4,8x7,16m8,16x15,32m16,32x31,64m32,64x12",
                               num_mixtures=10, input_mean=115.92961967, input_std=69.37404)
    config.data = DataConfig(name="imagenet64", imagenet_variant="oord")
    config.optim = _vdvae_optim(lr=1.5e-4, batch_size=128, max_steps=1_600_000, grad_clip=220.0,
                                skip_threshold=380.0, ema_rate=0.999)
    return config


@preset("vdvae_ffhq256", "The paper's VDVAE on FFHQ-256 at 5 bits (114.9M parameters, 66 latent layers; official: 32 V100s, 2.5 weeks)")
def vdvae_ffhq256() -> Config:
    config = vdvae_imagenet64()
    config.model = VDVAEConfig(width=512, zdim=16,
                               enc_blocks="256x3,256d2,128x8,128d2,64x12,64d2,32x17,32d2,16x7,16d2,8x5,8d2,4x5,4d4,1x4",
                               dec_blocks="1x2,4m1,4x3,8m4,8x4,16m8,16x9,32m16,32x21,64m32,64x13,128m64,128x7,256m128",
                               no_bias_above=64, num_mixtures=10, input_mean=112.8666757481, input_std=69.84780273)
    config.data = DataConfig(name="ffhq_256", vdvae_split=True)  # the seed-5 permutation: 63,000 / 7,000
    config.optim = _vdvae_optim(lr=1.5e-4, batch_size=32, max_steps=1_700_000, grad_clip=130.0,
                                skip_threshold=180.0, ema_rate=0.999)
    return config


@preset("vdvae_ffhq1024", "The paper's VDVAE on FFHQ-1024 (109.4M parameters, 70 latent layers, 2 mixture components; official: 32 V100s, 2.5 weeks)")
def vdvae_ffhq1024() -> Config:
    config = vdvae_ffhq256()
    # data.py: ToTensor() then (x - 0.4387) / 0.2743, here in 8-bit units.
    config.model = VDVAEConfig(
        width=16, zdim=16, num_mixtures=2, no_bias_above=64, input_mean=0.4387 * 255, input_std=0.2743 * 255,
        enc_blocks="1024x1,1024d2,512x3,512d2,256x5,256d2,128x7,128d2,64x10,64d2,32x14,32d2,16x7,16d2,8x5,8d2,4x5,4d4,1x4",
        dec_blocks="1x2,4m1,4x3,8m4,8x4,16m8,16x9,32m16,32x20,64m32,64x14,128m64,128x7,256m128,256x2,512m256,1024m512",
        custom_width_str="512:32,256:64,128:512,64:512,32:512,16:512,8:512,4:512,1:512")
    config.data = DataConfig(name="ffhq_1024")
    config.optim = _vdvae_optim(lr=7e-5, batch_size=32, max_steps=1_700_000, grad_clip=360.0,
                                skip_threshold=500.0, ema_rate=0.999)
    return config


# Fashion-MNIST's mean and standard deviation in 8-bit units (training split), for the encoder's input.
FASHION_MEAN, FASHION_STD = 72.94, 90.02


@preset("vdvae_fashion", "Chapter 6 VDVAE on Fashion-MNIST: 13 latent layers from 1x1 to 28x28, width 32, 116k "
        "parameters, the official optimiser at lr 6e-3, 1000 steps (about 7 CPU minutes)")
def vdvae_fashion() -> Config:
    # Sized for a CPU: like the chapters' other models (107k-140k parameters), latents at 1x1, 7x7, 14x14
    # and 28x28 (28 -> 14 -> 7 -> 1 by pooling). AdamW with the official betas, weight decay, warm-up,
    # clipping and skipping thresholds (CIFAR-10's) and loss per dimension; a higher learning rate for
    # a small model, and an EMA whose time constant (100 updates) suits a run of 1000.
    return Config(
        model=VDVAEConfig(width=32, zdim=4, enc_blocks="28x1,28d2,14x2,14d2,7x2,7d7,1x1",
                          dec_blocks="1x1,7m1,7x3,14m7,14x6,28m14", num_mixtures=5,
                          input_mean=FASHION_MEAN, input_std=FASHION_STD),
        data=DataConfig(name="fashion_mnist"),
        optim=_vdvae_optim(lr=6e-3, batch_size=64, max_steps=1000, grad_clip=200.0, skip_threshold=400.0,
                           ema_rate=0.99),
        run=RunConfig(log_every=25, eval_every=500, eval_batches=10, checkpoint_every=500, sample_every=500),
    )


# Chapter 6b's ablations in small: a deep model (69 latent layers, width 16) trained briefly, evaluated
# with its raw weights on 2000 test images (an EMA would still remember the initialisation after 150
# updates), and its variants. benchmarks/seeds.py trains each for three seeds.
preset("vdvae_fashion_deep", "Chapter 6b's deep VDVAE: 69 latent layers (2 at 1x1, 61 at 7x7, 5 at 14x14, 1 at 28x28), "
       "width 16, 150 steps of 32 images, raw weights (about a CPU minute)",
       parent="vdvae_fashion", width=16, dec_blocks="1x2,7m1,7x60,14m7,14x4,28m14", max_steps=150, batch_size=32,
       test_limit=2000, ema_rate=0.0, log_every=1, eval_every=0, checkpoint_every=0, sample_every=0)
preset("vdvae_fashion_deep_unscaled", "Chapter 6b, the paper's Table 3 in small: vdvae_fashion_deep without the "
       "1/sqrt(N) scaling", parent="vdvae_fashion_deep", scale_residuals=False)
preset("vdvae_fashion_deep_learned", "Chapter 6b, the paper's Fig. 5 in small: vdvae_fashion_deep with a learned "
       "upsampler (transposed convolution) instead of nearest-neighbour unpooling", parent="vdvae_fashion_deep",
       unpool="learned")
preset("vdvae_fashion_deep_stoch20", "Chapter 6b, the paper's Table 1 in small: vdvae_fashion_deep's 69 layers in groups "
       "of 4 that read one state: stochastic depth 20, the same layers and parameters", parent="vdvae_fashion_deep",
       layers_per_group=4)
preset("vdvae_fashion_deep_stoch4", "Chapter 6b, the paper's Table 1 in small: vdvae_fashion_deep's 69 layers in one "
       "group per resolution: stochastic depth 4, the same layers and parameters", parent="vdvae_fashion_deep",
       layers_per_group=61)

preset("vdvae_tiny", "VDVAE on 16x16 procedural shapes, 30 steps: a seconds-long CPU smoke run",
       parent="vdvae_fashion", name="shapes", resolution=16, train_limit=512, test_limit=128, batch_size=32,
       max_steps=30, warmup_steps=5, log_every=5, eval_every=10, eval_batches=2, checkpoint_every=10,
       sample_every=0, num_samples=16, width=16, zdim=4, num_mixtures=3, input_mean=127.5, input_std=127.5,
       enc_blocks="16x1,16d2,8x1,8d2,4x1,4d4,1x1", dec_blocks="1x1,4m1,4x1,8m4,8x1,16m8,16x1")
