"""A sweep's outputs from its rows: results table, best row, best params for ``dvc exp run``."""

from __future__ import annotations

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


HAND_SPEC = """\
name: hand
description: Two learning rates, written out by hand.
base: [params.yaml]
set:
  model.temperature: "fixed:1"
  train.epochs: 3
  train.best_alpha: 0.1
search:
  train.lr_backbone: {grid: [2.0e-5, 2.0e-2]}
search_alg: grid
"""


def test_results_files(tmp_path):
    """The three files of a sweep with one finished and one failed trial, against their text
    written out by hand: every value comes from this test's spec and rows (the only thing
    read from params.yaml is which keys exist), so a change of format or of a value shows."""
    spec_path = tmp_path / "hand.yaml"
    spec_path.write_text(HAND_SPEC)
    spec = load_sweep_spec(spec_path, root=REPO)
    rows = [row("a", STATUS_COMPLETED, 10.0, 2e-5), row("b", STATUS_ERROR, None, 2e-2)]
    out = tmp_path / "out"
    paths = write_results(out, spec, rows)
    assert paths == {"csv": out / "results.csv", "md": out / "results.md", "best_params": out / "best_params.yaml"}
    # internal fields (_overrides, _checkpoint, _path) stay out; None is an empty cell
    assert paths["csv"].read_text() == (
        "trial_id,label,status,train.lr_backbone,epochs_done,epochs,best_val_pck,error\n"
        "a,lr_backbone=2e-05,completed,2e-05,3,3,10.0,\n"
        "b,lr_backbone=0.02,error,0.02,1,3,,boom\n")
    flags = ("dvc exp run -S 'model.temperature=fixed:1' -S 'train.epochs=3' -S 'train.best_alpha=0.1' "
             "-S 'train.lr_backbone=2.0e-05' -S 'train.out_dir=runs/sweep-hand-best'")
    # label and error columns are left out of the table; small floats keep 4 significant digits
    assert paths["md"].read_text() == (
        "# Sweep `hand`\n"
        "\n"
        "Two learning rates, written out by hand.\n"
        "\n"
        "2 trials; metric `val_pck` = validation PCK@0.1 (per image), best over each trial's epochs.\n"
        "\n"
        "| trial_id | status | train.lr_backbone | epochs_done | epochs | best_val_pck |\n"
        "|---|---|---|---|---|---|\n"
        "| a | completed | 2e-05 | 3 | 3 | 10.00 |\n"
        "| b | error | 0.02 | 1 | 3 |  |\n"
        "\n"
        "Errors:\n"
        "\n"
        "- b: boom\n"
        "\n"
        "Best configuration as a DVC experiment:\n"
        "\n"
        "```\n"
        f"{flags}\n"
        "```\n")
    assert paths["best_params"].read_text() == (
        "# Best trial a of sweep hand (lr_backbone=2e-05): best val PCK 10.00\n"
        "# Only keys a trial read and a DVC stage declares (results.md lists the others).\n"
        f"# Use: python -m pipeline.paramset {out / 'best_params.yaml'} --apply && dvc exp run\n"
        "model:\n"
        "  temperature: fixed:1\n"
        "train:\n"
        "  epochs: 3\n"
        "  best_alpha: 0.1\n"
        "  lr_backbone: 2.0e-05\n"
        "  out_dir: runs/sweep-hand-best\n")
    # no trial succeeded: no best params file, no DVC command
    paths = write_results(tmp_path / "none", spec, [row("b", STATUS_ERROR, None, 2e-2)])
    assert "best_params" not in paths and not (tmp_path / "none" / "best_params.yaml").exists()
    assert "dvc exp run" not in paths["md"].read_text()
