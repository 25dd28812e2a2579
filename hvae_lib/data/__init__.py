"""Every dataset of the course behind one contract (Chapter 1 onwards).

:func:`load_dataset` returns the train and test splits of a dataset by name, with a
:class:`~hvae_lib.data.contract.DatasetInfo` saying the shape, bit depth, likelihood and the number
of dimensions bits/dim divides by; an item is ``(image, label)``, the image a float32 tensor
(C, H, W) in [0, 1] on the 2^bits grid (:mod:`hvae_lib.data.contract`). The datasets:

- :mod:`~hvae_lib.data.mnist_cifar`: ``fashion_mnist`` (the offline default), ``mnist``
  (dynamically binarised) and ``cifar10``;
- :mod:`~hvae_lib.data.shapes`: procedural ``shapes`` at any power-of-two resolution;
- :mod:`~hvae_lib.data.imagenet` and :mod:`~hvae_lib.data.ffhq`: the Very Deep VAE's paper
  datasets, placed by hand;
- :mod:`~hvae_lib.data.celeba`: NVAE's ``celeba_64`` and ``celebahq_256``, placed by hand;
- :mod:`~hvae_lib.data.splits`: openai/vdvae's held-out splits (``vdvae_split``).

:mod:`~hvae_lib.data.image_files` reads image files as a model's input (``python -m hvae_lib.latents``).

A dataset that is neither on disk nor downloadable raises
:class:`~hvae_lib.data.contract.DatasetUnavailableError`, one sentence saying how to get it. This
package imports nothing else of the library.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from hvae_lib.data import celeba, ffhq, imagenet, mnist_cifar, shapes
from hvae_lib.data.contract import Datasets, ImageDataset, check_root, dataset_info, default_root
from hvae_lib.data.splits import cifar10_vdvae_split


def load_dataset(name: str, root: str | Path | None = None, *, train_limit: int | None = None,
                 test_limit: int | None = None, download: bool = True, resolution: int = 32,
                 seed: int = 0, bits: int = 0, vdvae_split: bool = False) -> Datasets:
    """Train and test splits of ``name`` (one of :data:`DATASETS`) plus their :class:`DatasetInfo`.

    ``root`` defaults to :func:`default_root`. ``train_limit``/``test_limit`` keep the first N
    items (None or 0: the whole split; the validation split, when there is one, follows
    ``test_limit``). ``resolution`` (a power of two >= 8) applies only to ``shapes``; ``seed``
    fixes the MNIST test binarisation and the shapes images. ``bits`` (0: the dataset's own)
    serves the images on a coarser grid (see :func:`dataset_info`). ``vdvae_split`` holds out
    openai/vdvae's validation split (:mod:`hvae_lib.data.splits`; CIFAR-10 and FFHQ-256).
    """
    info = dataset_info(name, resolution, bits)  # checks the name (and the shapes' resolution, the bits)
    if vdvae_split and name not in ("cifar10", "ffhq_256"):
        raise ValueError(f"data.vdvae_split applies to cifar10 and ffhq_256 (openai/vdvae's held-out splits), not "
                         f"{name}; set it to false.")
    for what, limit in (("train_limit", train_limit), ("test_limit", test_limit)):
        if limit is not None and limit < 0:
            raise ValueError(f"{what} must be a positive number of items (or None for the whole split), got {limit}.")
    train_limit, test_limit = train_limit or None, test_limit or None
    if name == "shapes":
        n_train, n_test = (min(lim or size, size) for lim, size in zip((train_limit, test_limit), shapes.SHAPES_SIZES))
        train, test = (shapes.shapes_dataset(n, resolution, seed, i) for i, n in enumerate((n_train, n_test)))
        return Datasets(*(_at_bits(split, bits) for split in (train, test)), info)
    if resolution != 32:
        raise ValueError(f"resolution={resolution} applies only to the 'shapes' dataset; {name} has a fixed size.")

    root = check_root(Path(root) if root else default_root())
    valid, notes = None, {}
    if name.startswith("imagenet"):
        train, test, notes = imagenet.load_imagenet(name, root)
    elif name.startswith("ffhq"):
        train, test, notes = ffhq.load_ffhq(name, root, info.bits, vdvae_split)
        valid = test if vdvae_split else None  # openai/vdvae validates and tests FFHQ-256 on the same 7,000
    elif name == "celeba_64":
        train, test = celeba.load_celeba64(root, info.bits)
    elif name == "celebahq_256":
        train, test = celeba.load_celebahq256(root, info.bits)
    else:
        loader = {"fashion_mnist": mnist_cifar.fashion_mnist, "mnist": mnist_cifar.mnist, "cifar10": mnist_cifar.cifar10}[name]
        train, test, _ = loader(root, download, seed)
        train, test = _at_bits(train, bits), _at_bits(test, bits)
        if vdvae_split:  # CIFAR-10: 45,000 train, 5,000 validation
            train_idx, valid_idx = (torch.from_numpy(i) for i in cifar10_vdvae_split(len(train)))
            train, valid = (ImageDataset(train.images[i], train.labels[i], train.bits, train.stored_bits)
                            for i in (train_idx, valid_idx))
            notes = {"split": "openai/vdvae's train_test_split(random_state=11172018): 45,000 train, 5,000 validation"}
    for split, limit in ((train, train_limit), (test, test_limit), (valid, test_limit)):
        if limit is not None and split is not None:  # valid may be test itself: slicing twice is harmless
            split.images, split.labels = split.images[:limit], split.labels[:limit]
    return Datasets(train, test, info, valid, notes)


def _at_bits(split, bits: int):
    """An in-memory split served at ``bits`` (the same object for 0, the dataset's own depth)."""
    if not bits or not isinstance(split, ImageDataset) or split.bits == bits:
        return split
    return ImageDataset(split.images, split.labels, bits, stored_bits=split.stored_bits)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False,
                num_workers: int = 0) -> DataLoader:
    """A DataLoader whose order is fixed by ``seed`` (a seeded torch.Generator drives shuffling
    and the workers' base seeds), so a rerun sees the same batches."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=num_workers, generator=torch.Generator().manual_seed(seed),
                      persistent_workers=num_workers > 0)
