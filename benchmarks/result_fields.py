"""The kinds of value a benchmark's results file holds, as its reader checks them (the writer writes only these)."""

from __future__ import annotations

import math
from pathlib import Path

from lcq_train.json_text import parse_json


def is_number(v) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_percentage(v) -> bool:
    """A number from 0 to 100."""
    return is_number(v) and 0.0 <= v <= 100.0


def is_count(v) -> bool:
    """An int >= 0 (not a bool)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def read_results(path: str, refusal: str):
    """The JSON value of the results file an earlier invocation wrote at ``path``, None where there is none;
    ValueError ``"<path>: <why>; <refusal>"`` where it is not JSON text (cut short, not UTF-8) or is null (no
    benchmark writes null), so that the caller never mistakes a damaged file for a missing one and replaces it."""
    try:
        data = parse_json(Path(path).read_text())
    except FileNotFoundError:
        return None
    except ValueError as e:                                          # (a UnicodeDecodeError is one too)
        raise ValueError(f"{path}: {e}; {refusal}") from None
    if data is None:
        raise ValueError(f"{path}: it holds null; {refusal}")
    return data
