"""Thresholds that are an arithmetic progression: ``T[c] = ceil((B + c * S) / 2^k)``, found exactly.

A uniform quantizer's thresholds, seen through a channel's scale and bias, are an arithmetic progression up to
rounding, so integers ``B``, ``S >= 0`` and a shift ``k`` reproduce every one of them. A unit then stores two
numbers a channel instead of ``2^b - 1`` thresholds, and finds a value's code by a binary search over ``c``:
``acc >= T[c]`` iff ``acc * 2^k >= B + c * S``. The vector unit's pool thresholds
(:mod:`hw.vector_params`) and the engine's wide output codes (:mod:`hw.thresholds`) take this form.

Pure Python: the host and the compiler side import it without Amaranth.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from compiler.graph import Thresholds, signed_bits

# The largest shift ``k`` of a stage's progressions, and the fewest code bits an output stage writes through one
# (below, 2^b - 1 comparators are as small as the search: hw.thresholds).
MAX_STAGE_SHIFT = 32
PROGRESSION_MIN_BITS = 5


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def fit_progression(row: list[int], shift: int, padding: int = 0, never: int = 0,
                    bound: int | None = None) -> tuple[int, int] | None:
    """Integers ``(B, S)``, ``S >= 0``, with ``ceil((B + c * S) / 2^shift) == row[c]`` for every
    ``c < len(row)`` and ``>= never`` for the ``padding`` indices after them (thresholds no sum
    reaches); None where there are none. Exact (Python integers). With ``bound`` (values ``|acc| <= bound``
    only), a threshold above ``bound`` need only stay above it (none passes it) and one at ``-bound`` or below
    only stay there (all pass it): the compiler clamps a progression's thresholds there
    (:func:`compiler.stages.thresholds`).

    With ``L_c = (row[c] - 1) * 2^shift + 1`` and ``U_c = row[c] * 2^shift`` (no ``U_c`` for a
    padding index or one above ``bound``, no ``L_c`` for one at ``-bound`` or below) the condition is
    ``L_c <= B + c * S <= U_c`` for all ``c``; for a given ``S``, ``B`` may be anything in
    ``[max_c(L_c - c S), min_c(U_c - c S)]``, whose width ``f(S)`` is concave in ``S``. Where ``f(S) < 0``
    the indices of that max and min tell on which side of ``S`` the feasible ``S`` lie (if any), so a
    binary search finds one. ``B`` is the feasible value nearest 0. (Each step's max and min in numpy: int64
    where no ``L_c - c S`` or ``U_c - c S`` can reach 2^62, else Python integers.)
    """
    row = [int(t) for t in row]
    n, one = len(row), 1 << shift
    if n < 1:
        raise ValueError("a channel has at least one threshold")
    low, high = [], []
    for t in row:
        above = bound is not None and t > bound
        below = bound is not None and t <= -bound
        low.append(None if below else (min(t, bound + 1) - 1) * one + 1 if above else (t - 1) * one + 1)
        high.append(-bound * one if below else None if above else t * one)
    low += [(int(never) - 1) * one + 1] * padding
    high += [None] * padding
    uppers = [c for c, h in enumerate(high) if h is not None]
    lowers = [c for c, v in enumerate(low) if v is not None]
    values = [v for v in low + high if v is not None]
    if uppers and lowers:
        lo, hi = 0, max(0, max(values) - min(values))
    else:
        lo = hi = 0         # a bound on one side only: S = 0 and B at it
    # |U_c - c S| and |L_c - c S| are at most max|value| * (2 (n + padding) + 1), S being at most twice it
    dtype = np.int64 if max(map(abs, values)) * (2 * (n + padding) + 1) < 1 << 62 else object
    up_at, up_value = np.array(uppers, dtype=dtype), np.array([high[c] for c in uppers], dtype=dtype)
    low_at, low_value = np.array(lowers, dtype=dtype), np.array([low[c] for c in lowers], dtype=dtype)
    found = None
    while lo <= hi:
        s = (lo + hi) // 2
        up_c = low_c = upper = lower = None
        if uppers:      # the first c of the least U_c - c S, and of the largest L_c - c S (as min and max find them)
            ups = up_value - up_at * s
            i = int(np.argmin(ups))
            up_c, upper = uppers[i], int(ups[i])
        if lowers:
            lows = low_value - low_at * s
            i = int(np.argmax(lows))
            low_c, lower = lowers[i], int(lows[i])
        if upper is None or lower is None or lower <= upper:
            found = (lower if upper is None else upper if lower is None else min(max(0, lower), upper), s)
            break
        if low_c > up_c:
            lo = s + 1
        else:
            hi = s - 1
    if found is None:
        return None
    b, s = found
    assert all((low[c] is None or b + c * s >= low[c]) and (high[c] is None or b + c * s <= high[c])
               for c in range(n + padding)), (row, shift, bound, found)
    return found


def progression_bits(fits: list[tuple[int, int]]) -> tuple[int, int]:
    """``(base_bits, step_bits)``: the signed width of every ``B' = B - S`` (at least 2) and the
    unsigned width of every ``S`` (at least 1)."""
    return (max(2, max(signed_bits(abs(b - s)) for b, s in fits)),
            max(1, max(int(s).bit_length() for _, s in fits)))


def counted_rows(stage: Thresholds) -> list[list[int]]:
    """Each channel's thresholds as a code counts them, ascending: ``T`` for an ascending channel (its code counts
    ``acc >= T``), ``T + 1`` for a descending one (its code is ``2^b - 1`` less the count of ``acc >= T + 1``)."""
    t = np.asarray(stage.thresholds, dtype=np.int64) + np.asarray(stage.descending, dtype=bool)[:, None]
    return np.sort(t, axis=1).tolist()


def stage_progressions(stage: Thresholds, shift: int, bound: int) -> list[tuple[int, int]] | None:
    """Each channel's ``(B, S)`` (:func:`fit_progression` at ``shift``, on values ``|acc| <= bound``) of its
    :func:`counted_rows`; None where a channel has none. A form at ``k`` gives one at every larger ``k``
    (``(2B, 2S)``)."""
    fits = []
    for row in counted_rows(stage):
        fit = fit_progression(row, shift, bound=bound)
        if fit is None:
            return None
        fits.append(fit)
    return fits


def stage_shift(stage: Thresholds, bound: int) -> int | None:
    """The smallest shift (0..:data:`MAX_STAGE_SHIFT`) at which every channel of ``stage`` is a progression on
    values ``|acc| <= bound`` (:func:`stage_progressions`), or None: each channel's smallest, the largest of them
    (a binary search where a channel needs more than the ones before it: a fit at ``k`` gives one above)."""
    shift = 0
    for row in counted_rows(stage):
        if fit_progression(row, shift, bound=bound) is not None:
            continue
        if fit_progression(row, MAX_STAGE_SHIFT, bound=bound) is None:
            return None
        low, high = shift + 1, MAX_STAGE_SHIFT
        while low < high:
            middle = (low + high) // 2
            if fit_progression(row, middle, bound=bound) is None:
                low = middle + 1
            else:
                high = middle
        shift = low
    return shift


@dataclass(frozen=True)
class ProgressionShape:
    """The progression words of an output stage's threshold unit (:class:`hw.thresholds.ThresholdUnit`): every
    channel's ``B' = B - S`` signed in ``base_bits``, ``S`` unsigned in ``step_bits``, one ``shift`` for the unit;
    ``table_code_bits``: the code width of the stages whose thresholds the unit's other words list (0: none)."""

    shift: int
    base_bits: int
    step_bits: int
    table_code_bits: int

    def __post_init__(self):
        limits = {"shift": (0, MAX_STAGE_SHIFT), "base_bits": (2, 128), "step_bits": (1, 128),
                  "table_code_bits": (0, 8)}
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"progression {name} must be an integer in {low}..{high}, got {value!r}")


def progression_shape(stages: list[tuple[Thresholds, int]]) -> tuple[ProgressionShape | None, list[Thresholds]]:
    """The progression words of a threshold unit for ``stages`` (each with the bound of its values) and the stages
    it lists (None: no progression words, all listed): every stage of :data:`PROGRESSION_MIN_BITS` bits or more
    that is a progression on its values (:func:`stage_shift`) and wider than every other is searched, at the
    largest of their shifts."""
    shifts = [stage_shift(stage, bound) if stage.bits >= PROGRESSION_MIN_BITS else None for stage, bound in stages]
    table = max((stage.bits for (stage, _), k in zip(stages, shifts) if k is None), default=0)
    searched = [(stage, bound, k) for (stage, bound), k in zip(stages, shifts) if k is not None and stage.bits > table]
    if not searched:
        return None, [stage for stage, _ in stages]
    shift = max(k for _, _, k in searched)
    fits = [fit for stage, bound, _ in searched for fit in stage_progressions(stage, shift, bound)]
    return (ProgressionShape(shift, *progression_bits(fits), table_code_bits=table),
            [stage for stage, _ in stages if stage.bits <= table])


def shape_from_dict(value, field: str) -> ProgressionShape | None:
    """The :class:`ProgressionShape` that a parameters' ``describe`` wrote as ``value`` (None: none), each number
    checked; ``field``: its name in the error."""
    if value is None:
        return None
    names = {f.name for f in fields(ProgressionShape)}
    if not isinstance(value, dict) or set(value) != names:
        raise ValueError(f"{field} must be null or a dict with the keys {sorted(names)}, not {value!r}")
    return ProgressionShape(**value)


def searched_problem(stage: Thresholds, bound: int, shape: ProgressionShape) -> str | None:
    """Why a threshold unit of progression words ``shape`` cannot search ``stage`` (values ``|x| <= bound``): no
    progression at its shift, or wider base and step; None where it can."""
    fits = stage_progressions(stage, shape.shift, bound)
    if fits is None:
        return (f"its {stage.bits}-bit thresholds are no arithmetic progression at the threshold units' shift "
                f"{shape.shift}")
    if any(a > b for a, b in zip(progression_bits(fits), (shape.base_bits, shape.step_bits))):
        return (f"its progressions need base and step widths {progression_bits(fits)} (the threshold units' are "
                f"{shape.base_bits} and {shape.step_bits})")
    return None
