from pathlib import Path

import pytest

from pipeline.paramset import REPLACED, apply_set, changes, check, keep_declared, main, merge
from simsc.config import load_config, read_overlay
from simsc.io import yaml_load

ROOT = Path(__file__).resolve().parents[1]
PARAMSETS = sorted((ROOT / "configs" / "paper").glob("*.yaml"))
PARAMS = yaml_load((ROOT / "params.yaml").read_text())


def test_merge_replaces_evaluation_sets_and_merges_the_rest():
    base = {"train": {"lr": 1, "seed": 0}, "evaluate": {"sets": {"a": {"x": 1}}, "sweep": ["a"]}}
    out = merge(base, {"train": {"lr": 2}, "evaluate": {"sets": {"b": {"x": 2}}}})
    assert out == {"train": {"lr": 2, "seed": 0}, "evaluate": {"sets": {"b": {"x": 2}}, "sweep": ["a"]}}
    assert base["train"]["lr"] == 1  # the input is not modified


def test_apply_set_replaces_engine_sections_and_merges_pipeline_sections():
    params = {
        "model": {"backbone": "resnet18", "pretrained": False},
        "train": {"max_steps": 300},
        "report": {"out": "r.md", "n_pictures": 3},
        "evaluate": {"sets": {"a": {}}, "sweep": ["a"]},
    }
    paramset = {"model": {"finetune": "all"}, "report": {"n_pictures": 5}, "evaluate": {"sets": {"b": {}}}}
    out = apply_set(params, paramset)
    # nothing of the previous experiment's engine keys survives: resnet18 and 300 steps are gone
    assert out["model"] == {"finetune": "all"} and out["train"] == {}
    assert out["report"] == {"out": "r.md", "n_pictures": 5}
    assert out["evaluate"] == {"sets": {"b": {}}, "sweep": ["a"]}
    assert list(out) == list(params)  # the file's section order is kept


def test_keep_declared_writes_the_default_of_a_key_dvc_needs():
    out = keep_declared({"data": {"resolution": 128}, "train": {}}, ["data.root", "train.out_dir", "evaluate.x"])
    assert out["data"] == {"resolution": 128, "root": load_config().data.root}
    assert out["train"] == {"out_dir": load_config().train.out_dir}


@pytest.mark.parametrize("paramset", PARAMSETS, ids=[p.stem for p in PARAMSETS])
def test_every_paper_parameter_set_gives_the_papers_setup(paramset):
    merged = apply_set(PARAMS, read_overlay(paramset, replace=REPLACED))
    check(merged, paramset.name)  # raises SystemExit when invalid
    cfg = load_config({k: merged[k] for k in ("model", "data", "train", "eval") if k in merged})
    assert cfg.data.dataset in ("pfpascal", "spair")
    # the paper's protocol (Sec. 4.1, 4.2): 256 px, pretrained, no step cap, whole validation set; the
    # DINOv2 sets at the field's resolutions for it (patch 14: 518 / 840 px = 37 / 60 cells)
    if cfg.model.backbone.startswith("dinov2"):
        assert cfg.data.resolution in (518, 840) and cfg.eval.resolution == cfg.data.resolution
        assert paramset.stem.endswith(str(cfg.data.resolution))
        assert merged["preprocess"]["resolutions"] == [cfg.data.resolution, "original"]
    else:
        assert cfg.data.resolution == 256 and cfg.eval.resolution == 256
    assert cfg.model.pretrained not in (False, "false") and cfg.train.max_steps is None
    assert cfg.train.val_max_pairs is None and cfg.data.cache_dir == "cache"
    assert cfg.train.epochs == (10 if cfg.data.dataset == "spair" else 100)
    if cfg.model.finetune != "none":  # a frozen backbone has no learning rate
        assert cfg.resolved_lr_backbone() == (2e-5 if cfg.model.finetune == "all" else 1e-4)
    assert cfg.train.out_dir == f"runs/{paramset.stem}"
    assert merged["tracking"]["registered_model"] == f"simsc-{paramset.stem}"
    assert "test_160" not in merged["evaluate"]["sets"]
    assert set(merged["evaluate"]["sweep"]) <= set(merged["evaluate"]["sets"])
    assert merged["report"]["picture_set"] in merged["evaluate"]["sets"]


def test_apply_writes_the_new_params_in_place(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    paramset = ROOT / "configs" / "paper" / "pfpascal_resnet101_star_withl2norm.yaml"
    assert main([str(paramset), "--params", str(params), "--apply"]) == 0
    text = params.read_text()
    written = yaml_load(text)
    assert written["model"] == {"pretrained": "resnet101.tv_in1k", "finetune": "all", "temperature": "fixed:1"}
    # the keys DVC stages declare one by one stay in the file
    assert written["data"]["dataset"] == "pfpascal" and written["train"]["out_dir"].endswith("withl2norm")
    assert written["eval"] == {}
    # written in place: the comments of params.yaml survive
    original = (ROOT / "params.yaml").read_text()
    kept = [line for line in original.splitlines() if line.startswith("#")]
    assert kept and all(line in text.splitlines() for line in kept)
    assert "# embedded | pfpascal | pfwillow | spair" in text
    assert written["embedded"] == PARAMS["embedded"]
    out = capsys.readouterr().out
    # the change list shows effective values: a key left to the paper's default shows that default
    assert "model.temperature: 'mlp' -> 'fixed:1'" in out
    assert "train.lr_backbone: 0.0001 -> 2e-05" in out and "model.backbone: 'efficientnet_lite0' -> 'resnet101'" in out
    # applying the same set again changes nothing
    assert main([str(paramset), "--params", str(params), "--apply"]) == 0
    assert params.read_text() == text


def test_invalid_parameter_set_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  dataset: imagenet\n")
    with pytest.raises(SystemExit, match="imagenet"):
        main([str(bad), "--params", str(ROOT / "params.yaml")])
    bad.write_text("model:\n  temperature: hot\n")
    with pytest.raises(SystemExit, match="not a valid config"):
        main([str(bad), "--params", str(ROOT / "params.yaml")])
    bad.write_text("defaults: [missing.yaml]\n")
    with pytest.raises(SystemExit, match="missing.yaml"):
        main([str(bad), "--params", str(ROOT / "params.yaml")])


def test_defaults_lists_compose_in_order_and_cycles_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("train: {epochs: 5, seed: 1}\nevaluate: {sets: {x: {}}}\n")
    (tmp_path / "b.yaml").write_text("defaults: [a.yaml]\ntrain: {seed: 2}\nevaluate: {sets: {y: {}}}\n")
    (tmp_path / "c.yaml").write_text("defaults: [b.yaml]\ntrain: {max_steps: 3}\n")
    assert read_overlay(tmp_path / "c.yaml", replace=REPLACED) == {
        "train": {"epochs": 5, "seed": 2, "max_steps": 3},
        "evaluate": {"sets": {"y": {}}},
    }
    (tmp_path / "a.yaml").write_text("defaults: [c.yaml]\n")
    with pytest.raises(ValueError, match="cycle"):
        read_overlay(tmp_path / "c.yaml")


def test_changes_lists_pipeline_keys_as_written():
    base = {"report": {"n_pictures": 3}}
    assert changes(base, {"report": {"n_pictures": 4}}) == ["report.n_pictures: 3 -> 4"]
