"""A reaper: a small process that kills a command's process group should this process die before it is done.

A command run in a process group of its own (:func:`sim.runner.run_guarded`, the benchmarks' FPGA tools)
gets no signal sent to this process or its group, so it outlives this process when that is killed
(SIGKILL, or SIGTERM or a terminal's hangup with their default action). ``Reaper()`` starts the reaper in
a session of its own, where no signal to this process's group or terminal reaches it either;
:meth:`Reaper.watch` tells it the group; :meth:`Reaper.release` (the command has been dealt with) lets it
end. Should this process die first, the reaper reads end-of-file instead of ``done`` and kills the group.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

_SCRIPT = ("import os, signal, sys\n"
           "data = sys.stdin.buffer.read()\n"
           "if not data.endswith(b'done'):\n"
           "    try:\n"
           "        os.killpg(int(data.split()[0]), signal.SIGKILL)\n"
           "    except (IndexError, ValueError, ProcessLookupError, PermissionError):\n"
           "        pass\n")


class Reaper:
    """The reaper process of one command (start it before the command, so that no moment is unguarded)."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-I", "-c", _SCRIPT], stdin=subprocess.PIPE,
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
        self.proc.wait()
