"""``python -m pipeline.sweep``: dry run, and the errors raised before any Ray worker starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.sweep import main
from pipeline.sweep_spec import load_sweep_spec
from simsc.errors import EXIT_USER_ERROR

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "configs" / "sweeps" / "manual_temperature.yaml"


def test_dry_run_lists_every_trial(capsys):
    assert main([str(SPEC), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("sweep manual_temperature (profile toy): 9 trials")
    assert len(out) == 1 + 9 and "model.temperature=fixed:0.004" in out[1] and "model.temperature=mlp" in out[-1]
    assert main([str(SPEC), "--dry-run", "--profile", "full"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "18 trials" in out[0] and "dataset=spair" in out[-1] and "data.dataset=spair" in out[-1]


def test_bad_spec_is_a_user_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "search": {"train.lr": {"grid": [1]}}}))
    assert main([str(bad), "--dry-run"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("sweep: error: ") and str(bad) in err and "train.lr" in err
    assert main([str(SPEC), "--dry-run", "--set", "train.epoch=2"]) == EXIT_USER_ERROR
    assert "unknown config key 'train.epoch'" in capsys.readouterr().err
    assert main([str(SPEC), "--dry-run", "--max-concurrent", "0"]) == EXIT_USER_ERROR


def _state(out: Path, **fields) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps({"name": "manual_temperature", "status": "finished", **fields}))


def test_existing_sweep_needs_resume_and_the_same_spec(tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(SPEC), "--out", str(out), "--resume"]) == EXIT_USER_ERROR
    assert "nothing to resume" in capsys.readouterr().err
    spec = load_sweep_spec(SPEC, root=REPO)
    _state(out, spec_digest=spec.digest())
    assert main([str(SPEC), "--out", str(out)]) == EXIT_USER_ERROR
    assert "already holds sweep 'manual_temperature' (finished)" in capsys.readouterr().err
    _state(out, spec_digest="0" * 16)
    assert main([str(SPEC), "--out", str(out), "--resume", "--profile", "full"]) == EXIT_USER_ERROR
    assert "the spec changed since the sweep started" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["data.root", "data.cache_dir", "model.pretrained"])
def test_relative_paths_resolve_against_the_driver_folder(tmp_path, key):
    spec = tmp_path / "s.yaml"
    value = "ckpt/weights.pth" if key == "model.pretrained" else "rel/dir"
    spec.write_text(yaml.safe_dump({"name": "p", "set": {key: value}, "search": {"train.seed": {"grid": [0, 1]}}}))
    loaded = load_sweep_spec(spec, root=tmp_path / "driver")
    section, name = key.split(".")
    assert loaded.engine_base()[section][name] == str(tmp_path / "driver" / value)
