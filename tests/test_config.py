"""Typed config: loading, defaults, overrides and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from simsc.config import (
    Config,
    ConfigError,
    allowed_keys,
    apply_overrides,
    diff_configs,
    dump_config,
    engine_sections,
    load_config,
    read_configs,
    read_yaml,
)

REPO = Path(__file__).resolve().parents[1]


def test_defaults_follow_the_paper():
    cfg = load_config({})
    assert isinstance(cfg, Config)
    m = cfg.model
    assert (m.backbone, m.finetune, m.temperature) == ("resnet101", "last_block", "mlp")
    # sigma null: the model resolves it to 7 (paper Eq. 9), or to the head's own (SFNet 5)
    assert (m.ns, m.nk, m.sigma, m.gamma, m.beta_thres) == (3, 5, None, 0.2, 0.1)
    assert cfg.data.resolution == 256 and cfg.data.batch_size == 8
    assert cfg.resolved_lr_backbone() == 1e-4
    assert cfg.resolved_lr_temperature() == 1e-4
    assert cfg.eval.alphas == [0.05, 0.1, 0.15]


def test_learning_rate_defaults_depend_on_mode():
    assert load_config({"model": {"finetune": "all"}}).resolved_lr_backbone() == 2e-5
    assert load_config({"model": {"temperature": "single"}}).resolved_lr_temperature() == 0.005
    cfg = load_config({"train": {"lr_backbone": "3e-4", "lr_temperature": 1}})
    assert cfg.resolved_lr_backbone() == 3e-4 and cfg.resolved_lr_temperature() == 1.0


def test_yaml_file_and_round_trip(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(
        "model:\n  backbone: resnet18\n  pretrained: false\ntrain:\n  max_steps: 5\n  alphas: 0.1\n"
        "  best_alpha: 0.1\neval:\n  resolution: original\n"
    )
    cfg = load_config(p)
    assert cfg.model.backbone == "resnet18" and cfg.model.pretrained is False
    assert cfg.train.max_steps == 5 and cfg.train.alphas == [0.1]
    assert cfg.eval.resolution == "original"
    d = cfg.to_dict()
    # plain types only: loadable by torch.load(weights_only=True)
    torch.save(d, tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True) == d
    assert load_config(d) == cfg
    dump_config(cfg, tmp_path / "out.yaml")
    assert load_config(tmp_path / "out.yaml") == cfg
    assert sorted(diff_configs(d, load_config({}).to_dict())) == [
        "eval.resolution",
        "model.backbone",
        "model.pretrained",
        "train.alphas",
        "train.max_steps",
    ]


def test_params_yaml_composes_on_the_schema_defaults():
    """The default run is params.yaml's engine sections over the schema: the keys it writes
    change the config, every other key keeps the schema's (paper's) default."""
    params = read_yaml(REPO / "params.yaml")
    cfg = load_config(engine_sections(params))
    assert (cfg.model.backbone, cfg.model.pretrained, cfg.data.resolution, cfg.train.max_steps) == (
        "efficientnet_lite0",
        True,
        160,
        400,
    )
    assert (cfg.model.finetune, cfg.resolved_lr_backbone(), cfg.resolved_lr_temperature()) == ("last_block", 1e-4, 1e-4)
    assert (cfg.model.temperature, cfg.model.sigma, cfg.data.batch_size, cfg.train.seed) == ("mlp", None, 8, 0)
    written = {f"{s}.{k}" for s, sec in engine_sections(params).items() for k in sec}
    changed = set(diff_configs(cfg.to_dict(), load_config({}).to_dict()))
    # every changed key is one params.yaml writes; the written keys that change nothing are the
    # ones DVC stages declare one by one (they must be present in the file)
    assert changed <= written and written - changed == {"data.dataset", "data.root", "train.out_dir"}


def test_unknown_section_names_allowed_sections():
    with pytest.raises(ConfigError, match=r"unknown config section 'optim'.*model, data, train, eval"):
        load_config({"optim": {}})


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(ConfigError) as e:
        load_config({"train": {"learning_rate": 1e-3}})
    msg = str(e.value)
    assert "train.learning_rate" in msg and "lr_backbone" in msg and "max_steps" in msg


@pytest.mark.parametrize(
    "data, field",
    [
        ({"train": {"lr_backbone": -1}}, "train.lr_backbone"),
        ({"train": {"lr_backbone": "fast"}}, "train.lr_backbone"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"epochs": 2.5}}, "train.epochs"),
        ({"train": {"best_alpha": 0.2}}, "train.best_alpha"),
        ({"data": {"batch_size": "eight"}}, "data.batch_size"),
        ({"data": {"resolution": 8}}, "data.resolution"),
        ({"model": {"finetune": "some"}}, "model.finetune"),
        ({"model": {"temperature": "fixed:abc"}}, "model.temperature"),
        ({"model": {"temperature": "softmax"}}, "model.temperature"),
        ({"model": {"ns": 2}}, "model.ns"),
        ({"train": {"log_grad_stats": "maybe"}}, "train.log_grad_stats"),
        ({"eval": {"resolution": "huge"}}, "eval.resolution"),
        ({"eval": {"beta_eval": 0}}, "eval.beta_eval"),
        ({"train": {"device": "tpu"}}, "train.device"),
        ({"model": {"backbone": None}}, "model.backbone"),
    ],
)
def test_bad_values_name_the_field(data, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(data)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(p)
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)


def test_overrides_parse_yaml_values():
    base = {"model": {"backbone": "resnet18"}}
    out = apply_overrides(
        base,
        [
            "train.lr_backbone=1e-3",
            "train.max_steps=null",
            "model.pretrained=false",
            "train.alphas=[0.05, 0.1]",
            "model.temperature=fixed:0.03",
        ],
    )
    assert base == {"model": {"backbone": "resnet18"}}  # not modified in place
    cfg = load_config(out)
    assert cfg.train.lr_backbone == 1e-3 and cfg.train.max_steps is None
    assert cfg.model.pretrained is False and cfg.train.alphas == [0.05, 0.1]
    assert cfg.model.temperature == "fixed:0.03"


@pytest.mark.parametrize(
    "item, needle",
    [
        ("train.lr=1", "allowed keys in 'train'"),
        ("lr=1", "allowed keys"),
        ("optim.lr=1", "allowed keys"),
        ("train.lr_backbone", "key=value"),
    ],
)
def test_override_errors(item, needle):
    with pytest.raises(ConfigError, match=needle):
        apply_overrides({}, [item])


def test_every_allowed_key_round_trips_through_set():
    """Each key allowed_keys() lists can be set with --set and reaches the loaded config: its
    default value written as text loads back to the default config."""
    defaults = load_config({}).to_dict()
    keys = allowed_keys()
    assert len(keys) == sum(len(v) for v in defaults.values())
    overrides = []
    for key in keys:
        section, name = key.split(".")
        value = defaults[section][name]
        text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        overrides.append(f"{key}={text}")
    assert load_config(apply_overrides({}, overrides)) == load_config({})
    assert load_config(apply_overrides({}, ["train.seed=7", "eval.alphas=[0.1]"])).train.seed == 7


def test_read_configs_composes_files_in_order_and_names_what_it_ignores(tmp_path):
    """``simsc train --config params.yaml --config configs/overlays/toy.yaml``: the engine
    sections of both, the later file winning; params.yaml's pipeline sections are named."""
    engine, ignored = read_configs([REPO / "params.yaml", REPO / "configs" / "overlays" / "toy.yaml"])
    cfg = load_config(engine)
    assert (cfg.model.backbone, cfg.data.resolution, cfg.train.epochs, cfg.train.max_steps) == (
        "efficientnet_lite0",
        128,
        3,
        None,
    )
    assert cfg.data.cache_dir is None and cfg.train.val_max_pairs == 50  # toy overrides, params.yaml's kept
    assert ignored == ["embedded", "preprocess", "evaluate", "report", "tracking"]
    typo = tmp_path / "typo.yaml"
    typo.write_text("modle: {backbone: resnet50}\n")
    assert read_configs([typo]) == ({}, ["modle"])
