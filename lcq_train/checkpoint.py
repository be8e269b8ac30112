"""Atomic file writes and the training checkpoint format.

A checkpoint (``torch.save`` dict) holds ``format``/``version``, the run
``config`` and quantization ``plan`` (what the compiler needs to rebuild the
model), ``layers`` (per-layer bit-widths), ``model`` state (weights, BN, alpha,
theta), ``optimizer``, ``scheduler``, ``epoch`` (completed), ``rng`` states and
the ``metrics`` history (what ``--resume`` needs).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

FORMAT = "lcq-checkpoint"
VERSION = 1


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_json(obj, path) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    _atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def save_checkpoint(state: dict, path) -> None:
    """Write a checkpoint dict atomically (a crash leaves the previous file intact)."""
    _atomic_write(path, lambda f: torch.save({"format": FORMAT, "version": VERSION, **state}, f))


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load and validate a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train one with `lcq train ... --out DIR` (writes DIR/checkpoint.pt)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise ValueError(f"{path} is not a readable checkpoint ({e}); it may be truncated: retrain or restore it") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an lcq checkpoint (missing format {FORMAT!r})")
    if state.get("version") != VERSION:
        raise ValueError(f"{path} has checkpoint version {state.get('version')!r}; this lcq reads version {VERSION}")
    return state
