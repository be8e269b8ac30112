"""Non-decreasing elementwise activations that the activation quantizer after them folds into its thresholds.

A quantizer counts the thresholds ``t`` its input reaches. After a non-decreasing, continuous activation ``f``
(LeakyReLU and PReLU with slopes >= 0, sigmoid, tanh, ELU, CELU, SELU, softplus, softsign, hardtanh, hardsigmoid;
a BN after one: an affine map at its end), ``f(v) >= t`` exactly where ``v >= f^-1(t)``, the least ``v`` that
reaches ``t`` (:meth:`Curve.inverse`: ``-inf`` where every ``v`` does, ``+inf`` where none does), and
``-f(v) >= t`` where ``-v >= -f^-1(-t)`` (the negative half of a signed quantizer, up to the ties of a flat stretch
of ``f``): the thresholds taken back through ``f^-1`` are thresholds on ``v``, from which
:func:`compiler.stages.thresholds` makes the integer stage as for any other. Each is computed in float64; the
PyTorch model compares ``f(v)`` with ``t`` instead, so the two agree but at values within rounding of a threshold.

SiLU, GELU, Mish and hardswish dip below zero before they rise (to at least -0.375); above 0 they rise, and take
values above 0 exactly at inputs above 0. An unsigned quantizer after one (``lcq_train``'s plan makes it so: it
clips the dip) has thresholds above 0 only, each reached exactly from the least input PyTorch's function (in
float64) reaches it at (bisection); a threshold inside the dip, which no one input starts, is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# SELU's constants (torch.nn.SELU): scale * ELU(x, alpha).
SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946

# The activations that dip below zero before they rise, by name: PyTorch's function and the least value it takes
# (to 1e-10, rounded down: a threshold between it and 0 is refused).
DIPS = {"silu": (F.silu, -0.2784645428), "gelu": (F.gelu, -0.1699712075),
        "gelu-tanh": (lambda x: F.gelu(x, approximate="tanh"), -0.1700407506), "mish": (F.mish, -0.3088434131),
        "hardswish": (F.hardswish, -0.375)}


@dataclass(frozen=True)
class Curve:
    """A non-decreasing activation ``f`` by ``kind`` ("leaky", "sigmoid", "tanh", "elu", "celu", "softplus",
    "softsign", "hardtanh", "hardsigmoid", "affine", "then", "mirrored"; "dip": one of :data:`DIPS`, non-decreasing
    above 0, its name the one parameter) and its numbers ``params``: a leaky ReLU's
    negative slopes (one, or one a channel), ELU's and CELU's ``(alpha, scale)``, softplus's ``(beta, threshold)``
    (``log(1 + e^(beta x)) / beta``, ``x`` where ``beta x > threshold``), hardtanh's ``(min, max)``, an affine map's
    ``(scale, shift)`` a channel (scales >= 0: a BN after an activation), two curves one after the other's
    ``(first, second)``, a curve mirrored on some channels ``(curve, mask)`` (``-curve(-x)`` where ``mask``: a BN
    of negative scale after it, whose input the compiler negates); ``name``: how the model spells it."""

    kind: str
    name: str
    params: tuple = ()

    def inverse(self, t: np.ndarray) -> np.ndarray:
        """The least input ``v`` with ``f(v) >= t``, elementwise, for thresholds ``t`` (C, s) (channel c's row
        through channel c's curve): ``-inf`` where every input reaches ``t``, ``+inf`` where none does."""
        t = np.asarray(t, dtype=np.float64)
        inf = np.inf
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.kind == "leaky":
                slope = np.asarray(self.params[0], dtype=np.float64).reshape(-1, 1)
                return np.where(t > 0, t, np.where(slope > 0, t / slope, -inf))
            if self.kind == "sigmoid":
                return np.where(t <= 0, -inf, np.where(t >= 1, inf, np.log(t) - np.log1p(-t)))
            if self.kind == "tanh":
                return np.where(t <= -1, -inf, np.where(t >= 1, inf, np.arctanh(t)))
            if self.kind in ("elu", "celu"):
                alpha, scale = self.params
                u = t / scale
                below = np.log1p(u / alpha) * (alpha if self.kind == "celu" else 1.0)
                return np.where(u >= 0, u, np.where(u <= -alpha, -inf, below))
            if self.kind == "softplus":
                beta, threshold = self.params
                # PyTorch's softplus is x where beta * x > threshold: there it steps down by log1p(e^-threshold) /
                # beta (2e-9 at the default 20), and no one input starts the values reaching a t in the step
                step = (t > threshold / beta) & (t <= (threshold + np.log1p(np.exp(-threshold))) / beta)
                if step.any():
                    raise ValueError(f"{self.name}: the quantizer after it has a threshold {t[step][0]:g} in the step "
                                     f"where softplus turns into x (beta * x > {threshold:g}), which no threshold "
                                     "on its input gives exactly: construct the softplus with a larger threshold")
                return np.where(t <= 0, -inf, np.where(beta * t > threshold, t, np.log(np.expm1(beta * t)) / beta))
            if self.kind == "softsign":
                return np.where(t <= -1, -inf, np.where(t >= 1, inf, t / (1 - np.abs(t))))
            if self.kind == "hardtanh":
                low, high = self.params
                return np.where(t <= low, -inf, np.where(t > high, inf, t))
            if self.kind == "hardsigmoid":
                return np.where(t <= 0, -inf, np.where(t > 1, inf, 6 * t - 3))
            if self.kind == "affine":           # scale * x + shift >= t: a constant where the scale is 0
                scale, shift = (np.asarray(a, dtype=np.float64).reshape(-1, 1) for a in self.params)
                return np.where(scale > 0, (t - shift) / scale, np.where(t <= shift, -inf, inf))
            if self.kind == "dip":
                f, low = DIPS[self.params[0]]
                inside = (t > low) & (t <= 0)
                if inside.any():
                    raise ValueError(f"{self.name}: the quantizer after it has a threshold {t[inside][0]:g} inside "
                                     f"its dip (it falls to {low:.4f} before it rises), which no one input starts: "
                                     "quantize its output with an unsigned quantizer (lcq_train's plan does), with "
                                     "no BN between")
                return np.where(t <= low, -inf, _least_reaching(f, np.where(t > 0, t, 1.0)))
            if self.kind == "then":
                first, second = self.params
                return first.inverse(second.inverse(t))
            if self.kind == "mirrored":         # -f(-x) >= t where -x <= f^-1(-t)
                curve, mask = self.params
                return np.where(np.asarray(mask).reshape(-1, 1), -curve.inverse(-t), curve.inverse(t))
        raise ValueError(f"no curve {self.kind!r}")

    @property
    def dips(self) -> bool:
        """Whether ``f`` is, or applies, an activation that dips (:data:`DIPS`)."""
        return self.kind == "dip" or (self.kind in ("then", "mirrored")
                                      and any(isinstance(c, Curve) and c.dips for c in self.params))

    def channels(self, first: int, count: int) -> Curve:
        """The curve of channels ``first .. first + count - 1`` (a concatenation's part)."""
        if self.kind == "leaky" and np.size(self.params[0]) > 1:
            return Curve(self.kind, self.name, (np.asarray(self.params[0])[first:first + count],))
        if self.kind == "affine":
            return Curve(self.kind, self.name, tuple(np.asarray(a)[first:first + count] for a in self.params))
        if self.kind == "then":
            return Curve(self.kind, self.name, tuple(c.channels(first, count) for c in self.params))
        if self.kind == "mirrored":
            return Curve(self.kind, self.name, (self.params[0].channels(first, count),
                                                np.asarray(self.params[1])[first:first + count]))
        return self


def module_curve(m: nn.Module) -> Curve | None:
    """The curve of module ``m`` (None where it is none of them). A PReLU's slopes are its weight; a negative one
    is a ValueError naming the channel and the fix."""
    name = type(m).__name__
    if type(m) is nn.LeakyReLU:
        return leaky_curve(name, float(m.negative_slope))
    if type(m) is nn.PReLU:
        return leaky_curve(name, m.weight.detach().double().numpy().ravel().copy())
    if type(m) in (nn.Sigmoid, nn.Tanh, nn.Softsign, nn.Hardsigmoid):
        return Curve(name.lower(), name)
    if type(m) is nn.ELU:
        return elu_curve("elu", name, float(m.alpha))
    if type(m) is nn.CELU:
        return elu_curve("celu", name, float(m.alpha))
    if type(m) is nn.SELU:
        return elu_curve("elu", name, SELU_ALPHA, SELU_SCALE)
    if type(m) is nn.Softplus:
        return softplus_curve(name, float(m.beta), float(m.threshold))
    if type(m) is nn.Hardtanh and m.min_val < m.max_val:       # (hardtanh(0, max) is a clip: compiler.capture)
        return Curve("hardtanh", name, (float(m.min_val), float(m.max_val)))
    if type(m) in (nn.SiLU, nn.Mish, nn.Hardswish):
        return Curve("dip", name, (name.lower(),))
    if type(m) is nn.GELU:
        return gelu_curve(name, m.approximate)
    return None


def gelu_curve(name: str, approximate: str) -> Curve:
    """GELU's curve, exact (``approximate`` "none") or its tanh form ("tanh")."""
    return Curve("dip", name, ("gelu" if approximate == "none" else "gelu-tanh",))


def _least_reaching(f, t: np.ndarray) -> np.ndarray:
    """The least float64 ``v`` > 0 with ``f(v) >= t`` (``f`` PyTorch's, in float64), elementwise, for ``t`` > 0:
    bisection on the float64 values between 0 (``f(0) = 0``) and ``4 t`` (``f(v) >= v / 2`` above 0)."""
    low = np.zeros(t.shape, dtype=np.float64).view(np.int64)
    high = (4 * t).view(np.int64)
    while True:
        open_ = high - low > 1
        if not open_.any():
            return high.view(np.float64)
        mid = low + (high - low) // 2
        reached = f(torch.from_numpy(mid.view(np.float64))).numpy() >= t
        high, low = np.where(open_ & reached, mid, high), np.where(open_ & ~reached, mid, low)


def leaky_curve(name: str, slopes) -> Curve:
    """A leaky ReLU's curve, negative slopes ``slopes`` (one, or one a channel); ValueError for a negative one."""
    values = np.atleast_1d(np.asarray(slopes, dtype=np.float64))
    bad = np.flatnonzero(~(values >= 0) | ~np.isfinite(values))
    if bad.size:
        where = f"channel {bad[0]}'s slope" if values.size > 1 else "its slope"
        raise ValueError(f"has a negative (or not finite) slope: {where} is {values[bad[0]]:g}; negative inputs would "
                         "give positive outputs, which no threshold of the quantizer after it ranks: use a slope >= 0 "
                         "(for a PReLU, clamp its weight to >= 0 after each optimizer step)")
    return Curve("leaky", name, (values,))


def elu_curve(kind: str, name: str, alpha: float, scale: float = 1.0) -> Curve:
    """ELU's (``kind`` "elu", times ``scale``: SELU's) or CELU's ("celu") curve; ValueError for alpha <= 0."""
    if not alpha > 0:
        raise ValueError(f"has alpha {alpha:g}; an ELU with alpha <= 0 is not increasing: use alpha > 0")
    return Curve(kind, name, (alpha, scale))


def softplus_curve(name: str, beta: float, threshold: float) -> Curve:
    """Softplus's curve (``beta`` > 0); ValueError for beta <= 0."""
    if not beta > 0:
        raise ValueError(f"has beta {beta:g}; a softplus with beta <= 0 is not increasing: use beta > 0")
    return Curve("softplus", name, (beta, threshold))
