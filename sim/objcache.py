"""make's OBJCACHE for Verilator builds (:func:`sim.runner.verilator_object_cache`), run as a script.

``python -I objcache.py CACHE INCLUDE CXX ... -c -o X.o SRC``: a source of Verilator's include directory
``INCLUDE`` (its runtime library: no header of the design) is compiled once per command line, compiler
and source text; later builds copy the object and its make dependencies (.d: absolute paths only) from
``CACHE``. Anything else is compiled as asked. Entries are written whole (``os.replace``, the object
last), so builds running at once (pytest-xdist) at worst both compile. Standard library only: make runs
it with ``python -I``, outside the project.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile


def entry_of(cache: str, include: str, cmd: list[str], src: str) -> str:
    """The cache entry (a directory) of compile command ``cmd`` of ``src``: keyed on the command, the
    source and Verilator's configuration header, and the compiler's path, size and time."""
    key = hashlib.sha256("\0".join(cmd).encode())
    for path in (src, os.path.join(include, "verilated_config.h")):
        with open(path, "rb") as f:
            key.update(f.read())
    compiler = shutil.which(cmd[0]) or cmd[0]
    info = os.stat(compiler)
    key.update(f"{os.path.realpath(compiler)} {info.st_size} {info.st_mtime_ns}".encode())
    return os.path.join(cache, key.hexdigest()[:32])


def store(entry: str, files: list[tuple[str, str]]) -> None:
    """Copy ``(name, path)`` files into ``entry``, each written whole, in order; errors are ignored (the
    temporary file of a copy that failed is removed)."""
    tmp = None
    try:
        os.makedirs(entry, exist_ok=True)
        for name, path in files:
            if os.path.isfile(path):
                fd, tmp = tempfile.mkstemp(dir=entry)
                os.close(fd)
                shutil.copyfile(path, tmp)
                os.replace(tmp, os.path.join(entry, name))
                tmp = None
    except OSError:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def main(argv: list[str]) -> int:
    cache, include, cmd = argv[0], argv[1], argv[2:]
    src = cmd[-1] if cmd else ""
    out = cmd[cmd.index("-o") + 1] if "-o" in cmd[:-1] else None
    if out is None or "-c" not in cmd or not src.endswith(".cpp") or \
            os.path.dirname(os.path.abspath(src)) != include:
        return subprocess.call(cmd)
    entry = entry_of(cache, include, cmd, src)
    dep = os.path.splitext(out)[0] + ".d"
    if os.path.isfile(os.path.join(entry, "obj")):
        if os.path.isfile(os.path.join(entry, "dep")):
            shutil.copyfile(os.path.join(entry, "dep"), dep)
        shutil.copyfile(os.path.join(entry, "obj"), out)
        return 0
    code = subprocess.call(cmd)
    if code == 0 and os.path.isfile(out):
        store(entry, [("dep", dep), ("obj", out)])
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
