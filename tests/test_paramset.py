from pathlib import Path

import pytest
import yaml

from simsc.io import yaml_load

from pipeline.paramset import check, main, merge

ROOT = Path(__file__).resolve().parents[1]
PARAMSETS = sorted((ROOT / "configs" / "paper").glob("*.yaml"))


def test_merge_replaces_evaluation_sets_and_merges_the_rest():
    base = {"train": {"lr": 1, "seed": 0}, "evaluate": {"sets": {"a": {"x": 1}}, "sweep": ["a"]}}
    out = merge(base, {"train": {"lr": 2}, "evaluate": {"sets": {"b": {"x": 2}}}})
    assert out == {"train": {"lr": 2, "seed": 0}, "evaluate": {"sets": {"b": {"x": 2}}, "sweep": ["a"]}}
    assert base["train"]["lr"] == 1  # the input is not modified


@pytest.mark.parametrize("paramset", PARAMSETS, ids=[p.stem for p in PARAMSETS])
def test_every_paper_parameter_set_gives_a_valid_config(paramset):
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    merged = merge(base, yaml.safe_load(paramset.read_text()))
    check(merged, paramset.name)  # raises SystemExit when invalid
    assert merged["data"]["dataset"] in ("pfpascal", "spair")
    assert merged["data"]["resolution"] == 256 and merged["train"]["max_steps"] is None
    assert "test_160" not in merged["evaluate"]["sets"]
    assert set(merged["evaluate"]["sweep"]) <= set(merged["evaluate"]["sets"])
    assert merged["report"]["picture_set"] in merged["evaluate"]["sets"]
    assert "# Needs:" in paramset.read_text()


def test_apply_writes_the_merged_params(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    paramset = ROOT / "configs" / "paper" / "pfpascal_resnet101_star_withl2norm.yaml"
    assert main([str(paramset), "--params", str(params), "--apply"]) == 0
    text = params.read_text()
    written = yaml_load(text)
    assert written["model"]["temperature"] == "fixed:1" and written["train"]["lr_backbone"] == 2e-5
    # written in place: the comments of params.yaml survive (the section rulers, the inline notes)
    original = (ROOT / "params.yaml").read_text()
    kept = [line for line in original.splitlines() if line.lstrip().startswith("# ---")]
    assert kept and all(line in text.splitlines() for line in kept)
    assert written["embedded"] == yaml.safe_load((ROOT / "params.yaml").read_text())["embedded"]
    assert "model.temperature: 'mlp' -> 'fixed:1'" in capsys.readouterr().out


def test_invalid_parameter_set_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  dataset: imagenet\n")
    with pytest.raises(SystemExit, match="imagenet"):
        main([str(bad), "--params", str(ROOT / "params.yaml")])
    bad.write_text("model:\n  temperature: hot\n")
    with pytest.raises(SystemExit, match="not a valid config"):
        main([str(bad), "--params", str(ROOT / "params.yaml")])
