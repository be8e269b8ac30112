"""The git state a benchmark records with its results: the commit, and the files modified under some paths.

git is asked with a deadline (:data:`GIT_TIMEOUT_S`): a git that hangs (a lock held elsewhere, a slow
network file system) is killed, and one that fails, is missing or timed out gives ``None`` (JSON null:
unknown) instead of stopping the benchmark or recording an empty commit.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GIT_TIMEOUT_S = 10.0


def git(*args: str) -> str | None:
    """The output of ``git ARGS`` in the checkout, or None when it fails or takes over :data:`GIT_TIMEOUT_S`."""
    try:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_commit() -> str | None:
    """The commit checked out (None: unknown)."""
    out = git("rev-parse", "HEAD")
    return None if out is None else out.strip()


def git_state(*paths: str) -> dict:
    """``{"commit": ..., "modified": [files modified under paths]}`` (None where unknown; no git is asked
    for the files when it could not give the commit)."""
    commit = git_commit()
    out = None if commit is None else git("status", "--porcelain", "--", *paths)
    return {"commit": commit, "modified": None if out is None else [line[3:] for line in out.splitlines()]}
