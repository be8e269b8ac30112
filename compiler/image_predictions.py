"""Image files in, classes out: what ``lcq predict`` (the integer reference) and ``lcq run --image`` (the
board) read and say, numpy and Pillow only.

:func:`read_images` gives a compiled model's input of each file (:func:`lcq_train.image_file.read_image`:
grey or RGB, its middle cropped and resized to the model's size, said in a note); :func:`prediction` is
one image's record: its top classes by logit, named where the model records its class names (``source.classes``)
or its dataset is known (``source.dataset``),
the logits in real units (the integers times the model's logit scale) and the integers themselves;
:func:`describe` is that record as a line.
"""

from __future__ import annotations

import numpy as np

from lcq_train.classes import class_name
from lcq_train.image_file import read_image

from .graph import CompiledModel


def read_images(model: CompiledModel, paths: list[str]) -> tuple[np.ndarray, list[str | None]]:
    """uint8 ``(N, C, H, W)`` images of ``paths`` for ``model``'s input, and each one's note (None: as it was)."""
    read = [read_image(path, model.input.shape) for path in paths]
    return np.stack([image for image, _ in read]), [note for _, note in read]


def prediction(model: CompiledModel, path: str, logits: np.ndarray, note: str | None, top: int) -> dict:
    """The record of image ``path`` with integer ``logits`` (``num_classes``): ``class`` (the top one, ties to
    the lowest, as argmax), ``name`` (None where unknown), ``top`` (the ``top`` best: class, name, logit in real
    units), ``logits`` (the integers), ``scale`` and ``note``."""
    scale = model.scales[model.logits]
    order = sorted(range(len(logits)), key=lambda c: (-int(logits[c]), c))
    best = [{"class": c, "name": class_of(model.source, c), "logit": float(logits[c]) * scale} for c in order[:top]]
    return {"image": str(path), "class": order[0], "name": best[0]["name"], "top": best,
            "logits": [int(v) for v in logits], "scale": scale, "note": note}


def describe(record: dict) -> str:
    """``record`` (:func:`prediction`) as one line: the image, its class, the top logits and the note."""
    scores = ", ".join(f"{named(entry['name'], entry['class'])} {entry['logit']:.3f}" for entry in record["top"])
    note = f"  [{record['note']}]" if record["note"] else ""
    return f"{record['image']}: {named(record['top'][0]['name'], record['top'][0]['class'])}; logits {scores}{note}"


def class_of(source, label: int) -> str | None:
    """The name of class ``label`` of a model of ``source``: its recorded class names (``source.classes``), else its
    dataset's (``source.dataset``); None where neither names it."""
    source = source if isinstance(source, dict) else {}
    names = source.get("classes")
    return names[label] if names and 0 <= label < len(names) else class_name(source.get("dataset"), label)


def named(name: str | None, label: int) -> str:
    """Class ``label`` of ``name`` as a line shows it: "cat (3)"; a digit's name is its class: "7"; unnamed:
    "class 3"."""
    if name is None:
        return f"class {label}"
    return name if name == str(label) else f"{name} ({label})"
