"""Random images standing in for a dataset in the benchmarks: the real shape, grid and likelihood,
so the model is built exactly as in a real run and no dataset needs to be on the machine."""
from __future__ import annotations

import torch

from hvae_lib.data import Datasets, DatasetInfo, ImageDataset

SHAPES = {  # what each dataset's loader returns (hvae_lib.data)
    "fashion_mnist": DatasetInfo("fashion_mnist", (1, 28, 28), 8, "logistic_mixture", 784),
    "mnist": DatasetInfo("mnist", (1, 32, 32), 1, "bernoulli", 784),
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), 8, "logistic_mixture", 3 * 32 * 32),
}


def random_images(info: DatasetInfo, n: int, seed: int = 0) -> Datasets:
    """n random images on the dataset's grid (8-bit levels, or {0, 1} when it is binary)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 2**info.bits, (n, *info.image_shape), generator=g, dtype=torch.uint8)  # (N, C, H, W)
    split = ImageDataset(images, torch.zeros(n, dtype=torch.long), bits=info.bits)
    return Datasets(split, split, info)
