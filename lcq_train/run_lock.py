"""One writer per run directory: ``lcq train`` holds an exclusive lock on ``OUT/.lock`` while it works there
(``lcq sim`` and ``lcq board-sim`` on their build directories too, ``lcq build`` on its ``-o``).

Two trainings started on one ``--out`` (or a ``--resume`` beside a running one) would each check that
the directory is theirs, then overwrite each other's checkpoints. The lock is ``fcntl.flock`` on a file
that stays in the directory: the kernel drops it when its process ends however it ends, so a killed run
leaves no lock behind. Waits for nothing: a held lock is an error at once. (:func:`file_lock`, for a short step
such as a benchmark's read-merge-write of its results file, waits for a held lock, up to a deadline.)
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

LOCK_NAME = ".lock"


@contextmanager
def run_lock(out: Path, *, user: str = "lcq train", option: str = "--out") -> Iterator[None]:
    """Hold ``out``'s lock (creating ``out``) inside the block; FileExistsError if another process holds it,
    naming the directory as the ``option`` of the ``user`` command that takes it."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FileExistsError(f"{option} {out} is in use by another {user} ({_holder(fd)}); wait for it to "
                                  f"finish, or choose another {option}") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)


@contextmanager
def file_lock(path: Path, *, wait_s: float, what: str,
              waiting: Callable[[str], object] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created, and left in place: its name is the lock) inside the
    block, waiting up to ``wait_s`` seconds for another process (or another open of it) to release it;
    ``waiting(holder)`` is called once when it must wait (``holder``: "pid N", or "another process" before the
    holder has written its pid). TimeoutError naming ``what`` and the holder when the deadline passes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(fd)
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{what} is held by {holder} for over {wait_s:g} s (its lock {path}); "
                                       "if that process hangs, stop it and run this again") from None
                if waiting is not None:
                    waiting(holder)
                    waiting = None
                time.sleep(0.05)           # (polled: a blocking flock could not keep the deadline)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    """Who holds the lock file ``fd``: "pid N" as it wrote, or "another process" (one that has not written it yet)."""
    pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return f"pid {pid}" if pid else "another process"
