"""Options that list what a benchmark measures: a value given twice would be measured twice, a duplicate row in
its table and results file, so the scripts refuse it when their options are parsed."""

from __future__ import annotations

import argparse
from typing import Callable, Iterable


def refuse_repeats(parser: argparse.ArgumentParser, option: str, values: Iterable, what: str,
                   key: Callable = lambda value: value) -> None:
    """``parser.error`` (exit 2) naming the first of ``values`` given twice, compared by ``key`` (a path by the
    file it names, say): ``argument OPTION: VALUE is given twice; name each WHAT once``."""
    seen = set()
    for value in values:
        if key(value) in seen:
            parser.error(f"argument {option}: {value} is given twice; name each {what} once")
        seen.add(key(value))
