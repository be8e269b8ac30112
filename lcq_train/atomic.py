"""Atomic file writes (no torch): a crash or a full disk leaves the previous file intact."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, rename it to ``path``, then fsync the
    directory (so that the rename, too, outlives a power loss). FileExistsError (which ``lcq`` prints as
    its error) where a directory is at ``path`` or a file stands where a directory above it must be; an OSError
    of the system (a directory that cannot be written, a full disk) names ``path``, not the temporary file."""
    with AtomicFiles() as files:
        files.write(path, write)
        files.commit()


class AtomicFiles:
    """Files written together, all or none: :meth:`write` writes each to a temporary file beside it at once (as
    :func:`atomic_write` does, with its errors), :meth:`commit` renames them all into place; leaving the ``with``
    block without a commit (an error midway) removes the temporaries, so every previous file is left as it was.
    (Only the renames of the commit, which a sound file system does not refuse, can leave part of a set.)"""

    def __init__(self):
        self._staged: list[tuple[str, Path]] = []

    def __enter__(self) -> "AtomicFiles":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    def write(self, path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
        """``write(f)`` on a fsynced temporary file beside ``path``, which :meth:`commit` renames to it; ``path``."""
        path = Path(path)
        if path.is_dir():
            raise FileExistsError(f"{path} is a directory; name a file to write")
        if any(path == p for _, p in self._staged):
            raise ValueError(f"{path} is already written in this set of files")
        above = next(p for p in path.parents if p.exists())
        if not above.is_dir():
            raise FileExistsError(f"cannot write {path}: {above} is a file, not a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as e:            # a directory that cannot be written: said of the file asked for
            raise _of(e, path) from None
        try:
            if hasattr(os, "fchmod"):           # mkstemp's 0600 -> what open() would give (0666 less the umask)
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(fd, 0o666 & ~umask)
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        except BaseException as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
            if isinstance(e, OSError) and e.errno is not None and e.filename in (None, tmp):   # (a full disk)
                raise _of(e, path) from e
            raise
        self._staged.append((tmp, path))
        return path

    def commit(self) -> list[Path]:
        """Rename every file written into place, then fsync their directories; the paths, in the order written."""
        staged, self._staged = self._staged, []
        try:
            for i, (tmp, path) in enumerate(staged):
                os.replace(tmp, path)
        except BaseException as e:
            self._staged = staged[i:]           # (removed by discard)
            if isinstance(e, OSError) and e.errno is not None and e.filename in (None, tmp):
                raise _of(e, path) from e
            raise
        for directory in dict.fromkeys(path.parent for _, path in staged):
            _fsync_directory(directory)
        return [path for _, path in staged]

    def discard(self) -> None:
        """Remove the temporaries not committed."""
        staged, self._staged = self._staged, []
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _of(e: OSError, path: Path) -> OSError:
    """``e`` (its errno and reason) said of ``path``: the file ``lcq`` names in its error line."""
    return type(e)(e.errno, e.strerror, str(path))


def leftovers(path: str | os.PathLike) -> list[Path]:
    """The temporary files beside ``path`` that writes of it killed midway left (a crash runs no cleanup)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def _fsync_directory(directory: Path) -> None:
    """fsync ``directory``'s entries where the system allows it (some file systems refuse a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_json(obj, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def write_text_if_changed(path: str | os.PathLike, text: str) -> bool:
    """Write ``text`` to ``path`` atomically unless the file already holds exactly it (so that its modification
    time, which make and the simulators' builds compare, changes only with the text, and a reader never sees half
    of it); whether it wrote."""
    path = Path(path)
    try:
        if path.read_text() == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    atomic_write(path, lambda f: f.write(text.encode()))
    return True
