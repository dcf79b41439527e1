"""ldfa.sim.data: IDX and CIFAR readers on small files written here, normalization, batches, teachers."""

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ldfa.errors import ConfigError
from ldfa.sim import data as D

# ----------------------------------------------------------------------------- helpers


def write_idx(path: Path, array: np.ndarray, magic: int) -> Path:
    """Write ``array`` (uint8) as an IDX file, gzipped when the name ends in .gz."""
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def fake_images(n: int, seed: int, low: int = 0, high: int = 256, shape=(28, 28)) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, size=(n, *shape), dtype=np.uint8)


def write_mnist_dir(root: Path, gz: bool, n_train: int = 30, n_test: int = 12) -> dict:
    """An MNIST-layout directory; the test images are brighter than the train images."""
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    arrays = {
        "train": (fake_images(n_train, 1, 0, 128), np.arange(n_train, dtype=np.uint8) % 10),
        "test": (fake_images(n_test, 2, 128, 256), np.arange(n_test, dtype=np.uint8)[::-1] % 10),
    }
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = arrays[split]
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", images, 2051)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", labels, 2049)
    return arrays


def write_pickle(path: Path, obj, protocol: int = 2) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def write_cifar(root: Path, classes: int, n_train: int = 20, n_test: int = 10) -> dict:
    """A cifar-10-batches-py (5 train batches) or cifar-100-python directory under root."""
    rng = np.random.default_rng(classes)
    train = rng.integers(0, 200, size=(n_train, 3072), dtype=np.uint8)
    test = rng.integers(50, 256, size=(n_test, 3072), dtype=np.uint8)
    train_labels = list(rng.integers(0, classes, size=n_train))
    test_labels = list(rng.integers(0, classes, size=n_test))
    if classes == 10:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i, part in enumerate(np.array_split(np.arange(n_train), 5)):
            write_pickle(folder / f"data_batch_{i + 1}",
                         {b"data": train[part], b"labels": [int(train_labels[j]) for j in part]})
        write_pickle(folder / "test_batch", {b"data": test, b"labels": [int(v) for v in test_labels]})
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        for name, data, labels in (("train", train, train_labels), ("test", test, test_labels)):
            write_pickle(folder / name, {b"data": data, b"fine_labels": [int(v) for v in labels],
                                         b"coarse_labels": [int(v) // 5 for v in labels]})
    return {"folder": folder, "train": (train, train_labels), "test": (test, test_labels)}


def raises_one_line(fn, *words):
    """Call fn, expect a ConfigError whose single-line message contains every word."""
    with pytest.raises(ConfigError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert str(word) in message, (word, message)
    return message


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("ext", [".gz", ""])
def test_idx_round_trip(tmp_path, ext):
    images, labels = fake_images(7, 0), np.array([3, 1, 4, 1, 5, 9, 2], dtype=np.uint8)
    ip = write_idx(tmp_path / f"img{ext}", images, 2051)
    lp = write_idx(tmp_path / f"lab{ext}", labels, 2049)
    x, y = D.load_idx(ip, lp)
    assert x.dtype == torch.uint8 and x.shape == (7, 28, 28)
    assert y.dtype == torch.int64 and y.tolist() == labels.tolist()
    assert torch.equal(x, torch.from_numpy(images))


@pytest.mark.parametrize("ext", [".gz", ""])
def test_idx_truncated_file_names_the_path(tmp_path, ext):
    ip = write_idx(tmp_path / f"img{ext}", fake_images(5, 0), 2051)
    lp = write_idx(tmp_path / f"lab{ext}", np.zeros(5, np.uint8), 2049)
    ip.write_bytes(ip.read_bytes()[:-40])
    raises_one_line(lambda: D.load_idx(ip, lp), ip)


def test_idx_extra_bytes_and_short_header_are_errors(tmp_path):
    lp = write_idx(tmp_path / "lab", np.zeros(5, np.uint8), 2049)
    ip = write_idx(tmp_path / "img", fake_images(5, 0), 2051)
    ip.write_bytes(ip.read_bytes() + b"\0")
    raises_one_line(lambda: D.load_idx(ip, lp), ip, "bytes")
    ip.write_bytes((2051).to_bytes(4, "big") + b"\0\0")
    raises_one_line(lambda: D.load_idx(ip, lp), ip, "header")


def test_idx_wrong_magic(tmp_path):
    ip = write_idx(tmp_path / "img.gz", fake_images(4, 0), 2049)
    lp = write_idx(tmp_path / "lab.gz", np.zeros(4, np.uint8), 2049)
    raises_one_line(lambda: D.load_idx(ip, lp), ip, "magic", 2051)
    ip = write_idx(tmp_path / "img.gz", fake_images(4, 0), 2051)
    lp = write_idx(tmp_path / "lab.gz", np.zeros((4, 1, 1), np.uint8), 2051)
    raises_one_line(lambda: D.load_idx(ip, lp), lp, "magic")


def test_idx_count_mismatch_and_corrupt_gzip(tmp_path):
    ip = write_idx(tmp_path / "img.gz", fake_images(4, 0), 2051)
    lp = write_idx(tmp_path / "lab.gz", np.zeros(3, np.uint8), 2049)
    raises_one_line(lambda: D.load_idx(ip, lp), lp, "labels")
    lp.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    raises_one_line(lambda: D.load_idx(ip, lp), lp, "gzip")


def test_fashion_mnist_missing_dir_mentions_apt_get(tmp_path):
    missing = tmp_path / "nowhere"
    raises_one_line(lambda: D.fashion_mnist(missing), missing, "apt-get install dataset-fashion-mnist")
    raises_one_line(lambda: D.load("fashion-mnist", root=missing), "apt-get install")
    (tmp_path / "empty").mkdir()
    raises_one_line(lambda: D.fashion_mnist(tmp_path / "empty", "test"), "t10k-images-idx3-ubyte", "apt-get")


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_and_mnist_read_both_names(tmp_path, gz):
    arrays = write_mnist_dir(tmp_path, gz)
    for reader in (D.fashion_mnist, D.mnist):
        for split in ("train", "test"):
            x, y = reader(tmp_path, split)
            assert torch.equal(x, torch.from_numpy(arrays[split][0]))
            assert y.tolist() == arrays[split][1].tolist()
    raises_one_line(lambda: D.mnist(None), "root")
    raises_one_line(lambda: D.load("mnist"), "root")
    raises_one_line(lambda: D.mnist(tmp_path, "valid"), "split")


def test_idx_labels_out_of_range_are_corrupt(tmp_path):
    write_mnist_dir(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(30, 12, np.uint8), 2049)
    raises_one_line(lambda: D.mnist(tmp_path), tmp_path, "labels")


# ----------------------------------------------------------------------------- normalization


def test_normalization_uses_train_statistics(tmp_path):
    arrays = write_mnist_dir(tmp_path, gz=True)
    train = D.load("mnist", root=tmp_path, split="train")
    test = D.load("mnist", root=tmp_path, split="test", flatten=True)
    assert train.x.dtype == torch.float32 and train.x.shape == (30, 1, 28, 28)
    assert test.x.shape == (12, 784) and test.y.dtype == torch.int64 and test.num_classes == 10
    pixels = arrays["train"][0].astype(np.float64) / 255
    assert train.mean == pytest.approx((pixels.mean(),), rel=1e-12)
    assert train.std == pytest.approx((pixels.std(),), rel=1e-12)
    assert test.mean == train.mean and test.std == train.std
    assert abs(train.x.mean().item()) < 1e-5
    assert train.x.std(unbiased=False).item() == pytest.approx(1, rel=1e-4)
    assert test.x.mean().item() > 1.0   # brighter test images: not re-centred on their own mean
    expected = (arrays["test"][0].reshape(12, -1) / 255 - train.mean[0]) / train.std[0]
    assert np.allclose(test.x.numpy(), expected, atol=1e-5)


def test_channel_stats_per_channel():
    images = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    images[:, 1] = 255
    images[:2, 2] = 255
    mean, std = D.channel_stats(images)
    assert mean == pytest.approx((0.0, 1.0, 0.5)) and std == pytest.approx((0.0, 0.0, 0.5))


# ----------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_reads_fake_batches(tmp_path, classes):
    fake = write_cifar(tmp_path, classes)
    for split in ("train", "test"):
        data, labels = fake[split]
        for root in (tmp_path, fake["folder"]):
            x, y = D.cifar(root, split, classes)
            assert x.dtype == torch.uint8 and x.shape == (len(data), 3, 32, 32)
            assert torch.equal(x.reshape(len(data), -1), torch.from_numpy(data))
            assert y.dtype == torch.int64 and y.tolist() == [int(v) for v in labels]
    name = f"cifar{classes}"
    train = D.load(name, root=tmp_path)
    test = D.load(name, root=tmp_path, split="test", flatten=True)
    assert train.x.shape == (20, 3, 32, 32) and test.x.shape == (10, 3072) and test.num_classes == classes
    assert len(train.mean) == 3 and train.mean == test.mean
    assert torch.allclose(train.x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert test.x.mean().item() > 0.3   # test pixels are brighter than the train statistics


def test_cifar_python2_style_pickle(tmp_path):
    """The real batches were pickled by Python 2 with numpy.core.multiarray paths."""
    fake = write_cifar(tmp_path, 10)
    path = fake["folder"] / "test_batch"
    stream = pickle.dumps({b"data": fake["test"][0], b"labels": list(range(10))}, protocol=2)
    path.write_bytes(stream.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    x, y = D.cifar(tmp_path, "test")
    assert y.tolist() == list(range(10)) and torch.equal(x.reshape(10, -1), torch.from_numpy(fake["test"][0]))


def test_cifar_missing_truncated_and_hostile_files(tmp_path):
    raises_one_line(lambda: D.cifar(tmp_path / "nowhere"), "nowhere", "cifar-10-python.tar.gz")
    raises_one_line(lambda: D.load("cifar100"), "root", "cifar-100-python.tar.gz")
    fake = write_cifar(tmp_path, 10)
    batch = fake["folder"] / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:200])
    raises_one_line(lambda: D.cifar(tmp_path), batch)
    batch.unlink()
    raises_one_line(lambda: D.cifar(tmp_path), batch, "not found")
    marker = tmp_path / "pwned"
    hostile = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    (fake["folder"] / "test_batch").write_bytes(hostile)
    raises_one_line(lambda: D.cifar(tmp_path, "test"), "test_batch", "not allowed")
    assert not marker.exists()
    write_pickle(fake["folder"] / "test_batch", {b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]})
    raises_one_line(lambda: D.cifar(tmp_path, "test"), "test_batch", "3072")
    raises_one_line(lambda: D.cifar(tmp_path, "test", classes=7), "classes")


# ----------------------------------------------------------------------------- batches


def toy(n=23) -> D.Dataset:
    return D.Dataset(torch.arange(n, dtype=torch.float32).reshape(n, 1).repeat(1, 3), torch.arange(n), 23)


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_cover_every_sample_once(shuffle):
    data = toy()
    g = torch.Generator().manual_seed(0)
    seen, sizes = [], []
    for x, y in data.batches(5, shuffle=shuffle, generator=g):
        assert torch.equal(x[:, 0].long(), y)   # inputs and targets stay paired
        seen += y.tolist()
        sizes.append(len(y))
    assert sorted(seen) == list(range(23)) and sizes == [5, 5, 5, 5, 3]
    assert (seen != list(range(23))) == shuffle
    assert [len(y) for _, y in data.batches(5, drop_last=True)] == [5] * 4


def test_batches_deterministic_with_seeded_generator():
    data = toy()

    def order(seed):
        g = torch.Generator().manual_seed(seed)
        return [y.tolist() for _, y in data.batches(4, shuffle=True, generator=g)]

    assert order(3) == order(3) and order(3) != order(4)
    g = torch.Generator().manual_seed(3)
    epochs = [[y.tolist() for _, y in data.batches(4, generator=g)] for _ in range(2)]
    assert epochs[0] != epochs[1]   # a fresh permutation each epoch
    raises_one_line(lambda: next(data.batches(0)), "batch_size")


def test_dataset_to_and_subset():
    data = toy()
    moved = data.to("cpu")
    assert isinstance(moved, D.Dataset) and moved.device == torch.device("cpu") and moved.num_classes == 23
    assert len(data.subset(7)) == 7 and data.subset(torch.tensor([2, 4])).y.tolist() == [2, 4]
    assert data.input_shape == (3,)


# ----------------------------------------------------------------------------- teachers


def test_linear_teacher_recovers_w_star_and_spectrum():
    spectrum = (5.0, 3.0, 2.0, 0.5)
    data, (W, U, V) = D.linear_teacher(n_in=12, n_out=6, spectrum=spectrum, n_samples=400, noise=0.0, seed=3)
    assert data.x.shape == (400, 12) and data.y.shape == (400, 6) and data.x.dtype == torch.float32
    assert data.num_classes is None
    W_ls = torch.linalg.lstsq(data.x.double(), data.y.double()).solution.T
    assert torch.allclose(W_ls, W, atol=1e-5)
    assert torch.allclose(torch.linalg.svdvals(W)[:4], torch.tensor(spectrum, dtype=torch.float64))
    assert torch.linalg.svdvals(W)[4:].abs().max() < 1e-12
    eye = torch.eye(4, dtype=torch.float64)
    assert torch.allclose(U.T @ U, eye) and torch.allclose(V.T @ V, eye)
    assert torch.allclose(U @ torch.diag(torch.tensor(spectrum, dtype=torch.float64)) @ V.T, W)


def test_linear_teacher_determinism_splits_noise_and_whitening():
    kw = dict(n_in=10, n_out=4, spectrum=(2.0, 1.0), n_samples=3000, noise=0.5, seed=7)
    a, (Wa, _, _) = D.linear_teacher(**kw)
    b, (Wb, _, _) = D.linear_teacher(**kw)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(Wa, Wb)
    test, (Wt, _, _) = D.linear_teacher(**kw, split="test")
    other, (Wo, _, _) = D.linear_teacher(**{**kw, "seed": 8})
    assert torch.equal(Wt, Wa) and not torch.equal(test.x, a.x)
    assert not torch.equal(Wo, Wa)
    residual = a.y.double() - a.x.double() @ Wa.T
    assert residual.std().item() == pytest.approx(0.5, rel=0.05)
    w, _ = D.linear_teacher(**{**kw, "noise": 0.0}, whiten=True)
    assert torch.allclose(w.x.double().T @ w.x.double() / 3000, torch.eye(10, dtype=torch.float64), atol=1e-5)
    raises_one_line(lambda: D.linear_teacher(n_in=3, n_out=2, spectrum=(3, 2, 1)), "spectrum")
    raises_one_line(lambda: D.linear_teacher(spectrum=(1.0, -1.0)), "spectrum")
    raises_one_line(lambda: D.linear_teacher(noise=-1.0), "noise")


def test_random_teacher_determinism_and_classes():
    a, (W1, W2) = D.random_teacher(n_in=8, hidden=16, n_out=3, n_samples=200, seed=1)
    b, _ = D.random_teacher(n_in=8, hidden=16, n_out=3, n_samples=200, seed=1)
    c, _ = D.random_teacher(n_in=8, hidden=16, n_out=3, n_samples=200, seed=2)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and not torch.equal(a.y, c.y)
    assert a.y.dtype == torch.float32 and a.y.shape == (200, 3)
    assert torch.allclose(a.y.double(), torch.tanh(a.x.double() @ W1.T) @ W2.T, atol=1e-5)
    k, _ = D.random_teacher(n_in=8, hidden=16, n_out=None, n_samples=500, seed=1, classes=4)
    k2, _ = D.random_teacher(n_in=8, hidden=16, n_out=None, n_samples=500, seed=1, classes=4)
    assert k.y.dtype == torch.int64 and k.num_classes == 4 and torch.equal(k.y, k2.y)
    assert set(k.y.tolist()) <= {0, 1, 2, 3} and len(set(k.y.tolist())) > 1
    raises_one_line(lambda: D.random_teacher(n_out=3, classes=4), "n_out", "classes")


def test_load_dispatch():
    data = D.load("linear-teacher", n_in=5, n_out=3, spectrum=(1.0,), n_samples=50, seed=2)
    assert data.x.shape == (50, 5)
    test = D.load("linear-teacher", split="test", n_in=5, n_out=3, spectrum=(1.0,), n_samples=50, seed=2)
    assert not torch.equal(test.x, data.x)
    assert D.load("random-teacher", n_samples=10, classes=10, n_out=None).y.dtype == torch.int64
    message = raises_one_line(lambda: D.load("imagenet"), "imagenet")
    for name in D.NAMES:
        assert name in message
    raises_one_line(lambda: D.load("linear-teacher", width=3), "width", "n_in")
    raises_one_line(lambda: D.load("mnist", root="/x", n_in=3), "n_in")
    raises_one_line(lambda: D.load("linear-teacher", split="val"), "split")


# ----------------------------------------------------------------------------- real data

REAL = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not any((REAL / f"t10k-images-idx3-ubyte{ext}").exists() for ext in (".gz", "")),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_test_split():
    data = D.load("fashion-mnist", split="test", flatten=True)
    assert data.x.shape == (10000, 784) and data.x.dtype == torch.float32
    assert data.y.unique().tolist() == list(range(10)) and data.num_classes == 10
    assert data.mean[0] == pytest.approx(0.2860, abs=1e-3) and data.std[0] == pytest.approx(0.3530, abs=1e-3)
