"""The schema's name lists (simsc.choices, torch-free) match what the components implement,
and reading a configuration loads neither torch nor timm."""

from __future__ import annotations

import subprocess
import sys

import pytest

from simsc import choices
from simsc.config import ConfigError, load_config
from simsc.heads import list_heads
from simsc.heads.registry import register_head
from simsc.loss import CE_INTERPOLATIONS
from simsc.temperature import FixedTemperature, MLPTemperature, NoL2Temperature, SingleTemperature, build_temperature


def test_reading_a_config_imports_no_torch() -> None:
    code = (
        "import sys, simsc.config as c; c.compose(['configs/paper/pfpascal_resnet101.yaml'], ['train.seed=1']); "
        "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_head_names_are_the_registered_heads() -> None:
    assert choices.HEAD_NAMES >= set(list_heads())
    assert set(list_heads()) >= {"cats", "ncnet", "sfnet"}


def test_a_registered_head_is_accepted_by_the_schema() -> None:
    from simsc.heads.ncnet import NCNetHead

    with pytest.raises(ConfigError, match="model.head"):
        load_config({"model": {"head": "my_head"}})

    @register_head("my_head")
    class MyHead(NCNetHead):
        pass

    try:
        assert load_config({"model": {"head": "my_head"}}).model.head == "my_head"
    finally:
        from simsc.heads.registry import HEADS

        HEADS.pop("my_head")
        choices.HEAD_NAMES.discard("my_head")


def test_ce_interpolation_names_are_the_loss_forms() -> None:
    assert sorted(choices.CE_INTERPOLATION_NAMES) == sorted(CE_INTERPOLATIONS)


@pytest.mark.parametrize(
    "spec, cls",
    [
        ("mlp", MLPTemperature),
        ("single", SingleTemperature),
        ("fixed:0.05", FixedTemperature),
        ("no_l2", NoL2Temperature),
    ],
)
def test_every_temperature_name_builds(spec: str, cls: type) -> None:
    assert isinstance(build_temperature(spec, 8), cls)
    load_config({"model": {"temperature": spec}})  # and the schema accepts it


@pytest.mark.parametrize("spec", ["fixed:x", "fixed:0", "fixed:-1", "fixed:inf", "hot"])
def test_a_bad_temperature_is_refused_by_both(spec: str) -> None:
    with pytest.raises(ValueError) as built:
        build_temperature(spec, 8)
    with pytest.raises(ConfigError) as loaded:
        load_config({"model": {"temperature": spec}})
    assert str(loaded.value) == f"model.temperature: {built.value}"
