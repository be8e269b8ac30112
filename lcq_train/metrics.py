"""A run's history, as ``lcq train`` writes it (``OUT/metrics.json`` and the copy in each checkpoint), checked
on every read against the rule that wrote it.

The history is a dict with ``config`` (a dict: the run's settings, which :class:`~lcq_train.train.TrainConfig`
checks) and ``epochs``, one row per finished epoch: ``epoch`` (1, 2, ... in order), ``train_loss`` and
``test_loss`` (numbers, NaN allowed: an evaluation may overflow, and runs that diverged wrote it before
``lcq train`` stopped them), ``train_top1`` and ``test_top1`` (percentages, 0..100),
``lr`` and ``time_s`` (finite, >= 0) and, after the last epoch of a run that re-estimates BN statistics,
``test_top1_before_bn`` (0..100), and after the last epoch ``settled_weights`` (an integer >= 0: the weights
moved off a quantizer threshold, :mod:`lcq_train.weight_codes`); with at least one row, ``test_top1`` is the
last row's and ``best_test_top1`` the highest. A quantized run's ``start_code_shares`` maps each activation
quantizer's name to its codes' shares (numbers in 0..1, one a code: how many codes it has, which loading the
checkpoint compares). Other keys (``layers``, ``environment``, ...) are kept as they are: nothing reads them as
numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

from .json_text import parse_json

ROW_NUMBERS = {"train_loss": "a number", "test_loss": "a number", "train_top1": "a percentage",
               "test_top1": "a percentage", "lr": "a finite number >= 0", "time_s": "a finite number >= 0"}


class MetricsError(ValueError):
    """A run history that ``lcq train`` did not write: names the file, the field and the fix."""


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fits(v, kind: str) -> bool:
    if not _number(v):
        return False
    if kind == "a percentage":
        return 0.0 <= v <= 100.0
    if kind == "a share":
        return 0.0 <= v <= 1.0
    return kind == "a number" or (math.isfinite(v) and v >= 0)


def metrics_problem(metrics, epochs: int | None = None) -> str | None:
    """What makes ``metrics`` other than a history ``lcq train`` writes (of ``epochs`` rows where given);
    None when nothing does."""
    if not isinstance(metrics, dict):
        return f"is {type(metrics).__name__}, not a JSON object"
    if not isinstance(metrics.get("config"), dict):
        return "has no 'config' object"
    if not isinstance(metrics["config"].get("plan", {}), dict):
        return f"has a 'config.plan' that is {type(metrics['config']['plan']).__name__}, not an object"
    rows = metrics.get("epochs")
    if not isinstance(rows, list):
        return "has no 'epochs' list"
    if epochs is not None and len(rows) != epochs:
        return f"has {len(rows)} epoch rows, not {epochs}"
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            return f"epoch row {i} is {type(row).__name__}, not an object"
        if row.get("epoch") != i or isinstance(row.get("epoch"), bool):
            return f"epoch row {i} has epoch {row.get('epoch')!r}, not {i}"
        for key, kind in ROW_NUMBERS.items():
            if not _fits(row.get(key), kind):
                return f"epoch {i}'s {key!r} is {row.get(key)!r}, not {kind}"
        if "test_top1_before_bn" in row and not _fits(row["test_top1_before_bn"], "a percentage"):
            return f"epoch {i}'s 'test_top1_before_bn' is {row['test_top1_before_bn']!r}, not a percentage"
        settled = row.get("settled_weights", 0)
        if not isinstance(settled, int) or isinstance(settled, bool) or settled < 0:
            return f"epoch {i}'s 'settled_weights' is {settled!r}, not an integer >= 0"
    shares = metrics.get("start_code_shares", {})
    if not isinstance(shares, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and v and all(_fits(x, "a share") for x in v)
            for k, v in shares.items()):
        return "has a 'start_code_shares' that is not a map of quantizer names to lists of shares in 0..1"
    if rows:
        if metrics.get("test_top1") != rows[-1]["test_top1"]:
            return f"has test_top1 {metrics.get('test_top1')!r}, not its last epoch's {rows[-1]['test_top1']!r}"
        best = max(r["test_top1"] for r in rows)
        if metrics.get("best_test_top1") != best:
            return f"has best_test_top1 {metrics.get('best_test_top1')!r}, not its epochs' best {best!r}"
    return None


def read_metrics(path: str | Path) -> dict:
    """The history in the metrics.json at ``path``; MetricsError if it is not one ``lcq train`` wrote."""
    path = Path(path)
    try:
        metrics = parse_json(path.read_text())
    except ValueError as e:                                          # (a UnicodeDecodeError is one too)
        why = f"it is not JSON ({e})" if isinstance(e, UnicodeDecodeError) else e
        raise MetricsError(f"{path}: {why}; {_not_written(path)}") from None
    problem = metrics_problem(metrics)
    if problem:
        raise MetricsError(f"{path} {problem}; {_not_written(path)}")
    return metrics


def _not_written(path: Path) -> str:
    """What to do with a metrics.json that lcq train did not write, where its run's checkpoint is or is not."""
    if (path.parent / "checkpoint.pt").is_file():
        return ("it is not a metrics.json that lcq train wrote: restore it or delete it (the run's checkpoint.pt "
                "holds the same history)")
    return ("it is not a metrics.json that lcq train wrote, and no checkpoint.pt beside it holds the history: "
            "restore it, or delete the run and train it again")
