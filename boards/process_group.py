"""A tool run in a process group of its own (``start_new_session``), stopped however the run ends.

:func:`stop_group` stops the group (SIGTERM, then SIGKILL). :func:`group_stopped` is the block a tool runs
in: leaving it in any way (the tool done, an exception, Ctrl-C, a deadline) stops what is left of the group,
and a small reaper process started beside the tool SIGKILLs the group should this process die first
(SIGKILL, or a signal it does not handle), so that no tool outlives the command that started it. The reaper
reads its stdin until it closes: ``done`` first means this process stopped the group; a bare close means
it died. It runs in a session of its own, so that no signal to this process's group or terminal (Ctrl-C,
a dropped SSH session) ends it before it has done its work. (sim/runner.py has a reaper of its own.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

STOP_GRACE_SECONDS = 5.0         # SIGTERM, then SIGKILL after this long

_REAPER = ("import os, signal, sys\n"
           "if sys.stdin.buffer.read() != b'done':\n"
           "    try:\n"
           "        os.killpg(int(sys.argv[1]), signal.SIGKILL)\n"
           "    except (ProcessLookupError, PermissionError):\n"
           "        pass\n")


def stop_group(proc: subprocess.Popen, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM to the process group that ``proc`` leads, then SIGKILL to what is left of it; after each,
    waits up to ``grace`` seconds for ``proc`` to end (then ``proc.returncode`` is set)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass


@contextlib.contextmanager
def group_stopped(proc: subprocess.Popen):
    """Within it, a reaper watches the process group ``proc`` leads; on leaving it, the group is stopped
    (:func:`stop_group`) and the reaper told so (not told, it kills the group itself)."""
    try:
        reaper = subprocess.Popen([sys.executable, "-I", "-c", _REAPER, str(proc.pid)], stdin=subprocess.PIPE,
                                  start_new_session=True)
    except BaseException:
        stop_group(proc)
        raise
    try:
        yield
    finally:
        try:
            stop_group(proc)
            with contextlib.suppress(OSError):
                reaper.stdin.write(b"done")
        finally:
            with contextlib.suppress(OSError):
                reaper.stdin.close()
            try:
                reaper.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                reaper.kill()
                reaper.wait()
