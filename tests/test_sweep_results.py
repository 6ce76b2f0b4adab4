"""A sweep's outputs from its rows: results table, best row, best params for ``dvc exp run``."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import yaml

from pipeline import paramset
from pipeline.sweep_results import (
    STATUS_COMPLETED,
    STATUS_ERROR,
    STATUS_STOPPED,
    best_params,
    best_row,
    dvc_flags,
    results_csv,
    write_results,
)
from pipeline.sweep_spec import load_sweep_spec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def spec():
    return load_sweep_spec(REPO / "configs" / "sweeps" / "lr_beta1.yaml", "toy", root=REPO)


def row(trial, status, best, lr):
    return {"trial_id": trial, "label": f"lr_backbone={lr}", "status": status, "train.lr_backbone": lr,
            "epochs_done": 3 if status == STATUS_COMPLETED else 1, "epochs": 3, "best_val_pck": best,
            "error": "boom" if status == STATUS_ERROR else "", "_overrides": {"train.lr_backbone": lr},
            "_checkpoint": None, "_path": f"/x/{trial}"}


def test_best_row_ignores_errors_and_missing_metrics():
    rows = [row("a", STATUS_COMPLETED, 10.0, 2e-5), row("b", STATUS_ERROR, None, 2e-2),
            row("c", STATUS_STOPPED, 12.5, 2e-4), row("d", STATUS_COMPLETED, 11.0, 2e-6)]
    assert best_row(rows)["trial_id"] == "c"  # stopped early but best so far: still the best
    assert best_row([row("b", STATUS_ERROR, None, 2e-2)]) is None


def test_best_params_apply_to_params_yaml(spec, tmp_path):
    best = row("c", STATUS_STOPPED, 12.5, 2e-4)
    params = best_params(spec, best)
    assert params["train"]["lr_backbone"] == 2e-4
    assert params["model"]["temperature"] == "fixed:1"  # the spec's set
    assert params["train"]["epochs"] == 3 and params["data"]["resolution"] == 128  # the toy profile
    assert params["data"]["root"] == "data/embedded"  # paths as the user wrote them, not absolute
    assert params["train"]["out_dir"] == "runs/sweep-lr_beta1-best"
    # a full params.yaml: paramset accepts it, and applying it changes only what the sweep set
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    merged = paramset.merge(base, params)
    paramset.check(merged, "best_params.yaml")
    changed = {line.split(":")[0] for line in paramset.changes(base, merged)}
    assert changed == {"model.temperature", "train.lr_backbone", "train.epochs", "train.max_steps",
                       "train.checkpoint_every_steps", "train.out_dir", "data.resolution",
                       "data.cache_dir", "eval.resolution"}


def test_dvc_flags_name_every_swept_and_set_key(spec):
    flags = dvc_flags(spec, row("c", STATUS_COMPLETED, 12.5, 2e-4))
    assert flags.startswith("dvc exp run ")
    assert "-S 'train.lr_backbone=0.0002'" in flags and "-S 'model.temperature=fixed:1'" in flags
    assert "-S 'data.cache_dir=null'" in flags and "-S 'train.out_dir=runs/sweep-lr_beta1-best'" in flags
    # the -S values read back (as DVC parses them: YAML) to the sweep's values
    pairs = dict(f.strip("'").split("=", 1) for f in flags.split(" -S ")[1:])
    assert yaml.safe_load(pairs["train.lr_backbone"]) == 2e-4 and yaml.safe_load(pairs["data.cache_dir"]) is None


def test_results_files(spec, tmp_path):
    rows = [row("a", STATUS_COMPLETED, 10.0, 2e-5), row("b", STATUS_ERROR, None, 2e-2)]
    paths = write_results(tmp_path, spec, rows)
    table = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert [r["trial_id"] for r in table] == ["a", "b"] and "_overrides" not in table[0]
    assert table[1]["best_val_pck"] == "" and table[1]["error"] == "boom"
    md = paths["md"].read_text()
    assert "| a | completed |" in md and "- b: boom" in md and "dvc exp run" in md
    best = yaml.safe_load(paths["best_params"].read_text())
    assert best["train"]["lr_backbone"] == 2e-5
    assert results_csv(rows) == paths["csv"].read_text()
    # no trial succeeded: no best params file
    paths = write_results(tmp_path / "none", spec, [row("b", STATUS_ERROR, None, 2e-2)])
    assert "best_params" not in paths and not (tmp_path / "none" / "best_params.yaml").exists()
