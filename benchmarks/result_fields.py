"""The kinds of value a benchmark's results file holds, as its reader checks them (the writer writes only these)."""

from __future__ import annotations

import math


def is_number(v) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_percentage(v) -> bool:
    """A number from 0 to 100."""
    return is_number(v) and 0.0 <= v <= 100.0


def is_count(v) -> bool:
    """An int >= 0 (not a bool)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0
