"""A tool run in a process group of its own (``start_new_session``), stopped however the run ends.

:func:`stop_group` stops the group (SIGTERM, then SIGKILL). :class:`Reaper` is a small process that kills a
group should this process die before it is done with it: it runs in a session of its own, where no signal
to this process's group or terminal (Ctrl-C, a dropped SSH session, ``timeout``) reaches it, and reads its
stdin until it closes: ``done`` means this process dealt with the group; a bare close means it died, and
the reaper SIGKILLs the group. :func:`group_stopped` is the block a tool runs in: a reaper watches its group
before the tool runs and while it does, and leaving the block in any way (the tool done, an exception, Ctrl-C,
a deadline) stops what is left of the group. (The simulators of :mod:`sim.runner` and the benchmarks' tools use
the same reaper.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys

STOP_GRACE_SECONDS = 5.0         # SIGTERM, then SIGKILL after this long

_REAPER = ("import os, signal, sys\n"
           "data = sys.stdin.buffer.read()\n"
           "if not data.endswith(b'done'):\n"
           "    try:\n"
           "        os.killpg(int(data.split()[0]), signal.SIGKILL)\n"
           "    except (IndexError, ValueError, ProcessLookupError, PermissionError):\n"
           "        pass\n")


class Reaper:
    """The reaper process of one command (start it before the command, so that no moment is unguarded)."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-I", "-c", _REAPER], stdin=subprocess.PIPE,
                                     start_new_session=True)

    def watch(self, pgid: int) -> None:
        """Kill process group ``pgid`` should this process die before :meth:`release`."""
        self.proc.stdin.write(f"{pgid}\n".encode())
        self.proc.stdin.flush()

    def release(self) -> None:
        """This process has dealt with the command: the reaper ends without killing anything."""
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.write(b"done")
            self.proc.stdin.close()
        try:
            self.proc.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group that ``proc`` leads (``start_new_session``), if it is still there."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


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


# The shell a tool starts in: it waits for a line on its stdin (sent once the reaper watches its group), then
# becomes the tool, its stdin /dev/null; at end of file (this process died first) the tool never runs.
_GATE = 'read -r _ || exit 125; exec "$@" </dev/null'


@contextlib.contextmanager
def group_stopped(argv: list[str], **popen):
    """Runs ``argv`` (``subprocess.Popen`` with ``popen``'s arguments; its stdin is /dev/null) in a process group of
    its own and yields its Popen. A :class:`Reaper` starts first, and the tool only once the reaper watches its
    group, so that no moment of it is unwatched, should this process die as it starts. ``argv[0]`` must be an
    executable's path (a relative one from ``cwd``) or a name on ``PATH`` (the ``env``'s): else FileNotFoundError,
    as ``subprocess.Popen`` raises, and nothing starts. On leaving the block, the group is stopped
    (:func:`stop_group`) and the reaper released (not released, it kills the group itself)."""
    tool = str(argv[0])
    where = os.path.join(popen.get("cwd") or "", tool) if os.sep in tool else tool
    if shutil.which(where, path=(popen.get("env") or os.environ).get("PATH", os.defpath)) is None:
        raise FileNotFoundError(errno.ENOENT, "not found, or not executable", tool)
    reaper = Reaper()
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", _GATE, "gate", *argv], stdin=subprocess.PIPE,
                                start_new_session=True, **popen)
    except BaseException:
        reaper.release()
        raise
    try:
        try:
            reaper.watch(proc.pid)
            with contextlib.suppress(BrokenPipeError):      # the shell killed before it read: no tool to start
                os.write(proc.stdin.fileno(), b"go\n")
        finally:
            proc.stdin.close()
            proc.stdin = None       # (so that communicate() writes nothing)
        yield proc
    finally:
        try:
            stop_group(proc)
        finally:
            reaper.release()
