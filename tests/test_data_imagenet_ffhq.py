"""Downsampled ImageNet and FFHQ, placed by hand: loaders tested on tiny files written in the real formats."""
import numpy as np
import pytest
import torch
from PIL import Image

from hvae_lib.data import load_dataset
from hvae_lib.data.contract import DATASETS, DatasetUnavailableError, dataset_info


def write_imagenet_npz(folder, resolution, per_batch=3, val=4, seed=0):
    """image-net.org's downsampled ImageNet: train_data_batch_1..10.npz and val_data.npz, each with
    'data' uint8 rows (R plane, G plane, B plane) and 1-based 'labels'; train batches also 'mean'."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    row = 3 * resolution * resolution
    batches = []
    for i in range(1, 11):
        data = rng.integers(0, 256, (per_batch, row), dtype=np.uint8)
        labels = rng.integers(1, 1001, per_batch).tolist()  # a list, as in the originals
        np.savez(folder / f"train_data_batch_{i}.npz", data=data, labels=labels, mean=data.mean(0))
        batches.append((data, labels))
    val_data = rng.integers(0, 256, (val, row), dtype=np.uint8)
    np.savez(folder / "val_data.npz", data=val_data, labels=rng.integers(1, 1001, val).tolist())
    return batches, val_data


@pytest.mark.parametrize("name, resolution", [("imagenet32", 32), ("imagenet64", 64)])
def test_imagenet_from_the_npz_batches(tmp_path, name, resolution):
    batches, val_data = write_imagenet_npz(tmp_path / name, resolution)
    data = load_dataset(name, tmp_path)
    assert data.info == dataset_info(name) and data.info.image_shape == (3, resolution, resolution)
    assert len(data.train) == 30 and len(data.test) == 4
    image, label = data.train[4]  # batch 2, row 1
    planes = torch.from_numpy(batches[1][0][1]).view(3, resolution, resolution).float() / 255
    assert torch.equal(image, planes) and label == batches[1][1][1] - 1  # labels become 0-based
    r, g, b = (torch.from_numpy(val_data[0][k * resolution**2:(k + 1) * resolution**2]) for k in range(3))
    assert torch.equal(data.test[0][0][1].flatten(), g.float() / 255)  # the second plane is green
    assert torch.equal(data.test[0][0][2].flatten(), b.float() / 255)
    assert len(load_dataset(name, tmp_path, train_limit=5).train) == 5


def test_imagenet_from_openai_vdvae_npy_arrays(tmp_path):
    folder = tmp_path / "imagenet32"
    folder.mkdir()
    train = np.random.default_rng(1).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)  # NHWC
    np.save(folder / "imagenet32-train.npy", train)
    np.save(folder / "imagenet32-valid.npy", train[:2])
    data = load_dataset("imagenet32", tmp_path)
    assert len(data.train) == 6 and len(data.test) == 2
    assert torch.equal(data.train[3][0], torch.from_numpy(train[3]).permute(2, 0, 1).float() / 255)


def test_imagenet_missing_or_foreign_files_are_one_sentence(tmp_path):
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset("imagenet32", tmp_path)
    message = str(err.value)
    assert "\n" not in message and "image-net.org" in message and str(tmp_path / "imagenet32") in message
    assert "train_data_batch_1.npz" in message and "val_data.npz" in message
    write_imagenet_npz(tmp_path / "imagenet64", 32)  # 32x32 batches in the 64x64 folder
    with pytest.raises(DatasetUnavailableError, match="belongs to another resolution"):
        load_dataset("imagenet64", tmp_path)
    (tmp_path / "imagenet64" / "train_data_batch_1.npz").write_bytes(b"not a zip file")
    with pytest.raises(DatasetUnavailableError, match="train_data_batch_1.npz is not a downsampled-ImageNet .npz"):
        load_dataset("imagenet64", tmp_path)


def write_ffhq(folder, numbers, size=1024, seed=0):
    """NVlabs' images1024x1024 layout: PNGs named by number in subfolders of a thousand."""
    rng = np.random.default_rng(seed)
    pixels = {}
    for n in numbers:
        sub = folder / f"{n // 1000 * 1000:05d}"
        sub.mkdir(parents=True, exist_ok=True)
        colour = rng.integers(0, 256, 3, dtype=np.uint8)
        image = np.broadcast_to(colour, (size, size, 3)).copy()  # flat colour: a tiny PNG
        image[: size // 2, : size // 2] = 255 - colour  # one different quadrant
        Image.fromarray(image).save(sub / f"{n:05d}.png")
        pixels[n] = image
    return pixels


def test_ffhq_1024_and_256_from_the_png_folder(tmp_path):
    pixels = write_ffhq(tmp_path / "ffhq", [0, 1, 64999, 65000, 69999])
    (tmp_path / "ffhq" / "LICENSE.txt").write_text("not an image")  # ignored
    data = load_dataset("ffhq_1024", tmp_path)
    assert data.info.image_shape == (3, 1024, 1024) and data.info.bits == 8
    assert (len(data.train), len(data.test)) == (3, 2)  # 00000-64999 train, 65000-69999 test
    assert torch.equal(data.test[0][0], torch.from_numpy(pixels[65000]).permute(2, 0, 1).float() / 255)

    small = load_dataset("ffhq_256", tmp_path, train_limit=2)
    assert small.info.bits == 5 and len(small.train) == 2
    image, _ = small.test[1]  # 69999.png resized to 256x256, reduced to 5 bits
    assert image.shape == (3, 256, 256) and torch.equal(image, torch.round(image * 31) / 31)
    expected = torch.from_numpy(pixels[69999][300, 700]).div(8, rounding_mode="floor").float() / 31  # a flat region
    assert torch.equal(image[:, 75, 175], expected)


def test_ffhq_missing_and_bad_images_are_one_sentence(tmp_path):
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset("ffhq_256", tmp_path)
    assert "\n" not in str(err.value) and "NVlabs/ffhq-dataset" in str(err.value) and "no numbered PNGs" in str(err.value)
    write_ffhq(tmp_path / "ffhq", [1, 2], size=64)
    with pytest.raises(DatasetUnavailableError, match="none from 65000"):
        load_dataset("ffhq_256", tmp_path)
    write_ffhq(tmp_path / "ffhq", [65001], size=64)
    data = load_dataset("ffhq_256", tmp_path)
    with pytest.raises(DatasetUnavailableError, match="is 64x64, but this dataset needs square images of at least 256x256"):
        data.test[0]


def test_every_dataset_has_an_info_without_its_files():
    for name in DATASETS:
        info = dataset_info(name, 16) if name == "shapes" else dataset_info(name)
        c, h, w = info.image_shape
        assert info.num_dims <= c * h * w and info.bits in (1, 5, 8)
    assert dataset_info("ffhq_256").bits == 5 and dataset_info("ffhq_1024").num_dims == 3 * 1024**2
