"""One image file (a photo, a scan) as a model's input: uint8 ``(C, H, W)`` codes, with numpy and Pillow only.

:func:`image_files` expands the directories among the paths a user gives into their image files.

:func:`read_image` decodes a PNG or JPEG file (the formats the dataset loader reads; nothing else, whatever
Pillow could open), converts it to grey (C = 1) or RGB (C = 3), and where its size is not the model's, crops
the middle to the model's aspect ratio and resizes it (Lanczos). The model sees the image as the training
set's images were given to it: raw 8-bit pixels, no normalization (MNIST's digits are white on black).
A file that is too large, not an image or of 16 bits a channel is a ValueError naming it and the fix.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

# What image files are read, here and by the dataset loader (lcq_train.data): the Pillow formats decoded, whatever
# a file's suffix (an EPS would run Ghostscript), the suffixes of a directory's image files, and the modes of 8
# bits a channel or fewer (Pillow clips a 16-bit grey image when it converts it).
FORMATS = ("PNG", "JPEG")
SUFFIXES = (".jpg", ".jpeg", ".png")
MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK")
MAX_FILE_BYTES = 64 << 20       # a 24-megapixel JPEG takes ~10 MB; a larger file is refused before it is read
MAX_PIXELS = 1 << 26            # 67 megapixels: a larger image is refused from its header, before it is decoded
CONVERT = {1: "L", 3: "RGB"}


def read_image(path: str | os.PathLike, shape: tuple[int, int, int]) -> tuple[np.ndarray, str | None]:
    """The image file at ``path`` as uint8 ``shape`` = (C, H, W) (C 1 or 3), and a note of what was done to
    fit it (cropped and resized from its size, converted from its mode), or None where nothing was."""
    channels, height, width = shape
    if channels not in CONVERT:
        raise ValueError(f"{path}: a model of {channels} input channels takes no image file (they are grey or RGB); "
                         "pass its images as an .npz with --inputs")
    try:
        from PIL import Image
    except ImportError:
        raise ValueError("reading image files needs Pillow: pip install pillow (or pass the images as an .npz "
                         "with --inputs)") from None
    if not os.path.isfile(path):
        raise (ValueError(f"{path} is not a regular file") if os.path.exists(path)
               else FileNotFoundError(f"no image file {path}"))
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{path}: {size:,} bytes, more than the {MAX_FILE_BYTES:,} an image file may take here; "
                         "save it smaller")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path, formats=FORMATS) as image:     # (reads the header: size and mode)
                mode, (w, h) = image.mode, image.size
                fits = w * h <= MAX_PIXELS and mode in MODES
                image = image.convert(CONVERT[channels]) if fits else None
        except Image.UnidentifiedImageError:
            raise ValueError(f"{path}: not a PNG or JPEG file (the formats read), or a damaged one; convert it to "
                             "PNG") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning, OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read it as an image ({e}); save it again as a PNG") from None
    if w * h > MAX_PIXELS:
        raise ValueError(f"{path}: {w}x{h} pixels, more than the {MAX_PIXELS:,} decoded here; save it smaller")
    if image is None:
        raise ValueError(f"{path}: an image of Pillow mode {mode} (16 bits or more a channel); save it as an 8-bit "
                         "PNG or JPEG")
    notes = [] if mode == CONVERT[channels] else [f"converted from {mode} to {CONVERT[channels]}"]
    if (w, h) != (width, height):
        image = image.crop(_middle(w, h, width, height)).resize((width, height), Image.Resampling.LANCZOS)
        notes.append(f"{w}x{h} cropped to the model's aspect ratio and resized to {width}x{height}")
    pixels = np.asarray(image, dtype=np.uint8)
    codes = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(codes), "; ".join(notes) or None


def image_files(paths: list[str]) -> list[str]:
    """``paths`` with each directory among them replaced by its PNG and JPEG files (by suffix, any case; not its
    subdirectories'), in name order; ValueError for a directory that has none."""
    files = []
    for path in paths:
        if not os.path.isdir(path):
            files.append(path)
            continue
        found = sorted(name for name in os.listdir(path) if name.lower().endswith(SUFFIXES)
                       and os.path.isfile(os.path.join(path, name)))
        if not found:
            raise ValueError(f"{path} is a directory without PNG or JPEG files ({', '.join(SUFFIXES)}); name the "
                             "images, or a directory that holds them")
        files += [os.path.join(path, name) for name in found]
    return files


def _middle(w: int, h: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The box (left, top, right, bottom) of the largest middle part of a ``w`` x ``h`` image with the aspect
    ratio ``width`` : ``height``."""
    if w * height > h * width:                  # wider than the model's: crop the sides
        keep = max(1, round(h * width / height))
        left = (w - keep) // 2
        return left, 0, left + keep, h
    keep = max(1, round(w * height / width))
    top = (h - keep) // 2
    return 0, top, w, top + keep
