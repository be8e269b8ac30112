"""A folder dataset of your own images, small and made on the spot: three classes of grey 10 x 12 images (a
horizontal bar, a cross, a ring; shifted and noisy) as ``DIR/{train,test}/<class>/NNN.png``.

    python tests/data/shapes_folder.py DIR [--train N] [--test N]

writes it (60 training and 20 test images a class by default), for ``lcq train --dataset folder --data-dir DIR``
(README, "Your own images"); ``tests/test_folder_dataset.py`` imports :func:`make_folder`.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("bar", "cross", "ring")     # folder names, sorted: labels 0, 1, 2
HEIGHT, WIDTH = 10, 12


def _pattern(label: int, rng: np.random.Generator) -> np.ndarray:
    """A grey HEIGHT x WIDTH image of class ``label``: a horizontal bar, a cross or a ring, shifted and noisy."""
    y, x = np.mgrid[:HEIGHT, :WIDTH]
    cy, cx = HEIGHT / 2 + rng.integers(-1, 2), WIDTH / 2 + rng.integers(-1, 2)
    if label == 0:
        shape = np.abs(y - cy) < 1.5
    elif label == 1:
        shape = (np.abs(y - cy) < 1) | (np.abs(x - cx) < 1)
    else:
        shape = np.abs(np.hypot(y - cy, x - cx) - 3.5) < 1
    return np.clip(shape * 200 + rng.integers(0, 50, shape.shape), 0, 255).astype(np.uint8)


def make_folder(root, per_class=(30, 10), colour_one=False, seed=0) -> dict:
    """Write ``root/{train,test}/<class>/<i>.png`` (grey; one RGB image where ``colour_one``); returns
    ``{(split, class, i): pixels}``."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, n in zip(("train", "test"), per_class):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = _pattern(label, rng)
                if colour_one and (split, label, i) == ("train", 0, 0):
                    pixels = np.stack([pixels, pixels // 2, 255 - pixels], axis=-1)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
                written[(split, name, i)] = pixels
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--train", type=int, default=60, help="training images a class")
    p.add_argument("--test", type=int, default=20, help="test images a class")
    args = p.parse_args()
    make_folder(args.dir, per_class=(args.train, args.test))
    print(f"wrote {len(CLASSES) * (args.train + args.test)} images of {len(CLASSES)} classes {CLASSES} to {args.dir}")


if __name__ == "__main__":
    main()
