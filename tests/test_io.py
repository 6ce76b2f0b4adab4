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


def test_yaml_load_reads_exponent_floats_as_dvc_writes_them():
    """``dvc exp run -S lr=2e-5`` writes ``2e-05`` (no dot): YAML 1.2's float, a string to
    PyYAML's 1.1 resolver. ``yaml_load`` reads it as the float, and nothing else changes."""
    import yaml

    from simsc.io import yaml_load

    text = "a: 2e-05\nb: -3E+2\nc: 1.0e-4\nd: 12\ne: 1e\nf: v1e5\ng: '2e-05'\nh: 0x1F\ni: .5\n"
    got = yaml_load(text)
    assert got == {"a": 2e-05, "b": -300.0, "c": 1e-4, "d": 12, "e": "1e", "f": "v1e5", "g": "2e-05", "h": 31, "i": 0.5}
    assert yaml.safe_load(text)["a"] == "2e-05"  # the PyYAML behaviour this works around
