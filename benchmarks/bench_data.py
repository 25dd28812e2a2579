"""What both engine benchmarks share: the precision settings, and a ``Trainer`` on random images of
the preset's dataset (the real shape, grid and likelihood, so the model is built exactly as in a real
run and no dataset needs to be on the machine)."""
from __future__ import annotations

import tempfile

import torch

from hvae_lib.config import override
from hvae_lib.data.contract import DatasetInfo, Datasets, ImageDataset, dataset_info
from hvae_lib.models.presets import get_preset
from hvae_lib.training import engine

# Every setting names both keys: the paper presets default to bf16, so an empty override is not fp32.
PRECISION_SETTINGS = {
    "fp32": ["precision=fp32", "grad_checkpointing=false"],
    "fp32 + grad checkpointing": ["precision=fp32", "grad_checkpointing=true"],
    "fp16 (NVAE's amp)": ["precision=fp16", "grad_checkpointing=false"],
    "bf16": ["precision=bf16", "grad_checkpointing=false"],
    "bf16 + grad checkpointing": ["precision=bf16", "grad_checkpointing=true"],
}
# The speed switches (issue 12): torch.compile of the training forward, and the NHWC memory layout.
SPEED_SETTINGS = {
    "fp32 + compile": ["precision=fp32", "grad_checkpointing=false", "compile=true"],
    "fp32 + channels-last": ["precision=fp32", "grad_checkpointing=false", "channels_last=true"],
    "fp32 + compile + channels-last": ["precision=fp32", "grad_checkpointing=false", "compile=true", "channels_last=true"],
    "bf16 + compile": ["precision=bf16", "grad_checkpointing=false", "compile=true"],
}
SETTINGS = {**PRECISION_SETTINGS, **SPEED_SETTINGS}


def random_images(info: DatasetInfo, n: int, seed: int = 0) -> Datasets:
    """n random images on the dataset's grid (8-bit levels, or {0, 1} when it is binary)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 2**info.bits, (n, *info.image_shape), generator=g, dtype=torch.uint8)  # (N, C, H, W)
    split = ImageDataset(images, torch.zeros(n, dtype=torch.long), bits=info.bits)
    return Datasets(split, split, info)


def random_image_trainer(preset: str, setting: list[str], batch_size: int, num_images: int,
                         device: str) -> engine.Trainer:
    """The engine's ``Trainer`` for ``preset`` with ``setting`` applied, fed ``num_images`` random images."""
    config = override(get_preset(preset), [f"batch_size={batch_size}", f"device={device}", "quiet=true", *setting])
    info = dataset_info(config.data.name, config.data.resolution)
    engine.load_data = lambda c: random_images(info, num_images)  # the engine's data hook
    trainer = engine.Trainer(config, tempfile.mkdtemp(prefix=f"engine_{device}_"), resume=False)
    trainer.model.train()
    return trainer
