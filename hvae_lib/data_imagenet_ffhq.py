"""Datasets placed by hand, for the Very Deep VAE's paper presets (Chapter 6): downsampled ImageNet
(32x32, 64x64) and FFHQ (256x256 at 5 bits, 1024x1024). None of them can be downloaded
automatically; each loader says in one sentence where to put which files.

Same contract as :mod:`hvae_lib.data`: items ``(image, label)``, images float32 (3, H, W) in [0, 1]
on the 2^bits grid.

- ``imagenet32`` / ``imagenet64`` from ``<root>/imagenet32/`` (or ``imagenet64/``), either the
  downsampled ImageNet of image-net.org (Chrabaszcz et al. 2017; ``Imagenet32_train_npz.zip`` and
  ``Imagenet32_val_npz.zip`` unpacked: ``train_data_batch_1.npz`` .. ``_10.npz`` and ``val_data.npz``,
  each holding ``data``, uint8 rows of the R, G and B planes, and 1-based ``labels``), or the
  ``imagenet32-train.npy`` / ``imagenet32-valid.npy`` arrays (N, H, W, 3) that openai/vdvae's
  ``setup_imagenet.sh`` made from van den Oord et al.'s version (the one its paper reports on; the
  .npy files are memory-mapped). Train: the whole training set (the official code holds 5,000 of
  it out for validation); test: the validation set, as published numbers.
- ``ffhq_256`` / ``ffhq_1024`` from ``<root>/ffhq/``: NVlabs' ``images1024x1024`` PNGs (any subfolders,
  named 00000.png .. 69999.png), split as openai/vdvae's ``setup_ffhq1024.sh`` does (65,000 train,
  the last 5,000 test; for FFHQ-256 the official code split its own .npy copy at random instead).
  Images are read when used, resized with PIL's bilinear filter (torchvision's ``Resize``, which
  NVAE and the official FFHQ-256 copy used) when larger than the target, and FFHQ-256 is reduced to
  5 bits as the official ``setup_ffhq256.sh`` says: k = floor(x_255 / 8), served as k / 31.
"""
from __future__ import annotations

import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .data import DatasetUnavailableError, ImageDataset, dataset_info

IMAGENET_TRAIN_BATCHES = 10
FFHQ_TEST_FROM = 65_000  # openai/vdvae: 00000-64999 train, 65000-69999 valid (= test)
FFHQ_IMAGES = 70_000


def _npz_shape(path: Path, key: str = "data") -> tuple[int, ...]:
    """The shape of array ``key`` in an .npz file, read from its header without loading the data."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = reader(f)
    return shape


def _read_npz_batches(paths: list[Path], resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate downsampled-ImageNet .npz batches into uint8 images (N, 3, r, r) and 0-based labels,
    filling one preallocated tensor so the peak memory is the dataset's size, not twice it."""
    row = 3 * resolution * resolution
    shapes = []
    for p in paths:
        try:
            shapes.append(_npz_shape(p))
        except (zipfile.BadZipFile, KeyError, ValueError, OSError) as err:
            raise DatasetUnavailableError(f"{p} is not a downsampled-ImageNet .npz with a 'data' array "
                                          f"({type(err).__name__}); download and unzip it again.") from None
    for p, shape in zip(paths, shapes):
        if len(shape) != 2 or shape[1] != row:
            raise DatasetUnavailableError(f"{p} holds images of {shape[1:] or shape} values each, not {row} "
                                          f"(3 x {resolution} x {resolution}); it belongs to another resolution.")
    images = torch.empty(sum(s[0] for s in shapes), 3, resolution, resolution, dtype=torch.uint8)
    labels = torch.empty(len(images), dtype=torch.long)
    start = 0
    for p, (n, _) in zip(paths, shapes):
        with np.load(p) as batch:
            images[start:start + n] = torch.from_numpy(batch["data"]).view(n, 3, resolution, resolution)
            labels[start:start + n] = torch.from_numpy(np.asarray(batch["labels"], dtype=np.int64)) - 1
        start += n
    return images, labels


def _read_npy(path: Path, resolution: int) -> torch.Tensor:
    """openai/vdvae's (N, r, r, 3) uint8 array, memory-mapped, as a (N, 3, r, r) view."""
    try:
        array = np.load(path, mmap_mode="r")
    except ValueError as err:
        raise DatasetUnavailableError(f"{path} is not a NumPy .npy array ({err}); download or convert it again.") from None
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1:] != (resolution, resolution, 3):
        raise DatasetUnavailableError(f"{path} holds a {array.dtype} array of shape {array.shape}, not uint8 images "
                                      f"(N, {resolution}, {resolution}, 3); it belongs to another dataset.")
    with warnings.catch_warnings():  # read-only memory map: the data is never written
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array).permute(0, 3, 1, 2)  # (N, 3, r, r)


def load_imagenet(name: str, root: Path) -> tuple[ImageDataset, ImageDataset]:
    """Train and test splits of ``imagenet32`` or ``imagenet64`` from ``root/<name>/``."""
    resolution = dataset_info(name).image_shape[1]
    folder = root / name
    npz_train = [folder / f"train_data_batch_{i}.npz" for i in range(1, IMAGENET_TRAIN_BATCHES + 1)]
    npz_test = folder / "val_data.npz"
    npy_train, npy_test = folder / f"{name}-train.npy", folder / f"{name}-valid.npy"
    if npy_train.is_file() and npy_test.is_file():
        train, test = _read_npy(npy_train, resolution), _read_npy(npy_test, resolution)
        return (ImageDataset(train, torch.zeros(len(train), dtype=torch.long)),
                ImageDataset(test, torch.zeros(len(test), dtype=torch.long)))
    present = [p.name for p in (*npz_train, npz_test) if p.is_file()]
    if len(present) < IMAGENET_TRAIN_BATCHES + 1:
        missing = [p.name for p in (*npz_train, npz_test) if not p.is_file()]
        side = f"Imagenet{resolution}"
        raise DatasetUnavailableError(
            f"Downsampled ImageNet {resolution}x{resolution} is not in {folder} ({len(missing)} files missing, e.g. "
            f"{missing[0]}) and cannot be downloaded automatically: log in at https://image-net.org/download-images, "
            f"download {side}_train_npz.zip (for 64x64 the two parts) and {side}_val_npz.zip, and unzip them into "
            f"{folder}/ so that it holds train_data_batch_1.npz .. train_data_batch_10.npz and val_data.npz "
            f"(or put openai/vdvae's {npy_train.name} and {npy_test.name} there).")
    tr_x, tr_y = _read_npz_batches(npz_train, resolution)
    te_x, te_y = _read_npz_batches([npz_test], resolution)
    return ImageDataset(tr_x, tr_y), ImageDataset(te_x, te_y)


class ImageFiles(Dataset):
    """Square RGB images read from files when used, resized to ``resolution`` if larger (PIL bilinear)
    and reduced to ``bits`` as floor(x_255 / 2^(8 - bits)) / (2^bits - 1). ``images`` is the list of
    paths (slicing it keeps the first N, as the in-memory datasets' tensors)."""

    def __init__(self, paths: list[Path], resolution: int, bits: int = 8):
        self.images, self.resolution, self.bits = list(paths), resolution, bits
        self.labels = torch.zeros(len(self.images), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path = self.images[i]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except OSError as err:
            raise DatasetUnavailableError(f"{path} could not be read as an image ({err}); replace or delete it.") from None
        w, h = img.size
        if w != h or w < self.resolution:
            raise DatasetUnavailableError(f"{path} is {w}x{h}, but this dataset needs square images of at least "
                                          f"{self.resolution}x{self.resolution}; replace it with the original FFHQ file.")
        if w != self.resolution:
            img = img.resize((self.resolution, self.resolution), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, H, W) uint8
        if self.bits < 8:
            x = torch.div(x, 2 ** (8 - self.bits), rounding_mode="floor")
        return x.float() / (2**self.bits - 1), 0


def load_ffhq(name: str, root: Path) -> tuple[ImageFiles, ImageFiles]:
    """Train and test splits of ``ffhq_256`` or ``ffhq_1024`` from the PNGs in ``root/ffhq/``."""
    info = dataset_info(name)
    folder = root / "ffhq"
    numbered = {}
    if folder.is_dir():
        for path in folder.rglob("*.png"):
            if re.fullmatch(r"\d{5}", path.stem) and int(path.stem) < FFHQ_IMAGES:
                numbered[int(path.stem)] = path
    train = [numbered[k] for k in sorted(numbered) if k < FFHQ_TEST_FROM]
    test = [numbered[k] for k in sorted(numbered) if k >= FFHQ_TEST_FROM]
    if not train or not test:
        found = f"only {len(numbered)} numbered PNGs, none {'below' if not train else 'from'} {FFHQ_TEST_FROM:05d}" \
            if numbered else "no numbered PNGs"
        raise DatasetUnavailableError(
            f"FFHQ was not found in {folder} ({found}) and cannot be downloaded automatically: download the "
            f"images1024x1024 folder of https://github.com/NVlabs/ffhq-dataset (70,000 PNGs, 00000.png .. 69999.png) "
            f"and put it, subfolders and all, in {folder}/; 00000-64999 train and 65000-69999 test both "
            f"ffhq_256 and ffhq_1024.")
    resolution = info.image_shape[1]
    return ImageFiles(train, resolution, info.bits), ImageFiles(test, resolution, info.bits)
