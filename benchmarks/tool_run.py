"""An FPGA tool (Yosys, nextpnr) run by a benchmark: a deadline, and nothing of it left behind.

:func:`run_tool` runs a command in a process group of its own and returns its exit status; past its
``timeout`` the group is stopped as a build's tool is (:func:`boards.process_group.stop_group`: SIGTERM, then
SIGKILL to what is left after a grace period) and ``subprocess.TimeoutExpired`` raised, and an exception in the
calling thread (Ctrl-C) stops it too. A reaper (:class:`boards.process_group.Reaper`), watching the group before the
tool runs (:func:`boards.process_group.group_stopped`), kills it should the benchmark die first. Benchmarks run
tools from worker threads, which an interrupt does not reach: their main thread calls :func:`stop_tools` when it
stops, which stops every tool still running the same way; after it, :func:`run_tool` starts none
(:class:`ToolsStopped`).
"""

from __future__ import annotations

import contextlib
import subprocess
import threading

from boards.process_group import group_stopped, stop_group

_running: set[subprocess.Popen] = set()
_lock = threading.Lock()
_stopping = threading.Event()


class ToolsStopped(RuntimeError):
    """:func:`stop_tools` was called: the benchmark is stopping, no tool starts."""


def run_tool(cmd: list[str], *, cwd, stdout, timeout: float) -> int:
    """Run ``cmd`` in ``cwd``, its output (stderr too) to ``stdout``; its exit status (negative: killed).
    ``OSError`` when ``cmd[0]`` is not an executable."""
    with contextlib.ExitStack() as stack:
        with _lock:         # (started under the lock: stop_tools sees it, or it starts none)
            if _stopping.is_set():
                raise ToolsStopped(f"not started, the benchmark is stopping: {cmd[0]}")
            proc = stack.enter_context(group_stopped(cmd, cwd=cwd, stdout=stdout, stderr=subprocess.STDOUT))
            _running.add(proc)
        try:
            return proc.wait(timeout)
        finally:
            with _lock:
                _running.discard(proc)


def stop_tools() -> None:
    """Stop the process group of every tool :func:`run_tool` is running (in any thread), as
    :func:`boards.process_group.stop_group` does; start no more."""
    with _lock:
        _stopping.set()
        running = list(_running)
    for proc in running:
        stop_group(proc)
