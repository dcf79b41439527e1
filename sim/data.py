"""Datasets for the simulation engine: real image sets read from disk and synthetic teachers.

Everything is plain torch (no torchvision, no network access): the data sets used here are
small enough to sit in memory, so a :class:`Dataset` is just two tensors and
:meth:`Dataset.batches` slices them on whatever device they live on.

Real data (read from files the user already has):

* Fashion-MNIST and MNIST in the IDX format (:func:`load_idx`); Fashion-MNIST defaults to
  ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).
* CIFAR-10 / CIFAR-100 in the "python version" pickle batches (:func:`cifar`).

Synthetic data (from a seed, identical tensors for the same seed):

* :func:`linear_teacher`: y = W* x + noise, W* = U diag(spectrum) Vᵀ, x ~ N(0, I), the
  setting of the linear theory (docs/theory.md).
* :func:`random_teacher`: y = W2 tanh(W1 x), regression targets or argmax class labels.

:func:`load` dispatches on a name and returns a normalized :class:`Dataset`; image inputs are
scaled to [0, 1] and standardized with the *train* split's per-channel mean and std.
Any missing, truncated or corrupt file raises :class:`DatasetError` (a ``ConfigError``) with
one line naming the path and how to obtain the data.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import inspect
import pickle
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..theory.config import teacher_matrices
from ..theory.errors import ConfigError

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_HINT = ("install it with `apt-get install dataset-fashion-mnist` "
                      "or pass root=DIR holding the four IDX files")
MNIST_HINT = ("download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
              "and t10k-labels-idx1-ubyte.gz (the MNIST distribution) into one directory and pass root=DIR")
IDX_HINT = "expected an IDX file as distributed with MNIST / Fashion-MNIST"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
SPLITS = ("train", "test")
NAMES = ("fashion-mnist", "mnist", "cifar10", "cifar100", "linear-teacher", "random-teacher")


class DatasetError(ConfigError):
    """A data file is missing, truncated or corrupt; the one-line message says how to get it."""


# ----------------------------------------------------------------------------- IDX files


def _read_file(path: Path, hint: str) -> bytes:
    """The bytes of ``path``, gunzipped when they start with the gzip magic (whatever the name)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found; {hint}") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc}); {hint}") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: truncated or corrupt gzip data ({exc}); {hint}") from None


def _parse_idx(raw: bytes, path: Path, magic: int, ndim: int, hint: str) -> torch.Tensor:
    """Check an unsigned-byte IDX payload's header and length; return it as a uint8 tensor."""
    if len(raw) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} bytes); {hint}")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DatasetError(f"{path}: IDX magic number {found}, expected {magic}; {hint}")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    start = 4 + 4 * ndim
    expected = start + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected or 0 in dims[1:]:
        raise DatasetError(f"{path}: IDX header says dims {dims} ({expected} bytes) but the file has "
                           f"{len(raw)} bytes (truncated or corrupt); {hint}")
    data = torch.frombuffer(bytearray(raw[start:]), dtype=torch.uint8) if expected > start \
        else torch.zeros(0, dtype=torch.uint8)
    return data.reshape(dims)


def load_idx(images_path, labels_path, hint: str = IDX_HINT) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an IDX image file and its label file (gzipped or raw).

    Returns ``(images, labels)``: uint8 N x rows x cols (28 x 28 for MNIST) and int64 N.
    The magic numbers (2051 images, 2049 labels), the number of dimensions, the file
    length against the header and the sample counts are all checked; any problem raises
    :class:`DatasetError` naming the path, followed by ``hint`` (how to obtain the data).
    """
    images_path, labels_path = Path(images_path), Path(labels_path)
    key = _file_key(images_path, labels_path)
    if key is not None and key in _IDX_CACHE:  # the same unchanged files, read before in this process
        images, labels = _IDX_CACHE[key]
        return images.clone(), labels.clone()
    images = _parse_idx(_read_file(images_path, hint), images_path, IDX_IMAGES_MAGIC, 3, hint)
    labels = _parse_idx(_read_file(labels_path, hint), labels_path, IDX_LABELS_MAGIC, 1, hint)
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images in "
                           f"{images_path}; {hint}")
    labels = labels.to(torch.int64)
    if key is not None:
        _remember(_IDX_CACHE, key, (images.clone(), labels.clone()))
    return images, labels


# decoded IDX files of this process, keyed by path, size, modification time and inode of both
# files (a figure worker trains many runs on the same files; gunzip + parse is ~0.5 s a split)
_IDX_CACHE: dict = {}
_CACHE_SIZE = 4  # entries per cache: the train and test splits of two data sets


def _remember(cache: dict, key, value) -> None:
    """cache[key] = value, dropping the oldest entries beyond _CACHE_SIZE."""
    while len(cache) >= _CACHE_SIZE:
        cache.pop(next(iter(cache)))
    cache[key] = value


def _file_key(*paths: Path):
    try:
        return tuple((str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
                     for p, st in ((p, p.stat()) for p in paths))
    except OSError:
        return None  # reading reports the problem


def _idx_file(root: Path, split: str, kind: str, hint: str) -> Path:
    """The IDX file of ``split`` ('train'/'test') and ``kind`` ('images'/'labels') under root."""
    prefix = "train" if split == "train" else "t10k"
    ndim = 3 if kind == "images" else 1
    names = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    for name in names:
        for candidate in (root / f"{name}.gz", root / name):
            if candidate.is_file():
                return candidate
    raise DatasetError(f"{root / (names[0] + '.gz')}: file not found (nor the un-gzipped name); {hint}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: must be one of {', '.join(SPLITS)}")


def _idx_dataset(root: Path, split: str, hint: str, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of an MNIST-like IDX directory, checked to be 28 x 28 images with labels 0..9."""
    _check_split(split)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such directory for {what}; {hint}")
    images_path = _idx_file(root, split, "images", hint)
    images, labels = load_idx(images_path, _idx_file(root, split, "labels", hint), hint)
    if tuple(images.shape[1:]) != (28, 28):
        raise DatasetError(f"{images_path}: images are {tuple(images.shape[1:])}, expected 28 x 28; {hint}")
    _check_labels(labels, 10, images_path.parent, hint)
    return images, labels


def _check_labels(labels: torch.Tensor, classes: int, path: Path, hint: str) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise DatasetError(f"{path}: labels outside 0..{classes - 1} (corrupt?); {hint}")


def fashion_mnist(root=None, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST ``split`` as (uint8 N x 28 x 28, int64 N); 60000 train, 10000 test.

    ``root`` defaults to /usr/share/datasets/fashion-mnist (Debian ``dataset-fashion-mnist``)
    and must hold train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
    t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (or the un-gzipped names).
    """
    return _idx_dataset(Path(root) if root is not None else FASHION_MNIST_ROOT, split,
                        FASHION_MNIST_HINT, "Fashion-MNIST")


def mnist(root, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST ``split`` as (uint8 N x 28 x 28, int64 N) from the IDX files in ``root`` (required)."""
    if root is None:
        raise DatasetError(f"mnist: root is required (no default location); {MNIST_HINT}")
    return _idx_dataset(Path(root), split, MNIST_HINT, "MNIST")


# ----------------------------------------------------------------------------- CIFAR


_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds dicts, lists, strings and numpy arrays (no arbitrary code)."""

    def find_class(self, module, name):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.split(".", 2)[2]   # numpy >= 2 moved numpy.core
        return super().find_class(module, name)


def _read_pickle(path: Path, hint: str) -> dict:
    """One CIFAR batch file as a dict with bytes keys; any failure is a one-line DatasetError."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found; {hint}")
    try:
        with path.open("rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # unpickling fails in many ways; each means a bad file
        raise DatasetError(f"{path}: not a readable CIFAR batch ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); {hint}") from None
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: not a CIFAR batch (a {type(batch).__name__}, expected a dict); {hint}")
    return batch


def _cifar_batch(path: Path, label_key: bytes, classes: int, hint: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 N x 3 x 32 x 32, int64 N) from one batch file, its shape and labels checked."""
    batch = _read_pickle(path, hint)
    if b"data" not in batch or label_key not in batch:
        raise DatasetError(f"{path}: missing key b'data' or {label_key!r}; {hint}")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{path}: data is {data.dtype} {data.shape}, expected uint8 N x 3072; {hint}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{path}: {labels.shape} labels for {data.shape[0]} images; {hint}")
    images = torch.from_numpy(np.ascontiguousarray(data)).reshape(-1, 3, 32, 32)
    labels = torch.from_numpy(labels.astype(np.int64))
    _check_labels(labels, classes, path, hint)
    return images, labels


def cifar(root, split: str = "train", classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 or CIFAR-100 ``split`` as (uint8 N x 3 x 32 x 32, int64 N).

    ``root`` is the unpacked "python version" directory (cifar-10-batches-py with
    data_batch_1..5 and test_batch; cifar-100-python with train and test, fine labels)
    or the directory that contains it. The batches are unpickled with a restricted
    unpickler that only rebuilds numpy arrays.
    """
    _check_split(split)
    if classes not in (10, 100):
        raise ConfigError(f"classes={classes!r}: must be 10 or 100")
    folder = "cifar-10-batches-py" if classes == 10 else "cifar-100-python"
    archive = "cifar-10-python.tar.gz" if classes == 10 else "cifar-100-python.tar.gz"
    hint = f"download {archive} from {CIFAR_URL}, unpack it and pass root=DIR"
    if root is None:
        raise DatasetError(f"cifar{classes}: root is required (no default location); {hint}")
    root = Path(root)
    if (root / folder).is_dir():
        root = root / folder
    if not root.is_dir():
        raise DatasetError(f"{root}: no such directory for CIFAR-{classes}; {hint}")
    if classes == 10:
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key = b"labels"
    else:
        names, label_key = [split], b"fine_labels"
    parts = [_cifar_batch(root / name, label_key, classes, hint) for name in names]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


# ----------------------------------------------------------------------------- container


@dataclass
class Dataset:
    """Inputs and targets held in memory.

    ``x``: float32 N x ... inputs (images N x C x H x W, or N x features when flattened).
    ``y``: int64 class labels (``num_classes`` set) or float32 N x d regression targets
    (``num_classes`` None). ``mean``/``std``: the per-channel statistics (in [0, 1] pixel
    units) that standardized the inputs, empty for synthetic data.
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int | None = None
    name: str = ""
    mean: tuple = ()
    std: tuple = ()

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def input_shape(self) -> tuple:
        """Shape of one input (C, H, W) or (features,)."""
        return tuple(self.x.shape[1:])

    def to(self, device) -> Dataset:
        """A copy whose tensors live on ``device``."""
        return dataclasses.replace(self, x=self.x.to(device), y=self.y.to(device))

    def subset(self, index) -> Dataset:
        """The samples at ``index`` (an int n for the first n, a slice, or an index tensor)."""
        if isinstance(index, int):
            index = slice(0, index)
        return dataclasses.replace(self, x=self.x[index], y=self.y[index])

    def select_classes(self, labels) -> Dataset:
        """Only the samples whose class is in ``labels``, relabelled 0..k-1 in the order given
        (e.g. (5, 6, 7, 8, 9) -> 0..4: a transfer task's target classes)."""
        if self.num_classes is None:
            raise ConfigError(f"classes={labels!r}: data set {self.name!r} has no class labels")
        labels = list(labels)
        bad = [c for c in labels if isinstance(c, bool) or not isinstance(c, int)
               or not 0 <= c < self.num_classes]
        if bad or not labels or len(set(labels)) != len(labels):
            raise ConfigError(f"classes={tuple(labels)}: need distinct labels in 0..{self.num_classes - 1}")
        relabel = torch.full((self.num_classes,), -1, dtype=torch.long, device=self.y.device)
        relabel[torch.tensor(labels, device=self.y.device)] = torch.arange(len(labels), device=self.y.device)
        keep = relabel[self.y] >= 0
        return dataclasses.replace(self, x=self.x[keep], y=relabel[self.y[keep]], num_classes=len(labels))

    def batches(self, batch_size: int, shuffle: bool = True, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of (x, y) mini-batches on the data's device; every sample exactly once.

        With ``shuffle`` the order is a fresh permutation drawn from ``generator`` (the global
        RNG when None; a seeded generator makes the order reproducible). The last batch is
        smaller unless ``drop_last``.
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r}: must be a positive integer")
        n = len(self)
        order = None
        if shuffle:
            where = generator.device if generator is not None else torch.device("cpu")
            order = torch.randperm(n, generator=generator, device=where).to(self.device)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            if order is None:
                yield self.x[start:start + batch_size], self.y[start:start + batch_size]
            else:
                idx = order[start:start + batch_size]
                yield self.x[idx], self.y[idx]


def channel_stats(images: torch.Tensor) -> tuple[tuple, tuple]:
    """Exact per-channel mean and std of uint8 images (N x H x W or N x C x H x W), in [0, 1] units.

    Computed from a 256-bin histogram per channel, so no float copy of the images is made.
    """
    if images.dim() == 3:
        images = images.unsqueeze(1)
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        count = hist.sum()
        mean = (hist * values).sum() / count
        var = (hist * (values - mean) ** 2).sum() / count
        means.append(float(mean / 255))
        stds.append(float(var.sqrt() / 255))
    return tuple(means), tuple(stds)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
              flatten: bool = False) -> torch.Tensor:
    """float32 (images / 255 - mean_c) / std_c, shaped N x C x H x W (or N x C*H*W if flatten)."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    shape = (1, -1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).reshape(shape)
    std_t = torch.tensor(std, dtype=torch.float32).clamp_min(1e-12).reshape(shape)
    x = images.to(torch.float32).div_(255).sub_(mean_t).div_(std_t)
    return x.reshape(x.shape[0], -1) if flatten else x


def image_dataset(reader, split: str, flatten: bool, num_classes: int, name: str) -> Dataset:
    """A normalized Dataset from ``reader(split) -> (uint8 images, labels)``.

    Standardization uses the train split's statistics whatever ``split`` is, so the test
    inputs are transformed exactly as the training inputs were.
    """
    _check_split(split)
    train_images, train_labels = reader("train")
    mean, std = channel_stats(train_images)
    if split == "train":
        images, labels = train_images, train_labels
    else:
        del train_images, train_labels
        images, labels = reader(split)
    return Dataset(normalize(images, mean, std, flatten), labels, num_classes, name, mean, std)


def _idx_image_dataset(name: str, root, split: str, flatten: bool, reader) -> Dataset:
    """image_dataset of an IDX set, kept per process for the same unchanged files (a figure
    worker trains dozens of runs on one set; statistics and normalization take ~0.3 s each
    time). Each call gets its own copy of the tensors."""
    try:
        files = [_idx_file(Path(root), sp, kind, "") for sp in SPLITS for kind in ("images", "labels")]
    except (DatasetError, OSError):
        files = None
    stat = _file_key(*files) if files else None
    if stat is None:  # missing or unreadable files: reading reports the problem
        return image_dataset(reader, split, flatten, 10, name)
    key = (name, split, flatten, stat)
    if key not in _DATASET_CACHE:
        _remember(_DATASET_CACHE, key, image_dataset(reader, split, flatten, 10, name))
    ds = _DATASET_CACHE[key]
    return dataclasses.replace(ds, x=ds.x.clone(), y=ds.y.clone())


_DATASET_CACHE: dict = {}


# ----------------------------------------------------------------------------- teachers


def _seed(seed: int, tag: str) -> int:
    """A 63-bit seed derived from (seed, tag), so each random stream of a teacher is independent."""
    digest = hashlib.sha256(f"ldfa.sim.data/{seed}/{tag}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _generator(seed: int, tag: str) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(seed, tag))


def _orthonormal_columns(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """float64 n x k with orthonormal columns, uniformly (Haar) distributed."""
    q, r = torch.linalg.qr(torch.randn(n, k, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(k, dtype=torch.float64))


def _check_positive_int(name: str, value, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name}={value!r}: must be an integer >= {minimum}")


def _gaussian_inputs(n_samples: int, n_in: int, seed: int, split: str) -> torch.Tensor:
    """float64 n_samples x n_in, x ~ N(0, I), from a stream that depends on (seed, split)."""
    _check_split(split)
    return torch.randn(n_samples, n_in, generator=_generator(seed, f"inputs/{split}"), dtype=torch.float64)


def linear_teacher(n_in: int = 100, n_out: int = 10, spectrum: Sequence[float] = (5.0, 4.0, 3.0, 2.0, 1.0),
                   n_samples: int = 10000, noise: float = 0.0, seed: int = 0, *, split: str = "train",
                   whiten: bool = False) -> tuple[Dataset, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The linear teacher of the theory: y = W* x + noise, W* = U diag(spectrum) Vᵀ.

    U (n_out x k) and V (n_in x k), k = len(spectrum), are random orthonormal columns drawn
    from ``seed`` alone by :func:`ldfa.theory.config.teacher_matrices` (the theory's teacher),
    so the train and test splits share the teacher; the inputs
    x ~ N(0, I_{n_in}) and the noise (std ``noise`` per output, covariance noise² I) come
    from a stream of (seed, split). ``whiten=True`` rotates the sample so that its empirical
    covariance XᵀX / N is exactly I (needs n_samples >= n_in).

    Returns ``(dataset, (W*, U, V))``: the dataset holds float32 x (N x n_in) and float32
    y (N x n_out); W*, U, V are float64. Same arguments, identical tensors.
    """
    for name, value in (("n_in", n_in), ("n_out", n_out), ("n_samples", n_samples)):
        _check_positive_int(name, value)
    _check_positive_int("seed", seed, minimum=0)
    s = torch.as_tensor(tuple(spectrum), dtype=torch.float64)
    if s.dim() != 1 or not 1 <= len(s) <= min(n_in, n_out):
        raise ConfigError(f"spectrum={tuple(spectrum)}: needs 1 to min(n_in, n_out) = "
                          f"{min(n_in, n_out)} values")
    if not torch.isfinite(s).all() or (s < 0).any():
        raise ConfigError(f"spectrum={tuple(spectrum)}: values must be finite and >= 0")
    if not float(noise) >= 0 or not np.isfinite(float(noise)):
        raise ConfigError(f"noise={noise!r}: must be a finite number >= 0")
    if whiten and n_samples < n_in:
        raise ConfigError(f"whiten=True: needs n_samples >= n_in (got {n_samples} < {n_in})")

    # the project's one teacher generator, shared with the theory (same seed, same W*)
    W, U, V = (torch.as_tensor(a) for a in teacher_matrices(n_in, n_out, s.tolist(), seed))

    x = _gaussian_inputs(n_samples, n_in, seed, split)
    if whiten:
        q, r = torch.linalg.qr(x)
        x = q * torch.sign(torch.diagonal(r)) * n_samples ** 0.5
    y = x @ W.T
    if noise:
        y = y + noise * torch.randn(n_samples, n_out, generator=_generator(seed, f"noise/{split}"),
                                    dtype=torch.float64)
    data = Dataset(x.to(torch.float32), y.to(torch.float32), None, "linear-teacher")
    return data, (W, U, V)


def random_teacher(n_in: int = 100, hidden: int = 100, n_out: int | None = 10, n_samples: int = 10000,
                   seed: int = 0, classes: int | None = None, *, split: str = "train"
                   ) -> tuple[Dataset, tuple[torch.Tensor, torch.Tensor]]:
    """A random two-layer tanh teacher: t = W2 tanh(W1 x), x ~ N(0, I_{n_in}).

    W1 (hidden x n_in) has entries N(0, 1/n_in) and W2 (outputs x hidden) N(0, 1/hidden),
    both from ``seed`` alone (shared by the splits); the inputs come from (seed, split).
    Without ``classes`` the targets are t (float32 N x n_out). With ``classes`` the teacher
    has ``classes`` outputs (``n_out`` must then be None or equal) and the labels are
    argmax t (int64). Returns ``(dataset, (W1, W2))`` with W1, W2 in float64.
    """
    if classes is not None:
        _check_positive_int("classes", classes, minimum=2)
        if n_out is not None and n_out != classes:
            raise ConfigError(f"n_out={n_out} with classes={classes}: the class teacher has one output per "
                              "class; give n_out=None or n_out=classes")
        n_out = classes
    for name, value in (("n_in", n_in), ("hidden", hidden), ("n_out", n_out), ("n_samples", n_samples)):
        _check_positive_int(name, value)
    _check_positive_int("seed", seed, minimum=0)

    g = _generator(seed, "random-teacher")
    W1 = torch.randn(hidden, n_in, generator=g, dtype=torch.float64) / n_in ** 0.5
    W2 = torch.randn(n_out, hidden, generator=g, dtype=torch.float64) / hidden ** 0.5
    x = _gaussian_inputs(n_samples, n_in, seed, split)
    t = torch.tanh(x @ W1.T) @ W2.T
    y = t.argmax(dim=1) if classes is not None else t.to(torch.float32)
    return Dataset(x.to(torch.float32), y, classes, "random-teacher"), (W1, W2)


# ----------------------------------------------------------------------------- dispatch


def check_files(name: str, root=None) -> None:
    """Check, without reading them, that the files of data set ``name`` are where :func:`load`
    will look (a one-line DatasetError naming the missing path and how to get it), so that a
    run or a sweep fails before any compute rather than at its first data load."""
    if name == "fashion-mnist" or name == "mnist":
        if name == "mnist" and root is None:
            mnist(None)   # raises the one-line error
        fashion = name == "fashion-mnist"
        hint, what = (FASHION_MNIST_HINT, "Fashion-MNIST") if fashion else (MNIST_HINT, "MNIST")
        folder = Path(root) if root is not None else FASHION_MNIST_ROOT
        if not folder.is_dir():
            raise DatasetError(f"{folder}: no such directory for {what}; {hint}")
        for split in SPLITS:
            for kind in ("images", "labels"):
                _idx_file(folder, split, kind, hint)
    elif name in ("cifar10", "cifar100"):
        classes = 10 if name == "cifar10" else 100
        folder_name = "cifar-10-batches-py" if classes == 10 else "cifar-100-python"
        archive = "cifar-10-python.tar.gz" if classes == 10 else "cifar-100-python.tar.gz"
        hint = f"download {archive} from {CIFAR_URL}, unpack it and pass root=DIR"
        if root is None:
            raise DatasetError(f"{name}: root is required (no default location); {hint}")
        folder = Path(root)
        if (folder / folder_name).is_dir():
            folder = folder / folder_name
        if not folder.is_dir():
            raise DatasetError(f"{folder}: no such directory for CIFAR-{classes}; {hint}")
        names = ["train", "test"]
        if classes == 10:
            names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for file in names:
            if not (folder / file).is_file():
                raise DatasetError(f"{folder / file}: file not found; {hint}")
    elif name in ("linear-teacher", "random-teacher"):
        if root is not None:
            raise ConfigError(f"root={str(root)!r}: {name} is synthetic and reads no files; leave root unset")
    else:
        raise ConfigError(f"data set {name!r}: must be one of {', '.join(NAMES)}")


def load(name: str, root=None, split: str = "train", flatten: bool = False, **options) -> Dataset:
    """The data set ``name`` as a normalized :class:`Dataset`.

    ``name`` is one of fashion-mnist, mnist, cifar10, cifar100 (image sets read from ``root``;
    Fashion-MNIST has a default root) or linear-teacher, random-teacher (synthetic; ``options``
    are the keyword arguments of :func:`linear_teacher` / :func:`random_teacher`, e.g.
    ``n_in=20, spectrum=(3, 2, 1), seed=1``; ``split`` picks the sample stream, the teacher
    is shared). ``flatten=True`` gives N x features inputs for MLPs (teachers are always flat).
    """
    _check_split(split)
    teachers = {"linear-teacher": linear_teacher, "random-teacher": random_teacher}
    if name in teachers:
        fn = teachers[name]
        if root is not None:
            raise ConfigError(f"root={str(root)!r}: {name} is synthetic and reads no files; leave root unset")
        allowed = [p for p in inspect.signature(fn).parameters if p != "split"]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(f"{name}: unknown option(s) {', '.join(unknown)}; "
                              f"allowed: {', '.join(allowed)}")
        return fn(split=split, **options)[0]
    if options:
        raise ConfigError(f"{name}: unknown option(s) {', '.join(sorted(options))}; image data sets take "
                          "only root, split and flatten")
    if name == "fashion-mnist":
        return _idx_image_dataset(name, root if root is not None else FASHION_MNIST_ROOT, split, flatten,
                                  lambda s: fashion_mnist(root, s))
    if name == "mnist":
        if root is None:
            mnist(None)   # raises the one-line error
        return _idx_image_dataset(name, root, split, flatten, lambda s: mnist(root, s))
    if name in ("cifar10", "cifar100"):
        classes = 10 if name == "cifar10" else 100
        if root is None:
            cifar(None, split, classes)   # raises the one-line error
        return image_dataset(lambda s: cifar(root, s, classes), split, flatten, classes, name)
    raise ConfigError(f"data set {name!r}: must be one of {', '.join(NAMES)}")
