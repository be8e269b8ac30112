"""The class names of the datasets the trainer knows (numpy-free, torch-free: the board's host prints them too).

:data:`CLASS_NAMES` maps a dataset to its names in label order; :func:`class_name` gives one label's name.
"""

from __future__ import annotations

DIGIT_NAMES = tuple(str(c) for c in range(10))
CLASS_NAMES = {
    "digits": DIGIT_NAMES,
    "mnist": DIGIT_NAMES,
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}


def class_name(dataset: str | None, label: int) -> str | None:
    """The name of class ``label`` of ``dataset``, or None where the dataset is not known or has no such class."""
    names = CLASS_NAMES.get(dataset, ())
    return names[label] if 0 <= label < len(names) else None
