"""The data contract (Chapter 1): every loader, on tiny files in the real on-disk formats."""
from __future__ import annotations

import gzip
import multiprocessing
import pickle
import struct
import time
from pathlib import Path
from urllib.error import URLError

import pytest
import torch

from hvae_lib.data import load_dataset, make_loader, mnist_cifar
from hvae_lib.data.contract import DatasetInfo, DatasetUnavailableError, default_root
from hvae_lib.data.shapes import SHAPES_SIZES

N_TRAIN, N_TEST = 20, 10


def idx_bytes(array: torch.Tensor) -> bytes:
    """An IDX file of unsigned bytes: magic 0x0000_08_<ndim> (2049 labels, 2051 images), big-endian dims."""
    header = struct.pack(">I", 0x0800 + array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    return header + array.to(torch.uint8).contiguous().numpy().tobytes()


def idx_splits(grey: int | None = None) -> dict[str, bytes]:
    """The four IDX files of a 20 + 10 image, 28x28 dataset (random pixels, or all ``grey``)."""
    g = torch.Generator().manual_seed(0)
    files = {}
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        images = torch.randint(0, 256, (n, 28, 28), generator=g) if grey is None else torch.full((n, 28, 28), grey)
        files[f"{prefix}-images-idx3-ubyte"] = idx_bytes(images)
        files[f"{prefix}-labels-idx1-ubyte"] = idx_bytes(torch.arange(n) % 10)
    return files


def write_raw(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)


def check_contract(ds, shape, bits, n):
    assert len(ds) == n
    for i in (0, n - 1):
        image, label = ds[i]
        assert image.shape == shape and image.dtype == torch.float32
        assert isinstance(label, int)
        assert 0 <= image.min() and image.max() <= 1
        levels = image * (2**bits - 1)
        assert torch.allclose(levels, levels.round(), atol=1e-4)  # on the 2^bits grid


@pytest.fixture
def no_debian(tmp_path, monkeypatch):
    """Pretend the Debian Fashion-MNIST package is not installed."""
    monkeypatch.setattr(mnist_cifar, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")


def test_idx_magic_numbers():
    assert idx_bytes(torch.zeros(3, 28, 28))[:4] == (2051).to_bytes(4, "big")
    assert idx_bytes(torch.zeros(3))[:4] == (2049).to_bytes(4, "big")


def test_fashion_mnist_from_raw_idx(tmp_path, no_debian):
    files = idx_splits()
    write_raw(tmp_path / "FashionMNIST" / "raw", files)
    ds = load_dataset("fashion_mnist", tmp_path, download=False)
    assert ds.info == DatasetInfo("fashion_mnist", (1, 28, 28), 8, "logistic_mixture", 784)
    check_contract(ds.train, (1, 28, 28), 8, N_TRAIN)
    check_contract(ds.test, (1, 28, 28), 8, N_TEST)
    first = torch.frombuffer(bytearray(files["train-images-idx3-ubyte"][16:16 + 784]), dtype=torch.uint8)
    assert torch.equal(ds.train[0][0].flatten(), first.float() / 255)  # byte-exact parse
    assert [ds.test[i][1] for i in range(N_TEST)] == list(range(10))
    small = load_dataset("fashion_mnist", tmp_path, download=False, train_limit=5, test_limit=3)
    assert (len(small.train), len(small.test)) == (5, 3)
    assert torch.equal(small.train[4][0], ds.train[4][0])  # limits keep the first items


def fake_debian_package(tmp_path, monkeypatch):
    """Debian's dataset-fashion-mnist in miniature: the four IDX files, gzipped, where the loader looks."""
    debian = tmp_path / "debian"
    debian.mkdir()
    for name, content in idx_splits().items():
        (debian / f"{name}.gz").write_bytes(gzip.compress(content))
    monkeypatch.setattr(mnist_cifar, "DEBIAN_FASHION_MNIST", debian)


def test_fashion_mnist_debian_fallback(tmp_path, monkeypatch):
    fake_debian_package(tmp_path, monkeypatch)
    root = tmp_path / "root"
    ds = load_dataset("fashion_mnist", root, download=False)
    raw = root / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(mnist_cifar.IDX_FILES)  # decompressed, no temp files left
    check_contract(ds.train, (1, 28, 28), 8, N_TRAIN)


def _first_use(root, barrier, errors):
    """One process's first load, copying slowly so that the two processes' decompressions overlap."""
    copy = mnist_cifar.shutil.copyfileobj
    mnist_cifar.shutil.copyfileobj = lambda fin, fout: (time.sleep(0.2), copy(fin, fout))
    barrier.wait()
    try:
        load_dataset("fashion_mnist", root, download=False)
    except Exception as err:  # noqa: BLE001 - the parent reports it
        errors.put(f"{type(err).__name__}: {err}")


def test_two_first_uses_at_once_both_succeed(tmp_path, monkeypatch):
    # Two seed runs or two notebooks started together both find the raw files missing and decompress
    # Debian's; with one shared temporary name the second os.replace found the file gone.
    fake_debian_package(tmp_path, monkeypatch)
    ctx = multiprocessing.get_context("fork")  # the children keep the monkeypatch
    barrier, errors = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_first_use, args=(tmp_path / "root", barrier, errors)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0, 0]
    assert errors.empty(), errors.get()
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(mnist_cifar.IDX_FILES)  # no temporary file left
    assert len(load_dataset("fashion_mnist", tmp_path / "root", download=False).train) == N_TRAIN


def test_fashion_mnist_offline_error(tmp_path, no_debian, monkeypatch):
    import torchvision

    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset("fashion_mnist", tmp_path, download=False)
    message = str(err.value)
    assert "dataset-fashion-mnist" in message and str(tmp_path / "FashionMNIST" / "raw") in message
    assert "\n" not in message

    def offline(self):
        raise URLError("[Errno -3] Temporary failure in name resolution\nsecond line")

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", offline)
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset("fashion_mnist", tmp_path, download=True)
    message = str(err.value)
    assert "dataset-fashion-mnist" in message and "download" in message and "\n" not in message
    assert "name resolution" in message  # the reason is kept, on one line


@pytest.mark.parametrize("name, cls", [("mnist", "MNIST"), ("cifar10", "CIFAR10")])
def test_mnist_cifar_offline_error(tmp_path, monkeypatch, name, cls):
    import torchvision

    def offline(self):
        raise RuntimeError("Error downloading:\nTried a mirror, got:\n<urlopen error>")

    monkeypatch.setattr(getattr(torchvision.datasets, cls), "download", offline)
    for download in (False, True):
        with pytest.raises(DatasetUnavailableError) as err:
            load_dataset(name, tmp_path, download=download)
        message = str(err.value)
        assert "download" in message and str(tmp_path) in message and "\n" not in message


def test_mnist_is_binarised_at_its_own_28x28(tmp_path):
    """Only the 784 real pixels reach a model (and its likelihood); padding is the model's business."""
    write_raw(tmp_path / "MNIST" / "raw", idx_splits(grey=255))
    ds = load_dataset("mnist", tmp_path, download=False)
    assert ds.info == DatasetInfo("mnist", (1, 28, 28), 1, "bernoulli", 784)
    check_contract(ds.train, (1, 28, 28), 1, N_TRAIN)
    check_contract(ds.test, (1, 28, 28), 1, N_TEST)
    for split in (ds.train, ds.test):
        assert torch.equal(split[0][0], torch.ones(1, 28, 28))  # white everywhere: no zero border was added


def test_mnist_dynamic_train_fixed_test(tmp_path):
    write_raw(tmp_path / "MNIST" / "raw", idx_splits(grey=128))
    ds = load_dataset("mnist", tmp_path, download=False)
    assert not torch.equal(ds.train[0][0], ds.train[0][0])  # re-binarised on each access
    assert torch.equal(ds.test[0][0], ds.test[0][0])
    again = load_dataset("mnist", tmp_path, download=False, test_limit=3)
    assert torch.equal(again.test[2][0], ds.test[2][0])  # same seed, same test images
    other = load_dataset("mnist", tmp_path, download=False, seed=1)
    assert not torch.equal(other.test[0][0], ds.test[0][0])


def test_cifar10_from_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    batches = {f"data_batch_{i}": 4 for i in range(1, 6)} | {"test_batch": N_TEST}
    for name, n in batches.items():
        batch = {b"batch_label": name.encode(), b"labels": [i % 10 for i in range(n)],
                 b"data": torch.randint(0, 256, (n, 3072), generator=g, dtype=torch.uint8).numpy(),
                 b"filenames": [b"x.png"] * n}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"] * 10}))
    ds = load_dataset("cifar10", tmp_path, download=False)
    assert ds.info == DatasetInfo("cifar10", (3, 32, 32), 8, "logistic_mixture", 3072)
    check_contract(ds.train, (3, 32, 32), 8, 20)
    check_contract(ds.test, (3, 32, 32), 8, N_TEST)
    raw = pickle.loads((folder / "data_batch_1").read_bytes())[b"data"][0]
    assert torch.equal(ds.train[0][0][0].flatten(), torch.as_tensor(raw[:1024]).float() / 255)  # red plane first


def test_unknown_name_and_bad_arguments():
    with pytest.raises(ValueError, match="Unknown dataset 'foo'; expected one of fashion_mnist, mnist, cifar10, shapes."):
        load_dataset("foo")
    with pytest.raises(ValueError, match="power-of-two"):
        load_dataset("shapes", resolution=12)
    with pytest.raises(ValueError, match="only to the 'shapes'"):
        load_dataset("cifar10", resolution=64)
    with pytest.raises(ValueError, match="train_limit"):
        load_dataset("shapes", train_limit=-1)


def test_shapes_contract_and_determinism():
    ds = load_dataset("shapes", train_limit=50, test_limit=20)
    assert ds.info == DatasetInfo("shapes", (3, 32, 32), 8, "logistic_mixture", 3072)
    check_contract(ds.train, (3, 32, 32), 8, 50)
    check_contract(ds.test, (3, 32, 32), 8, 20)
    assert set(ds.train.labels.tolist()) <= {0, 1, 2}
    same = load_dataset("shapes", train_limit=10, test_limit=1)
    assert torch.equal(same.train.images, ds.train.images[:10])  # item i depends on (seed, i) only
    other = load_dataset("shapes", train_limit=10, test_limit=1, seed=1)
    assert not torch.equal(other.train.images, same.train.images)
    assert not torch.equal(ds.test.images[:10], ds.train.images[:10])  # splits differ
    full = load_dataset("shapes")
    assert (len(full.train), len(full.test)) == SHAPES_SIZES


@pytest.mark.parametrize("resolution", [8, 16, 64])
def test_shapes_resolutions(resolution):
    ds = load_dataset("shapes", train_limit=8, test_limit=4, resolution=resolution)
    assert ds.info.image_shape == (3, resolution, resolution)
    check_contract(ds.train, (3, resolution, resolution), 8, 8)
    assert ds.train.images.float().std() > 0


def test_make_loader_is_reproducible():
    ds = load_dataset("shapes", train_limit=40, test_limit=1)
    first = [labels.tolist() for _, labels in make_loader(ds.train, 8, shuffle=True, seed=3)]
    again = [labels.tolist() for _, labels in make_loader(ds.train, 8, shuffle=True, seed=3)]
    assert first == again and len(first) == 5
    images, _ = next(iter(make_loader(ds.train, 8, shuffle=False)))
    assert images.shape == (8, 3, 32, 32)


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("HVAE_DATA_ROOT", str(tmp_path))
    assert default_root() == tmp_path
    monkeypatch.delenv("HVAE_DATA_ROOT")
    assert default_root() == Path(__file__).resolve().parents[1] / "data"  # <repo>/data


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists(),
                    reason="needs the Debian package dataset-fashion-mnist")
def test_real_fashion_mnist_from_debian(tmp_path):
    ds = load_dataset("fashion_mnist", tmp_path, download=False)
    assert (len(ds.train), len(ds.test)) == (60000, 10000)
    check_contract(ds.train, (1, 28, 28), 8, 60000)
    assert ds.test[0][0].shape == (1, 28, 28)
    assert sorted(set(ds.train.labels.tolist())) == list(range(10))
