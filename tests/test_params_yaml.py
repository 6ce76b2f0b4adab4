"""``params.yaml`` is a fixed point of DVC's ``-S`` writer, so ``dvc exp run -S key=value``
changes exactly that key's line and keeps every comment and the layout (issue: flow-style
lists and ``null`` were rewritten by every experiment)."""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("dvc")


def leaves(node, prefix=""):
    """Every scalar leaf of the params as (dotted key, value); lists count as one leaf."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], node


def changed(before: str, after: str) -> list[str]:
    return [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


def test_set_param_changes_only_its_line(tmp_path):
    import yaml
    from dvc.utils.hydra import apply_overrides

    original = (REPO / "params.yaml").read_text(encoding="utf-8")
    params = yaml.safe_load(original)
    keys = [(k, v) for k, v in leaves(params) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    assert len(keys) > 10
    for key, value in keys:
        path = tmp_path / "params.yaml"
        shutil.copy(REPO / "params.yaml", path)
        apply_overrides(str(path), [f"{key}={value + 1}"])
        diff = changed(original, path.read_text(encoding="utf-8"))
        assert len(diff) == 2 and diff[0].startswith("-") and diff[1].startswith("+"), (key, diff)
        assert str(value + 1) in diff[1], (key, diff)


def test_unchanged_write_is_identity(tmp_path):
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    current = yaml.safe_load(path.read_text(encoding="utf-8"))["train"]["max_steps"]
    apply_overrides(str(path), [f"train.max_steps={current}"])  # the current value: nothing may move
    assert path.read_text(encoding="utf-8") == (REPO / "params.yaml").read_text(encoding="utf-8")


def test_a_key_left_to_its_default_is_added_with_plus_plus_as_one_line(tmp_path):
    """params.yaml holds only what the default run changes, so ``train.seed`` is not in it: DVC's
    ``-S ++train.seed=1`` (add or override) adds exactly one line inside the train section."""
    import yaml
    from dvc.utils.hydra import apply_overrides

    from simsc.config import load_config

    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    original = path.read_text(encoding="utf-8")
    assert "seed" not in yaml.safe_load(original)["train"]
    apply_overrides(str(path), ["++train.seed=1"])
    diff = changed(original, path.read_text(encoding="utf-8"))
    assert diff == ["+  seed: 1"]
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert load_config({k: params[k] for k in ("model", "data", "train", "eval")}).train.seed == 1
