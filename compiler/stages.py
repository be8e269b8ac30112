"""Output-stage constants from real-valued layer parameters (compile time, float64).

Each function turns a per-channel affine map of an integer tensor,
``z[n] = gain[n] * x + offset[n]`` (a layer's scale, bias and BatchNorm folded
together), plus the real thresholds of the next activation quantizer, into the
integer constants of :mod:`compiler.graph`. Integer results are clamped to
``[-bound - 1, bound + 1]`` where ``bound`` is the largest ``|x|`` the input
can hold, so every constant has a stated width. The limits and the checks of
the results are the rules of :mod:`compiler.graph` (``Thresholds.limit``,
``PoolNode.sum_limit``, ``Requantize.check_arrays``), which the loader applies too.
"""

from __future__ import annotations

import math

import numpy as np

from .graph import BIAS_LIMIT, MULT_BITS, PAD_HEADROOM_BITS, PoolNode, Requantize, Thresholds


def compander_inverse(theta: np.ndarray | None, u: np.ndarray) -> np.ndarray:
    """``f^-1(u)`` for u in [0, 1] (eq. 6) of the compander with parameters ``theta`` (None: identity)."""
    u = np.asarray(u, dtype=np.float64)
    if theta is None:
        return u
    theta = np.asarray(theta, dtype=np.float64)
    t = np.exp(theta - theta.max())
    t /= t.sum()
    K = t.size
    gamma, beta = K * t, np.cumsum(t) - t
    j = np.searchsorted(beta[1:], u, side="right")
    return (u - beta[j]) / gamma[j] + j / K


def code_thresholds(alpha: float, theta: np.ndarray | None, s: int) -> np.ndarray:
    """Real inputs ``t_c`` (c = 1..s) at which an unsigned quantizer's code reaches c.

    ``code(z) >= c  iff  z >= t_c = alpha * f^-1((c - 1/2) / s)`` (rounding half
    up; the PyTorch path rounds half to even, which differs only on exact ties).
    """
    return alpha * compander_inverse(theta, (np.arange(1, s + 1) - 0.5) / s)


def thresholds(gain: np.ndarray, offset: np.ndarray, t: np.ndarray, bound: int, bits: int) -> Thresholds:
    """Thresholds for the code ``#{k : gain * x + offset >= t[k]}`` with real code thresholds ``t`` (s,), or
    (C, s) one row a channel (those of a quantizer taken back through the activation before it,
    :mod:`compiler.curves`; ``-inf``: always passed, ``+inf``: never). With ``t > 0``, the code of
    ``max(0, gain * x + offset)``.

    ``gain > 0``: ``x >= ceil((t - offset) / gain)``; ``gain < 0``: ``x <= floor(...)``
    (a descending channel); ``gain == 0``: the constant code of ``offset``.
    """
    gain, offset = np.asarray(gain, np.float64)[:, None], np.asarray(offset, np.float64)[:, None]
    t = np.broadcast_to(np.asarray(t, np.float64), (len(gain), np.shape(t)[-1]))
    hi = Thresholds.limit(bound)
    lo = -hi
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = (t - offset) / gain
    up = np.ceil(np.clip(tau, lo, hi))
    down = np.floor(np.clip(tau, lo, hi))
    constant = np.where(offset >= t, lo, hi)
    out = np.where(gain > 0, up, np.where(gain < 0, down, constant))
    with np.errstate(invalid="ignore"):   # out of int64 only where a bound breaks a rule (validate names it)
        exact = np.clip(out.astype(np.int64), max(lo, -2**63), min(hi, 2**63 - 1))   # exact limits, not float ones
    return Thresholds(exact, (gain[:, 0] < 0), bits)


class BiasRange(ValueError):
    """A requantize stage's bias, in its output units, does not fit int64."""


def requantize(ratio: np.ndarray, bias: np.ndarray, in_bound: int, relu: bool = False) -> Requantize:
    """``y = round_half_up(x * ratio + bias)`` in fixed point: ``(x * M + B) >> shift`` (then
    ``max(0, y)`` where ``relu``).

    ``ratio`` (C,) > 0, ``bias`` (C,) in output units. ``M`` keeps
    :data:`compiler.graph.MULT_BITS` significant bits. Raises ValueError when
    ``x * M`` could overflow int64 or a constant breaks a rule of
    :meth:`compiler.graph.Requantize.check_arrays`.
    """
    ratio, bias = np.asarray(ratio, np.float64), np.asarray(bias, np.float64)
    if not np.all(ratio > 0) or not np.all(np.isfinite(ratio)):
        raise ValueError(f"requantize ratios must be positive and finite, got {ratio}")
    shift = np.maximum(0, MULT_BITS - 1 - np.floor(np.log2(ratio))).astype(np.int64)
    multiplier = np.round(ratio * 2.0**shift).astype(np.int64)
    half = np.where(shift > 0, np.left_shift(1, np.maximum(shift - 1, 0)), 0)
    b = np.round(bias * 2.0**shift)
    if not np.all(np.abs(b) < BIAS_LIMIT):
        raise BiasRange("requantize bias too large for int64")
    stage = Requantize(multiplier, b.astype(np.int64) + half, shift, relu)
    stage.check_arrays("requantize", len(ratio), in_bound, prefix="")
    return stage


def pool_constants(gain: np.ndarray, offset: np.ndarray, t: np.ndarray, positions: int, frac_bits: int,
                   bound: int, bits: int, cap: float = math.inf, relu: bool = True, padded: bool = False) -> tuple[
                       np.ndarray, np.ndarray, np.ndarray, Thresholds, np.ndarray | None, np.ndarray | None]:
    """(sign, relu, offset, thresholds, cap, outside) of a :class:`compiler.graph.PoolNode` for
    ``mean over positions of min(max(0, gain * x + offset), cap)`` with ``|x| <= bound`` (cap None where
    ``cap`` is infinite: a ReLU, not a ReLU6); with ``relu`` False, of ``mean of gain * x + offset`` (no ReLU
    before the pooling: a residual stream's or a conv's output, averaged as it is; ``cap`` infinite).

    Per channel, with the kink ``c = -offset / gain``:

    - kink within ``[-bound, bound]``: ``u = max(0, sign * (x * 2^F - round(c * 2^F)))``
      equals ``max(0, gain * x + offset) * 2^F / |gain|``, so the code reaches c'
      when ``sum u >= t_c' * positions * 2^F / |gain|``; the clip: ``min(u, round(cap * 2^F / |gain|))``;
    - ReLU always active on the input range: ``u = sign * x * 2^F`` (no ReLU, no
      offset) and the code reaches c' when ``sum u >= positions * 2^F * (t_c' - offset) / |gain|``; the clip:
      ``min(u, round((cap - offset) * 2^F / |gain|))``;
    - ReLU never active, ``gain == 0``, or the clip always active: ``u = 0`` and a constant code.

    Without ``relu`` every channel of ``gain != 0`` is the second case (``u = sign * x * 2^F``) and one of
    ``gain == 0`` has the constant code of ``offset``.

    ``padded``: the windows of an average pooling reach outside the map, where the pooled tensor is 0 and each
    counts in the divisor ``positions``; ``outside`` (else None) is each channel's term there
    (:class:`~compiler.graph.AvgPoolNode`): the first case's 0; the second's ``round(-offset * 2^F / |gain|)``, the
    ``u`` of a zero (the sums' limits take :data:`~compiler.graph.PAD_HEADROOM_BITS` more bits); a channel of
    constant output ``K`` (the third case, and a second-case one whose ``outside`` would exceed ``bound * 2^(F +
    PAD_HEADROOM_BITS)``: ``|gain| * bound`` below ``|offset| / 2^PAD_HEADROOM_BITS``, taken as its ``K`` at x = 0)
    has ``u = 0`` inside the map and ``outside = -sign(K) * P``, ``P = max(1, bound * 2^F)``: the mean is ``K + |K| *
    sum / (positions * P)``, so the code reaches c' when ``sum >= (t_c' - K) * positions * P / |K|``.
    """
    if not relu and cap != math.inf:
        raise ValueError(f"a pooling without a ReLU before it takes no clip, not cap={cap}")
    gain, offset = np.asarray(gain, np.float64), np.asarray(offset, np.float64)
    scale = 2.0**frac_bits
    headroom = frac_bits + (PAD_HEADROOM_BITS if padded else 0)
    PoolNode.check_sum("pooling", positions, bound, headroom)
    sum_limit = PoolNode.sum_limit(positions, bound, headroom)
    clipped = offset - np.abs(gain) * bound >= cap              # at the clip on the whole input range
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        c = np.where(gain != 0, -offset / gain, 0.0)
        kinked = (gain != 0) & (np.abs(c) <= bound) & ~clipped & relu
        always = (gain != 0) & ~kinked & ~clipped & ((gain * (np.sign(c) * -1.0) > 0) | (not relu))  # kink beyond
        outside_always = np.where(always, -offset * scale / np.abs(gain), 0.0)
        if padded:                                              # (a term too far out: the constant at x = 0)
            always &= np.abs(outside_always) <= float(int(bound) << headroom)
        tau_kinked = t[None, :] * positions * scale / np.abs(gain)[:, None]
        tau_always = (t[None, :] - offset[:, None]) * positions * scale / np.abs(gain)[:, None]
        cap_kinked = cap * scale / np.abs(gain)
        cap_always = (cap - offset) * scale / np.abs(gain)
    constant = np.where(clipped, cap, np.minimum(np.maximum(offset, 0) if relu else offset, cap))
    never = np.where(constant[:, None] >= t[None, :], 0, 1)                  # constant code; u = 0
    outside = None
    if padded:                  # a constant K != 0 inside the map, 0 outside: u = 0 inside, -sign(K) * P outside
        unit = max(1, int(bound) << frac_bits)
        varying = ~kinked & ~always & (constant != 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            tau_constant = (t[None, :] - constant[:, None]) * positions * unit / np.abs(constant)[:, None]
        never = np.where(varying[:, None], tau_constant, never)
        outside = np.where(always, np.round(outside_always), np.where(varying, -np.sign(constant) * unit, 0))
        outside = outside.astype(np.int64)
    tau = np.where(kinked[:, None], tau_kinked, np.where(always[:, None], tau_always, never))
    sign = np.where(kinked | always, np.sign(gain), 0).astype(np.int64)
    off = np.where(kinked, np.round(c * scale), 0).astype(np.int64)
    if padded:      # (within the sums' reach, not the wider limit: a narrower node's padding lies above them)
        inside = (int(bound) << frac_bits) + int(np.abs(off).max(initial=0))
        sum_limit = min(sum_limit, positions * max(inside, int(np.abs(outside).max(initial=0))) + 1)
    thresholds = np.clip(np.ceil(np.clip(tau, -sum_limit, sum_limit)).astype(np.int64), -sum_limit, sum_limit)
    stage = Thresholds(thresholds, np.zeros(gain.size, dtype=bool), bits)
    if cap == math.inf:
        return sign, ~always, off, stage, None, outside
    limit = (int(bound) << (frac_bits + 1)) + 1          # |u| <= bound * 2^F + |offset|: a larger clip never acts
    k = np.where(kinked, cap_kinked, np.where(always, cap_always, 0.0))
    return sign, ~always, off, stage, np.clip(np.round(np.nan_to_num(k, posinf=limit)), -limit, limit).astype(
        np.int64), outside


def fraction_scale(scales: list[float], frac_bits: int) -> float:
    """A fixed-point scale ``2^-frac_bits`` below the finest of ``scales`` (the residual stream's)."""
    return min(scales) / 2.0**frac_bits
