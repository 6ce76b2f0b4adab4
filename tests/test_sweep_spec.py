"""Sweep specs: loading, profiles, bundles, validation errors, trial expansion (no Ray needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.sweep_spec import (
    SweepSpecError,
    compose,
    expand_grid,
    load_sweep_spec,
    n_trials,
    sample_overrides,
    trial_label,
)
from simsc.config import load_config

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


def write(tmp_path: Path, spec: dict, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    return p


BASE = {
    "model": {"backbone": "resnet18", "pretrained": False},
    "data": {"root": "data/x"},
    "train": {"epochs": 5},
    "tracking": {"experiment": "e"},
}


@pytest.fixture
def base_file(tmp_path):
    return write(tmp_path, BASE, "base.yaml")


def minimal(**kw) -> dict:
    spec = {"name": "s", "base": ["base.yaml"], "search": {"model.temperature": {"grid": ["mlp", "single"]}}}
    spec.update(kw)
    return spec


def test_grid_trials_overrides_and_labels(tmp_path, base_file):
    spec = load_sweep_spec(
        write(
            tmp_path,
            minimal(
                set={"train.epochs": 2},
                search={
                    "model.temperature": {"grid": ["mlp", "fixed:0.03"]},
                    "train.lr_backbone": {"grid": [1e-4, 2e-5, 2e-6]},
                    "dataset": {
                        "grid": {
                            "a": {"data.dataset": "embedded", "data.root": "d/a"},
                            "b": {"data.dataset": "embedded", "data.root": "d/b"},
                        }
                    },
                },
                num_samples=2,
            ),
        ),
        root=tmp_path,
    )
    assert n_trials(spec) == 2 * 3 * 2 * 2
    trials = expand_grid(spec)
    assert len(trials) == 24 and len({tuple(sorted(map(str, t.items()))) for t in trials}) == 12
    assert trials[0] == {
        "model.temperature": "mlp",
        "train.lr_backbone": 1e-4,
        "dataset": "a",
        "data.dataset": "embedded",
        "data.root": "d/a",
    }
    # a sampled Ray config -> the dotted overrides of that trial
    sample = {"model": {"temperature": "fixed:0.03"}, "train": {"lr_backbone": 2e-5}, "dataset": "b"}
    ov = sample_overrides(spec, sample)
    assert ov == {
        "model.temperature": "fixed:0.03",
        "train.lr_backbone": 2e-5,
        "data.dataset": "embedded",
        "data.root": "d/b",
    }
    assert trial_label(spec, sample) == "temperature=fixed:0.03 lr_backbone=2e-05 dataset=b"
    # composition: base + set + sample, relative paths resolved against the driver's folder
    engine = compose(spec.engine_base(), ov, root=tmp_path)
    assert engine["train"]["epochs"] == 2 and engine["model"]["backbone"] == "resnet18"
    assert engine["data"]["root"] == str(tmp_path / "d" / "b")
    assert spec.engine_base()["data"]["root"] == str(tmp_path / "data" / "x")
    assert spec.params_raw["data"]["root"] == "data/x"  # exported params keep the user's paths
    assert "tracking" not in spec.engine_base() and spec.params["tracking"] == {"experiment": "e"}


def test_profiles_merge_set_and_search(tmp_path, base_file):
    path = write(
        tmp_path,
        minimal(
            set={"train.epochs": 3},
            default_profile="toy",
            profiles={
                "toy": {"set": {"data.resolution": 64}},
                "full": {
                    "set": {"data.resolution": 256},
                    "search": {"train.seed": {"grid": [0, 1, 2]}},
                    "resources": {"gpu": 0.5},
                    "max_concurrent_trials": 4,
                },
            },
        ),
    )
    toy = load_sweep_spec(path, root=tmp_path)
    assert toy.profile == "toy" and toy.set == {"train.epochs": 3, "data.resolution": 64} and n_trials(toy) == 2
    full = load_sweep_spec(path, "full", root=tmp_path)
    assert full.set["data.resolution"] == 256 and n_trials(full) == 6
    assert full.resources == {"workers": 1, "cpu": 1.0, "gpu": 0.5} and full.max_concurrent_trials == 4
    assert full.digest() != toy.digest()
    with pytest.raises(SweepSpecError, match=r"no profile 'huge' \(profiles: toy, full\)"):
        load_sweep_spec(path, "huge", root=tmp_path)


def test_cli_overrides_join_set(tmp_path, base_file):
    spec = load_sweep_spec(
        write(tmp_path, minimal()), overrides=["train.epochs=7", "train.lr_backbone=1e-3"], root=tmp_path
    )
    assert spec.engine_base()["train"]["epochs"] == 7 and spec.engine_base()["train"]["lr_backbone"] == 1e-3
    assert spec.max_epochs() == 7


def test_max_epochs_sees_epochs_set_by_bundles(tmp_path, base_file):
    spec = load_sweep_spec(
        write(
            tmp_path,
            minimal(
                search={
                    "dataset": {
                        "grid": {
                            "a": {"data.dataset": "embedded", "train.epochs": 100},
                            "b": {"data.dataset": "embedded", "train.epochs": 10},
                        }
                    }
                }
            ),
        ),
        root=tmp_path,
    )
    assert spec.max_epochs() == 100


@pytest.mark.parametrize(
    "change, message",
    [
        ({"search": {"model.temperatur": {"grid": ["mlp"]}}}, r"search\.model\.temperatur: unknown config key"),
        (
            {"search": {"model.temperature": {"grid": ["mlp", "fixed:-1"]}}},
            r"search\.model\.temperature: .*fixed temperature must be a finite number > 0",
        ),
        ({"search": {"train.lr_backbone": {"grid": [1e-4, -1]}}}, r"search\.train\.lr_backbone: .*must be > 0"),
        (
            {"search": {"train.lr_backbone": {"loguniform": [1e-5, 1e-3]}}},
            r"search\.train\.lr_backbone: search_alg grid takes only grid entries",
        ),
        (
            {"search_alg": "random", "search": {"train.lr_backbone": {"loguniform": [0, 1e-3]}}},
            r"loguniform: low must be > 0",
        ),
        (
            {"search_alg": "random", "search": {"train.lr_backbone": {"uniform": [1e-3, 1e-5]}}},
            r"expected \[low, high\] with low < high",
        ),
        ({"search": {"train.lr_backbone": [1e-4, 1e-3]}}, r"search\.train\.lr_backbone: expected one of"),
        ({"search": {"train.lr_backbone": {"sweep": [1e-4]}}}, r"unknown sampler 'sweep'"),
        ({"search": {"dataset": {"grid": [1, 2]}}}, r"search\.dataset: a bundle"),
        ({"search": {"model": {"grid": {"a": {"model.finetune": "all"}}}}}, r"must not be a config section name"),
        (
            {"set": {"train.lr_backbone": 1e-4}, "search": {"train.lr_backbone": {"grid": [1e-4]}}},
            r"search\.train\.lr_backbone and set both give train\.lr_backbone",
        ),
        ({"set": {"train.epoch": 3}}, r"set\.train\.epoch: unknown config key 'train\.epoch'"),
        ({"scheduler": {"type": "hyperband"}}, r"scheduler\.type: expected one of asha, fifo"),
        (
            {"scheduler": {"type": "asha", "reduction_factor": 1}},
            r"scheduler\.reduction_factor: expected a number >= 2",
        ),
        ({"scheduler": {"type": "asha", "grace": 1}}, r"scheduler: unknown key 'grace'"),
        ({"resources": {"cpu": 0}}, r"resources\.cpu: expected a number > 0"),
        ({"resources": {"gpu": 1.5}}, r"resources\.gpu: expected 0, a fraction"),
        ({"resources": {"tpu": 1}}, r"resources: unknown key 'tpu'"),
        ({"max_concurrent_trials": 0}, r"max_concurrent_trials: expected an integer >= 1"),
        ({"name": "a/b"}, r"name: expected a non-empty string"),
        ({"serach": {}}, r"unknown key 'serach'"),
        ({"search": {}}, r"search: no key to search; a sweep needs at least one"),
        ({"root": "/elsewhere"}, r"unknown key 'root'"),
        ({"base": ["missing.yaml"]}, r"base file not found: .*missing\.yaml"),
        ({"tracking": {"experimnt": "x"}}, r"tracking: unknown key 'experimnt'"),
        ({"metric": "loss", "scheduler": {"type": "asha"}}, r"metric: expected val_pck"),
    ],
)
def test_bad_specs_name_file_and_key(tmp_path, base_file, change, message):
    path = write(tmp_path, minimal(**change))
    with pytest.raises(SweepSpecError, match=message) as info:
        load_sweep_spec(path, root=tmp_path)
    assert str(path) in str(info.value) or "base file" in str(info.value)


def test_missing_spec_file(tmp_path):
    with pytest.raises(SweepSpecError, match="sweep spec not found"):
        load_sweep_spec(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_ready_made_specs_load_in_every_profile(path):
    raw = yaml.safe_load(path.read_text())
    profiles = list(raw.get("profiles") or {}) or [None]
    for profile in profiles:
        spec = load_sweep_spec(path, profile, root=REPO)
        assert n_trials(spec) == len(expand_grid(spec)) >= 2
        if profile == "toy" or profile is None:  # runnable here: the embedded data set on CPU
            assert spec.engine_base()["data"]["dataset"] == "embedded"
            assert spec.resources["gpu"] == 0
        if profile == "full":
            assert spec.resources["gpu"] >= 1
            datasets = {ov.get("data.dataset", spec.engine_base()["data"]["dataset"]) for ov in expand_grid(spec)}
            assert datasets <= {"pfpascal", "pfwillow", "spair"} and datasets


def test_paper_sweeps_cover_the_paper_grids():
    fig3 = load_sweep_spec(REPO / "configs/sweeps/manual_temperature.yaml", "full", root=REPO)
    temps = [e.values for e in fig3.search if e.key == "model.temperature"][0]
    assert temps[0] == "fixed:0.004" and "fixed:1" in temps and "mlp" in temps  # 0.004 .. 1 vs learned
    tab1 = load_sweep_spec(REPO / "configs/sweeps/lr_beta1.yaml", "full", root=REPO)
    lrs = [e.values for e in tab1.search if e.key == "train.lr_backbone"][0]
    assert lrs == [2e-6, 2e-5, 2e-4, 2e-3, 2e-2] and tab1.engine_base()["model"]["temperature"] == "fixed:1"
    tab3 = load_sweep_spec(REPO / "configs/sweeps/single_vs_mlp.yaml", "full", root=REPO)
    # each trial trains its temperature at the paper's rate: 0.005 for single, 1e-4 for mlp (supp. Sec. 6)
    trials = [{k: v for k, v in t.items() if "." in k} for t in expand_grid(tab3)]  # without bundle labels
    rates = {
        t["model.temperature"]: load_config(compose(tab3.engine_base(), t)).resolved_lr_temperature() for t in trials
    }
    assert rates == {"single": 5e-3, "mlp": 1e-4}
    # and the whole backbone at 2e-5, 100 epochs on PF-Pascal, 10 on SPair-71k (Sec. 4.2)
    for trial in trials:
        cfg = load_config(compose(tab3.engine_base(), trial))
        assert cfg.resolved_lr_backbone() == 2e-5 and cfg.data.resolution == 256
        assert cfg.train.epochs == {"pfpascal": 100, "spair": 10}[cfg.data.dataset]
    tab2 = load_sweep_spec(REPO / "configs/sweeps/backbones.yaml", "full", root=REPO)
    combos = {(t["model.backbone"], t["model.finetune"]) for t in expand_grid(tab2)}
    assert combos == {
        ("resnet101", "last_block"),
        ("resnet101", "all"),
        ("resnet50", "last_block"),
        ("resnet50", "all"),
        ("dino_vitb8", "last_block"),
        ("ibot_vitb16", "last_block"),
        ("ibot_vitb16", "all"),
    }


@pytest.mark.parametrize("scheduler", [None, {}, {"grace_period": 2}, {"type": "asha"}])
def test_the_scheduler_default_is_one_value_however_it_is_written(tmp_path, scheduler):
    """No scheduler, an empty one or one without a type all mean fifo (every trial runs to its
    end); ``type: asha`` alone takes ASHA's defaults. Before, these gave asha, fifo or asha."""
    body = {"name": "s", "base": ["params.yaml"], "search": {"train.seed": {"grid": [0, 1]}}}
    if scheduler is not None:
        body["scheduler"] = scheduler
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(body))
    if scheduler == {"grace_period": 2}:  # ASHA settings without type asha are a mistake
        with pytest.raises(SweepSpecError, match="scheduler: unknown key 'grace_period'"):
            load_sweep_spec(path, root=REPO)
        return
    spec = load_sweep_spec(path, root=REPO)
    expected = (
        {"type": "asha", "grace_period": 1, "reduction_factor": 2}
        if scheduler == {"type": "asha"}
        else {"type": "fifo"}
    )
    assert spec.scheduler == expected


def test_a_node_without_the_embedded_set_builds_the_one_params_yaml_describes(tmp_path):
    """A sweep trial on a fresh node builds the embedded set from the spec's ``embedded`` section
    (difficulty, seed, pair counts), not the generator's defaults."""
    import json

    from pipeline.sweep_trial import _ensure_data

    root = tmp_path / "emb"
    engine = {"data": {"dataset": "embedded", "root": str(root)}}
    _ensure_data(engine, {"seed": 3, "n_train": 2, "n_val": 1, "n_test": 1, "difficulty": "hard"})
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["difficulty"] == "hard"
    assert manifest["seed"] == 3 and manifest["counts"] == {"trn": 2, "val": 1, "test": 1}
