"""Datasets behind one contract: Fashion-MNIST, binarised MNIST, CIFAR-10 and procedural shapes
(Chapter 1, "image likelihoods and bits/dim"; the shapes return in the chapters on global versus
local structure).

Contract, the same for every dataset: an item is ``(image, label)`` with ``image`` a float32 tensor
(C, H, W) in [0, 1] whose values are exact multiples of 1 / (2^bits - 1), and ``label`` an int.
Models map [0, 1] to whatever range their likelihood wants themselves; the data never does.
Images live in memory as one uint8 tensor (N, C, H, W) and are converted per item, no PIL.

``load_dataset(name)`` returns the two splits and a :class:`DatasetInfo` saying the shape, bit
depth, likelihood and the number of dimensions bits/dim divides by. Images keep their own size:
binarised MNIST is 28x28, so log p(x|z) sums 784 Bernoulli terms and its nats and bits/dim compare
with published numbers. A model whose architecture needs a larger canvas pads inside and crops its
likelihood back to the image (NVAE zero-pads MNIST to 32x32, as the official data pipeline does,
and crops its decoder output to the 28x28 real pixels, as the official loss does).
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import torch
from torch.utils.data import DataLoader, Dataset

DATASETS = ("fashion_mnist", "mnist", "cifar10", "shapes", "imagenet32", "imagenet64", "ffhq_256", "ffhq_1024")
# Debian/Ubuntu package `dataset-fashion-mnist` ships the gzipped IDX files here.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
SHAPES_SIZES = (10_000, 2_000)  # default (train, test) sizes of the procedural dataset
SHAPE_CLASSES = ("circle", "square", "triangle")


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
    train: Dataset
    test: Dataset
    info: DatasetInfo


def dataset_info(name: str, resolution: int = 32) -> DatasetInfo:
    """The :class:`DatasetInfo` that ``load_dataset(name)`` returns, without reading any file: what a
    dry run or a benchmark needs to build a model for data that is not on this machine."""
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
        # placed by hand (hvae_lib.data_imagenet_ffhq); FFHQ-256 at 5 bits, as in the VDVAE and NVAE papers
        "imagenet32": DatasetInfo("imagenet32", (3, 32, 32), 8, "logistic_mixture", 3 * 32 * 32),
        "imagenet64": DatasetInfo("imagenet64", (3, 64, 64), 8, "logistic_mixture", 3 * 64 * 64),
        "ffhq_256": DatasetInfo("ffhq_256", (3, 256, 256), 5, "logistic_mixture", 3 * 256 * 256),
        "ffhq_1024": DatasetInfo("ffhq_1024", (3, 1024, 1024), 8, "logistic_mixture", 3 * 1024 * 1024),
    }[name]


def default_root() -> Path:
    """``$HVAE_DATA_ROOT`` if set, else ``<repo root>/data``."""
    env = os.environ.get("HVAE_DATA_ROOT")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "data"


class ImageDataset(Dataset):
    """uint8 images (N, C, H, W) on a 2^bits grid, served as float32 in [0, 1] (Chapter 1)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, bits: int = 8):
        self.images, self.labels, self.bits = images, labels.long(), bits
        self.max_level = float(2**bits - 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        # Divide (not multiply by 1/255): k / 255 is then the float nearest the exact level.
        return self.images[i].float() / self.max_level, int(self.labels[i])  # (C, H, W)


class DynamicallyBinarizedDataset(ImageDataset):
    """8-bit grey images re-binarised on every access: x ~ Bernoulli(intensity) (Chapter 1)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        super().__init__(images, labels, bits=8)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        intensity, label = super().__getitem__(i)
        # The global RNG, so the training seed (and each DataLoader worker's seed) governs it.
        return torch.bernoulli(intensity), label  # (C, H, W) in {0, 1}


# ----------------------------------------------------------------------------- file formats

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
    """Decompress ``src/<f>.gz`` for every IDX file into ``dst/<f>``, atomically per file."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in IDX_FILES:
        tmp = dst / f".{name}.tmp"
        with gzip.open(src / f"{name}.gz", "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        os.replace(tmp, dst / name)


def _unavailable(what: str, reason: str, ways: str) -> DatasetUnavailableError:
    return DatasetUnavailableError(f"{what} was not found and could not be downloaded ({reason}); {ways}.")


# ----------------------------------------------------------------------------- the four datasets

def _fashion_mnist(root: Path, download: bool, seed: int):
    raw = root / "FashionMNIST" / "raw"
    if not all((raw / f).exists() for f in IDX_FILES):
        # The Debian files' md5 differ from torchvision's list, so they are decompressed by hand
        # rather than handed to torchvision, which would reject them and try the network.
        if all((DEBIAN_FASHION_MNIST / f"{f}.gz").exists() for f in IDX_FILES):
            _gunzip_into(DEBIAN_FASHION_MNIST, raw)
        else:
            reason = _torchvision_download("FashionMNIST", root) if download else "download=False was given"
            if reason is not None or not all((raw / f).exists() for f in IDX_FILES):
                raise _unavailable(f"Fashion-MNIST (in {raw})", reason or "files missing after download",
                                   "install it with `sudo apt-get install dataset-fashion-mnist`, "
                                   "or allow the torchvision download (download=True, needs internet), "
                                   f"or put the four IDX files ({', '.join(IDX_FILES)}) in {raw}/") from None
    (tr_x, tr_y), (te_x, te_y) = _load_idx_splits(raw)
    return ImageDataset(tr_x, tr_y), ImageDataset(te_x, te_y), dataset_info("fashion_mnist")


def _mnist(root: Path, download: bool, seed: int):
    raw = root / "MNIST" / "raw"
    if not all((raw / f).exists() for f in IDX_FILES):
        reason = _torchvision_download("MNIST", root) if download else "download=False was given"
        if reason is not None or not all((raw / f).exists() for f in IDX_FILES):
            raise _unavailable(f"MNIST (in {raw})", reason or "files missing after download",
                               "allow the torchvision download (download=True, needs internet), "
                               f"or put the four IDX files ({', '.join(IDX_FILES)}) in {raw}/") from None
    (tr_x, tr_y), (te_x, te_y) = _load_idx_splits(raw)
    # One fixed binarisation of the test set, so every evaluation scores the same images.
    g = torch.Generator().manual_seed(seed)
    te_bin = torch.bernoulli(te_x.float() / 255, generator=g).to(torch.uint8)  # (N, 1, 28, 28)
    return DynamicallyBinarizedDataset(tr_x, tr_y), ImageDataset(te_bin, te_y, bits=1), dataset_info("mnist")


def _cifar10(root: Path, download: bool, seed: int):
    folder = root / "cifar-10-batches-py"
    needed = (*CIFAR_TRAIN_BATCHES, "test_batch")
    if not all((folder / f).exists() for f in needed):
        reason = _torchvision_download("CIFAR10", root) if download else "download=False was given"
        if reason is not None or not all((folder / f).exists() for f in needed):
            raise _unavailable(f"CIFAR-10 (in {folder})", reason or "files missing after download",
                               "allow the torchvision download (download=True, needs internet), "
                               f"or extract cifar-10-python.tar.gz so that {folder}/ holds "
                               "data_batch_1..5 and test_batch") from None
    (tr_x, tr_y), (te_x, te_y) = _load_cifar_splits(folder)
    return ImageDataset(tr_x, tr_y), ImageDataset(te_x, te_y), dataset_info("cifar10")


def _shape_params(n: int, seed: int, split: int, chunk: int = 1000) -> dict[str, torch.Tensor]:
    """Random parameters of ``n`` shape images, drawn in fixed-size chunks so item i depends only
    on (seed, split, i) and not on how many items were asked for."""
    K = 3  # shapes per image: one large (it sets the label), up to two small ones on top
    parts = []
    for c in range(math.ceil(n / chunk)):
        g = torch.Generator().manual_seed((seed * 1_000_003 + split) * 1_000_003 + c)
        size = torch.rand(chunk, K, generator=g)
        size = torch.cat([0.22 + 0.16 * size[:, :1], 0.07 + 0.09 * size[:, 1:]], dim=1)  # half-extent, fraction of H
        parts.append(dict(
            cls=torch.randint(0, len(SHAPE_CLASSES), (chunk, K), generator=g),
            size=size,
            centre=size[..., None] + (1 - 2 * size[..., None]) * torch.rand(chunk, K, 2, generator=g),  # inside the image
            colour=torch.randint(100, 256, (chunk, K, 3), generator=g, dtype=torch.uint8),  # brighter than any background
            active=torch.cat([torch.ones(chunk, 1, dtype=torch.bool), torch.rand(chunk, K - 1, generator=g) < 0.6], 1),
            bg=torch.randint(0, 100, (chunk, 2, 3), generator=g, dtype=torch.uint8),
            two_tone=torch.rand(chunk, generator=g) < 0.5,
            vertical=torch.rand(chunk, generator=g) < 0.5,
            split_at=0.3 + 0.4 * torch.rand(chunk, generator=g),
        ))
    return {k: torch.cat([p[k] for p in parts])[:n] for k in parts[0]}


def render_shapes(p: dict[str, torch.Tensor], resolution: int) -> torch.Tensor:
    """Paint shape parameters onto a pixel grid: uint8 images (N, 3, H, W), hard edges."""
    coords = (torch.arange(resolution) + 0.5) / resolution  # pixel centres in (0, 1)
    v, u = coords.view(1, -1, 1), coords.view(1, 1, -1)  # (1, H, 1) rows, (1, 1, W) columns
    across = torch.where(p["vertical"].view(-1, 1, 1), u, v)  # (N, H, W)
    second = p["two_tone"].view(-1, 1, 1) & (across > p["split_at"].view(-1, 1, 1))  # (N, H, W)
    img = torch.where(second[:, None], p["bg"][:, 1, :, None, None], p["bg"][:, 0, :, None, None])  # (N, 3, H, W)
    for k in range(p["cls"].shape[1]):  # large shape first, small ones painted over it
        r = p["size"][:, k].view(-1, 1, 1)
        # Offsets are separable, (N, 1, W) and (N, H, 1): only the final comparisons are full size.
        du, dv = u - p["centre"][:, k, 0].view(-1, 1, 1), v - p["centre"][:, k, 1].view(-1, 1, 1)
        circle = du**2 + dv**2 <= r**2  # (N, H, W)
        square = (du.abs() <= 0.85 * r) & (dv.abs() <= 0.85 * r)  # about the circle's area
        triangle = (dv.abs() <= r) & (2 * du.abs() - dv <= r)  # apex up, base 2r at the bottom
        cls = p["cls"][:, k].view(-1, 1, 1)
        mask = torch.where(cls == 0, circle, torch.where(cls == 1, square, triangle))
        mask &= p["active"][:, k].view(-1, 1, 1)
        img = torch.where(mask[:, None], p["colour"][:, k, :, None, None], img)
    return img


def _shapes(n: int, resolution: int, seed: int, split: int) -> ImageDataset:
    p = _shape_params(n, seed, split)
    batch = max(1, 2**22 // resolution**2)  # bounds the (batch, H, W) temporaries to ~16 MB each
    parts = [render_shapes({k: t[i:i + batch] for k, t in p.items()}, resolution) for i in range(0, n, batch)]
    images = torch.cat(parts) if parts else torch.zeros(0, 3, resolution, resolution, dtype=torch.uint8)
    return ImageDataset(images, p["cls"][:, 0])  # label = class of the large shape


# ----------------------------------------------------------------------------- entry points

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
        n_train, n_test = (min(lim or size, size) for lim, size in zip((train_limit, test_limit), SHAPES_SIZES))
        return Datasets(_shapes(n_train, resolution, seed, 0), _shapes(n_test, resolution, seed, 1), info)
    if resolution != 32:
        raise ValueError(f"resolution={resolution} applies only to the 'shapes' dataset; {name} has a fixed size.")

    root = Path(root) if root else default_root()
    if name in ("imagenet32", "imagenet64", "ffhq_256", "ffhq_1024"):
        from .data_imagenet_ffhq import load_ffhq, load_imagenet

        train, test = (load_imagenet if name.startswith("imagenet") else load_ffhq)(name, root)
    else:
        loader = {"fashion_mnist": _fashion_mnist, "mnist": _mnist, "cifar10": _cifar10}[name]
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
