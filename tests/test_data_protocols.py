"""The papers' data protocols (issue 24): openai/vdvae's held-out splits, the ImageNet variant a run
read, a coarser bit depth on request, NVAE's CelebA sets from files in their real formats, and a
data root that is a file."""
import json
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from hvae_lib import train
from hvae_lib.config import override
from hvae_lib.data import load_dataset
from hvae_lib.data.contract import Datasets, DatasetUnavailableError, ImageDataset, dataset_info
from hvae_lib.data.splits import cifar10_vdvae_split, ffhq256_vdvae_split
from hvae_lib.models.presets import get_preset
from hvae_lib.training.data import load_data
from hvae_lib.training.engine import Trainer


# ----------------------------------------------------------------------------- openai/vdvae's splits
def test_cifar10_split_is_scikit_learns_train_test_split_with_openais_seed():
    """Indices scikit-learn 1.9.1 returns for train_test_split(np.arange(50000), y, test_size=5000,
    random_state=11172018), the call in openai/vdvae's data.py (derived outside the project)."""
    train_idx, valid_idx = cifar10_vdvae_split()
    assert (len(train_idx), len(valid_idx)) == (45_000, 5_000)
    assert valid_idx[:8].tolist() == [38899, 48321, 12222, 16844, 47067, 26668, 26014, 11553]
    assert valid_idx[-3:].tolist() == [39045, 25253, 29250]
    assert train_idx[:8].tolist() == [28062, 8836, 24693, 36105, 26494, 7812, 43533, 19615]
    assert train_idx[-3:].tolist() == [29869, 7348, 29029]
    assert sorted(np.concatenate([train_idx, valid_idx]).tolist()) == list(range(50_000))


def test_ffhq256_split_is_numpys_seed_5_permutation():
    train_idx, held_out = ffhq256_vdvae_split()
    assert (len(train_idx), len(held_out)) == (63_000, 7_000)
    assert held_out[:6].tolist() == [46264, 66061, 27279, 32644, 12003, 56380]  # np.random.seed(5); permutation(70000)
    assert train_idx[:4].tolist() == [6628, 2777, 7414, 63950]


def write_cifar(folder, per_batch):
    """CIFAR-10's python pickles; image i of the training set carries i in its first three bytes."""
    folder.mkdir(parents=True)
    for b in range(1, 6):
        index = np.arange((b - 1) * per_batch, b * per_batch)
        data = np.zeros((per_batch, 3072), dtype=np.uint8)
        data[:, 0], data[:, 1], data[:, 2] = index // 65536, index // 256 % 256, index % 256
        (folder / f"data_batch_{b}").write_bytes(pickle.dumps({b"labels": [0] * per_batch, b"data": data}))
    (folder / "test_batch").write_bytes(pickle.dumps({b"labels": [0] * 3, b"data": np.zeros((3, 3072), np.uint8)}))


def decode(image):
    k = (image.flatten()[:3] * 255).round().long().tolist()
    return k[0] * 65536 + k[1] * 256 + k[2]


def test_cifar10_vdvae_split_holds_out_the_validation_images(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py", per_batch=1_004)
    plain = load_dataset("cifar10", tmp_path, download=False)
    assert plain.valid is None and len(plain.train) == 5_020
    data = load_dataset("cifar10", tmp_path, download=False, vdvae_split=True)
    assert (len(data.train), len(data.valid), len(data.test)) == (20, 5_000, 3)
    permutation = np.random.RandomState(11172018).permutation(5_020)
    assert [decode(data.valid[i][0]) for i in (0, 1, 4_999)] == permutation[[0, 1, 4_999]].tolist()
    assert sorted(decode(data.train[i][0]) for i in range(20)) == sorted(permutation[5_000:].tolist())
    assert "11172018" in data.notes["split"]
    with pytest.raises(ValueError, match="applies to cifar10 and ffhq_256"):
        load_dataset("shapes", vdvae_split=True)


def test_ffhq256_vdvae_split_from_openais_npy(tmp_path):
    folder = tmp_path / "ffhq"
    folder.mkdir()
    array = np.lib.format.open_memmap(folder / "ffhq-256.npy", "w+", np.uint8, (70_000, 256, 256, 3))  # sparse on disk
    held_out = ffhq256_vdvae_split()[1]
    for k, index in enumerate(held_out[:3]):
        array[index] = 8 * k + 200
    array.flush()
    del array
    data = load_dataset("ffhq_256", tmp_path, vdvae_split=True)
    assert (len(data.train), len(data.test)) == (63_000, 7_000) and data.valid is data.test
    assert [int(data.test[k][0][0, 0, 0] * 31) for k in range(3)] == [25, 26, 27]  # floor((8k + 200) / 8)
    eight = load_dataset("ffhq_256", tmp_path, vdvae_split=True, bits=8)
    assert eight.info.bits == 8 and torch.equal(eight.test[1][0][:, 0, 0], torch.full((3,), 208 / 255))
    assert "seed-5" in data.notes["split"] and data.notes["ffhq_files"] == "ffhq-256.npy"
    default = load_dataset("ffhq_256", tmp_path)
    assert len(default.test) == 5_000 and default.valid is None and "65000-69999" in default.notes["split"]


def test_the_vdvae_paper_presets_use_openais_protocol():
    assert get_preset("vdvae_cifar10").data.vdvae_split and get_preset("vdvae_ffhq256").data.vdvae_split
    assert not get_preset("vdvae_ffhq1024").data.vdvae_split and not get_preset("nvae_cifar10").data.vdvae_split
    for name in ("vdvae_imagenet32", "vdvae_imagenet64", "nvae_imagenet32"):
        assert get_preset(name).data.imagenet_variant == "oord"


def test_the_engine_evaluates_on_validation_keeps_the_best_and_tests_once(tmp_path, monkeypatch):
    info = dataset_info("shapes", 16)
    g = torch.Generator().manual_seed(0)

    def split(n):
        return ImageDataset(torch.randint(0, 256, (n, *info.image_shape), generator=g, dtype=torch.uint8), torch.zeros(n))

    data = Datasets(split(64), split(8), info, valid=split(8), notes={"split": "a held-out split"})
    monkeypatch.setattr("hvae_lib.training.engine.load_data", lambda config: data)
    config = override(get_preset("vdvae_tiny"), ["quiet=true", "max_steps=6", "eval_every=2", "checkpoint_every=0",
                                                 "batch_size=8", "vdvae_split=true"])
    final = Trainer(config, tmp_path, resume=False).fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    periodic = [r for r in records if r.get("split") in ("valid", "test") and r["step"] < 6]
    assert [r["split"] for r in periodic] == ["valid", "valid"] and all("valid_bpd" in r for r in periodic)
    assert [r["split"] for r in records if r.get("split") == "test"] == ["test"]  # the test set once, at the end
    best = min(periodic, key=lambda r: r["valid_neg_elbo_nats"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["best_valid"]["step"] == best["step"] and results["split"] == "a held-out split"
    assert torch.load(tmp_path / "best.pt", weights_only=True)["step"] == best["step"]
    assert final["test_images"] == 8


# ----------------------------------------------------------------------------- ImageNet variants, bits, data root
def test_the_imagenet_variant_is_recorded_and_a_paper_preset_warns_once(tmp_path, capsys):
    folder = tmp_path / "imagenet32"
    folder.mkdir()
    images = np.random.default_rng(1).integers(0, 256, (6, 3072), dtype=np.uint8)
    for i in range(1, 11):
        np.savez(folder / f"train_data_batch_{i}.npz", data=images, labels=[1] * 6)
    np.savez(folder / "val_data.npz", data=images[:2], labels=[1, 1])
    assert load_dataset("imagenet32", tmp_path).notes == {"imagenet_variant": "chrabaszcz"}
    paper = override(get_preset("vdvae_imagenet32"), [f"root={tmp_path}"])
    load_data(paper)
    warning = capsys.readouterr().err.strip()
    assert warning.count("\n") == 0 and "van den Oord" in warning and "Chrabaszcz" in warning
    load_data(override(paper, ["imagenet_variant=any"]))
    assert capsys.readouterr().err == ""
    np.save(folder / "imagenet32-train.npy", images.reshape(6, 3, 32, 32).transpose(0, 2, 3, 1).copy())
    np.save(folder / "imagenet32-valid.npy", images[:2].reshape(2, 3, 32, 32).transpose(0, 2, 3, 1).copy())
    assert load_data(paper).notes == {"imagenet_variant": "oord"} and capsys.readouterr().err == ""


def test_data_bits_serves_a_coarser_grid():
    five = load_dataset("shapes", resolution=16, train_limit=4, test_limit=2, bits=5)
    eight = load_dataset("shapes", resolution=16, train_limit=4, test_limit=2)
    assert five.info.bits == 5 and five.info.num_dims == eight.info.num_dims
    assert torch.equal(five.train[1][0], torch.floor(eight.train[1][0] * 255 / 8) / 31)
    with pytest.raises(ValueError, match="cannot apply to mnist"):
        dataset_info("mnist", bits=5)


def test_a_data_root_that_is_a_file_is_one_sentence(tmp_path, monkeypatch, capsys):
    not_a_folder = tmp_path / "data.tar"
    not_a_folder.write_bytes(b"")
    monkeypatch.setenv("HVAE_DATA_ROOT", str(not_a_folder))
    assert train.main(["--preset", "vae_fashion", "--out", str(tmp_path / "run"), "--set", "max_steps=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "HVAE_DATA_ROOT" in err and "is a file, not a folder" in err


# ----------------------------------------------------------------------------- NVAE's CelebA sets
def write_celeba(folder, partitions, seed=0):
    """torchvision's CelebA layout: aligned 178x218 JPEGs and list_eval_partition.txt."""
    rng = np.random.default_rng(seed)
    (folder / "img_align_celeba").mkdir(parents=True)
    lines, pixels = [], {}
    for i, partition in enumerate(partitions, 1):
        image = np.zeros((218, 178, 3), dtype=np.uint8)
        image[40:188, 15:163] = rng.integers(0, 256, 3, dtype=np.uint8)  # the face box, a flat colour
        Image.fromarray(image).save(folder / "img_align_celeba" / f"{i:06d}.jpg", quality=100)
        lines.append(f"{i:06d}.jpg {partition}")
        pixels[i] = image[100, 80]
    (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return pixels


def test_celeba64_crops_and_resizes_as_nvae(tmp_path):
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset("celeba_64", tmp_path)
    assert "\n" not in str(err.value) and "img_align_celeba" in str(err.value) and "list_eval_partition.txt" in str(err.value)
    pixels = write_celeba(tmp_path / "celeba", [0, 0, 1, 2, 0])
    data = load_dataset("celeba_64", tmp_path)
    assert (len(data.train), len(data.test)) == (3, 1)  # partition 1 is NVAE's evaluation set; 2 is unused
    image, _ = data.test[0]
    assert image.shape == (3, 64, 64) and torch.equal(image, torch.round(image * 255) / 255)
    # The crop keeps exactly the face box, so the resized image is its flat colour inside (up to JPEG's
    # rounding; its ringing at the box's edges reaches the outermost pixels), never the black around it.
    error = (image * 255 - torch.from_numpy(pixels[3]).float()[:, None, None]).abs()  # (3, 64, 64)
    assert error[:, 2:-2, 2:-2].max() <= 4 and error.max() < 40
    (tmp_path / "celeba" / "img_align_celeba" / "000002.jpg").unlink()
    with pytest.raises(DatasetUnavailableError, match="incomplete .1 listed images are missing, e.g. 000002.jpg"):
        load_dataset("celeba_64", tmp_path)


def example(shape, data: bytes) -> bytes:
    """A tf.train.Example with 'shape' (int64 list, packed) and 'data' (bytes list), protobuf wire format."""
    def varint(n):
        out = b""
        while True:
            out += bytes([n & 0x7F | (0x80 if n > 0x7F else 0)])
            n >>= 7
            if not n:
                return out

    def field(number, payload):
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    packed = b"".join(varint(v) for v in shape)
    features = (field(1, field(1, b"shape") + field(2, field(3, field(1, packed))))
                + field(1, field(1, b"data") + field(2, field(1, field(1, data)))))
    return field(1, features)


def write_tfrecords(path, images):
    from tensorboard.summary.writer.record_writer import RecordWriter  # TFRecord framing with its CRCs

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        writer = RecordWriter(f)
        for image in images:
            writer.write(example(image.shape, image.tobytes()))


def test_celebahq256_reads_glows_tfrecords_at_5_bits(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="celeba-tfr.tar"):
        load_dataset("celebahq_256", tmp_path)
    rng = np.random.default_rng(0)
    shards = {name: [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(n)]
              for name, n in (("train-r08-s-0001-of-0120", 2), ("train-r08-s-0000-of-0120", 1),
                              ("validation-r08-s-0000-of-0040", 2))}
    for name, images in shards.items():
        write_tfrecords(tmp_path / "celebahq" / "celeba-tfr" / name.split("-")[0] / f"{name}.tfrecords", images)
    data = load_dataset("celebahq_256", tmp_path)
    assert data.info.bits == 5 and (len(data.train), len(data.test)) == (3, 2)
    first = torch.from_numpy(shards["train-r08-s-0000-of-0120"][0]).permute(2, 0, 1)  # shard 0 comes first
    assert torch.equal(data.train[0][0], torch.div(first, 8, rounding_mode="floor").float() / 31)
    second = torch.from_numpy(shards["validation-r08-s-0000-of-0040"][1]).permute(2, 0, 1)
    assert torch.equal(load_dataset("celebahq_256", tmp_path, bits=8).test[1][0], second.float() / 255)
    path = tmp_path / "celebahq" / "celeba-tfr" / "validation" / "validation-r08-s-0000-of-0040.tfrecords"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetUnavailableError, match="truncated"):
        load_dataset("celebahq_256", tmp_path)
    assert struct.calcsize("<Q") == 8
