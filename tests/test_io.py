"""Atomic file writes: whole or absent, no temporary left behind."""

from __future__ import annotations

import pytest

from simsc.io import atomic_copy


def test_atomic_copy_writes_the_whole_file(tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(bytes(range(256)) * 1000)
    dst = atomic_copy(src, tmp_path / "new" / "b.bin")
    assert dst.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dst.parent.iterdir()) == ["b.bin"]  # no temporary file left


def test_atomic_copy_failure_keeps_the_old_file(tmp_path):
    dst = tmp_path / "b.bin"
    dst.write_bytes(b"old")
    with pytest.raises(FileNotFoundError):
        atomic_copy(tmp_path / "missing.bin", dst)
    assert dst.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["b.bin"]
