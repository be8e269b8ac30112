"""Offline dataset loading: digits, MNIST, Fashion-MNIST, CIFAR-10 and your own images.

Every loader returns a :class:`Dataset` of uint8 images ``(N, C, H, W)``
(pixel value = ``x / 255``) and int64 labels. Nothing is downloaded: the data
must already be on disk in the dataset's standard layout, found via the
``data_dir`` argument (``--data-dir DIR`` on the command line), else
``$LCQ_DATA_DIR/<name>``, else a built-in default where one exists.

- ``digits``: scikit-learn's 8x8 digits in a fixed stratified split, 1437 train / 360 test, shipped
  with the package (``lcq_train/digits.npz``).
- ``mnist``, ``fashion-mnist``: the four IDX files, raw or ``.gz``.
- ``cifar10``: the python pickle batches, ``train/<class>/*.jpg`` image
  folders, or a ``.tar.gz`` of those folders.
- ``folder``: your own images, ``train/<class>/*.png`` (or ``.jpg``) and ``test/<class>/...`` folders, a
  ``.tar.gz`` of them, or ``<class>/*.png`` folders alone (every 5th image of a class, by name, a test image):
  every image of one size (each side up to :data:`FOLDER_MAX_SIDE`), grey (C = 1) where every image is grey,
  else RGB; the classes are the folder names, sorted.

Decoded images are cached as an ``.npz`` under ``$LCQ_CACHE_DIR`` (default ``~/.cache/lcq``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import multiprocessing
import os
import struct
import tarfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_write
from .classes import CLASS_NAMES
from .dataset_rules import (DATASETS, FOLDER_MAX_SIDE, IMAGE_SHAPES, MAX_CLASSES, class_names_problem,
                            image_shape_problem)
from .image_file import FORMATS as IMAGE_FORMATS, MODES as IMAGE_MODES, SUFFIXES as IMAGE_SUFFIXES
from .safe_pickle import NUMPY_GLOBALS, NumpyUnpickler

__all__ = ["DATASETS", "FOLDER_MAX_SIDE", "IMAGE_SHAPES", "MAX_CLASSES", "DatasetError", "Dataset", "load_dataset",
           "load_dataset_for", "image_shape_problem", "class_names_problem"]

_GREY_MODES = ("1", "L", "LA")     # image modes that make a grey (one-channel) folder dataset where all are
_PALETTE_MODES = ("P", "PA")        # and palette ones, where the colours the image uses are grey
FOLDER_TEST_EVERY = 5              # class folders alone: every 5th image of a class (by name) is a test image

_DEFAULT_DIRS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension

_CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_TAR_SUFFIXES = (".tar.gz", ".tgz")
_SPLITS = ("train", "test")
_MAX_IDX_BYTES = 1 << 28  # MNIST's training images take 47 MB; an IDX file declaring more is refused
_MAX_IMAGE_BYTES = 1 << 20  # an encoded 32x32 image takes a few KB; a larger file is refused before it is read
_MAX_TAR_HEADER_BYTES = 1 << 20  # a long name or pax header of a .tar.gz member, read whole; larger ones are refused
_TAR_EXTRA_HEADERS = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                      tarfile.SOLARIS_XHDTYPE)

_CACHE_VERSION = 1
_CACHE_KEYS = ("train_x", "train_y", "test_x", "test_y", "classes")
_DECODE_CHUNK = 2000  # images per worker task
_DECODE_WORKERS = max(1, min(8, os.cpu_count() or 1))
_DECODE_DEADLINE_S = 120  # per chunk, counted from when the one before is done (it takes well under a second)

Arrays = dict[str, np.ndarray]


class DatasetError(ValueError):
    """A dataset is missing or malformed; the message names the expected files and the fix."""


@dataclass(frozen=True)
class Dataset:
    """Train/test images (uint8 ``(N, C, H, W)``, value = x/255) and int64 labels."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        for split in _SPLITS:
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.dtype != torch.uint8 or x.dim() != 4 or y.dtype != torch.int64 or y.shape != x.shape[:1]:
                raise DatasetError(
                    f"{self.name}: {split} split must be uint8 (N, C, H, W) images with int64 (N,) labels, "
                    f"got {tuple(x.shape)} {x.dtype} and {tuple(y.shape)} {y.dtype}"
                )
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise DatasetError(f"{self.name}: train and test image shapes differ")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one image, ``(C, H, W)``."""
        c, h, w = self.train_x.shape[1:]
        return (c, h, w)

    def check_trained_on(self, input_shape, classes=None, data_dir=None) -> None:
        """A DatasetError unless these are images of what a model of ``input_shape`` (C, H, W) and, where given,
        class names ``classes`` (in label order) was trained on: a folder dataset is whatever the directory
        (``data_dir``, for the message) holds, and another folder's images would be read as the model's."""
        known = list(classes) if classes is not None else list(self.classes)
        if (list(self.input_shape), list(self.classes)) != (list(input_shape), known):
            raise DatasetError(f"{self.name} ({data_dir}): images of shape {list(self.input_shape)} in the classes "
                               f"{list(self.classes)}, but the model was trained on images of shape "
                               f"{list(input_shape)} in the classes {known}; pass the images it was trained on "
                               "(--data-dir)")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) from ``data_dir``.

    ``data_dir`` is ignored for ``digits``. When it is None the loader tries
    ``$LCQ_DATA_DIR/<name>``, then the built-in default (Fashion-MNIST only).
    Raises :class:`DatasetError` when the data is missing or malformed.
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if name == "digits":
        arrays = _load_digits()
    else:
        root = _resolve_root(name, data_dir)
        arrays = _load_idx_dataset(name, root) if name in ("mnist", "fashion-mnist") else _load_images(name, root)
    classes = tuple(str(c) for c in arrays["classes"])
    return Dataset(
        name=name,
        train_x=_row_major(arrays["train_x"]),
        train_y=_row_major(arrays["train_y"]),
        test_x=_row_major(arrays["test_x"]),
        test_y=_row_major(arrays["test_y"]),
        num_classes=len(classes),
        classes=classes,
    )


def load_dataset_for(name: str, data_dir: str | os.PathLike | None, input_shape, classes=None) -> Dataset:
    """:func:`load_dataset`, and a DatasetError unless its images are what a model of ``input_shape`` (C, H, W)
    and, where given, class names ``classes`` (in label order) was trained on: a folder dataset is whatever the
    directory holds, and another folder's images (or classes) would be read as the model's."""
    data = load_dataset(name, data_dir)
    data.check_trained_on(input_shape, classes, data_dir)
    return data


def _row_major(a: np.ndarray) -> torch.Tensor:
    """``a`` as a tensor with row-major strides. numpy may leave any stride on a size-1 axis (digits' one
    channel: 1), which torch reads as a memory format: the first convolution ran channels_last and gave its
    weight a gradient of another layout than the weight's, which DistributedDataParallel copies every step."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.view(-1).view(t.shape)            # (no copy: contiguous up to the size-1 axes' strides)


# --------------------------------------------------------------------------- locating


def _expected_layout(name: str, where: str) -> str:
    """Human-readable description of the files ``name`` needs in ``where``."""
    if name == "cifar10":
        return (
            "Expected one of:\n"
            f"  1. the CIFAR-10 python version: {where}/cifar-10-batches-py/ (or {where} itself) holding "
            f"{', '.join(_CIFAR_BATCHES)} (optional batches.meta)\n"
            f"  2. image folders: {where}/train/<class>/*.jpg and {where}/test/<class>/*.jpg (.jpg/.jpeg/.png, 32x32)\n"
            f"  3. one .tar.gz/.tgz archive in {where} (or passed directly) holding that train/ test/ layout, "
            "optionally under one top-level folder"
        )
    if name == "folder":
        return (
            f"Expected your images in class folders: {where}/train/<class>/*.png and {where}/test/<class>/*.png "
            f"(.png/.jpg/.jpeg; every image of one size, each side up to {FOLDER_MAX_SIDE}; grey where all are grey, "
            f"else RGB; the folder names are the classes), or {where}/<class>/*.png alone (every "
            f"{FOLDER_TEST_EVERY}th image of a class by name a test image), or one .tar.gz/.tgz archive in {where} "
            "(or passed directly) holding the train/ test/ layout, optionally under one top-level folder"
        )
    return "Expected the four IDX files (raw or .gz): " + ", ".join(f"{where}/{f}[.gz]" for f in _IDX_FILES)


def _resolve_root(name: str, data_dir: str | os.PathLike | None) -> Path:
    """The directory (or, for cifar10, possibly the archive) to load ``name`` from."""
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.exists():
            raise DatasetError(
                f"{name}: {root} does not exist. {_expected_layout(name, str(root))}\n"
                "Pass the location with --data-dir DIR."
            )
        return root
    candidates = []
    if os.environ.get("LCQ_DATA_DIR"):
        candidates.append(Path(os.environ["LCQ_DATA_DIR"]).expanduser() / name)
    if name in _DEFAULT_DIRS:
        candidates.append(_DEFAULT_DIRS[name])
    for candidate in candidates:
        if candidate.exists():
            return candidate
    tried = f" (looked in: {', '.join(map(str, candidates))})" if candidates else ""
    hint = "; or `apt-get install dataset-fashion-mnist`" if name == "fashion-mnist" else ""
    raise DatasetError(
        f"{name}: no data directory given{tried}. {_expected_layout(name, 'DIR')}\n"
        f"Pass the location with --data-dir DIR (or set LCQ_DATA_DIR to a root holding {name}/{hint})."
    )


# --------------------------------------------------------------------------- digits


# scikit-learn's 8x8 digits (the UCI optdigits set, CC BY 4.0), its pixels scaled 0..16 -> 0..255, in the
# stratified 1437/360 split of ``train_test_split(test_size=360, stratify=y, random_state=0)`` (scikit-learn
# 1.9): written once (tests/test_data.py checks it against scikit-learn where that is installed) and shipped,
# so that the split never moves with a scikit-learn version and loading imports no scikit-learn (0.7 s).
DIGITS_FILE = Path(__file__).with_name("digits.npz")
DIGITS_SHA256 = "0b2f0f3524c5dce3de75887a04d170c8bc4ace03241fb750d993f888ca59be71"
DIGITS_SHAPES = {"train_x": (1437, 1, 8, 8), "train_y": (1437,), "test_x": (360, 1, 8, 8), "test_y": (360,)}


def _load_digits() -> Arrays:
    """The built-in digits (:data:`DIGITS_FILE`), checked against :data:`DIGITS_SHA256`."""
    try:
        data = DIGITS_FILE.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"digits: {DIGITS_FILE} is missing from the installed package; reinstall it "
                           "(pip install -e .)") from None
    if hashlib.sha256(data).hexdigest() != DIGITS_SHA256:
        raise DatasetError(f"digits: {DIGITS_FILE} is damaged (its SHA-256 differs from the one shipped); "
                           "reinstall the package (pip install -e .) or restore the file with git")
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in DIGITS_SHAPES}
    arrays["train_y"], arrays["test_y"] = (arrays[k].astype(np.int64) for k in ("train_y", "test_y"))
    arrays["classes"] = np.array([str(c) for c in range(10)])
    return arrays


# --------------------------------------------------------------------------- MNIST / Fashion-MNIST


def _load_idx_dataset(name: str, root: Path) -> Arrays:
    """MNIST-format dataset from the four IDX files in ``root``."""
    paths = {}
    for base in _IDX_FILES:
        found = [p for p in (root / base, root / f"{base}.gz") if p.is_file()]
        if not found:
            raise DatasetError(
                f"{name}: missing {base} (or {base}.gz) in {root}. {_expected_layout(name, str(root))}\n"
                "Pass the right directory with --data-dir DIR."
            )
        paths[base] = found[0]
    arrays: Arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images_path, labels_path = paths[f"{prefix}-images-idx3-ubyte"], paths[f"{prefix}-labels-idx1-ubyte"]
        images = _read_idx(images_path, _IDX_IMAGES_MAGIC)
        labels = _read_idx(labels_path, _IDX_LABELS_MAGIC)
        if images.shape[1:] != IMAGE_SHAPES[name][1:]:
            raise DatasetError(f"{images_path}: images are {images.shape[1:]}, expected 28x28")
        if not len(images):
            raise DatasetError(f"{images_path}: holds no images; the {split} split needs at least one "
                               "(replace it with the complete file)")
        if len(images) != len(labels):
            raise DatasetError(
                f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels"
            )
        if labels.size and labels.max() > 9:
            raise DatasetError(f"{labels_path}: label {labels.max()} out of range 0..9")
        arrays[f"{split}_x"] = images[:, None]
        arrays[f"{split}_y"] = labels.astype(np.int64)
    classes = CLASS_NAMES[name]
    arrays["classes"] = np.array(classes)
    return arrays


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file (big-endian header: magic, then one uint32 per dimension) of unsigned bytes, read (and
    a .gz decompressed) as a stream: never more than the header declares, nor more than :data:`_MAX_IDX_BYTES`
    (a small .gz of zeros would otherwise fill the memory before any check)."""
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            head = _read_at_most(f, header)
            if len(head) < header:
                raise DatasetError(f"{path}: truncated IDX header ({len(head)} bytes)")
            (found,) = struct.unpack(">I", head[:4])
            if found != magic:
                raise DatasetError(f"{path}: bad IDX magic number 0x{found:08x}, expected 0x{magic:08x}")
            dims = struct.unpack(f">{ndim}I", head[4:header])
            size = math.prod(dims)  # Python ints: a numpy int64 product of huge dims wraps (2^21 * 2^21 * 2^22 -> 0)
            if size > _MAX_IDX_BYTES:
                raise DatasetError(f"{path}: its header {dims} declares {size} data bytes, more than the "
                                   f"{_MAX_IDX_BYTES} read from an IDX file (MNIST's largest holds 47 MB)")
            raw = _read_at_most(f, size + 1)        # (+1: a byte beyond the declared data)
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path}: cannot read ({e})") from e
    if len(raw) != size:
        raise DatasetError(f"{path}: {len(raw)} data bytes, header {dims} needs {size} (truncated or corrupt file)")
    return np.frombuffer(raw, dtype=np.uint8).reshape(dims).copy()  # writable, for torch


def _read_at_most(f, n: int, chunk: int = 1 << 20) -> bytes:
    """Up to ``n`` bytes of stream ``f``, read a chunk at a time (a read of ``n`` at once allocates ``n``)."""
    parts, left = [], n
    while left > 0:
        part = f.read(min(chunk, left))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


# --------------------------------------------------------------------------- CIFAR-10


def _load_images(name: str, root: Path) -> Arrays:
    """CIFAR-10 or a folder dataset (``name``) from the first recognised layout at ``root`` (see
    :func:`_expected_layout`)."""
    if root.is_dir():
        for candidate in (root / "cifar-10-batches-py", root) if name == "cifar10" else ():
            if any((candidate / batch).is_file() for batch in _CIFAR_BATCHES):
                return _load_cifar_python(candidate)
        split = (root / "train").is_dir() and (root / "test").is_dir()
        unsplit = name == "folder" and not any((root / s).exists() for s in _SPLITS) and \
            any(_visible(p) and p.is_dir() for p in root.iterdir())
        if split or unsplit:
            files = _list_image_folders(name, root) if split else _split_class_folders(root)
            stats = [(str(p), st.st_size, st.st_mtime_ns) for _, _, p in files for st in [p.stat()]]
            fingerprint = hashlib.sha256(repr(stats).encode()).hexdigest()
            return _cached(name, root, fingerprint, lambda: _decode_images(name, _read_image_folders(name, files)))
        archives = sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(_TAR_SUFFIXES))
        if len(archives) > 1:
            raise DatasetError(
                f"{name}: several archives in {root}: {', '.join(p.name for p in archives)}; "
                "pass the one to use with --data-dir FILE"
            )
        if archives:
            root = archives[0]
    if root.is_file() and root.name.endswith(_TAR_SUFFIXES):
        stat = root.stat()
        return _cached(name, root, f"{stat.st_size}:{stat.st_mtime_ns}",
                       lambda: _decode_images(name, _iter_tar_images(name, root)))
    raise DatasetError(
        f"{name}: no recognised layout in {root}. {_expected_layout(name, str(root))}\n"
        "Pass the location with --data-dir DIR."
    )


def _load_cifar_python(root: Path) -> Arrays:
    """The CIFAR-10 python version: pickled ``data_batch_1..5``, ``test_batch``, optional ``batches.meta``."""
    classes = CLASS_NAMES["cifar10"]
    meta_path = root / "batches.meta"
    if meta_path.is_file():
        names = _unpickle(meta_path).get(b"label_names")
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in names):
            raise DatasetError(f"{meta_path}: no b'label_names' list of strings (got {type(names).__name__})")
        try:
            classes = tuple(n.decode() if isinstance(n, bytes) else n for n in names)
        except UnicodeDecodeError as e:
            raise DatasetError(f"{meta_path}: a b'label_names' entry is not UTF-8 ({e})") from e
        problem = class_names_problem(classes)
        if problem:
            raise DatasetError(f"{meta_path}: b'label_names' gives {problem}; restore CIFAR-10's batches.meta "
                               "(its 10 class names), or delete it to use those names")
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    layout_root = root.parent if root.name == "cifar-10-batches-py" else root
    for batch in _CIFAR_BATCHES:
        path = root / batch
        if not path.is_file():
            raise DatasetError(
                f"cifar10: missing {batch} in {root}. {_expected_layout('cifar10', str(layout_root))}\n"
                "Pass the right directory with --data-dir DIR."
            )
        entry = _unpickle(path)
        if b"data" not in entry or b"labels" not in entry:
            raise DatasetError(f"{path}: expected a dict with b'data' and b'labels' (has keys {list(entry)[:5]!r})")
        data, labels = entry[b"data"], entry[b"labels"]
        # Checked before np.asarray: pickle stores a list that is referenced many times once, so nested lists
        # of a few KB can stand for 10^9 numbers; CIFAR-10 writes an array and a flat list of integers.
        if not isinstance(data, np.ndarray) or not isinstance(labels, (list, np.ndarray)) or (
                isinstance(labels, list) and not all(isinstance(v, (int, np.integer)) for v in labels)):
            raise DatasetError(f"{path}: b'data' must be a numpy array and b'labels' a list of integers (what "
                               f"CIFAR-10's batches hold), not {type(data).__name__} and {type(labels).__name__}")
        labels = np.asarray(labels)
        if data.dtype.kind not in "iu" or (data.size and (data.min() < 0 or data.max() > 255)):
            raise DatasetError(f"{path}: b'data' must hold integer pixel values 0..255")
        if labels.dtype.kind not in "iu" and labels.size:  # an empty list reads as float64
            raise DatasetError(f"{path}: b'labels' must be integers, not {labels.dtype}")
        data, labels = data.astype(np.uint8), labels.astype(np.int64)
        if data.ndim != 2 or data.shape[1] != math.prod(IMAGE_SHAPES["cifar10"]) or labels.shape != data.shape[:1]:
            raise DatasetError(f"{path}: b'data' {data.shape} and b'labels' {labels.shape} are not (N, 3072) and (N,)")
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DatasetError(f"{path}: labels out of range 0..{len(classes) - 1}")
        parts["test" if batch == "test_batch" else "train"].append((data.reshape(-1, *IMAGE_SHAPES["cifar10"]), labels))
    for split, files in (("train", "data_batch_1..5 hold"), ("test", "test_batch holds")):
        if not sum(len(y) for _, y in parts[split]):
            raise DatasetError(f"cifar10: {files} no images in {root}; the {split} split needs at least one "
                               "(restore the complete CIFAR-10 batches)")
    arrays = {f"{split}_x": np.concatenate([x for x, _ in p]) for split, p in parts.items()}
    arrays.update({f"{split}_y": np.concatenate([y for _, y in p]) for split, p in parts.items()})
    arrays["classes"] = np.array(classes)
    return arrays


class _CifarUnpickler(NumpyUnpickler):
    """The unpickler of a CIFAR batch (:class:`~lcq_train.safe_pickle.NumpyUnpickler`): numpy arrays, their
    dtypes and scalars, Python 2 strings as bytes. A pickle that names any other callable (os.system, exec,
    a class of its own) is refused before it can run."""

    GLOBALS = NUMPY_GLOBALS | {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}
    HOLDS = "a CIFAR batch"


def _unpickle(path: Path) -> dict:
    """Load one CIFAR pickle (``encoding="bytes"``) with :class:`_CifarUnpickler`, which runs no code the
    file names; any failure becomes a DatasetError naming the file."""
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as e:  # unpickling garbage can raise almost any exception type
        raise DatasetError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _visible(path: Path) -> bool:
    """Whether ``path`` is no hidden file or folder (a name from ``.``: Jupyter's ``.ipynb_checkpoints``, macOS's
    ``._x.png`` resource forks and ``.DS_Store``), which the image readers pass over."""
    return not path.name.startswith(".")


def _class_folders(name: str, folder: Path) -> list[tuple[str, list[Path]]]:
    """(class, its image files) of each class folder in ``folder`` of dataset ``name``, both sorted, hidden ones
    passed over; a class folder without an image (:data:`IMAGE_SUFFIXES`) is a DatasetError (its class would be
    left out)."""
    classes = []
    for class_dir in sorted(p for p in folder.iterdir() if _visible(p) and p.is_dir()):
        paths = [p for p in sorted(class_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and _visible(p)
                 and p.is_file()]
        if not paths:
            raise DatasetError(f"{name}: {class_dir} holds no image ({'/'.join(IMAGE_SUFFIXES)}); add its images or "
                               "remove the folder")
        classes.append((class_dir.name, paths))
    return classes


def _list_image_folders(name: str, root: Path) -> list[tuple[str, str, Path]]:
    """(split, class, path) of every image of dataset ``name`` under ``root/{train,test}/<class>/``, sorted
    (:func:`_class_folders`)."""
    return [(split, label, path) for split in _SPLITS for label, paths in _class_folders(name, root / split)
            for path in paths]


def _split_class_folders(root: Path) -> list[tuple[str, str, Path]]:
    """(split, class, path) of every image under ``root/<class>/`` (a folder dataset given as class folders alone),
    sorted: in each class, by file name, every :data:`FOLDER_TEST_EVERY`-th image is a test image (the 5th, the
    10th, ...), the others training images (:func:`_class_folders`)."""
    return [("test" if i % FOLDER_TEST_EVERY == FOLDER_TEST_EVERY - 1 else "train", label, path)
            for label, paths in _class_folders("folder", root) for i, path in enumerate(paths)]


def _read_image_folders(name: str, files: list[tuple[str, str, Path]]) -> Iterator[tuple[str, str, str, bytes]]:
    """(split, class, name, encoded bytes) for each listed image file of dataset ``name``."""
    for split, label, path in files:
        _check_image_size(name, str(path), path.stat().st_size)
        yield split, label, str(path), path.read_bytes()


def _check_image_size(dataset: str, name: str, size: int) -> None:
    """Refuse an image file ``name`` of ``size`` bytes over :data:`_MAX_IMAGE_BYTES` before it is read into memory
    (a .tar.gz member of zeros compresses 1000:1)."""
    if size > _MAX_IMAGE_BYTES and dataset == "cifar10":
        raise DatasetError(f"{name}: {size} bytes, more than the {_MAX_IMAGE_BYTES} a 32x32 image file takes; "
                           "remove it or replace it with the CIFAR-10 image")
    if size > _MAX_IMAGE_BYTES:
        raise DatasetError(f"{name}: {size} bytes, more than the {_MAX_IMAGE_BYTES} an image file of a folder dataset "
                           f"may take (a {FOLDER_MAX_SIDE} x {FOLDER_MAX_SIDE} PNG takes at most about 200 KB); "
                           "save it as a smaller PNG or JPEG")


class _CheckedTarInfo(tarfile.TarInfo):
    """A member header of a tar read with ``tarinfo=_CheckedTarInfo``. A ReadError where tarfile would end the
    archive without a word at a missing, cut or corrupt header (and load only the members before), and before
    tarfile reads into memory a long-name or pax header over :data:`_MAX_TAR_HEADER_BYTES` (read whole) or a
    sparse member's map (read entry by entry, as long as the archive goes on): no image is a sparse file."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as e:
            raise tarfile.ReadError(f"{e} at byte {tar.offset} of the tar: the archive is truncated or corrupt "
                                    "(copy it again)") from None

    def _proc_member(self, tar):
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise self._sparse(self.name)
        if self.type in _TAR_EXTRA_HEADERS and self.size > _MAX_TAR_HEADER_BYTES:
            raise tarfile.ReadError(f"member {self.name}: a header of {self.size} bytes, more than the "
                                    f"{_MAX_TAR_HEADER_BYTES} read from one (a path takes a few hundred)")
        return super()._proc_member(tar)

    def _proc_gnusparse_10(self, next, pax_headers, tar):
        raise self._sparse(next.name)

    @staticmethod
    def _sparse(name: str) -> tarfile.ReadError:
        return tarfile.ReadError(f"member {name}: a sparse file, which no image is; create the archive without "
                                 "--sparse")


def _iter_tar_images(dataset: str, archive: Path) -> Iterator[tuple[str, str, str, bytes]]:
    """(split, class, name, encoded bytes) for each ``[top/]{train,test}/<class>/<image>`` member of dataset
    ``dataset``'s archive, streamed.

    The archive is read to its end, so a cut or corrupt one is a DatasetError: every member header up to the
    end-of-archive marker (:class:`_CheckedTarInfo`), then the rest of the gzip stream, whose length and CRC
    its trailer checks. An image stored twice (``tar -r``) is a DatasetError, not two images. Hidden members (a
    class, split or file name from ``.``, as macOS's tar adds ``._x.png``) are passed over."""
    prefix, seen = None, set()
    try:
        with open(archive, "rb") as raw, gzip.GzipFile(fileobj=raw) as gz, \
                tarfile.open(fileobj=gz, mode="r|", tarinfo=_CheckedTarInfo) as tar:
            for member in tar:
                parts = [p for p in PurePosixPath(member.name).parts if p != "."]
                if (
                    member.isdir()
                    or len(parts) not in (3, 4)
                    or parts[-3] not in _SPLITS
                    or PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES
                    or any(part.startswith(".") and part != ".." for part in parts[-3:])     # hidden: _visible
                ):
                    continue
                if ".." in parts or parts[0] == "/":
                    raise DatasetError(f"{archive}:{member.name}: a path with '..' or from the root, which extracting "
                                       "puts outside the archive's folder; create the archive of train/ and test/ "
                                       f"with relative paths (tar czf {dataset}.tar.gz train test)")
                if not member.isfile():             # (a link is never followed: it may point outside the archive)
                    what = f"a link to {member.linkname}" if member.islnk() or member.issym() else "a special file"
                    raise DatasetError(f"{archive}:{member.name}: {what}, not a file; create the archive of the image "
                                       "files themselves (GNU tar: --dereference --hard-dereference)")
                if prefix is None:
                    prefix = parts[:-3]
                elif parts[:-3] != prefix:
                    raise DatasetError(
                        f"{archive}: images under more than one top-level folder "
                        f"({'/'.join(prefix) or '.'} and {'/'.join(parts[:-3])})"
                    )
                if tuple(parts) in seen:
                    raise DatasetError(f"{archive}:{member.name}: the image {'/'.join(parts)} a second time "
                                       "(extracting keeps the last copy); create the archive anew, each image once")
                seen.add(tuple(parts))
                _check_image_size(dataset, f"{archive}:{member.name}", member.size)
                yield parts[-3], parts[-2], f"{archive}:{member.name}", tar.extractfile(member).read()
            while gz.read(1 << 20):
                pass
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{archive}: cannot read archive ({e}); it must be a whole gzip-compressed tar "
                           "(tar czf)") from e


def _decode_images(dataset: str, items: Iterable[tuple[str, str, str, bytes]]) -> Arrays:
    """Decode (split, class, name, bytes) images of ``dataset`` (cifar10 or folder) into arrays; classes sorted by
    name -> label index. CIFAR-10's are 32 x 32 RGB; a folder dataset's all of the first image's size, grey (C = 1)
    where every image is grey (its mode one of :data:`_GREY_MODES`, or a palette mode with grey pixels), else RGB.

    Chunks are decoded in a process pool while ``items`` is still being read; a chunk not decoded
    ``_DECODE_DEADLINE_S`` after the one before it (a worker killed: the pool never answers for it) is a
    DatasetError, and leaving the pool terminates its workers.
    Output order is (class, name) within each split, whatever the input order.
    """
    keys: list[tuple[str, str, str]] = []
    size = first = None
    if dataset == "cifar10":
        size = IMAGE_SHAPES["cifar10"][:0:-1]
    with _decode_pool() as pool:
        pending, chunk = [], []
        for split, label, name, blob in items:
            if size is None:
                size, first = _folder_image_size(name, blob), name
            keys.append((split, label, name))
            chunk.append((name, blob))
            if len(chunk) == _DECODE_CHUNK:
                pending.append(pool.apply_async(_decode_chunk, (dataset, chunk, size, first)))
                chunk = []
        if chunk:
            pending.append(pool.apply_async(_decode_chunk, (dataset, chunk, size, first)))
        try:
            decoded = [task.get(timeout=_DECODE_DEADLINE_S) for task in pending]
        except multiprocessing.TimeoutError:
            raise DatasetError(f"{dataset}: a chunk of {_DECODE_CHUNK} images took over {_DECODE_DEADLINE_S} s to "
                               "decode (a decoding process died, perhaps out of memory, or hung on an image); free "
                               "memory and retry, or check the images") from None
    classes = {split: sorted({label for s, label, _ in keys if s == split}) for split in _SPLITS}
    if not classes["train"] or not classes["test"]:
        raise DatasetError(
            f"{dataset}: no images found under train/<class>/ and test/<class>/ "
            f"(found train classes {classes['train']}, test classes {classes['test']}). "
            + _expected_layout(dataset, "DIR")
            + ("\n(The python-version archive cifar-10-python.tar.gz must be extracted first.)"
               if dataset == "cifar10" else f"\n(Of class folders alone every {FOLDER_TEST_EVERY}th image of a "
               f"class is a test image: a class with fewer than {FOLDER_TEST_EVERY} has none.)")
        )
    problem = class_names_problem(classes["train"])
    if problem:
        raise DatasetError(f"{dataset}: the train/<class>/ folders give {problem}; each class is a folder of images")
    if not set(classes["test"]) <= set(classes["train"]):
        raise DatasetError(
            f"{dataset}: test classes {sorted(set(classes['test']) - set(classes['train']))} have no train folder"
        )
    images = np.concatenate([pixels for pixels, _ in decoded])
    if dataset == "folder" and all(grey.all() for _, grey in decoded):
        images = images[..., :1]            # (grey converted to RGB: three equal channels)
    index = {label: i for i, label in enumerate(classes["train"])}
    arrays: Arrays = {"classes": np.array(classes["train"])}
    for split in _SPLITS:
        order = sorted((label, name, i) for i, (s, label, name) in enumerate(keys) if s == split)
        arrays[f"{split}_x"] = np.ascontiguousarray(images[[i for _, _, i in order]].transpose(0, 3, 1, 2))
        arrays[f"{split}_y"] = np.array([index[label] for label, _, _ in order], dtype=np.int64)
    return arrays


def _decode_pool() -> multiprocessing.pool.Pool:
    """Worker pool for image decoding; fork (where available) avoids re-importing torch per worker."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    return multiprocessing.get_context(method).Pool(_DECODE_WORKERS)


def _opened(dataset: str, name: str, blob: bytes):
    """The PIL image of encoded ``blob`` (file ``name`` of ``dataset``), its header read: PNG and JPEG only,
    whatever PIL could open (an EPS would run Ghostscript on its program); errors name the file."""
    try:
        return Image.open(io.BytesIO(blob), formats=IMAGE_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        sides = "CIFAR-10 images are 32x32" if dataset == "cifar10" else \
            f"a folder dataset's images have sides up to {FOLDER_MAX_SIDE}"
        raise DatasetError(f"{name}: image too large to decode ({e}); {sides}") from e
    except Image.UnidentifiedImageError as e:
        raise DatasetError(f"{name}: cannot decode image: not a PNG or JPEG file (the formats read), or a "
                           "damaged one; convert it to PNG or replace it") from e
    except (OSError, ValueError) as e:
        raise DatasetError(f"{name}: cannot decode image ({e})") from e


def _folder_image_size(name: str, blob: bytes) -> tuple[int, int]:
    """(width, height) of a folder dataset's first image ``name`` (from its header): every other must have it;
    a side over :data:`FOLDER_MAX_SIDE` is a DatasetError."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL's warning for a huge header
        with _opened("folder", name, blob) as image:
            size = image.size
    if max(size) > FOLDER_MAX_SIDE:
        raise DatasetError(f"{name}: image is {size[0]}x{size[1]}, larger than the {FOLDER_MAX_SIDE} x "
                           f"{FOLDER_MAX_SIDE} of a folder dataset's images; resize the images (all to one size)")
    return size


def _decode_chunk(dataset: str, chunk: list[tuple[str, bytes]], size: tuple[int, int],
                  first: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Decode encoded images of ``size`` (width, height) to RGB uint8 ``(n, height, width, 3)``, and whether each
    was grey (a mode of :data:`_GREY_MODES`, or a palette image whose pixels are grey); errors name the offending
    file (and ``first``, the folder dataset's image that set the size).

    Only 8-bit modes are decoded (PIL clips a 16-bit grey image to RGB). An image's size and mode are read from its
    header and any other refused before its pixels are decoded."""
    width, height = size
    out = np.empty((len(chunk), height, width, 3), dtype=np.uint8)
    grey = np.zeros(len(chunk), dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL's warning for a huge header
        for i, (name, blob) in enumerate(chunk):
            with _opened(dataset, name, blob) as image:
                found, mode = image.size, image.mode
                try:
                    rgb = image.convert("RGB") if found == (width, height) and mode in IMAGE_MODES else None
                except (OSError, ValueError) as e:
                    raise DatasetError(f"{name}: cannot decode image ({e})") from e
            if found != (width, height) and dataset == "cifar10":
                raise DatasetError(f"{name}: image is {found[0]}x{found[1]}, expected 32x32")
            if found != (width, height):
                raise DatasetError(f"{name}: image is {found[0]}x{found[1]}, but {first} is {width}x{height}; the "
                                   "images of a folder dataset share one size: resize them (all to one size)")
            if rgb is None:
                raise DatasetError(f"{name}: an image of PIL mode {mode} (16 bits or more a pixel); save it as an "
                                   "8-bit PNG or JPEG")
            out[i] = np.asarray(rgb)
            grey[i] = mode in _GREY_MODES or (mode in _PALETTE_MODES and _equal_channels(out[i]))
    return out, grey


def _equal_channels(pixels: np.ndarray) -> bool:
    """Whether every pixel of an (H, W, 3) image has equal red, green and blue: a grey one."""
    return bool((pixels[..., :1] == pixels[..., 1:]).all())


# --------------------------------------------------------------------------- cache


def _cache_dir() -> Path:
    """``$LCQ_CACHE_DIR``, else ``~/.cache/lcq``."""
    return Path(os.environ.get("LCQ_CACHE_DIR") or Path.home() / ".cache" / "lcq")


def _cached(dataset: str, source: Path, fingerprint: str, build: Callable[[], Arrays]) -> Arrays:
    """Arrays of ``dataset`` for ``source`` from the ``.npz`` cache, else ``build()`` them and cache them
    atomically.

    The cache file is keyed by the source's absolute path and ``fingerprint``
    (size/mtime); a file that cannot be read back, or holds arrays that
    :func:`_decode_images` does not write (:func:`_is_decoded_dataset`), is ignored and rebuilt.
    """
    key = hashlib.sha256(f"{_CACHE_VERSION}|{source.resolve()}|{fingerprint}".encode()).hexdigest()[:24]
    path = _cache_dir() / f"{dataset}-{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in _CACHE_KEYS}
        if _is_decoded_dataset(dataset, arrays):
            return arrays
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass
    arrays = build()
    _write_npz_atomic(path, arrays)
    return arrays


def _is_decoded_dataset(dataset: str, arrays: Arrays) -> bool:
    """Whether ``arrays`` are what :func:`_decode_images` writes for ``dataset``: sorted class names that pass
    :func:`class_names_problem`, and per split uint8 ``(N, C, H, W)`` images of one shape that
    :func:`image_shape_problem` takes, N > 0, with int64 ``(N,)`` labels indexing the classes."""
    classes = arrays["classes"]
    if classes.dtype.kind != "U" or classes.ndim != 1:
        return False
    names = classes.tolist()
    if class_names_problem(names) or names != sorted(names):
        return False
    for split in _SPLITS:
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.dtype != np.uint8 or x.ndim != 4 or image_shape_problem(dataset, list(x.shape[1:])) or not len(x) \
                or x.shape[1:] != arrays["train_x"].shape[1:]:
            return False
        if y.dtype != np.int64 or y.shape != x.shape[:1] or y.min() < 0 or y.max() >= len(names):
            return False
    return True


def _write_npz_atomic(path: Path, arrays: Arrays) -> None:
    """Write ``arrays`` to ``path`` atomically (:func:`lcq_train.atomic.atomic_write`); a failure only warns
    (the cache saves time, nothing more)."""
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except OSError as e:
        warnings.warn(f"could not write dataset cache {path}: {e}", stacklevel=3)
