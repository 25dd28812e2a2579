"""CelebA-64 and CelebA-HQ-256 as NVAE reads them, from files placed by hand (NVAE's paper presets).

Same contract as every dataset (:mod:`hvae_lib.data.contract`): items ``(image, label)``, images
float32 (3, H, W) in [0, 1] on the 2^bits grid, read from disk when used. Neither can be
downloaded automatically; the loader says in one sentence where to put which files.

- ``celeba_64`` from ``<root>/celeba/``: the aligned CelebA JPEGs ``img_align_celeba/*.jpg``
  (178x218) and ``list_eval_partition.txt`` (torchvision's ``CelebA`` folder layout, which NVlabs'
  ``create_celeba64_lmdb.py`` reads). Preprocessing as NVAE's ``datasets.py``: crop the box
  (15, 40, 163, 188), a 148x148 face, resize it to 64x64 with PIL's bilinear filter
  (torchvision's ``Resize``), 8 bits. Train: partition 0 (162,770 images); test: partition 1
  (19,867), because NVAE's evaluation reads ``validation.lmdb``, which its README builds from
  ``--split valid``.
- ``celebahq_256`` from ``<root>/celebahq/``: Glow's CelebA-HQ TFRecords (``celeba-tfr.tar``
  unpacked: ``train/train-r08-s-0000-of-0120.tfrecords`` .. and ``validation/validation-r08-s-
  0000-of-0040.tfrecords`` ..), 256x256 uint8 images that NVlabs' ``convert_tfrecord_to_lmdb.py``
  copies unchanged; 27,000 train and 3,000 test (its validation set), reduced to 5 bits as NVAE's
  ``--num_x_bits 5``: k = floor(x_255 / 8), served as k / 31. A record is a ``tf.train.Example``
  with ``data`` (the raw bytes) and ``shape``; the files are indexed once (record offsets) and
  each image is parsed when used, so no TensorFlow is needed.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from hvae_lib.data.contract import DatasetUnavailableError, dataset_info
from hvae_lib.data.ffhq import ImageFiles, reduce_bits

CELEBA_CROP = (15, 40, 178 - 15, 218 - 30)  # (left, top, right, bottom): NVAE's CropCelebA64
CELEBA_PARTITIONS = {"train": 0, "test": 1}  # list_eval_partition.txt: 0 train, 1 valid, 2 test


class CelebAFiles(ImageFiles):
    """Aligned CelebA JPEGs cropped to the face and resized to ``resolution`` (NVAE's CelebA-64)."""

    unreadable_hint = "replace it with the original aligned CelebA file"
    replace_hint = "replace it with the file from img_align_celeba"

    def __init__(self, paths: list[Path], resolution: int = 64, bits: int = 8):
        super().__init__(paths, resolution, bits)

    def fit(self, img, path: Path):
        from PIL import Image

        if img.size != (178, 218):
            raise DatasetUnavailableError(f"{path} is {img.size[0]}x{img.size[1]}, not an aligned CelebA image "
                                          f"(178x218); {self.replace_hint}.")
        return img.crop(CELEBA_CROP).resize((self.resolution, self.resolution), Image.BILINEAR)


def load_celeba64(root: Path, bits: int = 0):
    folder = root / "celeba"
    images, listing = folder / "img_align_celeba", folder / "list_eval_partition.txt"
    how = (f"download the aligned CelebA images (img_align_celeba.zip) and list_eval_partition.txt from "
           f"https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html and put them in {folder}/ as "
           f"img_align_celeba/000001.jpg .. and list_eval_partition.txt")
    if not images.is_dir() or not listing.is_file():
        missing = "img_align_celeba/" if not images.is_dir() else listing.name
        raise DatasetUnavailableError(f"CelebA was not found in {folder} ({missing} missing) and cannot be downloaded "
                                      f"automatically: {how}.")
    splits = {name: [] for name in CELEBA_PARTITIONS}
    for n, line in enumerate(listing.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in "012":
            raise DatasetUnavailableError(f"{listing} line {n} reads {line!r}, not '<file>.jpg <0|1|2>'; replace it "
                                          f"with the original list_eval_partition.txt.")
        for name, partition in CELEBA_PARTITIONS.items():
            if int(parts[1]) == partition:
                splits[name].append(images / parts[0])
    absent = [p for paths in splits.values() for p in paths if not p.is_file()]
    if absent or not all(splits.values()):
        what = f"{len(absent)} listed images are missing, e.g. {absent[0].name}" if absent else "a partition is empty"
        raise DatasetUnavailableError(f"CelebA in {folder} is incomplete ({what}): {how}.")
    info = dataset_info("celeba_64", bits=bits)
    return CelebAFiles(splits["train"], 64, info.bits), CelebAFiles(splits["test"], 64, info.bits)


# ----------------------------------------------------------------------------- Glow's TFRecords
def record_offsets(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of every record's payload in a TFRecord file: each record is a uint64
    length, its 4-byte CRC, the payload and the payload's 4-byte CRC (little-endian)."""
    offsets, size = [], path.stat().st_size
    with open(path, "rb") as f:
        position = 0
        while position < size:
            header = f.read(12)
            if len(header) < 12:
                raise DatasetUnavailableError(f"{path} ends inside a record header; it is truncated: copy it again.")
            (length,) = struct.unpack("<Q", header[:8])
            if position + 16 + length > size:
                raise DatasetUnavailableError(f"{path} ends inside a record; it is truncated: copy it again.")
            offsets.append((position + 12, length))
            position += 16 + length
            f.seek(position)
    return offsets


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of a protobuf message: ints for varints, bytes otherwise."""
    i = 0
    while i < len(buf):
        tag, i = _varint(buf, i)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def parse_example(payload: bytes) -> dict[str, list]:
    """A ``tf.train.Example`` as {feature name: values}: bytes for a BytesList, ints for an Int64List
    (Example.features = 1; Features.feature = 1, a map entry of key = 1 and Feature = 2; Feature's
    bytes_list = 1, int64_list = 3, each with its values in field 1, int64s packed or not)."""
    features = {}
    for number, _, features_msg in _fields(payload):
        if number != 1:
            continue
        for n, _, entry in _fields(features_msg):
            if n != 1:
                continue
            parts = dict((k, v) for k, _, v in _fields(entry))
            name, feature = parts.get(1, b"").decode(), parts.get(2, b"")
            values = []
            for kind, _, lst in _fields(feature):
                for k, wire, v in _fields(lst):
                    if k != 1:
                        continue
                    if kind == 3 and wire == 2:  # packed int64s
                        j = 0
                        while j < len(v):
                            x, j = _varint(v, j)
                            values.append(x)
                    else:
                        values.append(v)
            features[name] = values
    return features


class TFRecordImages(Dataset):
    """Images stored as ``tf.train.Example`` records (``data``: raw uint8 HxWx3 bytes, ``shape``)."""

    def __init__(self, records: list[tuple[Path, int, int]], bits: int = 8, resolution: int = 256):
        self.images, self.bits, self.resolution = list(records), bits, resolution
        self.labels = torch.zeros(len(self.images), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, offset, length = self.images[i]
        with open(path, "rb") as f:
            f.seek(offset)
            payload = f.read(length)
        try:
            example = parse_example(payload)
            shape = tuple(int(v) for v in example["shape"])
            image = np.frombuffer(example["data"][0], dtype=np.uint8).reshape(shape)
        except (KeyError, IndexError, ValueError) as err:
            raise DatasetUnavailableError(f"record {i} of {path} is not a Glow CelebA-HQ image ({type(err).__name__}); "
                                          f"copy the file again.") from None
        if shape != (self.resolution, self.resolution, 3):
            raise DatasetUnavailableError(f"{path} holds {shape} images, not ({self.resolution}, {self.resolution}, 3): "
                                          f"use the r08 (256x256) CelebA-HQ files.")
        return reduce_bits(torch.from_numpy(image.copy()).permute(2, 0, 1), self.bits), 0


def load_celebahq256(root: Path, bits: int = 0):
    folder = root / "celebahq"
    info = dataset_info("celebahq_256", bits=bits)
    splits = {}
    for split, name in (("train", "train"), ("test", "validation")):
        files = sorted(folder.rglob(f"{name}-r08-s-*-of-*.tfrecords")) if folder.is_dir() else []
        files.sort(key=lambda p: int(re.search(r"-s-(\d+)-of-", p.name).group(1)))
        splits[split] = [(p, offset, length) for p in files for offset, length in record_offsets(p)]
    if not splits["train"] or not splits["test"]:
        raise DatasetUnavailableError(
            f"CelebA-HQ-256 was not found in {folder} (no {'train' if not splits['train'] else 'validation'}-r08-s-*"
            f".tfrecords files) and cannot be downloaded automatically: download Glow's celeba-tfr.tar "
            f"(https://storage.googleapis.com/glow-demo/data/celeba-tfr.tar, as NVlabs' README says) and unpack it "
            f"into {folder}/ so that it holds celeba-tfr/train/*.tfrecords and celeba-tfr/validation/*.tfrecords.")
    return (TFRecordImages(splits["train"], info.bits), TFRecordImages(splits["test"], info.bits))
