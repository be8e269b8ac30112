"""lcq_train.atomic: a write lands whole or not at all, and its rename is made durable."""

import os

import pytest

from lcq_train.atomic import atomic_write, save_json


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.json"
    save_json({"a": 1}, path)

    def fail(f):
        f.write(b"{partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
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
