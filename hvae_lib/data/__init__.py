"""Every dataset of the course behind one contract (Chapter 1 onwards).

:func:`load_dataset` returns the train and test splits of a dataset by name, with a
:class:`~hvae_lib.data.contract.DatasetInfo` saying the shape, bit depth, likelihood and the number
of dimensions bits/dim divides by; an item is ``(image, label)``, the image a float32 tensor
(C, H, W) in [0, 1] on the 2^bits grid (:mod:`hvae_lib.data.contract`). The datasets:

- :mod:`~hvae_lib.data.mnist_cifar`: ``fashion_mnist`` (the offline default), ``mnist``
  (dynamically binarised) and ``cifar10``;
- :mod:`~hvae_lib.data.shapes`: procedural ``shapes`` at any power-of-two resolution;
- :mod:`~hvae_lib.data.imagenet` and :mod:`~hvae_lib.data.ffhq`: the Very Deep VAE's paper
  datasets, placed by hand.

:mod:`~hvae_lib.data.image_files` reads image files as a model's input (``python -m hvae_lib.latents``).

A dataset that is neither on disk nor downloadable raises
:class:`~hvae_lib.data.contract.DatasetUnavailableError`, one sentence saying how to get it. This
package imports nothing else of the library.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from hvae_lib.data import ffhq, imagenet, mnist_cifar, shapes
from hvae_lib.data.contract import Datasets, dataset_info, default_root


def load_dataset(name: str, root: str | Path | None = None, *, train_limit: int | None = None,
                 test_limit: int | None = None, download: bool = True, resolution: int = 32,
                 seed: int = 0) -> Datasets:
    """Train and test splits of ``name`` (one of :data:`DATASETS`) plus their :class:`DatasetInfo`.

    ``root`` defaults to :func:`default_root`. ``train_limit``/``test_limit`` keep the first N
    items (None or 0: the whole split). ``resolution`` (a power of two >= 8) applies only to
    ``shapes``; ``seed`` fixes the MNIST test binarisation and the shapes images.
    """
    info = dataset_info(name, resolution)  # checks the name (and the shapes' resolution)
    for what, limit in (("train_limit", train_limit), ("test_limit", test_limit)):
        if limit is not None and limit < 0:
            raise ValueError(f"{what} must be a positive number of items (or None for the whole split), got {limit}.")
    train_limit, test_limit = train_limit or None, test_limit or None
    if name == "shapes":
        n_train, n_test = (min(lim or size, size) for lim, size in zip((train_limit, test_limit), shapes.SHAPES_SIZES))
        return Datasets(shapes.shapes_dataset(n_train, resolution, seed, 0), shapes.shapes_dataset(n_test, resolution, seed, 1), info)
    if resolution != 32:
        raise ValueError(f"resolution={resolution} applies only to the 'shapes' dataset; {name} has a fixed size.")

    root = Path(root) if root else default_root()
    if name in ("imagenet32", "imagenet64", "ffhq_256", "ffhq_1024"):
        train, test = (imagenet.load_imagenet if name.startswith("imagenet") else ffhq.load_ffhq)(name, root)
    else:
        loader = {"fashion_mnist": mnist_cifar.fashion_mnist, "mnist": mnist_cifar.mnist, "cifar10": mnist_cifar.cifar10}[name]
        train, test, info = loader(root, download, seed)
    for split, limit in ((train, train_limit), (test, test_limit)):
        if limit is not None:
            split.images, split.labels = split.images[:limit], split.labels[:limit]
    return Datasets(train, test, info)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False,
                num_workers: int = 0) -> DataLoader:
    """A DataLoader whose order is fixed by ``seed`` (a seeded torch.Generator drives shuffling
    and the workers' base seeds), so a rerun sees the same batches."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=num_workers, generator=torch.Generator().manual_seed(seed),
                      persistent_workers=num_workers > 0)
