"""The test images of ``lcq run --inputs FILE`` (numpy only): an .npz of ``images`` and ``labels``, checked.

The file is what ``numpy.savez(FILE, images=..., labels=...)`` writes: ``images`` uint8 of shape
(N, C, H, W), N >= 1 and (C, H, W) the model's input; ``labels`` N integers, each a class of the
model. Anything else (a .npy, a pickle, damaged bytes, labels that are floats, strings or out of
range) is a ValueError naming the file and what it must hold: nothing is converted, nothing unpickled.
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
        with np.load(path, allow_pickle=False) as npz:
            if "images" not in npz or "labels" not in npz:
                raise ValueError(f"it holds arrays {sorted(npz.files)}")
            images, labels = npz["images"], npz["labels"]
    except (OSError, ValueError, EOFError, NotImplementedError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"{path} is not an .npz of plain arrays 'images' and 'labels' ({e}); {how}") from None
    if images.dtype != np.uint8 or images.shape[1:] != shape or not len(images):
        raise ValueError(f"{path}: images must be uint8 of shape (N, {', '.join(map(str, shape))}), N >= 1, not "
                         f"{images.dtype} {images.shape}; {how}")
    if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: labels must be {len(images)} integers, one per image, not {labels.dtype} "
                         f"{labels.shape}; {how}")
    outside = np.flatnonzero((labels < 0) | (labels >= classes))
    if outside.size:
        raise ValueError(f"{path}: label {labels[outside[0]]} of image {outside[0]} is not a class of the model "
                         f"(0..{classes - 1}); {how}")
    return images[:count], labels[:count].astype(np.int64)
