"""Downsampled ImageNet, 32x32 and 64x64, placed by hand (the Very Deep VAE's paper presets, Chapter 6).

Same contract as every dataset (:mod:`hvae_lib.data.contract`): items ``(image, label)``, images
float32 (3, H, W) in [0, 1] on the 8-bit grid. It cannot be downloaded automatically; the loader
says in one sentence where to put which files.

``imagenet32`` / ``imagenet64`` come from ``<root>/imagenet32/`` (or ``imagenet64/``), either the
downsampled ImageNet of image-net.org (Chrabaszcz et al. 2017; ``Imagenet32_train_npz.zip`` and
``Imagenet32_val_npz.zip`` unpacked: ``train_data_batch_1.npz`` .. ``_10.npz`` and ``val_data.npz``,
each holding ``data``, uint8 rows of the R, G and B planes, and 1-based ``labels``), or the
``imagenet32-train.npy`` / ``imagenet32-valid.npy`` arrays (N, H, W, 3) that openai/vdvae's
``setup_imagenet.sh`` made from van den Oord et al.'s version (the one its paper reports on; the
.npy files are memory-mapped). Train: the whole training set (the official code holds 5,000 of
it out for validation); test: the validation set, as published numbers.

The two variants are different downsamplings (van den Oord et al.'s box resize against Chrabaszcz
et al.'s), so their bits/dim are not comparable; :func:`load_imagenet` says which it read
(``notes["imagenet_variant"]``: ``"oord"`` or ``"chrabaszcz"``), a run records it in
``results.json``, and a paper preset (``data.imagenet_variant="oord"``) warns in one line when it
gets the other.
"""
from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from hvae_lib.data.contract import DatasetUnavailableError, ImageDataset, dataset_info

IMAGENET_TRAIN_BATCHES = 10


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


VARIANTS = {"oord": "van den Oord et al.'s (openai/vdvae's .npy files; the papers' variant)",
            "chrabaszcz": "Chrabaszcz et al.'s (image-net.org's .npz batches)"}


def load_imagenet(name: str, root: Path) -> tuple[ImageDataset, ImageDataset, dict]:
    """Train and test splits of ``imagenet32`` or ``imagenet64`` from ``root/<name>/``, and notes
    saying which variant was read."""
    resolution = dataset_info(name).image_shape[1]
    folder = root / name
    npz_train = [folder / f"train_data_batch_{i}.npz" for i in range(1, IMAGENET_TRAIN_BATCHES + 1)]
    npz_test = folder / "val_data.npz"
    npy_train, npy_test = folder / f"{name}-train.npy", folder / f"{name}-valid.npy"
    if npy_train.is_file() and npy_test.is_file():
        train, test = _read_npy(npy_train, resolution), _read_npy(npy_test, resolution)
        return (ImageDataset(train, torch.zeros(len(train), dtype=torch.long)),
                ImageDataset(test, torch.zeros(len(test), dtype=torch.long)), {"imagenet_variant": "oord"})
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
    return ImageDataset(tr_x, tr_y), ImageDataset(te_x, te_y), {"imagenet_variant": "chrabaszcz"}
