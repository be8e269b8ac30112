"""The training checkpoint format (written atomically).

A checkpoint (``torch.save`` dict) holds ``format``/``version``, the run
``config`` and quantization ``plan`` (what the compiler needs to rebuild the
model), ``layers`` (per-layer bit-widths), ``model`` state (weights, BN, alpha,
theta), ``optimizer``, ``scheduler``, ``epoch`` (completed), ``rng`` states and
the ``metrics`` history (what ``--resume`` needs).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .atomic import atomic_write, save_json

__all__ = ["FORMAT", "VERSION", "save_checkpoint", "load_checkpoint", "save_json"]

FORMAT = "lcq-checkpoint"
VERSION = 1


def save_checkpoint(state: dict, path) -> None:
    """Write a checkpoint dict atomically (a crash leaves the previous file intact)."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "version": VERSION, **state}, f))


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
