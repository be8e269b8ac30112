"""Offline dataset loaders (lcq_train/data.py) on tiny synthetic fixtures written to tmp_path."""

import gzip
import io
import multiprocessing
import os
import pickle
import re
import signal
import struct
import subprocess
import sys
import tarfile
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lcq_train.data as data_mod
from lcq_train.data import DATASETS, Dataset, DatasetError, load_dataset

from helpers import RunsCodeWhenUnpickled, make_cifar_python, write_pickle

IDX_NAMES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_MNIST = REPO_ROOT.parent / "shared" / "datasets" / "mnist"   # ../shared/datasets/mnist, beside the repository


# --------------------------------------------------------------------------- fixture writers


def write_idx(path, array, magic=None, gz=False, cut=0):
    """Write ``array`` (uint8) as an IDX file: big-endian magic (0x800 + ndim) and dims, then the bytes."""
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x800 + array.ndim if magic is None else magic
    raw = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()
    raw = raw[: len(raw) - cut]
    path = Path(f"{path}.gz") if gz else Path(path)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def make_idx_dir(root, gz=False, n_train=5, n_test=3, seed=0):
    """The four IDX files of a tiny 28x28 dataset in ``root``; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for key, base in IDX_NAMES.items():
        write_idx(root / base, arrays[key], gz=gz)
    return arrays


def write_image(path, array, fmt="PNG"):
    """Save an (H, W, 3) uint8 array as an image file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path, format=fmt)


# Files deliberately created out of (class, name) order; classes sort to airplane=0, cat=1.
IMAGE_TREE = {
    "train": [("cat", "b.png"), ("cat", "a.png"), ("airplane", "z.png")],
    "test": [("cat", "x.png"), ("airplane", "y.png")],
}
EXPECTED_ORDER = {
    "train": [("airplane", "z.png"), ("cat", "a.png"), ("cat", "b.png")],
    "test": [("airplane", "y.png"), ("cat", "x.png")],
}


def make_image_tree(root, seed=0):
    """IMAGE_TREE as 32x32 PNGs under ``root`` (plus a non-image file); returns expected {split: (x, y)}."""
    rng = np.random.default_rng(seed)
    pixels = {}
    for split, files in IMAGE_TREE.items():
        for cls, name in files:
            pixels[split, cls, name] = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            write_image(root / split / cls / name, pixels[split, cls, name])
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    index = {"airplane": 0, "cat": 1}
    return {
        split: (
            np.stack([pixels[split, c, n].transpose(2, 0, 1) for c, n in order]),
            np.array([index[c] for c, _ in order]),
        )
        for split, order in EXPECTED_ORDER.items()
    }


def make_tar(archive, tree_root, top=None):
    """A .tar.gz of ``tree_root``'s train/ and test/ (optionally under folder ``top``), members in reverse order."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    files = sorted(p for split in ("test", "train") for p in (tree_root / split).rglob("*") if p.is_file())
    with tarfile.open(archive, "w:gz") as tar:
        for path in reversed(files):  # the loader must sort by (class, name) itself
            rel = path.relative_to(tree_root).as_posix()
            tar.add(path, arcname=f"{top}/{rel}" if top else rel)
    return archive


def make_tar_with(archive, tree_root, member, blob=b"", first=False, tar_format=tarfile.DEFAULT_FORMAT):
    """:func:`make_tar` of ``tree_root`` with ``member`` (its data ``blob``) added before or after the images."""
    with tarfile.open(make_tar(archive, tree_root), "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    extra = [(member, blob)]
    with tarfile.open(archive, "w:gz", format=tar_format) as tar:
        for m, b in extra + members if first else members + extra:
            tar.addfile(m, io.BytesIO(b))
    return archive


def load_strict(name, data_dir=None):
    """load_dataset with every warning an error (e.g. torch's non-writable numpy array warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_dataset(name, data_dir)


def assert_same(a, b):
    for field in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert a.classes == b.classes


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No ambient LCQ_DATA_DIR; the CIFAR cache goes to tmp_path/cache, never ~/.cache."""
    monkeypatch.delenv("LCQ_DATA_DIR", raising=False)
    monkeypatch.setenv("LCQ_CACHE_DIR", str(tmp_path / "cache"))


# --------------------------------------------------------------------------- generic


def test_datasets_tuple_and_unknown_name():
    assert DATASETS == ("digits", "mnist", "fashion-mnist", "cifar10", "folder")
    with pytest.raises(DatasetError, match=r"unknown dataset 'svhn'; choose one of: digits, mnist"):
        load_dataset("svhn")


def test_dataset_validates_dtypes_and_shapes():
    x, y = torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64)
    ds = Dataset("t", x, y, x, y, 10, tuple("0123456789"))
    assert ds.input_shape == (1, 4, 4)
    with pytest.raises(DatasetError, match=r"train split must be uint8 \(N, C, H, W\).*float32"):
        Dataset("t", x.float(), y, x, y, 10, ())
    with pytest.raises(DatasetError, match=r"test split .* \(3,\) torch.int64"):
        Dataset("t", x, y, x, torch.zeros(3, dtype=torch.int64), 10, ())
    with pytest.raises(DatasetError, match="train and test image shapes differ"):
        Dataset("t", x, y, torch.zeros(2, 1, 5, 5, dtype=torch.uint8), y, 10, ())


# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_dataset("digits")


def test_digits_shapes_dtypes_labels(digits):
    assert digits.train_x.shape == (1437, 1, 8, 8) and digits.test_x.shape == (360, 1, 8, 8)
    assert digits.train_x.dtype == torch.uint8 and digits.train_y.dtype == torch.int64
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert digits.classes == tuple(str(i) for i in range(10))
    for y in (digits.train_y, digits.test_y):
        assert set(y.tolist()) == set(range(10))  # stratified: every class in both splits
    assert int(digits.train_x.min()) == 0 and int(digits.train_x.max()) == 255  # 0..16 scaled to 0..255
    assert torch.bincount(digits.test_y).min() >= 35  # ~36 per class in the 360 test images


def test_digits_images_are_row_major(digits):
    """numpy leaves a stride of 1 on the (N, 1, 8, 8) images' channel axis, which torch read as channels_last:
    the first convolution ran channels_last and gave its weight a gradient of another layout than the weight's
    (DistributedDataParallel then copies it into its bucket every step, and warns)."""
    for x in (digits.train_x, digits.test_x):
        assert x.stride() == (64, 64, 8, 1)
    conv = torch.nn.Conv2d(1, 4, 3)
    conv(digits.train_x[:8].float()).sum().backward()
    assert conv.weight.grad.stride() == conv.weight.stride()


def test_digits_split_is_deterministic_and_ignores_data_dir(digits, tmp_path):
    again = load_dataset("digits", tmp_path / "does-not-exist")
    assert_same(digits, again)


def test_the_shipped_digits_are_scikit_learns_in_its_split(digits):
    """lcq_train/digits.npz holds scikit-learn's digits, scaled, in the split its train_test_split makes (loading
    them imported scikit-learn, 0.7 s of every training process's start)."""
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn (the test extra) checks the digits' origin")
    from sklearn.model_selection import train_test_split

    bunch = datasets.load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    train_x, test_x, train_y, test_y = train_test_split(x, bunch.target, test_size=360, stratify=bunch.target,
                                                        random_state=0)
    for got, want in ((digits.train_x, train_x), (digits.test_x, test_x), (digits.train_y, train_y),
                      (digits.test_y, test_y)):
        np.testing.assert_array_equal(got.numpy(), want)


def test_a_damaged_digits_file_is_refused_with_the_fix(tmp_path, monkeypatch):
    import lcq_train.data as data

    damaged = tmp_path / "digits.npz"
    payload = bytearray(data.DIGITS_FILE.read_bytes())
    payload[-100] ^= 1
    damaged.write_bytes(bytes(payload))
    monkeypatch.setattr(data, "DIGITS_FILE", damaged)
    with pytest.raises(DatasetError, match=r"digits\.npz is damaged .*reinstall the package"):
        load_dataset("digits")
    damaged.unlink()
    with pytest.raises(DatasetError, match=r"digits\.npz is missing .*reinstall it"):
        load_dataset("digits")


# --------------------------------------------------------------------------- MNIST / Fashion-MNIST


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_round_trip(tmp_path, gz):
    written = make_idx_dir(tmp_path / "mnist", gz=gz)
    ds = load_strict("mnist", tmp_path / "mnist")
    assert ds.train_x.shape == (5, 1, 28, 28) and ds.test_x.shape == (3, 1, 28, 28)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    np.testing.assert_array_equal(ds.train_x.numpy()[:, 0], written["train_x"])
    np.testing.assert_array_equal(ds.test_x.numpy()[:, 0], written["test_x"])
    np.testing.assert_array_equal(ds.train_y.numpy(), written["train_y"])
    np.testing.assert_array_equal(ds.test_y.numpy(), written["test_y"])
    assert ds.classes == tuple(str(i) for i in range(10)) and ds.num_classes == 10
    ds.train_x.add_(1)  # writable tensors


def test_fashion_mnist_class_names(tmp_path):
    make_idx_dir(tmp_path, gz=True)
    ds = load_strict("fashion-mnist", tmp_path)
    assert ds.num_classes == 10
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot" and "Sneaker" in ds.classes


def test_idx_env_var_and_default_dir(tmp_path, monkeypatch):
    written = make_idx_dir(tmp_path / "root" / "mnist", seed=1)
    monkeypatch.setenv("LCQ_DATA_DIR", str(tmp_path / "root"))
    ds = load_dataset("mnist")
    np.testing.assert_array_equal(ds.train_x.numpy()[:, 0], written["train_x"])
    # LCQ_DATA_DIR/fashion-mnist is absent, so the built-in default directory is used.
    make_idx_dir(tmp_path / "default", seed=2)
    monkeypatch.setitem(data_mod._DEFAULT_DIRS, "fashion-mnist", tmp_path / "default")
    assert load_dataset("fashion-mnist").train_x.shape == (5, 1, 28, 28)


def test_idx_no_dir_errors(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match=r"(?s)mnist: no data directory given\. .*--data-dir DIR.*LCQ_DATA_DIR"):
        load_dataset("mnist")
    monkeypatch.setenv("LCQ_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetError, match=r"looked in: " + re.escape(str(tmp_path / "mnist"))):
        load_dataset("mnist")
    monkeypatch.setitem(data_mod._DEFAULT_DIRS, "fashion-mnist", tmp_path / "nope")
    with pytest.raises(DatasetError, match=r"apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


def test_idx_nonexistent_dir(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=r"(?s)mnist: " + re.escape(str(missing)) + r" does not exist.*--data-dir"):
        load_dataset("mnist", missing)


def test_idx_missing_file_names_it(tmp_path):
    make_idx_dir(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(
        DatasetError, match=r"(?s)missing t10k-labels-idx1-ubyte \(or t10k-labels-idx1-ubyte\.gz\).*--data-dir DIR"
    ):
        load_dataset("mnist", tmp_path)


@pytest.mark.parametrize(
    "corrupt, pattern",
    [
        (lambda d: write_idx(d / IDX_NAMES["train_x"], np.zeros((5, 28, 28)), magic=0x801),
         r"train-images-idx3-ubyte: bad IDX magic number 0x00000801, expected 0x00000803"),
        (lambda d: write_idx(d / IDX_NAMES["test_x"], np.zeros((3, 28, 28)), cut=10),
         r"t10k-images-idx3-ubyte: 2342 data bytes, header \(3, 28, 28\) needs 2352"),
        (lambda d: (d / IDX_NAMES["train_y"]).write_bytes(b"\x00\x00"),
         r"train-labels-idx1-ubyte: truncated IDX header"),
        (lambda d: write_idx(d / IDX_NAMES["train_y"], np.zeros(4)),
         r"holds 5 images but .*train-labels-idx1-ubyte holds 4 labels"),
        (lambda d: write_idx(d / IDX_NAMES["test_y"], [1, 10, 2]),
         r"t10k-labels-idx1-ubyte: label 10 out of range 0\.\.9"),
        (lambda d: write_idx(d / IDX_NAMES["train_x"], np.zeros((5, 28, 27))),
         r"images are \(28, 27\), expected 28x28"),
    ],
    ids=["bad-magic", "truncated-data", "truncated-header", "count-mismatch", "label-10", "not-28x28"],
)
def test_idx_malformed(tmp_path, corrupt, pattern):
    make_idx_dir(tmp_path)
    corrupt(tmp_path)
    with pytest.raises(DatasetError, match=pattern):
        load_dataset("mnist", tmp_path)


def test_idx_huge_header_dims(tmp_path):
    """Header dims whose product overflows int64 (2^21 * 2^21 * 2^22 = 2^64) do not match a file of 0 data bytes."""
    make_idx_dir(tmp_path)
    (tmp_path / IDX_NAMES["train_x"]).write_bytes(struct.pack(">4I", 0x803, 2**21, 2**21, 2**22))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte: its header \(2097152, 2097152, 4194304\) "
                                           r"declares 18446744073709551616 data bytes, more than the 268435456"):
        load_dataset("mnist", tmp_path)


def test_a_small_gz_of_zeros_is_refused_before_it_is_inflated(tmp_path):
    """A .gz that inflates far beyond its size (here 64 MB of zeros in about 64 KB) is read only as far as its
    header declares: 3 images of 28x28, and one byte more shows the rest does not belong."""
    make_idx_dir(tmp_path, gz=True)
    path = tmp_path / (IDX_NAMES["train_x"] + ".gz")
    path.unlink()
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(struct.pack(">4I", 0x803, 3, 28, 28))
        for _ in range(64):
            f.write(bytes(1 << 20))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.gz: 2353 data bytes, header \(3, 28, 28\) "
                                           r"needs 2352"):
        load_dataset("mnist", tmp_path)


def test_idx_corrupt_gzip(tmp_path):
    make_idx_dir(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz: cannot read"):
        load_dataset("mnist", tmp_path)


@pytest.mark.parametrize("split, base", [("train", "train-images-idx3-ubyte"), ("test", "t10k-images-idx3-ubyte")])
def test_idx_split_without_images(tmp_path, split, base):
    """A split of 0 images (and 0 labels) is refused at load, not by a division by zero in training."""
    make_idx_dir(tmp_path, **{f"n_{split}": 0})
    with pytest.raises(DatasetError, match=re.escape(f"{base}: holds no images; the {split} split needs at least one")):
        load_dataset("mnist", tmp_path)


@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason=f"real MNIST not found at {REAL_MNIST}")
def test_real_mnist():
    ds = load_strict("mnist", REAL_MNIST)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    for y in (ds.train_y, ds.test_y):
        assert int(y.min()) == 0 and int(y.max()) == 9 and len(torch.unique(y)) == 10
    assert int(ds.train_x.max()) == 255 and ds.train_y[:5].tolist() == [5, 0, 4, 1, 9]


# --------------------------------------------------------------------------- CIFAR-10 python batches


@pytest.mark.parametrize("nested", [True, False], ids=["batches-py-subdir", "flat"])
def test_cifar_python_round_trip(tmp_path, nested):
    names = [f"class{i}".encode() for i in range(10)]
    expected = make_cifar_python(tmp_path / "cifar-10-batches-py" if nested else tmp_path, label_names=names)
    ds = load_strict("cifar10", tmp_path)
    assert ds.train_x.shape == (10, 3, 32, 32) and ds.test_x.shape == (2, 3, 32, 32)
    for tensor, want in zip((ds.train_x, ds.train_y, ds.test_x, ds.test_y), expected):
        np.testing.assert_array_equal(tensor.numpy(), want)
    assert ds.train_y.dtype == torch.int64 and ds.classes == tuple(f"class{i}" for i in range(10))


def test_cifar_python_default_class_names(tmp_path):
    make_cifar_python(tmp_path)  # no batches.meta
    ds = load_dataset("cifar10", tmp_path)
    assert ds.classes[:3] == ("airplane", "automobile", "bird") and ds.classes[-1] == "truck"


@pytest.mark.parametrize(
    "corrupt, pattern",
    [
        (lambda d: (d / "data_batch_3").unlink(), r"(?s)cifar10: missing data_batch_3 in .*--data-dir"),
        (lambda d: (d / "data_batch_2").write_bytes(b"\x80\x04garbage not a pickle"),
         r"data_batch_2: not a readable CIFAR pickle"),
        (lambda d: write_pickle(d / "test_batch", [1, 2, 3]), r"test_batch: expected a pickled dict, got list"),
        (lambda d: write_pickle(d / "data_batch_1", {b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}),
         r"data_batch_1: b'data' \(2, 3000\) and b'labels' \(2,\) are not \(N, 3072\) and \(N,\)"),
        (lambda d: write_pickle(d / "data_batch_1", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}),
         r"are not \(N, 3072\) and \(N,\)"),
        (lambda d: write_pickle(d / "data_batch_4", {b"labels": [0, 1]}),
         r"data_batch_4: expected a dict with b'data' and b'labels'"),
        (lambda d: write_pickle(d / "test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 10]}),
         r"test_batch: labels out of range 0\.\.9"),
        (lambda d: write_pickle(d / "test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [-1, 0]}),
         r"test_batch: labels out of range 0\.\.9"),
        (lambda d: write_pickle(d / "batches.meta", {b"num_vis": 3072}), r"batches.meta: no b'label_names' list"),
    ],
    ids=["missing-batch", "garbage", "not-dict", "bad-width", "label-count", "no-data", "label-10", "label-neg",
         "bad-meta"],
)
def test_cifar_python_malformed(tmp_path, corrupt, pattern):
    make_cifar_python(tmp_path / "cifar-10-batches-py")
    corrupt(tmp_path / "cifar-10-batches-py")
    with pytest.raises(DatasetError, match=pattern):
        load_dataset("cifar10", tmp_path)


def test_a_cifar_pickle_that_names_code_is_refused_and_runs_nothing(tmp_path):
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(RunsCodeWhenUnpickled(live)))                   # the payload is live
    assert live.read_text() == "code ran"
    make_cifar_python(tmp_path / "c")
    marker = tmp_path / "marker"
    write_pickle(tmp_path / "c" / "data_batch_2", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1],
                                                   b"filenames": RunsCodeWhenUnpickled(marker)})
    with pytest.raises(DatasetError, match=r"data_batch_2: not a readable CIFAR pickle \(UnpicklingError: it names "
                                           r"builtins\.exec, which a CIFAR batch never holds; .*could run any code"):
        load_dataset("cifar10", tmp_path / "c")
    assert not marker.exists()


@pytest.mark.parametrize("field", [b"data", b"labels"])
def test_a_small_cifar_pickle_of_shared_nested_lists_is_refused_before_numpy_expands_it(tmp_path, field):
    """Pickle stores a list referenced 1000 times once: this 20 KB batch is 10^9 labels (8 GB) to np.asarray."""
    make_cifar_python(tmp_path)
    inner = [0] * 1000
    bomb = [[inner] * 1000] * 1000
    entry = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], field: bomb}
    write_pickle(tmp_path / "test_batch", entry)
    assert (tmp_path / "test_batch").stat().st_size < 50_000
    with pytest.raises(DatasetError, match=r"test_batch: b'data' must be a numpy array and b'labels' a list of "
                                           r"integers"):
        load_dataset("cifar10", tmp_path)


def _load_in_a_process(name, data_dir) -> subprocess.CompletedProcess:
    """load_dataset(name, data_dir) in a Python process of its own (a crash ends that one, not the tests); it
    prints the DatasetError's message."""
    code = ("import sys\nfrom lcq_train.data import DatasetError, load_dataset\n"
            "try:\n    load_dataset(sys.argv[1], sys.argv[2])\nexcept DatasetError as e:\n    print(e)")
    return subprocess.run([sys.executable, "-c", code, name, str(data_dir)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("container", ["dict", "set"])
def test_a_cifar_pickle_keyed_by_a_deeply_nested_tuple_is_refused_not_a_crash(tmp_path, container):
    """Python hashes a tuple by hashing its items, with no depth limit: a key of 10^6 nested tuples (a 1 MB
    batch) overflowed the C stack where the unpickler stored it in a dict or set, and the process died of
    SIGSEGV without a word."""
    make_cifar_python(tmp_path)
    deep = b")" + b"\x85" * 1_000_000                     # EMPTY_TUPLE, then TUPLE1 around it 10^6 times
    (tmp_path / "test_batch").write_bytes(b"\x80\x04}" + deep + b"K\x01s." if container == "dict" else
                                          b"\x80\x04\x8f(" + deep + b"\x90.")   # EMPTY_SET, MARK, ADDITEMS
    result = _load_in_a_process("cifar10", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"test_batch: not a readable CIFAR pickle \(UnpicklingError: it keys a dict or set by a "
                     r"tuple, which a CIFAR batch never does", result.stdout), result.stdout


def test_a_cifar_pickle_declaring_a_bytearray_larger_than_itself_is_refused_before_allocating_it(tmp_path):
    """Protocol 5's BYTEARRAY8 declares its length: this 14-byte batch made the unpickler zero 256 MB before it
    read a byte (2^34 would be 16 GB), where the file holds 3 bytes after it."""
    make_cifar_python(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"\x80\x05\x96" + struct.pack("<Q", 1 << 28) + b"xx.")
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match=r"test_batch: not a readable CIFAR pickle \(UnpicklingError: it "
                                               r"declares 268435456 bytes where the file ends after 3"):
            data_mod._unpickle(tmp_path / "test_batch")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak} bytes allocated"


@pytest.mark.parametrize("content, what", [
    (b"\x80\x04\x95" + struct.pack("<Q", 1 << 36) + b"xx.", "a frame of 68719476736 bytes where the file ends after 3"),
    (b"\x80\x04\xff.", "byte 0xff where an opcode belongs"),
])
def test_a_cifar_pickle_with_an_unknown_opcode_or_a_frame_past_its_end_says_so(tmp_path, content, what):
    """A FRAME declaring more bytes than the file holds, or a byte no pickle opcode has, was refused as
    '(KeyError: 120)': the unpickler's opcode table missing the byte it read."""
    make_cifar_python(tmp_path)
    (tmp_path / "test_batch").write_bytes(content)
    with pytest.raises(DatasetError, match=r"test_batch: not a readable CIFAR pickle \(UnpicklingError: it "
                                           rf"(declares|holds) {what}"):
        data_mod._unpickle(tmp_path / "test_batch")


def test_a_cifar_pickle_that_calls_codecs_other_than_latin1_is_refused(tmp_path):
    """Protocol 2 pickles bytes as _codecs.encode(text, "latin1"); that global with "hex" doubles its input, so
    40 nested calls in a 600-byte file would make 2^40 bytes while unpickling."""
    make_cifar_python(tmp_path)
    expr = b"C\x01A"                                     # SHORT_BINBYTES b"A"
    for _ in range(40):                                  # encode(expr, "hex"): GET 0, MARK, expr, "hex", TUPLE, REDUCE
        expr = b"g0\n(" + expr + b"X\x03\x00\x00\x00hext" + b"R"
    (tmp_path / "test_batch").write_bytes(b"\x80\x03c_codecs\nencode\np0\n0}(C\x0bbatch_label" + expr + b"u.")
    with pytest.raises(DatasetError, match=r"test_batch: not a readable CIFAR pickle \(UnpicklingError: it calls "
                                           r"_codecs\.encode with 'hex'"):
        load_dataset("cifar10", tmp_path)


def test_an_archive_member_too_large_for_a_cifar_image_is_refused_before_it_is_read(tmp_path):
    """A .tar.gz member of zeros is read whole into memory: 2 MB here (2 KB compressed), 10 GB in 10 MB."""
    make_image_tree(tmp_path / "tree")
    bomb = tarfile.TarInfo("train/cat/bomb.png")
    bomb.size = 2 << 20
    archive = make_tar_with(tmp_path / "in" / "cifar.tar.gz", tmp_path / "tree", bomb, bytes(bomb.size))
    with pytest.raises(DatasetError, match=r"cifar.tar.gz:train/cat/bomb.png: 2097152 bytes, more than the 1048576 "
                                           r"a 32x32 image file takes"):
        load_dataset("cifar10", archive)


def _numpy_dtype_pickle(code: bytes, flags: int) -> bytes:
    """Opcodes of numpy.dtype(CODE, False, True) with BUILD state (3, "|", None, None, None, -1, -1, FLAGS)."""
    return (b"cnumpy\ndtype\n(X" + struct.pack("<I", len(code)) + code + b"\x89\x88tR(K\x03X\x01\x00\x00\x00|NNN"
            b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK" + bytes([flags]) + b"tb")


_RECONSTRUCT = b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n"
CRAFTED_NUMPY = {   # b"data" of a test_batch: numpy objects that numpy's own unpickling builds unchecked
    # an object array of shape (10,) from a 1-item list: numpy leaves 9 pointers unset (segmentation fault)
    "object-array": (_RECONSTRUCT + b"K\x00\x85C\x01btR(K\x01K\x0a\x85" + _numpy_dtype_pickle(b"O8", 0x3f)
                     + b"\x89]K\x01atb", r"it holds dtype object, where only integer arrays are read"),
    # uint8 whose BUILD sets flag 'holds objects': its arrays' bytes read as pointers
    "flags": (_numpy_dtype_pickle(b"u1", 0x1f), r"it sets a numpy dtype state numpy never writes"),
    # _reconstruct(ndarray, (10^5, 3072), b"B"): 300 MB, uninitialised, from a 150-byte file
    "reconstruct-shape": (_RECONSTRUCT + b"J\xa0\x86\x01\x00M\x00\x0c\x86C\x01BtR",
                          r"it calls numpy's _reconstruct with shape \(100000, 3072\), not \(0,\)"),
    # numpy.ndarray((10^5, 3072), "u1"): the same, called directly
    "ndarray-call": (b"cnumpy\nndarray\n(J\xa0\x86\x01\x00M\x00\x0c\x86X\x02\x00\x00\x00u1tR", r"not callable"),
}


@pytest.mark.parametrize("name", CRAFTED_NUMPY)
def test_a_cifar_pickle_whose_numpy_objects_numpy_never_writes_is_refused(tmp_path, name):
    make_cifar_python(tmp_path)
    data, pattern = CRAFTED_NUMPY[name]
    (tmp_path / "test_batch").write_bytes(b"\x80\x03}(C\x04data" + data + b"C\x06labels]u.")
    with pytest.raises(DatasetError, match=r"test_batch: not a readable CIFAR pickle \(.*" + pattern):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize("protocol, numpy_names", [(2, "numpy._core"), (2, "numpy.core"), (4, None), (5, None)])
def test_cifar_python_pickles_of_every_protocol_and_numpy_load(tmp_path, protocol, numpy_names):
    """The original batches are Python 2 pickles (protocol 2) that name numpy 1's modules (numpy.core)."""
    train_x, train_y, test_x, test_y = make_cifar_python(tmp_path)
    for path in tmp_path.iterdir():
        raw = pickle.dumps(pickle.loads(path.read_bytes()), protocol=protocol)
        if numpy_names:                              # protocol 2's text GLOBAL opcodes: the names can be swapped
            raw = raw.replace(b"numpy._core.", numpy_names.encode() + b".")
        path.write_bytes(raw)
    ds = load_dataset("cifar10", tmp_path)
    assert np.array_equal(ds.train_x.numpy(), train_x) and np.array_equal(ds.test_y.numpy(), test_y)


def test_cifar_python_labels_checked_against_meta_names(tmp_path):
    make_cifar_python(tmp_path, label_names=[b"a", b"b", b"c"])  # labels go up to 9
    with pytest.raises(DatasetError, match=r"labels out of range 0\.\.2"):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize("names, pattern", [
    ([b"only"], r"b'label_names' gives 1 class\(es\), but a classifier needs at least 2; restore CIFAR-10's"),
    ([], r"gives 0 class\(es\), but a classifier needs at least 2"),
    ([b"a", b"b", b"a", *(b"c%d" % i for i in range(7))], r"gives the class names \['a'\] more than once"),
    ([b"c%d" % i for i in range((1 << 16) + 1)], r"gives 65537 classes, more than the 65536 a compiled model holds"),
    ([b"\xff", *(b"c%d" % i for i in range(9))], r"a b'label_names' entry is not UTF-8"),
    (b"0123456789", r"no b'label_names' list of strings \(got bytes\)"),
    ([*(b"c%d" % i for i in range(9)), 9], r"no b'label_names' list of strings"),
], ids=["one", "none", "repeated", "too-many", "not-utf8", "bytes-not-list", "not-strings"])
def test_cifar_python_meta_label_names_checked(tmp_path, names, pattern):
    """batches.meta's names are checked at load (at least 2, distinct, strings), not by a checkpoint an epoch later."""
    make_cifar_python(tmp_path, label_names=names)
    for batch in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        write_pickle(tmp_path / batch, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 0]})  # class 0 only
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "batches.meta")) + ": .*" + pattern):
        load_dataset("cifar10", tmp_path)


def test_class_limit_is_the_compilers():
    from compiler.graph import MAX_CLASSES

    assert data_mod.MAX_CLASSES == MAX_CLASSES


@pytest.mark.parametrize("data, labels", [([[300] * 3072], [0]), (np.full((1, 3072), -1), [0]),
                                          (np.zeros((1, 3072), np.uint8), [0.5])])
def test_cifar_python_data_values_out_of_range(tmp_path, data, labels):
    make_cifar_python(tmp_path)
    write_pickle(tmp_path / "test_batch", {b"data": data, b"labels": labels})
    with pytest.raises(DatasetError, match="test_batch"):
        load_dataset("cifar10", tmp_path)


def test_cifar_python_split_without_images(tmp_path):
    """A split whose batches hold no images is refused; one empty batch among several is not."""
    empty = {b"data": np.zeros((0, 3072), np.uint8), b"labels": []}
    make_cifar_python(tmp_path)
    write_pickle(tmp_path / "data_batch_5", empty)
    assert load_dataset("cifar10", tmp_path).train_x.shape == (8, 3, 32, 32)
    write_pickle(tmp_path / "test_batch", empty)
    with pytest.raises(DatasetError, match=r"test_batch holds no images in .*; the test split needs at least one"):
        load_dataset("cifar10", tmp_path)
    make_cifar_python(tmp_path)
    for i in range(1, 6):
        write_pickle(tmp_path / f"data_batch_{i}", empty)
    with pytest.raises(DatasetError, match=r"data_batch_1\.\.5 hold no images in .*; the train split needs"):
        load_dataset("cifar10", tmp_path)


# --------------------------------------------------------------------------- CIFAR-10 image folders / archives


def test_image_folders_values_labels_and_order(tmp_path):
    expected = make_image_tree(tmp_path / "data")
    ds = load_dataset("cifar10", tmp_path / "data")
    assert ds.classes == ("airplane", "cat") and ds.num_classes == 2
    for split in ("train", "test"):
        x, y = getattr(ds, f"{split}_x"), getattr(ds, f"{split}_y")
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        np.testing.assert_array_equal(x.numpy(), expected[split][0])
        np.testing.assert_array_equal(y.numpy(), expected[split][1])
    assert list((tmp_path / "cache").glob("cifar10-*.npz"))  # decoded arrays were cached


def test_image_folders_accept_jpeg(tmp_path):
    expected = make_image_tree(tmp_path)
    write_image(tmp_path / "train" / "cat" / "c.jpg", np.full((32, 32, 3), 128), fmt="JPEG")
    ds = load_dataset("cifar10", tmp_path)
    assert ds.train_x.shape == (4, 3, 32, 32) and ds.train_y.tolist() == [0, 1, 1, 1]
    np.testing.assert_array_equal(ds.train_x[:3].numpy(), expected["train"][0])  # c.jpg sorts last


@pytest.mark.parametrize("top", [None, "cifar10-jpeg"], ids=["no-top-folder", "top-folder"])
def test_tar_archive_matches_folders(tmp_path, top):
    make_image_tree(tmp_path / "tree")
    from_folders = load_dataset("cifar10", tmp_path / "tree")
    archive = make_tar(tmp_path / "arch" / "cifar.tar.gz", tmp_path / "tree", top=top)
    assert_same(load_dataset("cifar10", tmp_path / "arch"), from_folders)  # the one archive in a directory
    assert_same(load_strict("cifar10", archive), from_folders)  # the archive itself (cache hit: same path)


def test_image_cache_reused_and_invalidated(tmp_path, monkeypatch):
    make_image_tree(tmp_path / "data")
    first = load_dataset("cifar10", tmp_path / "data")
    (cache,) = (tmp_path / "cache").glob("cifar10-*.npz")

    def no_decode(dataset, items):
        raise AssertionError("images decoded again instead of read from the cache")

    with monkeypatch.context() as m:
        m.setattr(data_mod, "_decode_images", no_decode)
        assert_same(load_strict("cifar10", tmp_path / "data"), first)  # cached arrays are writable too
        write_image(tmp_path / "data" / "test" / "cat" / "w.png", np.zeros((32, 32, 3)))
        with pytest.raises(AssertionError, match="decoded again"):  # new file -> new fingerprint
            load_dataset("cifar10", tmp_path / "data")
        (tmp_path / "data" / "test" / "cat" / "w.png").unlink()
        for split in ("train", "test"):  # renamed class: same files, sizes and mtimes, but new paths
            os.rename(tmp_path / "data" / split / "cat", tmp_path / "data" / split / "car")
        with pytest.raises(AssertionError, match="decoded again"):
            load_dataset("cifar10", tmp_path / "data")
        for split in ("train", "test"):
            os.rename(tmp_path / "data" / split / "car", tmp_path / "data" / split / "cat")
    cache.write_bytes(b"not a zip file")  # an unreadable cache is rebuilt, not an error
    assert_same(load_dataset("cifar10", tmp_path / "data"), first)
    assert np.load(cache)["train_x"].shape == (3, 3, 32, 32)


def _relabel(arrays, key, labels):
    arrays[key] = np.array(labels, dtype=np.int64)


@pytest.mark.parametrize("corrupt", [
    lambda a: _relabel(a, "train_y", [0, 1, 2]),                     # label 2 of 2 classes
    lambda a: _relabel(a, "test_y", [-1, 1]),
    lambda a: a.update(train_y=a["train_y"].astype(np.int32)),
    lambda a: a.update(test_x=a["test_x"].astype(np.float32)),
    lambda a: a.update(train_x=a["train_x"].transpose(0, 2, 3, 1)),  # (N, H, W, C)
    lambda a: a.update(train_y=a["train_y"][:2]),
    lambda a: a.update(test_x=a["test_x"][:0], test_y=a["test_y"][:0]),
    lambda a: a.update(classes=np.array(["airplane"]), train_y=np.zeros(3, np.int64), test_y=np.zeros(2, np.int64)),
    lambda a: a.update(classes=np.array(["cat", "airplane"])),
    lambda a: a.update(classes=np.array([[b"airplane"], [b"cat"]])),
], ids=["label-high", "label-negative", "labels-int32", "images-float", "images-hwc", "label-count", "empty-test",
        "one-class", "classes-unsorted", "classes-bytes-2d"])
def test_invalid_image_cache_is_rebuilt(tmp_path, corrupt):
    """A cache holding what the decoder never writes is a miss: rebuilt from the images and rewritten."""
    make_image_tree(tmp_path / "data")
    first = load_dataset("cifar10", tmp_path / "data")
    (cache,) = (tmp_path / "cache").glob("cifar10-*.npz")
    with np.load(cache) as npz:
        arrays = {k: npz[k] for k in npz.files}
    corrupt(arrays)
    with open(cache, "wb") as f:
        np.savez(f, **arrays)
    assert_same(load_strict("cifar10", tmp_path / "data"), first)
    with np.load(cache) as npz:
        assert np.array_equal(npz["train_y"], first.train_y.numpy()) and npz["test_x"].dtype == np.uint8
        assert npz["classes"].tolist() == ["airplane", "cat"]


def test_image_wrong_size(tmp_path):
    make_image_tree(tmp_path)
    write_image(tmp_path / "test" / "cat" / "x.png", np.zeros((16, 16, 3)))
    with pytest.raises(DatasetError, match=r"x\.png: image is 16x16, expected 32x32"):
        load_dataset("cifar10", tmp_path)


def png_header(width, height):
    """A PNG whose header says ``width`` x ``height`` (8-bit grey) and whose pixel data is a few bytes only."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side, pattern", [
    (20000, r"image too large to decode \(.*decompression bomb.*\); CIFAR-10 images are 32x32"),  # PIL's error
    (10000, r"image too large to decode \(.*decompression bomb.*\); CIFAR-10 images are 32x32"),  # PIL's warning
    (5000, r"image is 5000x5000, expected 32x32"),      # refused from the header, not decoded (the data is cut)
], ids=["pil-error", "pil-warning", "not-32x32"])
@pytest.mark.parametrize("layout", ["folders", "tar"])
def test_image_huge_header_refused_before_decoding(tmp_path, side, pattern, layout):
    make_image_tree(tmp_path / "tree")
    (tmp_path / "tree" / "train" / "cat" / "a.png").write_bytes(png_header(side, side))
    source = tmp_path / "tree" if layout == "folders" else make_tar(tmp_path / "c.tar.gz", tmp_path / "tree")
    name = str(source / "train" / "cat" / "a.png") if layout == "folders" else f"{source}:train/cat/a.png"
    with pytest.raises(DatasetError, match=re.escape(name) + ": " + pattern):
        load_dataset("cifar10", source)


def test_image_corrupt_bytes_names_file(tmp_path):
    make_image_tree(tmp_path)
    bad = tmp_path / "train" / "cat" / "a.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(DatasetError, match=re.escape(str(bad)) + ": cannot decode image"):
        load_dataset("cifar10", tmp_path)


def _encoded(fmt):
    out = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize("blob", [
    lambda: _encoded("TIFF"),
    lambda: _encoded("BMP"),
    lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n(hi) print quit\n",
], ids=["tiff", "bmp", "eps"])
@pytest.mark.parametrize("layout", ["folders", "tar"])
def test_an_image_file_of_another_format_than_png_or_jpeg_is_refused(tmp_path, blob, layout):
    """PIL opens a file as whatever format its bytes say, whatever its name: a .png holding an EPS was handed to
    Ghostscript (a PostScript interpreter: the file's program would run) and any other of PIL's decoders to the
    rest; only PNG and JPEG are read."""
    make_image_tree(tmp_path / "tree")
    (tmp_path / "tree" / "train" / "cat" / "a.png").write_bytes(blob())
    source = tmp_path / "tree" if layout == "folders" else make_tar(tmp_path / "c.tar.gz", tmp_path / "tree")
    name = str(source / "train" / "cat" / "a.png") if layout == "folders" else f"{source}:train/cat/a.png"
    with pytest.raises(DatasetError, match=re.escape(name) + r": cannot decode image: not a PNG or JPEG file"):
        load_dataset("cifar10", source)


def test_a_16_bit_grey_image_is_refused_not_clipped(tmp_path):
    """PIL converts a 16-bit grey PNG to RGB by clipping each value to 255, not scaling it: pixel 64 of 65535
    (0 in 8 bits) loaded as 64, and everything from 255 up as white."""
    make_image_tree(tmp_path)
    path = tmp_path / "train" / "cat" / "a.png"
    Image.fromarray(np.arange(1024, dtype=np.uint16).reshape(32, 32) * 64).save(path)
    with pytest.raises(DatasetError, match=re.escape(str(path)) + r": an image of PIL mode I;16 \(16 bits or more a "
                                          r"pixel\); save it as an 8-bit PNG or JPEG"):
        load_dataset("cifar10", tmp_path)


def test_image_folders_empty(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    with pytest.raises(DatasetError, match=r"(?s)no images found under train/<class>/ .*train classes \[\]"):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_class_folder_without_images_is_an_error(tmp_path, split):
    """An empty class folder (or one of .bmp files, say) was dropped without a word: the dataset had a class
    fewer than its folders, or a test class 'without a train folder' that was there."""
    make_image_tree(tmp_path)
    (tmp_path / split / "dog").mkdir()
    (tmp_path / split / "dog" / "d.bmp").write_bytes(b"BM")
    with pytest.raises(DatasetError, match=re.escape(f"cifar10: {tmp_path / split / 'dog'} holds no image "
                                                     "(.jpg/.jpeg/.png); add its images or remove the folder")):
        load_dataset("cifar10", tmp_path)


def test_image_folders_of_one_class(tmp_path):
    make_image_tree(tmp_path)
    for split in ("train", "test"):
        for path in (tmp_path / split / "airplane").iterdir():
            path.unlink()
        (tmp_path / split / "airplane").rmdir()
    with pytest.raises(DatasetError, match=r"folders give 1 class\(es\), but a classifier needs at least 2"):
        load_dataset("cifar10", tmp_path)


def test_image_test_class_without_train_folder(tmp_path):
    make_image_tree(tmp_path)
    write_image(tmp_path / "test" / "dog" / "d.png", np.zeros((32, 32, 3)))
    with pytest.raises(DatasetError, match=r"test classes \['dog'\] have no train folder"):
        load_dataset("cifar10", tmp_path)


def test_archive_errors(tmp_path):
    make_image_tree(tmp_path / "tree")
    two = tmp_path / "two"
    make_tar(two / "a.tar.gz", tmp_path / "tree")
    make_tar(two / "b.tgz", tmp_path / "tree")
    with pytest.raises(DatasetError, match=r"several archives in .*: a\.tar\.gz, b\.tgz; .*--data-dir FILE"):
        load_dataset("cifar10", two)
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00 truncated gzip")
    with pytest.raises(DatasetError, match=r"broken\.tar\.gz: cannot read archive"):
        load_dataset("cifar10", broken)
    mixed = tmp_path / "mixed.tar.gz"
    with tarfile.open(mixed, "w:gz") as tar:
        tar.add(tmp_path / "tree" / "train", arcname="one/train")
        tar.add(tmp_path / "tree" / "test", arcname="two/test")
    with pytest.raises(DatasetError, match=r"images under more than one top-level folder \(one and two\)"):
        load_dataset("cifar10", mixed)


def raw_tar(tree_root):
    """The uncompressed tar of ``tree_root``'s images (end marker included) and each member's header offset."""
    out, offsets = io.BytesIO(), []
    with tarfile.open(fileobj=out, mode="w") as tar:
        for path in sorted((tree_root).rglob("*.png")):
            offsets.append(out.tell())
            tar.add(path, arcname=path.relative_to(tree_root).as_posix())
    return out.getvalue(), offsets


def gzip_cut_in_header(raw, offsets, member):
    """A gzip of ``raw`` cut where its output ends 100 bytes into ``member``'s header, as a download cut there
    (the compressor is flushed there so that the cut falls on a whole compressed block)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    cut = offsets[member] + 100
    head = compressor.compress(raw[:cut]) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert zlib.decompressobj(31).decompress(head) == raw[:cut]
    return head


def _wrong_crc(raw):
    blob = bytearray(gzip.compress(raw))
    blob[-8] ^= 0xFF                                     # the CRC-32 of the gzip trailer
    return bytes(blob)


@pytest.mark.parametrize("damage, pattern", [
    (lambda raw, offsets: gzip_cut_in_header(raw, offsets, 4), r"Compressed file ended|truncated or corrupt"),
    (lambda raw, offsets: gzip.compress(raw[:offsets[4] + 100]), r"truncated or corrupt"),
    (lambda raw, offsets: gzip.compress(raw[:offsets[4]]), r"truncated or corrupt"),
    (lambda raw, offsets: _wrong_crc(raw), r"CRC check failed"),
    (lambda raw, offsets: raw, r"Not a gzipped file.*; it must be a whole gzip-compressed tar"),
], ids=["gzip-cut-in-a-header", "tar-cut-in-a-header", "tar-cut-between-members", "gzip-crc", "not-gzip"])
def test_a_truncated_or_corrupt_archive_is_an_error_not_a_smaller_dataset(tmp_path, damage, pattern):
    """tarfile ends an archive quietly at a missing or cut header and never reads the gzip trailer: these
    archives loaded 4 of their 5 images, or all 5 unchecked, with no error."""
    make_image_tree(tmp_path / "tree")
    raw, offsets = raw_tar(tmp_path / "tree")
    archive = tmp_path / "cifar.tar.gz"
    archive.write_bytes(gzip.compress(raw))
    assert load_dataset("cifar10", archive).train_x.shape[0] + 2 == 5          # the whole archive loads
    archive.write_bytes(damage(raw, offsets))
    os.utime(archive, ns=(0, 0))                                                # (another cache key)
    with pytest.raises(DatasetError, match=re.escape(f"{archive}: cannot read archive (") + f".*({pattern})"):
        load_dataset("cifar10", archive)


def _extra_header(kind, size):
    """A member of type ``kind`` (a GNU long name, a pax header) whose ``size`` bytes are zeros."""
    member = tarfile.TarInfo("././@LongLink" if kind == tarfile.GNUTYPE_LONGNAME else "pax")
    member.type, member.size = kind, size
    return member, bytes(size)


def _gnu_sparse():
    member = tarfile.TarInfo("train/cat/s.png")
    member.type = tarfile.GNUTYPE_SPARSE
    return member, b""


def _pax_sparse():
    """A GNU sparse 1.0 member: its pax header points tarfile to a map in its data ('999999' entries: cut)."""
    member = tarfile.TarInfo("train/cat/s.png")
    member.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "10"}
    member.size = 10
    return member, b"999999\n1\n0"


@pytest.mark.parametrize("make, pattern", [
    (lambda: _extra_header(tarfile.GNUTYPE_LONGNAME, 2 << 20), r"a header of 2097152 bytes, more than the 1048576"),
    (lambda: _extra_header(tarfile.XHDTYPE, 2 << 20), r"a header of 2097152 bytes, more than the 1048576"),
    (_gnu_sparse, r"train/cat/s\.png: a sparse file"),
    (_pax_sparse, r"train/cat/s\.png: a sparse file"),
], ids=["gnu-long-name", "pax-header", "gnu-sparse", "pax-sparse"])
def test_an_archive_header_that_tarfile_reads_whole_is_refused_first(tmp_path, make, pattern):
    """tarfile reads a long-name or pax header whole, and a sparse member's map entry by entry, before its
    caller sees the member: zeros that compress 1000:1 filled the memory (a 1 MB archive took 400 MB here,
    an 800 KB one of GNU sparse map blocks 770 MB), and a cut sparse map raised a bare ValueError."""
    make_image_tree(tmp_path / "tree")
    tar_format = tarfile.PAX_FORMAT if make is _pax_sparse else tarfile.GNU_FORMAT
    archive = make_tar_with(tmp_path / "cifar.tar.gz", tmp_path / "tree", *make(), first=True, tar_format=tar_format)
    with pytest.raises(DatasetError, match=re.escape(f"{archive}: cannot read archive (") + ".*" + pattern):
        load_dataset("cifar10", archive)


@pytest.mark.parametrize("kind, target", [(tarfile.LNKTYPE, "train/cat/a.png"), (tarfile.SYMTYPE, "/etc/passwd"),
                                          (tarfile.FIFOTYPE, None)], ids=["hard-link", "symbolic-link", "fifo"])
def test_a_link_at_an_image_path_of_an_archive_is_an_error_not_skipped(tmp_path, kind, target):
    """A link member is never followed (nothing outside the archive is read), but it was skipped without a
    word: tar stores a file's second hard link as a link, so an archive of deduplicated images lost some."""
    make_image_tree(tmp_path / "tree")
    link = tarfile.TarInfo("train/cat/c.png")
    link.type, link.linkname = kind, target or ""
    archive = make_tar_with(tmp_path / "cifar.tar.gz", tmp_path / "tree", link)
    what = f"a link to {target}" if target else "a special file"
    with pytest.raises(DatasetError, match=re.escape(f"{archive}:train/cat/c.png: {what}, not a file; ")
                       + r"create the archive .*--hard-dereference"):
        load_dataset("cifar10", archive)


def _archive_with_member(tmp_path, name: str, image: str):
    """The image tree's .tar.gz with one more member, ``name``, holding the bytes of the tree's ``image``."""
    make_image_tree(tmp_path / "tree")
    blob = (tmp_path / "tree" / image).read_bytes()
    member = tarfile.TarInfo(name)
    member.size = len(blob)
    return make_tar_with(tmp_path / "cifar.tar.gz", tmp_path / "tree", member, blob)


@pytest.mark.parametrize("name", ["train/../x.png", "../train/cat/x.png", "/train/cat/x.png"])
def test_an_archive_image_path_outside_the_archive_folder_is_refused_by_name(tmp_path, name):
    """A member path with '..' or from the root is no image of the train/ test/ layout (extracted, it lands
    outside it): train/../x.png became an image of a class named '..', and the others were refused as images
    'under more than one top-level folder'."""
    archive = _archive_with_member(tmp_path, name, "train/cat/a.png")
    with pytest.raises(DatasetError, match=re.escape(f"{archive}:{name}: a path with '..' or from the root, ")
                       + r"which extracting puts outside the archive's folder; create the archive of train/ and "
                       r"test/ with relative paths"):
        load_dataset("cifar10", archive)


@pytest.mark.parametrize("name", ["train/cat/a.png", "./train/cat/a.png"])
def test_an_archive_image_stored_twice_is_refused_not_loaded_twice(tmp_path, name):
    """tar -r appends a file again under its name (extracting keeps the last copy): both were loaded, as two
    training images."""
    archive = _archive_with_member(tmp_path, name, "train/airplane/z.png")
    with pytest.raises(DatasetError, match=re.escape(f"{archive}:{name}: the image train/cat/a.png a second time ")
                       + r"\(extracting keeps the last copy\); create the archive anew, each image once"):
        load_dataset("cifar10", archive)


def test_cifar_no_recognised_layout(tmp_path):
    (tmp_path / "train").mkdir()  # train/ without test/ is not the folder layout
    (tmp_path / "readme.txt").write_text("hello")
    pattern = r"(?s)cifar10: no recognised layout in .*cifar-10-batches-py.*train/<class>/\*\.jpg.*\.tar\.gz.*--data-dir"
    with pytest.raises(DatasetError, match=pattern):
        load_dataset("cifar10", tmp_path)


def _png() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


_decode_chunk = data_mod._decode_chunk


def _dying_decode(dataset, chunk, size, first):
    """A decoding worker killed mid-chunk (the out-of-memory killer, a crash in a codec)."""
    if any(name == "boom.png" for name, _ in chunk):
        os.kill(os.getpid(), signal.SIGKILL)
    return _decode_chunk(dataset, chunk, size, first)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork (the patched decoder)")
def test_a_decoding_worker_that_dies_is_an_error_within_the_deadline(monkeypatch):
    monkeypatch.setattr(data_mod, "_decode_chunk", _dying_decode)
    monkeypatch.setattr(data_mod, "_DECODE_DEADLINE_S", 2)
    items = [("train", "a", "a0.png", _png()), ("train", "b", "boom.png", _png()), ("test", "a", "t.png", _png())]
    with pytest.raises(DatasetError, match="took over 2 s to decode \\(a decoding process died"):
        data_mod._decode_images("cifar10", items)
