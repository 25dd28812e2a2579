"""The contract every dataset keeps, and what a dataset is without reading it (Chapter 1).

An item is ``(image, label)`` with ``image`` a float32 tensor (C, H, W) in [0, 1] whose values are
exact multiples of 1 / (2^bits - 1), and ``label`` an int. Models map [0, 1] to whatever range
their likelihood wants themselves; the data never does. :func:`dataset_info` says, for every name
in :data:`DATASETS`, the shape, bit depth, likelihood and the number of dimensions bits/dim
divides by, without reading any file.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

DATASETS = ("fashion_mnist", "mnist", "cifar10", "shapes", "imagenet32", "imagenet64", "ffhq_256", "ffhq_1024",
            "celeba_64", "celebahq_256")


class DatasetUnavailableError(RuntimeError):
    """A dataset that is neither on disk nor downloadable; the message says how to get it."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    image_shape: tuple[int, int, int]  # (C, H, W) of the images the loader returns
    bits: int  # bit depth: 8 for Fashion-MNIST/CIFAR/shapes, 1 for binarised MNIST
    likelihood: str  # "logistic_mixture" (bits > 1) or "bernoulli" (bits == 1)
    num_dims: int  # dims bits/dim divides by: C*H*W of the unpadded data (784 for MNIST)


@dataclass
class Datasets:
    """The splits of a dataset: ``valid`` is a held-out part of the training set when the protocol
    has one (openai/vdvae's, ``vdvae_split``), else None; ``notes`` says which files or variant
    were read (recorded in a run's results.json)."""

    train: Dataset
    test: Dataset
    info: DatasetInfo
    valid: Dataset | None = None
    notes: dict = field(default_factory=dict)


def dataset_info(name: str, resolution: int = 32, bits: int = 0) -> DatasetInfo:
    """The :class:`DatasetInfo` that ``load_dataset(name)`` returns, without reading any file: what a
    dry run or a benchmark needs to build a model for data that is not on this machine.

    ``bits`` (0: the dataset's own depth) serves a dataset stored at 8 bits on a coarser grid,
    floor(x_255 / 2^(8 - bits)) / (2^bits - 1), or FFHQ-256 and CelebA-HQ-256 at their full 8 bits."""
    info = _own_info(name, resolution)
    if bits and bits != info.bits:
        if name == "mnist":
            raise ValueError(f"data.bits={bits} cannot apply to mnist, which is binarised (1 bit); leave data.bits at 0.")
        if not 1 <= bits <= 8:
            raise ValueError(f"data.bits must be between 1 and 8 (0: the dataset's own {info.bits}), got {bits}.")
        likelihood = "bernoulli" if bits == 1 and info.image_shape[0] == 1 else info.likelihood
        info = dataclasses.replace(info, bits=bits, likelihood=likelihood)
    return info


def _own_info(name: str, resolution: int) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; expected one of {', '.join(DATASETS)}.")
    if name == "shapes":
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"The shapes dataset needs a power-of-two resolution >= 8 (8, 16, 32, ...), got {resolution}.")
        return DatasetInfo("shapes", (3, resolution, resolution), 8, "logistic_mixture", 3 * resolution**2)
    return {
        "fashion_mnist": DatasetInfo("fashion_mnist", (1, 28, 28), 8, "logistic_mixture", 784),
        "mnist": DatasetInfo("mnist", (1, 28, 28), 1, "bernoulli", 784),  # models pad to their canvas themselves
        "cifar10": DatasetInfo("cifar10", (3, 32, 32), 8, "logistic_mixture", 3 * 32 * 32),
        # placed by hand (hvae_lib.data.imagenet, hvae_lib.data.ffhq); FFHQ-256 at 5 bits, as in the VDVAE and NVAE papers
        "imagenet32": DatasetInfo("imagenet32", (3, 32, 32), 8, "logistic_mixture", 3 * 32 * 32),
        "imagenet64": DatasetInfo("imagenet64", (3, 64, 64), 8, "logistic_mixture", 3 * 64 * 64),
        "ffhq_256": DatasetInfo("ffhq_256", (3, 256, 256), 5, "logistic_mixture", 3 * 256 * 256),
        "ffhq_1024": DatasetInfo("ffhq_1024", (3, 1024, 1024), 8, "logistic_mixture", 3 * 1024 * 1024),
        # NVAE's CelebA sets, placed by hand (hvae_lib.data.celeba); CelebA-HQ at 5 bits, as in the NVAE paper
        "celeba_64": DatasetInfo("celeba_64", (3, 64, 64), 8, "logistic_mixture", 3 * 64 * 64),
        "celebahq_256": DatasetInfo("celebahq_256", (3, 256, 256), 5, "logistic_mixture", 3 * 256 * 256),
    }[name]


def default_root() -> Path:
    """``$HVAE_DATA_ROOT`` if set, else ``<repo root>/data``."""
    env = os.environ.get("HVAE_DATA_ROOT")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "data"


def check_root(root: Path) -> Path:
    """``root`` if it is a folder or does not exist yet; a file there is one sentence, not a traceback."""
    if root.exists() and not root.is_dir():
        where = "$HVAE_DATA_ROOT" if os.environ.get("HVAE_DATA_ROOT") and Path(os.environ["HVAE_DATA_ROOT"]) == root \
            else "the data folder"
        raise DatasetUnavailableError(f"{where} points to {root}, which is a file, not a folder: set it to the folder "
                                      f"that holds (or will hold) the datasets, or unset it to use <repo>/data.")
    return root


class ImageDataset(Dataset):
    """uint8 images (N, C, H, W) on a 2^bits grid, served as float32 in [0, 1] (Chapter 1).

    ``stored_bits`` (default ``bits``) is the grid the stored values are on; when it is finer, an
    image is served at ``bits`` as floor(k / 2^(stored_bits - bits)) / (2^bits - 1) (NVAE's
    ``pre_process`` and openai/vdvae's 5-bit FFHQ)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, bits: int = 8, stored_bits: int | None = None):
        self.images, self.labels, self.bits = images, labels.long(), bits
        self.stored_bits = bits if stored_bits is None else stored_bits
        self.max_level = float(2**bits - 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        if self.stored_bits > self.bits:
            x = torch.div(x, 2 ** (self.stored_bits - self.bits), rounding_mode="floor")
        # Divide (not multiply by 1/255): k / 255 is then the float nearest the exact level.
        return x.float() / self.max_level, int(self.labels[i])  # (C, H, W)


def unavailable(what: str, reason: str, ways: str) -> DatasetUnavailableError:
    """The one-sentence error of a dataset that is missing and could not be downloaded."""
    return DatasetUnavailableError(f"{what} was not found and could not be downloaded ({reason}); {ways}.")
