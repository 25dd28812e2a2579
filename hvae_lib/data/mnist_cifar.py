"""Fashion-MNIST, dynamically binarised MNIST and CIFAR-10: read from their original files, found on
disk (Debian's package for Fashion-MNIST) or downloaded by torchvision (Chapters 1-7).

Images live in memory as one uint8 tensor (N, C, H, W) and are converted per item, no PIL. Images
keep their own size: binarised MNIST is 28x28, so log p(x|z) sums 784 Bernoulli terms and its nats
and bits/dim compare with published numbers. A model whose architecture needs a larger canvas pads
inside and crops its likelihood back to the image (NVAE zero-pads MNIST to 32x32, as the official
data pipeline does, and crops its decoder output to the 28x28 real pixels, as the official loss
does).
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from urllib.error import URLError

import torch

from hvae_lib.data.contract import DatasetUnavailableError, ImageDataset, dataset_info, unavailable

# Debian/Ubuntu package `dataset-fashion-mnist` ships the gzipped IDX files here.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


class DynamicallyBinarizedDataset(ImageDataset):
    """8-bit grey images re-binarised on every access: x ~ Bernoulli(intensity) (Chapter 1)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        super().__init__(images, labels, bits=8)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        intensity, label = super().__getitem__(i)
        # The global RNG, so the training seed (and each DataLoader worker's seed) governs it.
        return torch.bernoulli(intensity), label  # (C, H, W) in {0, 1}


def read_idx(path: Path) -> torch.Tensor:
    """Parse an uncompressed IDX file of unsigned bytes: magic 0x0000_08_<ndim>, big-endian dims."""
    data = Path(path).read_bytes()
    ndim = data[3] if len(data) >= 4 else 0
    if data[:3] != b"\x00\x00\x08" or ndim == 0:
        raise DatasetUnavailableError(f"{path} is not an IDX file of unsigned bytes (magic 2049 or 2051); delete it and load again.")
    dims = [int.from_bytes(data[4 + 4 * d: 8 + 4 * d], "big") for d in range(ndim)]
    body = data[4 + 4 * ndim:]
    if len(body) != math.prod(dims):
        raise DatasetUnavailableError(f"{path} is truncated: its header promises {dims} values but it holds {len(body)} bytes; delete it and load again.")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(dims)


def _load_idx_splits(raw: Path) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """((train images (N, 1, 28, 28), labels (N,)), (test images, labels)) from a raw IDX folder."""
    tr_x, tr_y, te_x, te_y = (read_idx(raw / f) for f in IDX_FILES)
    return (tr_x.unsqueeze(1), tr_y.long()), (te_x.unsqueeze(1), te_y.long())


def _load_cifar_splits(folder: Path):
    """Read CIFAR-10's python pickles: dicts with b'data' uint8 (N, 3072) and b'labels'."""
    def batch(name):
        with open(folder / name, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        x = torch.as_tensor(d[b"data"], dtype=torch.uint8).reshape(-1, 3, 32, 32)  # (N, C, H, W)
        return x, torch.as_tensor(d[b"labels"], dtype=torch.long)

    train = [batch(n) for n in CIFAR_TRAIN_BATCHES]
    return (torch.cat([x for x, _ in train]), torch.cat([y for _, y in train])), batch("test_batch")


def _torchvision_download(class_name: str, root: Path) -> str | None:
    """Let torchvision fetch a dataset into ``root``; None on success, else a one-line reason."""
    try:
        import torchvision

        getattr(torchvision.datasets, class_name)(str(root), train=True, download=True)
    except (ImportError, URLError, RuntimeError, OSError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__  # urllib messages span lines
        return reason if len(reason) <= 200 else reason[:197] + "..."
    return None


def _gunzip_into(src: Path, dst: Path) -> None:
    """Decompress ``src/<f>.gz`` for every IDX file into ``dst/<f>``, atomically per file. The temporary
    file is the caller's own, so that two first uses at once (two notebooks, two seed runs) both succeed."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in IDX_FILES:
        with gzip.open(src / f"{name}.gz", "rb") as fin, \
                tempfile.NamedTemporaryFile(dir=dst, prefix=f".{name}.", suffix=".tmp", delete=False) as fout:
            shutil.copyfileobj(fin, fout)
        os.replace(fout.name, dst / name)


def fashion_mnist(root: Path, download: bool, seed: int):
    raw = root / "FashionMNIST" / "raw"
    if not all((raw / f).exists() for f in IDX_FILES):
        # The Debian files' md5 differ from torchvision's list, so they are decompressed by hand
        # rather than handed to torchvision, which would reject them and try the network.
        if all((DEBIAN_FASHION_MNIST / f"{f}.gz").exists() for f in IDX_FILES):
            _gunzip_into(DEBIAN_FASHION_MNIST, raw)
        else:
            reason = _torchvision_download("FashionMNIST", root) if download else "download=False was given"
            if reason is not None or not all((raw / f).exists() for f in IDX_FILES):
                raise unavailable(f"Fashion-MNIST (in {raw})", reason or "files missing after download",
                                   "install it with `sudo apt-get install dataset-fashion-mnist`, "
                                   "or allow the torchvision download (download=True, needs internet), "
                                   f"or put the four IDX files ({', '.join(IDX_FILES)}) in {raw}/") from None
    (tr_x, tr_y), (te_x, te_y) = _load_idx_splits(raw)
    return ImageDataset(tr_x, tr_y), ImageDataset(te_x, te_y), dataset_info("fashion_mnist")


def mnist(root: Path, download: bool, seed: int):
    raw = root / "MNIST" / "raw"
    if not all((raw / f).exists() for f in IDX_FILES):
        reason = _torchvision_download("MNIST", root) if download else "download=False was given"
        if reason is not None or not all((raw / f).exists() for f in IDX_FILES):
            raise unavailable(f"MNIST (in {raw})", reason or "files missing after download",
                               "allow the torchvision download (download=True, needs internet), "
                               f"or put the four IDX files ({', '.join(IDX_FILES)}) in {raw}/") from None
    (tr_x, tr_y), (te_x, te_y) = _load_idx_splits(raw)
    # One fixed binarisation of the test set, so every evaluation scores the same images.
    g = torch.Generator().manual_seed(seed)
    te_bin = torch.bernoulli(te_x.float() / 255, generator=g).to(torch.uint8)  # (N, 1, 28, 28)
    return DynamicallyBinarizedDataset(tr_x, tr_y), ImageDataset(te_bin, te_y, bits=1), dataset_info("mnist")


def cifar10(root: Path, download: bool, seed: int):
    folder = root / "cifar-10-batches-py"
    needed = (*CIFAR_TRAIN_BATCHES, "test_batch")
    if not all((folder / f).exists() for f in needed):
        reason = _torchvision_download("CIFAR10", root) if download else "download=False was given"
        if reason is not None or not all((folder / f).exists() for f in needed):
            raise unavailable(f"CIFAR-10 (in {folder})", reason or "files missing after download",
                               "allow the torchvision download (download=True, needs internet), "
                               f"or extract cifar-10-python.tar.gz so that {folder}/ holds "
                               "data_batch_1..5 and test_batch") from None
    (tr_x, tr_y), (te_x, te_y) = _load_cifar_splits(folder)
    return ImageDataset(tr_x, tr_y), ImageDataset(te_x, te_y), dataset_info("cifar10")
