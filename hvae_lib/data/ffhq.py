"""FFHQ, 256x256 at 5 bits and 1024x1024, from NVlabs' PNGs placed by hand (the Very Deep VAE's
paper presets, Chapter 6).

Same contract as every dataset (:mod:`hvae_lib.data.contract`): items ``(image, label)``, images
float32 (3, H, W) in [0, 1] on the 2^bits grid. It cannot be downloaded automatically; the loader
says in one sentence where to put which files.

``ffhq_256`` / ``ffhq_1024`` come from ``<root>/ffhq/``: NVlabs' ``images1024x1024`` PNGs (any
subfolders, named 00000.png .. 69999.png) or, for ``ffhq_256``, openai/vdvae's ``ffhq-256.npy``
(70,000 x 256 x 256 x 3, the PNGs in their numbered order, downsampled as NVAE does; memory-mapped).
By default 00000-64999 train and 65000-69999 test, which is how openai/vdvae's
``setup_ffhq1024.sh`` splits FFHQ-1024. ``vdvae_split=True`` gives FFHQ-256's own official split
instead (:mod:`hvae_lib.data.splits`: a seed-5 permutation, 63,000 train and 7,000 held out as
validation and test), the one openai's FFHQ-256 weights were trained and evaluated on. Images are
read when used, resized with PIL's bilinear filter (torchvision's ``Resize``, which NVAE and the
official FFHQ-256 copy used) when larger than the target, and FFHQ-256 is reduced to 5 bits as the
official ``setup_ffhq256.sh`` says: k = floor(x_255 / 8), served as k / 31 (``bits=8`` keeps the
8-bit image, what openai's FFHQ-256 encoder reads).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from hvae_lib.data.contract import DatasetUnavailableError, dataset_info
from hvae_lib.data.splits import ffhq256_vdvae_split

FFHQ_TEST_FROM = 65_000  # openai/vdvae: 00000-64999 train, 65000-69999 valid (= test)
FFHQ_IMAGES = 70_000


def reduce_bits(x: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 (C, H, W) -> float in [0, 1] on the 2^bits grid: floor(x / 2^(8 - bits)) / (2^bits - 1)."""
    if bits < 8:
        x = torch.div(x, 2 ** (8 - bits), rounding_mode="floor")
    return x.float() / (2**bits - 1)


class ImageFiles(Dataset):
    """Square RGB images read from files when used, resized to ``resolution`` if larger (PIL bilinear)
    and reduced to ``bits`` as floor(x_255 / 2^(8 - bits)) / (2^bits - 1). ``images`` is the list of
    paths (slicing it keeps the first N, as the in-memory datasets' tensors)."""

    def __init__(self, paths: list[Path], resolution: int, bits: int = 8):
        self.images, self.resolution, self.bits = list(paths), resolution, bits
        self.labels = torch.zeros(len(self.images), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    # what the one-sentence errors for an unreadable and a misshapen file tell the user to do
    unreadable_hint, replace_hint = "replace or delete it", "replace it with the original FFHQ file"

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path = self.images[i]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except OSError as err:
            raise DatasetUnavailableError(f"{path} could not be read as an image ({err}); "
                                          f"{self.unreadable_hint}.") from None
        img = self.fit(img, path)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, H, W) uint8
        return reduce_bits(x, self.bits), 0

    def fit(self, img, path: Path):
        """The image at ``resolution``: square, at least that large, resized down (PIL bilinear)."""
        from PIL import Image

        w, h = img.size
        if w != h or w < self.resolution:
            raise DatasetUnavailableError(f"{path} is {w}x{h}, but this dataset needs square images of at least "
                                          f"{self.resolution}x{self.resolution}; {self.replace_hint}.")
        return img.resize((self.resolution, self.resolution), Image.BILINEAR) if w != self.resolution else img


class ArrayImages(Dataset):
    """Images ``array[index]`` of a uint8 (N, H, W, 3) array (memory-mapped), served as ImageFiles
    serves them; ``images`` holds the indices (slicing it keeps the first N)."""

    def __init__(self, array: np.ndarray, indices, bits: int = 8):
        self.array, self.images, self.bits = array, np.asarray(indices), bits
        self.labels = torch.zeros(len(self.images), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(np.array(self.array[int(self.images[i])])).permute(2, 0, 1)  # (3, H, W) uint8
        return reduce_bits(x, self.bits), 0


def _openai_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r")
    except ValueError as err:
        raise DatasetUnavailableError(f"{path} is not a NumPy .npy array ({err}); download it again.") from None
    if array.dtype != np.uint8 or array.shape != (FFHQ_IMAGES, 256, 256, 3):
        raise DatasetUnavailableError(f"{path} holds a {array.dtype} array of shape {array.shape}, not openai/vdvae's "
                                      f"FFHQ-256 copy (uint8, ({FFHQ_IMAGES}, 256, 256, 3)); download it again.")
    return array


def load_ffhq(name: str, root: Path, bits: int = 0, vdvae_split: bool = False):
    """Train and test splits of ``ffhq_256`` or ``ffhq_1024`` from ``root/ffhq/``, and notes saying
    which files and split were used."""
    info = dataset_info(name, bits=bits)
    folder = root / "ffhq"
    npy = folder / "ffhq-256.npy"
    if vdvae_split and name != "ffhq_256":
        raise ValueError("data.vdvae_split applies to cifar10 and ffhq_256 (openai/vdvae evaluates FFHQ-1024 on "
                         "images 65000-69999, this loader's default); set it to false.")
    if name == "ffhq_256" and npy.is_file():
        array = _openai_npy(npy)
        train, test = ffhq256_vdvae_split() if vdvae_split else (np.arange(FFHQ_TEST_FROM), np.arange(FFHQ_TEST_FROM, FFHQ_IMAGES))
        return ArrayImages(array, train, info.bits), ArrayImages(array, test, info.bits), _notes(npy.name, vdvae_split)
    numbered = {}
    if folder.is_dir():
        for path in folder.rglob("*.png"):
            if re.fullmatch(r"\d{5}", path.stem) and int(path.stem) < FFHQ_IMAGES:
                numbered[int(path.stem)] = path
    if vdvae_split and numbered and len(numbered) < FFHQ_IMAGES:
        raise DatasetUnavailableError(
            f"data.vdvae_split needs all {FFHQ_IMAGES:,} FFHQ images (openai/vdvae's split is a permutation of all of "
            f"them) but {folder} holds {len(numbered):,}: put the whole images1024x1024 folder (or openai/vdvae's "
            f"ffhq-256.npy) there, or set data.vdvae_split=false.")
    if vdvae_split and numbered:
        train_idx, test_idx = ffhq256_vdvae_split()
        train, test = [numbered[k] for k in train_idx], [numbered[k] for k in test_idx]
    else:
        train = [numbered[k] for k in sorted(numbered) if k < FFHQ_TEST_FROM]
        test = [numbered[k] for k in sorted(numbered) if k >= FFHQ_TEST_FROM]
    if not train or not test:
        found = f"only {len(numbered)} numbered PNGs, none {'below' if not train else 'from'} {FFHQ_TEST_FROM:05d}" \
            if numbered else "no numbered PNGs"
        raise DatasetUnavailableError(
            f"FFHQ was not found in {folder} ({found}) and cannot be downloaded automatically: download the "
            f"images1024x1024 folder of https://github.com/NVlabs/ffhq-dataset (70,000 PNGs, 00000.png .. 69999.png) "
            f"and put it, subfolders and all, in {folder}/ (for ffhq_256, openai/vdvae's ffhq-256.npy there "
            f"serves too); 00000-64999 train and 65000-69999 test both ffhq_256 and ffhq_1024.")
    resolution = info.image_shape[1]
    return (ImageFiles(train, resolution, info.bits), ImageFiles(test, resolution, info.bits),
            _notes("NVlabs' PNGs", vdvae_split))


def _notes(files: str, vdvae_split: bool) -> dict:
    split = ("openai/vdvae's seed-5 permutation: 63,000 train, 7,000 held out (validation = test)" if vdvae_split
             else "00000-64999 train, 65000-69999 test")
    return {"ffhq_files": files, "split": split}
