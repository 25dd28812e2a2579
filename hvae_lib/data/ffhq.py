"""FFHQ, 256x256 at 5 bits and 1024x1024, from NVlabs' PNGs placed by hand (the Very Deep VAE's
paper presets, Chapter 6).

Same contract as every dataset (:mod:`hvae_lib.data.contract`): items ``(image, label)``, images
float32 (3, H, W) in [0, 1] on the 2^bits grid. It cannot be downloaded automatically; the loader
says in one sentence where to put which files.

``ffhq_256`` / ``ffhq_1024`` come from ``<root>/ffhq/``: NVlabs' ``images1024x1024`` PNGs (any
subfolders, named 00000.png .. 69999.png), split as openai/vdvae's ``setup_ffhq1024.sh`` does
(65,000 train, the last 5,000 test; for FFHQ-256 the official code split its own .npy copy at random
instead). Images are read when used, resized with PIL's bilinear filter (torchvision's ``Resize``,
which NVAE and the official FFHQ-256 copy used) when larger than the target, and FFHQ-256 is reduced
to 5 bits as the official ``setup_ffhq256.sh`` says: k = floor(x_255 / 8), served as k / 31.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from hvae_lib.data.contract import DatasetUnavailableError, dataset_info

FFHQ_TEST_FROM = 65_000  # openai/vdvae: 00000-64999 train, 65000-69999 valid (= test)
FFHQ_IMAGES = 70_000


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
