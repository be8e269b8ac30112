"""Weights moved off their quantizer's thresholds, so that every precision gives them the codes training scored.

Training can leave a weight on a threshold of its quantizer to within float32's rounding. float32 (training, on
its device) and float64 (the compiler and ``lcq eval``'s PyTorch model) then give it different codes, and the
compiled model is not the one the trainer measured: one weight of a CIFAR-10 DenseNet's 1 x 1 transition conv
moved its top-1 by 0.68 points. :func:`settle_weight_codes` moves each weight within ``margin`` of a threshold into
the interval of the code its own precision gives, at least ``margin`` clear of the threshold, so that float32 on
any device and float64 agree on it, and the model quantizes as before.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

MARGIN = 1e-5
"""Clearance from a threshold, in units of the quantizer's clip value alpha on its normalized input (where the
clip range is [0, 1]): fifty times float32's error there (its rounding through mu_w, sigma_w and the division
reaches 2e-7 on a layer of 400,000 normal weights)."""

_TRIES = (1, -1, 2, -2, 3, -3)          # moves tried, in margins, nearest first
_ROUNDS = 3                             # a move changes mu_w and sigma_w a little: check again


class UnsettledWeightWarning(UserWarning):
    """Some weights stay within the margin of a quantizer threshold: a narrower interval, or moves that would
    change another weight's code."""


@torch.no_grad()
def settle_weight_codes(model: nn.Module, margin: float = MARGIN, only_differing: bool = False) -> dict[str, int]:
    """Move, in place, weights of ``model``'s quantized layers (a weight quantizer ``wq`` of integer levels) to the
    nearest point (1 to 3 margins away) where float64 gives them the code of the weights' own precision, a
    ``margin`` either side too: each weight whose float64 code anywhere within ``margin`` of it is not that code
    (the trainer's: no precision or device can change a code then), or, ``only_differing``, each whose float64
    code is not (the compiler's: the codes as trained, no other weight moved). Returns ``{layer: weights moved}``
    for the layers where any moved. Codes in the weights' own precision stay as they were, and running it again
    moves nothing. A layer where some weight finds no such point, or where the moves would change another
    weight's code (through mu_w and sigma_w), keeps those weights where they were, with an
    :class:`UnsettledWeightWarning`."""
    moved: dict[str, int] = {}
    for name, module in model.named_modules():
        wq = getattr(module, "wq", None)
        if wq is None or wq.method == "fp" or wq.spec.outer_bits is None:
            continue
        weight, exact = module.weight, _Exact(module.weight, wq, margin)
        if not exact.defined():
            continue                                # (no scale: the compiler says why)
        own, original = wq.codes(weight), weight.detach().clone()
        for _ in range(_ROUNDS):
            move, target = _moves(exact, own, not only_differing)
            if not move.any():
                break
            weight.copy_(torch.where(move, target.to(weight.dtype), weight))
            exact = _Exact(weight, wq, margin)
        if not torch.equal(wq.codes(weight), own):
            weight.copy_(original)
            exact = _Exact(weight, wq, margin)
        unsettled = int((~exact.settled(own, clear=not only_differing)).sum())
        if unsettled:
            warnings.warn(f"layer {name!r}: {unsettled} weights stay within {margin:g} of a quantizer threshold, "
                          "where float32 and float64 may give them different codes (an interval too narrow to move "
                          "them clear, or moves that would change another code)", UnsettledWeightWarning,
                          stacklevel=3)     # (the caller's line: this runs inside torch.no_grad's wrapper)
        count = int((weight != original).sum())
        if count:
            moved[name] = count
    return moved


class _Exact:
    """Float64 codes of a layer's weights about their normalized values ``x``, in steps of the margin."""

    def __init__(self, weight: torch.Tensor, wq: nn.Module, margin: float):
        self.quantizer = copy.deepcopy(wq).double()
        w = weight.detach().double()
        self.mu, self.sigma = self.quantizer.normalization(w) if wq.weight_norm else (0.0, 1.0)
        self.x = (w - self.mu) / self.sigma
        self.step = margin * float(self.quantizer.alpha)

    def defined(self) -> bool:
        """Whether the codes are defined: a clip above 0, and a normalization with sigma_w above 0."""
        return self.step > 0 and bool(torch.isfinite(self.x).all())

    def settled(self, own: torch.Tensor, moves: int = 0, clear: bool = True) -> torch.Tensor:
        """Where ``x`` moved by ``moves`` margins has the code ``own`` (and, ``clear``, a margin either side)."""
        at = self.x + moves * self.step
        same = self.quantizer.normalized_codes(at) == own
        if clear:
            same &= (self.quantizer.normalized_codes(at - self.step) == own) \
                & (self.quantizer.normalized_codes(at + self.step) == own)
        return same

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The weights whose normalized values are ``x``."""
        return x * self.sigma + self.mu


def _moves(exact: _Exact, own: torch.Tensor, clear: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(which weights move, where to, in float64) in one round: each weight not settled (:meth:`_Exact.settled`
    with ``clear``) to its nearest point settled with a margin either side."""
    found = exact.settled(own, clear=clear)
    move, target = torch.zeros_like(found), exact.x.clone()
    for moves in _TRIES:
        hit = exact.settled(own, moves) & ~found
        target[hit], found, move = exact.x[hit] + moves * exact.step, found | hit, move | hit
    return move, exact.weights(target)
