"""What a file may record of a dataset (torch-free, numpy-free: the compiler's model files and the board's host
check them too): the dataset names, each one's image shape, and the rule of class names.

:func:`image_shape_problem` is the rule of an image shape (C, H, W) of a dataset: a named one's own, or for
``folder`` (your own images) C 1 or 3 with sides up to :data:`FOLDER_MAX_SIDE`; :func:`class_names_problem` that
of a classifier's class names. The loader (:mod:`lcq_train.data`), the checkpoint and the compiled model hold
their data to these.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from typing import Iterable

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "folder")
# each named dataset's image shape (C, H, W): its reader refuses images of any other (a folder's images have one
# size of their own)
IMAGE_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
FOLDER_MAX_SIDE = 256   # the longest side of a folder dataset's images
MAX_CLASSES = 1 << 16   # the most classes a compiled model holds (compiler.graph.MAX_CLASSES)
MAX_NAME_CHARS = 255    # the longest class name


def image_shape_problem(name: str, shape) -> str | None:
    """Why ``shape`` is not the (C, H, W) of an image of dataset ``name`` (one of :data:`DATASETS`), said after
    the field ("is [3, 8, 8], not [1, 8, 8], the image shape of its dataset digits"): not its :data:`IMAGE_SHAPES`
    entry, or for ``folder`` not C 1 or 3 with sides 1..:data:`FOLDER_MAX_SIDE`; None where it is."""
    whole = isinstance(shape, (list, tuple)) and len(shape) == 3 and \
        all(isinstance(n, int) and not isinstance(n, bool) for n in shape)
    if name != "folder":
        return None if whole and tuple(shape) == IMAGE_SHAPES[name] else \
            f"is {shape!r}, not {list(IMAGE_SHAPES[name])}, the image shape of its dataset {name}"
    if not whole or shape[0] not in (1, 3) or not all(1 <= n <= FOLDER_MAX_SIDE for n in shape[1:]):
        return f"is {shape!r}, not the image shape of a folder dataset (C 1 or 3, sides 1..{FOLDER_MAX_SIDE})"
    return None


def class_names_problem(names: Iterable[str]) -> str | None:
    """What makes ``names`` other than a classifier's class names (2..:data:`MAX_CLASSES` distinct strings of
    1..:data:`MAX_NAME_CHARS` characters, none a control character: a terminal prints them); None when nothing."""
    names = list(names)
    odd = next((n for n in names if not isinstance(n, str) or not 1 <= len(n) <= MAX_NAME_CHARS
                or any(unicodedata.category(ch) == "Cc" for ch in n)), None)
    if odd is not None:
        return (f"the class name {odd!r}, which is no string of 1..{MAX_NAME_CHARS} characters without control "
                "characters")
    if len(names) < 2:
        return f"{len(names)} class(es), but a classifier needs at least 2"
    if len(names) > MAX_CLASSES:
        return f"{len(names)} classes, more than the {MAX_CLASSES} a compiled model holds"
    repeated = sorted(n for n, count in Counter(names).items() if count > 1)
    if repeated:
        return f"the class names {repeated[:5]} more than once"
    return None
