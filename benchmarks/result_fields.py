"""The kinds of value a benchmark's results file holds, as its reader checks them (the writer writes only these),
and the lock under which a benchmark reads, merges and writes that file."""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lcq_train.json_text import parse_json
from lcq_train.run_lock import file_lock

RESULTS_WAIT_S = 120.0      # a read-merge-write takes well under a second; a holder this long has hung


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


@contextmanager
def results_lock(path: str) -> Iterator[None]:
    """Hold the lock of the results file at ``path`` inside the block: two invocations filling one table side by
    side (other seeds, widths, tables) each read the file, merge in their rows and write it inside this block, so
    that neither drops the other's. The lock is ``.<name>.lock`` beside the file (left there); a held one is waited
    for (said on stderr) up to :data:`RESULTS_WAIT_S`, then TimeoutError."""
    results = Path(path)
    with file_lock(results.parent / f".{results.name}.lock", wait_s=RESULTS_WAIT_S, what=f"results file {path}",
                   waiting=lambda holder: waiting_for(path, holder)):
        yield


def waiting_for(path: str, holder: str) -> None:
    """Say that this process waits for ``holder``'s write of the results file ``path``."""
    print(f"waiting for {holder} to finish writing {path}", file=sys.stderr, flush=True)
