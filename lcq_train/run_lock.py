"""One writer per run directory: ``lcq train`` holds an exclusive lock on ``OUT/.lock`` while it works there
(``lcq sim`` and ``lcq board-sim`` on their build directories too, ``lcq build`` on its ``-o``).

Two trainings started on one ``--out`` (or a ``--resume`` beside a running one) would each check that
the directory is theirs, then overwrite each other's checkpoints. The lock is ``fcntl.flock`` on a file
that stays in the directory: the kernel drops it when its process ends however it ends, so a killed run
leaves no lock behind. Waits for nothing: a held lock is an error at once.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            raise FileExistsError(f"{option} {out} is in use by another {user} (pid {holder}); wait for it to "
                                  f"finish, or choose another {option}") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)
