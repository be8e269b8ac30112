"""benchmarks/git_state.py: the git state the benchmarks record, asked with a deadline, and theirs one copy of it."""

import os
import re
import time
from pathlib import Path

import pytest
from helpers import load_benchmark

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def git_state(monkeypatch):
    """The module as the benchmarks import it (``benchmarks/`` on ``sys.path``)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import git_state

    return git_state


def test_the_commit_and_the_files_modified(git_state):
    state = git_state.git_state("benchmarks")
    assert re.fullmatch(r"[0-9a-f]{40}", state["commit"]) and isinstance(state["modified"], list)
    assert git_state.git_commit() == state["commit"]


def test_a_git_that_hangs_is_killed_and_the_state_unknown(git_state, tmp_path, monkeypatch):
    (tmp_path / "git").write_text("#!/bin/sh\nexec sleep 30\n")
    (tmp_path / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(git_state, "GIT_TIMEOUT_S", 0.5)
    start = time.monotonic()
    assert git_state.git_state("hw") == {"commit": None, "modified": None}
    assert git_state.git_commit() is None
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("script, names", [("board_builds", ["git_state"]), ("array_utilization", ["git_state"]),
                                           ("resnet20_eval", ["git_state"]), ("residual_width", ["git_state"])])
def test_the_benchmarks_record_their_git_state_through_it(git_state, script, names):
    pytest.importorskip("amaranth" if script in ("board_builds", "array_utilization") else "torch")
    module = load_benchmark(script)
    for name in names:
        assert getattr(module, name) is getattr(git_state, name)
