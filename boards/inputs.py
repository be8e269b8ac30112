"""The test images of ``lcq run --inputs FILE`` (numpy only): an .npz of ``images`` and ``labels``, checked.

The file is what ``numpy.savez(FILE, images=..., labels=...)`` writes: ``images`` uint8 of shape
(N, C, H, W), N >= 1 and (C, H, W) the model's input; ``labels`` N integers, each a class of the
model. Anything else (a .npy, a pickle, damaged bytes, labels that are floats, strings or out of
range) is a ValueError naming the file and what it must hold: nothing is converted, nothing unpickled.
Only the images (and labels) a run takes are decompressed: the rest of a large file is never read.
"""

from __future__ import annotations

import os
import zipfile
import zlib

import numpy as np

ZIP_STARTS = (b"PK\x03\x04", b"PK\x05\x06")     # a zip file with members, an empty one
NPY_START = b"\x93NUMPY"


def read_inputs(path, count: int, shape: tuple, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` images (uint8) and labels (int64) of the .npz at ``path``, for a model of input
    ``shape`` (C, H, W) and ``classes`` classes."""
    shape = tuple(shape)
    how = (f"--inputs takes an .npz file of arrays 'images' (uint8, N x {' x '.join(map(str, shape))}) and 'labels' "
           f"(N integers in 0..{classes - 1}), as numpy.savez(FILE, images=..., labels=...) writes")
    if os.path.exists(path) and not os.path.isfile(path):       # (a FIFO or a device would block the read)
        raise ValueError(f"{path} is not a regular file; {how}")
    try:
        with open(path, "rb") as f:
            start = f.read(len(NPY_START))
    except FileNotFoundError:
        raise FileNotFoundError(f"no --inputs file {path}") from None
    except OSError as e:
        raise ValueError(f"cannot read {path} ({e}); {how}") from None
    if start.startswith(NPY_START):
        raise ValueError(f"{path} is a .npy file (one array), not an .npz; {how}")
    if not start.startswith(ZIP_STARTS):
        raise ValueError(f"{path} is not an .npz file (it does not start as a zip file does); {how}")
    try:
        with zipfile.ZipFile(path) as zf:
            arrays = {name.removesuffix(".npy"): name for name in zf.namelist()}
            if "images" not in arrays or "labels" not in arrays:
                raise ValueError(f"it holds arrays {sorted(arrays)}")
            with zf.open(arrays["images"]) as images, zf.open(arrays["labels"]) as labels:
                images, labels = _leading(images, "images", count), _leading(labels, "labels", count)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"{path} is not an .npz of plain arrays 'images' and 'labels' ({e}); {how}") from None
    (images, images_shape), (labels, labels_shape) = images, labels
    if images.dtype != np.uint8 or images_shape[1:] != shape or not images_shape[0]:     # (a 0-d one fails the shape)
        raise ValueError(f"{path}: images must be uint8 of shape (N, {', '.join(map(str, shape))}), N >= 1, not "
                         f"{images.dtype} {images_shape}; {how}")
    if labels_shape != images_shape[:1] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: labels must be {images_shape[0]} integers, one per image, not {labels.dtype} "
                         f"{labels_shape}; {how}")
    outside = np.flatnonzero((labels < 0) | (labels >= classes))
    if outside.size:
        raise ValueError(f"{path}: label {labels[outside[0]]} of image {outside[0]} is not a class of the model "
                         f"(0..{classes - 1}); {how}")
    return images, labels.astype(np.int64)


def _leading(f, name: str, count: int) -> tuple[np.ndarray, tuple]:
    """The first ``count`` entries (along its first axis) of the .npy stream ``f``, and the shape it declares.

    Reads the header, then only those entries' bytes: a compressed member declaring gigabytes is
    decompressed no further than the images a run takes (a 0-d array is read whole). ValueError for
    Python objects, Fortran order or a member shorter than its header says.
    """
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"'{name}' is a .npy of format version {version[0]}.{version[1]}; numpy.savez writes 1.0")
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    if dtype.hasobject:
        raise ValueError(f"'{name}' holds Python objects")
    if fortran and len(shape) > 1:
        raise ValueError(f"'{name}' is saved in Fortran order; save np.ascontiguousarray({name})")
    read = (min(count, shape[0]), *shape[1:]) if shape else ()
    size = dtype.itemsize * int(np.prod(read, dtype=object))
    data = f.read(size)
    if len(data) < size:
        raise ValueError(f"'{name}' is cut short: {len(data)} bytes of data where its header declares at least {size}")
    return np.frombuffer(bytearray(data), dtype).reshape(read), tuple(shape)
