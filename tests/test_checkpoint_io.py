"""Atomic writes: whole file or nothing, and a folder in the way is a one-line error."""

import os

import pytest

from matmeta.checkpoint import atomic_write_text
from matmeta.errors import InputError


def test_atomic_write_replaces_whole_file_with_plain_permissions(tmp_path):
    path = tmp_path / "sub" / "out.csv"
    atomic_write_text(path, "a\n1\n")
    atomic_write_text(path, "b\n2\n")
    assert path.read_text() == "b\n2\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.csv"]
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_a_folder_where_a_file_should_go_is_a_clear_error(tmp_path):
    (tmp_path / "w2").mkdir()
    with pytest.raises(InputError, match="w2: is a folder; expected a file name"):
        atomic_write_text(tmp_path / "w2", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["w2"]
    assert list((tmp_path / "w2").iterdir()) == []
