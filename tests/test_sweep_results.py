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
    handoff,
    results_csv,
    results_markdown,
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
    assert params["train"]["out_dir"] == "runs/sweep-lr_beta1-best"
    assert set(params) <= {"model", "data", "train"}  # a partial file: what the trials read
    # paramset accepts it, and applying it changes only what the sweep set
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    merged = paramset.merge(base, params)
    paramset.check(merged, "best_params.yaml")
    changed = {line.split(":")[0] for line in paramset.changes(base, merged)}
    assert changed == {"model.temperature", "train.lr_backbone", "train.epochs", "train.max_steps",
                       "train.checkpoint_every_steps", "train.out_dir", "data.resolution",
                       "data.cache_dir"}


def test_dvc_flags_name_every_swept_and_set_key(spec):
    flags = dvc_flags(spec, row("c", STATUS_COMPLETED, 12.5, 2e-4))
    assert flags.startswith("dvc exp run ")
    assert "-S 'train.lr_backbone=0.0002'" in flags and "-S 'model.temperature=fixed:1'" in flags
    assert "-S 'data.cache_dir=null'" in flags and "-S 'train.out_dir=runs/sweep-lr_beta1-best'" in flags
    # the -S values read back (as DVC parses them: YAML) to the sweep's values
    pairs = dict(f.strip("'").split("=", 1) for f in flags.split(" -S ")[1:])
    assert yaml.safe_load(pairs["train.lr_backbone"]) == 2e-4 and yaml.safe_load(pairs["data.cache_dir"]) is None


def declared_in_dvc_yaml() -> set[str]:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    declared = set()
    for stage in dvc["stages"].values():
        body = stage.get("do", stage)
        declared |= {p for p in body.get("params", []) if isinstance(p, str)}
    return declared


def leaves(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1]


def spec_profiles():
    for path in sorted((REPO / "configs" / "sweeps").glob("*.yaml")):
        profiles = list(yaml.safe_load(path.read_text()).get("profiles") or {}) or [None]
        for profile in profiles:
            yield pytest.param(path, profile, id=f"{path.stem}-{profile}")


@pytest.mark.parametrize("spec_file, profile", list(spec_profiles()))
def test_handoff_keys_are_stage_params(spec_file, profile):
    """Every suggested ``-S`` key and every key of best_params.yaml is declared by a stage in
    dvc.yaml, so ``dvc exp run`` reruns what it changes; sweep keys no trial reads stay out."""
    from pipeline.sweep_spec import _candidate_overrides

    spec = load_sweep_spec(spec_file, profile, root=REPO)
    declared = declared_in_dvc_yaml()
    overrides = {}
    for entry in spec.search:
        overrides.update(next(iter(_candidate_overrides(entry))))
    best = {"trial_id": "t", "label": "x", "best_val_pck": 1.0, "_overrides": overrides}
    flags = dvc_flags(spec, best)
    keys = [f.strip("'").split("=", 1)[0] for f in flags.split(" -S ")[1:]]
    assert keys and "train.out_dir" in keys
    for key in [*keys, *leaves(best_params(spec, best))]:
        assert any(key == d or key.startswith(d + ".") for d in declared), (spec_file.name, key)
        assert key.split(".")[0] in ("model", "data", "train"), (spec_file.name, key)
    for key in {**spec.set, **overrides}:  # nothing the trials read is silently lost
        if key.split(".")[0] in ("model", "data", "train"):
            assert key in keys, (spec_file.name, key)


def test_handoff_leaves_out_keys_trials_do_not_read(spec):
    spec.set["eval.resolution"] = 128  # never read by a trial: not a tuned value
    kept, dropped = handoff(spec, row("c", STATUS_COMPLETED, 12.5, 2e-4))
    assert "eval.resolution" not in kept and dropped == {"eval.resolution": "sweep trials do not read it"}
    md = results_markdown([row("c", STATUS_COMPLETED, 12.5, 2e-4)], spec, "dvc exp run", dropped)
    assert "`eval.resolution`: sweep trials do not read it" in md


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
