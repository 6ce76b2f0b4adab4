"""``pipeline.exp``: params.yaml is put back after ``dvc exp run``, failed or not."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pipeline.exp import run_experiment

# A stand-in for dvc that does what `dvc exp run -S` does to the workspace: it writes the
# value into params.yaml, then succeeds or fails (exit 3 for a key it does not know).
FAKE_DVC = """#!/bin/sh
printf 'extra: %s\\n' "$*" >> params.yaml
case "$*" in *backbon=*) exit 3;; esac
exit 0
"""


@pytest.fixture()
def fake_dvc(tmp_path, monkeypatch):
    exe = tmp_path / "dvc"
    exe.write_text(FAKE_DVC)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("train:\n  max_steps: 400  # a comment\n")
    return str(exe)


@pytest.mark.parametrize(
    "args, rc",
    [(["-n", "lr2x", "-S", "train.lr_backbone=2e-4"], 0), (["-S", "++model.backbon=resnet18"], 3)],
)
def test_params_yaml_is_restored(fake_dvc, args, rc, capsys):
    before = Path("params.yaml").read_bytes()
    assert run_experiment(args, dvc=fake_dvc) == rc
    assert Path("params.yaml").read_bytes() == before
    assert "params.yaml restored" in capsys.readouterr().err
    assert not any(p.name.endswith(".restore") for p in Path(os.getcwd()).iterdir())
