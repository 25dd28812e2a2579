"""Image files as a model's input: (B, C, H, W) in [0, 1] on the model's bit-depth grid, as the
datasets give them (:mod:`hvae_lib.data.contract`), or one sentence saying what does not fit.

A file must have the model's size (nothing is resized or cropped behind the user's back) and its
channel count: grey (PIL modes 1, L, I, F) for a one-channel model, colour (RGB, P, CMYK, ...) for
a three-channel one. A colour file whose three channels are equal everywhere is grey and is read as
such (``torchvision.utils.save_image`` writes grey images that way). An alpha channel is dropped.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


class ImageFileError(ValueError):
    """An image file that is missing, unreadable, or of another size or channel count than the model takes."""


def quantise(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Values in [0, 1] onto the 2^bits grid, k / (2^bits - 1), as the datasets serve them (1 bit: threshold at 0.5)."""
    levels = 2**bits - 1
    return torch.round(x * levels) / levels


def read_image_file(path: str | Path, image_shape: Sequence[int], bits: int = 8) -> torch.Tensor:
    """One file as a (C, H, W) float tensor in [0, 1] on the 2^bits grid, for a model taking ``image_shape``."""
    path = Path(path)
    c, h, w = (int(s) for s in image_shape)
    if not path.is_file():
        raise ImageFileError(f"No image file at {path}; pass the path of a PNG or JPEG image.")
    try:
        with Image.open(path) as image:
            image.load()
    except (UnidentifiedImageError, OSError) as err:
        raise ImageFileError(f"{path} could not be read as an image ({type(err).__name__}); pass a PNG or JPEG file.") from None
    if image.size != (w, h):
        raise ImageFileError(f"{path} is {image.size[0]}x{image.size[1]} pixels but this model takes {w}x{h} images; "
                             f"resize or crop it to {w}x{h} first.")
    grey = image.mode in GREY_MODES
    if grey:
        array = np.asarray(image.convert("L"), dtype=np.float64)[None] / 255.0  # (1, H, W)
    else:
        array = np.asarray(image.convert("RGB"), dtype=np.float64).transpose(2, 0, 1) / 255.0  # (3, H, W)
        if c == 1 and np.array_equal(array[0], array[1]) and np.array_equal(array[0], array[2]):
            array, grey = array[:1], True
    channels = 1 if grey else 3
    if channels != c:
        want = "grey (one channel)" if c == 1 else "colour (three channels)"
        have = "grey" if grey else "colour"
        raise ImageFileError(f"{path} is a {have} image but this model takes {want} images; convert it first "
                             f"(e.g. PIL's image.convert({'L' if c == 1 else 'RGB'!r})).")
    x = torch.from_numpy(np.clip(array, 0.0, 1.0)).float()  # (C, H, W)
    return quantise(x, bits)


def read_image_files(paths: Sequence[str | Path], image_shape: Sequence[int], bits: int = 8) -> torch.Tensor:
    """Files as a batch (B, C, H, W) for a model taking ``image_shape`` (see :func:`read_image_file`)."""
    if not paths:
        raise ImageFileError("No image files given; pass at least one PNG or JPEG image.")
    return torch.stack([read_image_file(p, image_shape, bits) for p in paths])
