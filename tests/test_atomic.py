"""lcq_train.atomic: a write lands whole or not at all, and its rename is made durable."""

import os

import pytest

from lcq_train.atomic import atomic_write, save_json, write_text_if_changed


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.json"
    save_json({"a": 1}, path)

    def fail(f):
        f.write(b"{partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == '{\n  "a": 1\n}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_a_write_the_system_refuses_names_the_file_asked_for(tmp_path, monkeypatch):
    """A directory that cannot be written (permissions, a read-only file system), or a disk that fills (an OSError
    without a file name, which ``lcq`` would show as a traceback), is an OSError naming ``path``, not the
    temporary file beside it; the previous file is left as it was."""
    import errno
    import tempfile

    path = tmp_path / "out.json"
    save_json({"a": 1}, path)

    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as failed:
        atomic_write(path, full)
    assert (failed.value.errno, failed.value.filename) == (errno.ENOSPC, str(path))

    def refused(dir, prefix, suffix):
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, prefix + "abc" + suffix))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(PermissionError) as failed:
        atomic_write(path, lambda f: f.write(b"new"))
    assert failed.value.filename == str(path) and str(failed.value) == f"[Errno 13] Permission denied: '{path}'"
    assert path.read_text() == '{\n  "a": 1\n}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_the_file_and_then_its_directory_are_synced(tmp_path, monkeypatch):
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}"))           # (Linux: what the descriptor is)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    save_json([1], tmp_path / "x.json")
    assert synced == [False, True]


@pytest.mark.parametrize("target, says", [("d", r"d is a directory; name a file to write"),
                                          ("f/x.json", r"f is a file, not a directory"),
                                          ("f/sub/x.json", r"f is a file, not a directory")])
def test_a_directory_at_the_path_or_a_file_above_it_is_named(tmp_path, target, says):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match=says):      # what the lcq command prints as its error
        save_json({"a": 1}, tmp_path / target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f"] and not any((tmp_path / "d").iterdir())


def test_text_is_written_only_when_it_changes_and_then_whole(tmp_path, monkeypatch):
    """write_text_if_changed (the generated Verilog of the simulations): the same text leaves the file and its
    modification time alone; other text replaces it through a temporary file, never in place."""
    path = tmp_path / "core.v"
    assert write_text_if_changed(path, "module a;\nendmodule\n")
    os.utime(path, (1, 1))
    assert not write_text_if_changed(path, "module a;\nendmodule\n") and path.stat().st_mtime == 1
    before = os.stat(path).st_ino
    assert write_text_if_changed(path, "module b;\nendmodule\n")
    assert path.read_text() == "module b;\nendmodule\n" and os.stat(path).st_ino != before
    path.write_bytes(b"\xff\xfe half")          # not UTF-8: replaced, not an error
    assert write_text_if_changed(path, "module c;\nendmodule\n") and path.read_text() == "module c;\nendmodule\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["core.v"]



def test_files_written_together_are_all_or_none(tmp_path):
    """AtomicFiles: nothing is in place before the commit; an error midway removes every temporary and leaves the
    previous files as they were; the commit puts them all in place."""
    from lcq_train.atomic import AtomicFiles

    a, b = tmp_path / "a.v", tmp_path / "a.json"
    a.write_text("old a")

    def disk_full(f):
        f.write(b"{")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        with AtomicFiles() as files:
            files.write(a, lambda f: f.write(b"new a"))
            assert a.read_text() == "old a" and not b.exists()
            files.write(b, disk_full)
    assert a.read_text() == "old a" and not b.exists() and sorted(tmp_path.iterdir()) == [a]
    with AtomicFiles() as files:
        files.write(a, lambda f: f.write(b"new a"))
        files.write(b, lambda f: f.write(b"{}"))
        assert files.commit() == [a, b]
    assert a.read_text() == "new a" and b.read_text() == "{}" and sorted(tmp_path.iterdir()) == [b, a]
