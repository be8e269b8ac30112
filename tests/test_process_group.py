"""boards.process_group.group_stopped: a tool that cannot run is refused before anything starts."""

import os
import subprocess

import pytest

import boards.process_group as process_group


@pytest.fixture
def started(monkeypatch):
    """The argv of every process group_stopped starts (the reaper's and the tool's shell), run as usual."""
    calls, real = [], subprocess.Popen

    def popen(argv, *args, **kwargs):
        calls.append(argv)
        return real(argv, *args, **kwargs)

    monkeypatch.setattr(process_group.subprocess, "Popen", popen)
    return calls


@pytest.mark.parametrize("where", ["a missing path", "a name not on PATH", "a file that is not executable"])
def test_a_tool_that_cannot_run_raises_file_not_found_and_starts_nothing(tmp_path, started, where):
    """As subprocess.Popen does (not the shell's exit status 127): no reaper, no shell."""
    (tmp_path / "plain").write_text("#!/bin/sh\n")
    argv, popen = {"a missing path": (["./no-such-tool"], {"cwd": tmp_path}),
                   "a name not on PATH": (["plain"], {"env": {"PATH": str(tmp_path)}}),
                   "a file that is not executable": ([str(tmp_path / "plain")], {})}[where]
    with pytest.raises(FileNotFoundError, match=argv[0]):
        with process_group.group_stopped(argv, **popen):
            pass
    assert started == []


def test_a_tool_is_found_as_the_shell_finds_it(tmp_path, started):
    """A relative path with a slash from ``cwd``, a bare name on the ``env``'s PATH."""
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\nexit 3\n")
    tool.chmod(0o755)
    for argv, popen in ((["./tool"], {"cwd": tmp_path}), (["tool"], {"env": {**os.environ, "PATH": str(tmp_path)}})):
        with process_group.group_stopped(argv, **popen) as proc:
            assert proc.wait(60) == 3
    assert len(started) == 4
