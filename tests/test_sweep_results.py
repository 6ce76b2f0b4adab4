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
from pipeline.sweep_spec import compose, load_sweep_spec
from simsc.config import engine_sections, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def spec():
    return load_sweep_spec(REPO / "configs" / "sweeps" / "lr_beta1.yaml", "toy", root=REPO)


def row(trial, status, best, lr):
    return {
        "trial_id": trial,
        "label": f"lr_backbone={lr}",
        "status": status,
        "train.lr_backbone": lr,
        "epochs_done": 3 if status == STATUS_COMPLETED else 1,
        "epochs": 3,
        "best_val_pck": best,
        "error": "boom" if status == STATUS_ERROR else "",
        "_overrides": {"train.lr_backbone": lr},
        "_checkpoint": None,
        "_path": f"/x/{trial}",
    }


def test_best_row_ignores_errors_and_missing_metrics():
    rows = [
        row("a", STATUS_COMPLETED, 10.0, 2e-5),
        row("b", STATUS_ERROR, None, 2e-2),
        row("c", STATUS_STOPPED, 12.5, 2e-4),
        row("d", STATUS_COMPLETED, 11.0, 2e-6),
    ]
    assert best_row(rows)["trial_id"] == "c"  # stopped early but best so far: still the best
    assert best_row([row("b", STATUS_ERROR, None, 2e-2)]) is None


def trained(params: dict) -> dict:
    """The sections a trial trains with, as the trainer sees them."""
    cfg = load_config({k: params[k] for k in ("model", "data", "train", "eval") if k in params}).to_dict()
    return {k: cfg[k] for k in ("model", "data", "train")}


def test_best_params_apply_to_params_yaml(spec, tmp_path):
    """Applying best_params.yaml makes params.yaml train exactly the best trial's configuration,
    the toy profile's base files (128 px, 3 epochs, no cache) included."""
    best = row("c", STATUS_STOPPED, 12.5, 2e-4)
    params = best_params(spec, best)
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    merged = paramset.keep_declared(paramset.apply_set(base, params), ["data.dataset", "data.root", "train.out_dir"])
    paramset.check(merged, "best_params.yaml")
    cfg = load_config({k: merged[k] for k in ("model", "data", "train", "eval")})
    assert (cfg.train.lr_backbone, cfg.model.temperature) == (2e-4, "fixed:1")  # searched, and the spec's set
    assert (cfg.train.epochs, cfg.train.max_steps, cfg.data.resolution, cfg.data.cache_dir) == (3, None, 128, None)
    assert cfg.train.out_dir == "runs/default"  # not a new folder: dvc exp run keeps runs/default
    expected = load_config(compose(engine_sections(spec.params_raw), {**spec.set, **best["_overrides"]}))
    assert trained(merged) == {k: expected.to_dict()[k] for k in ("model", "data", "train")}


def test_dvc_flags_make_params_yaml_train_the_best_trial(spec, tmp_path):
    """DVC's own -S parser applied to a copy of params.yaml gives the best trial's configuration."""
    from dvc.utils.hydra import apply_overrides

    best = row("c", STATUS_COMPLETED, 12.5, 2e-4)
    flags = dvc_flags(spec, best)
    assert flags.startswith("dvc exp run ")
    assert "-S '++train.lr_backbone=0.0002'" in flags and "-S '++model.temperature=fixed:1'" in flags
    assert "-S '++data.cache_dir=null'" in flags and "train.out_dir" not in flags
    # its own registered model; evaluated at the size it trained at (the toy's 128 px)
    assert "-S '++tracking.registered_model=simsc-sweep-lr_beta1'" in flags
    assert "-S '++evaluate.sets.test_160.resolution=128'" in flags
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    apply_overrides(str(path), [f.strip("'") for f in flags.split(" -S ")[1:]])
    params = yaml.safe_load(path.read_text())
    assert params["tracking"]["registered_model"] == "simsc-sweep-lr_beta1"
    assert params["evaluate"]["sets"]["test_160"]["resolution"] == 128
    assert params["evaluate"]["sets"]["test_original"]["resolution"] == "original"
    assert params["preprocess"]["resolutions"] == [128, "original"]
    expected = load_config(compose(engine_sections(spec.params_raw), {**spec.set, **best["_overrides"]}))
    assert trained(params) == {k: expected.to_dict()[k] for k in ("model", "data", "train")}


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
def test_handoff_reproduces_the_trial_for_every_spec(spec_file, profile, tmp_path):
    """For every spec and profile: each suggested ``-S`` key is declared by a stage in dvc.yaml
    (so ``dvc exp run`` reruns what it changes) and is one a trial reads; DVC's -S applied to
    params.yaml, and best_params.yaml applied with paramset, both train the trial's config."""
    from dvc.utils.hydra import apply_overrides

    from pipeline.sweep_spec import _candidate_overrides

    spec = load_sweep_spec(spec_file, profile, root=REPO)
    declared = declared_in_dvc_yaml()
    overrides = {}
    for entry in spec.search:
        overrides.update(next(iter(_candidate_overrides(entry))))
    best = {"trial_id": "t", "label": "x", "best_val_pck": 1.0, "_overrides": overrides}
    flags = [f.strip("'") for f in dvc_flags(spec, best).split(" -S ")[1:]]
    keys = [f.removeprefix("++").split("=", 1)[0] for f in flags]
    assert "train.out_dir" not in keys
    assert "train.seed" not in overrides or "train.seed" not in keys  # a searched seed is not handed on
    assert "tracking.registered_model" in keys
    for key in keys:
        assert any(key == d or key.startswith(d + ".") for d in declared), (spec_file.name, key)
        assert key.split(".")[0] in ("model", "data", "train", "tracking", "evaluate", "preprocess"), key
    kept = {
        k: v
        for k, v in {**spec.set, **overrides}.items()
        if k.split(".")[0] in ("model", "data", "train") and not (k == "train.seed" and k in overrides)
    }
    expected = load_config(compose(engine_sections(spec.params_raw), kept)).to_dict()
    expected = {k: expected[k] for k in ("model", "data", "train")}
    expected["train"]["out_dir"] = "runs/default"  # the workspace's run folder stays
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    apply_overrides(str(path), flags)
    assert trained(yaml.safe_load(path.read_text())) == expected
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    assert trained(paramset.apply_set(base, best_params(spec, best))) == expected


def test_handoff_does_not_pin_a_searched_seed(spec):
    best = row("c", STATUS_COMPLETED, 12.5, 2e-4)
    best["_overrides"] = {**best["_overrides"], "train.seed": 1}
    kept, dropped = handoff(spec, best)
    assert "train.seed" not in kept and "replicates" in dropped["train.seed"]
    assert "seed" not in yaml.safe_dump(best_params(spec, best))


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
        "b,lr_backbone=0.02,error,0.02,1,3,,boom\n"
    )
    # -S: what differs from params.yaml (best_alpha 0.1 is its value already); ++ adds a key
    # params.yaml leaves to its default (epochs, lr_backbone)
    flags = (
        "dvc exp run -S '++model.temperature=fixed:1' -S '++train.epochs=3' "
        "-S '++train.lr_backbone=2.0e-05' -S '++tracking.registered_model=simsc-sweep-hand'"
    )
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
        "```\n"
    )
    assert paths["best_params"].read_text() == (
        "# Best trial a of sweep hand (lr_backbone=2e-05): best val PCK 10.00\n"
        "# Its engine config as differences from the schema defaults (results.md lists sweep keys left out).\n"
        f"# Use: python -m pipeline.paramset {out / 'best_params.yaml'} --apply && "
        "dvc exp run -S 'tracking.registered_model=simsc-sweep-hand'\n"
        # the whole trained configuration: params.yaml's default run (the base) and the sweep's keys
        "model:\n"
        "  backbone: efficientnet_lite0\n"
        "  temperature: fixed:1\n"
        "data:\n"
        "  resolution: 160\n"
        "  cache_dir: cache\n"
        "train:\n"
        "  epochs: 3\n"
        "  max_steps: 400\n"
        "  lr_backbone: 2.0e-05\n"
        "  checkpoint_every_steps: 100\n"
        "  val_max_pairs: 50\n"
        "eval:\n"
        "  resolution: 160\n"
    )
    # no trial succeeded: no best params file, no DVC command
    paths = write_results(tmp_path / "none", spec, [row("b", STATUS_ERROR, None, 2e-2)])
    assert "best_params" not in paths and not (tmp_path / "none" / "best_params.yaml").exists()
    assert "dvc exp run" not in paths["md"].read_text()
