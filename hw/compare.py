"""Wide signed compares as two carry chains of half the width, side by side.

A ``>=`` of two wide values is one carry chain through every bit (on the UP5K, a 60-bit one was
among the vector unit's worst paths). Split at the middle bit, the compare is the high halves'
(signed) ``>`` or, where they are equal, the low halves' (unsigned) ``>=``: two chains of half
the length at once and an equality test beside them, joined by one LUT.
"""

from __future__ import annotations

from amaranth import C, Cat, Value


def _extended(value: Value, width: int) -> Value:
    """``value`` sign- (signed) or zero-extended (unsigned) to ``width`` bits, as raw bits."""
    fill = value[-1] if value.shape().signed else C(0, 1)
    return Cat(value, fill.replicate(width - len(value)))


def at_least(a, b) -> Value:
    """``a >= b`` for signed or unsigned values ``a`` and ``b``: a 1-bit combinational value."""
    a, b = Value.cast(a), Value.cast(b)
    width = max(len(a) + (not a.shape().signed), len(b) + (not b.shape().signed))
    if width < 4:
        return a >= b
    wide_a, wide_b = _extended(a, width), _extended(b, width)
    low = width // 2
    high_a, high_b = wide_a[low:].as_signed(), wide_b[low:].as_signed()
    return (high_a > high_b) | ((high_a == high_b) & (wide_a[:low] >= wide_b[:low]))
