"""Every way a run's configuration is composed gives, field for field, what it gave when the
fixture was written: the paper configs applied to params.yaml (``paramset``), the same files
through ``simsc train --config ... --set ... --out``, the DVC train stage, every grid trial of
every sweep spec (each profile), and the experiments' base config.

Regenerate (only when a change of effective configuration is intended):
``python tests/test_effective_config.py --write``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "effective_configs.json"
RUN_FLAGS = ["train.seed=3", "train.max_steps=7"]


def _portable(value: Any) -> Any:
    """Absolute paths under the checkout written relative to it (the fixture is the same in
    every clone)."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v) for v in value]
    if isinstance(value, str) and value.startswith(str(REPO)):
        return "<repo>" + value[len(str(REPO)) :]
    return value


def effective_configs() -> dict[str, Any]:
    """name -> the engine configuration (``Config.to_dict()``) each entry point composes."""
    from experiments.miniature import base_config
    from pipeline import paramset, sweep_spec
    from pipeline.stage_train import engine_config
    from simsc.commands.train import train_config
    from simsc.config import load_config, read_overlay
    from simsc.io import read_yaml_mapping

    out: dict[str, Any] = {}
    params = read_yaml_mapping(REPO / "params.yaml", what="params file")
    out["stage_train:params.yaml"] = engine_config(params).to_dict()
    out["experiments:params.yaml"] = base_config(REPO / "params.yaml", ["train.seed=2"]).to_dict()
    configs = REPO / "configs"
    files = sorted((configs / "paper").glob("*.yaml")) + sorted((configs / "protocols").glob("*.yaml"))
    for f in files:
        name = f.relative_to(REPO).as_posix()
        pset = read_overlay(f, what="parameter set", replace=paramset.REPLACED)
        out[f"paramset:{name}"] = paramset.effective(paramset.apply_set(params, pset))
        out[f"train:{name}"] = train_config([str(f)], RUN_FLAGS, "runs/x")[0].to_dict()
    for f in sorted((REPO / "configs" / "sweeps").glob("*.yaml")):
        raw = read_yaml_mapping(f, what="sweep spec")
        for profile in [None, *sorted(raw.get("profiles") or {})]:
            spec = sweep_spec.load_sweep_spec(f, profile, root=REPO)
            for i, ov in enumerate(sweep_spec.expand_grid(spec)):
                grid = {k: v for k, v in ov.items() if "." in k and not str(v).startswith(sweep_spec.SAMPLERS)}
                cfg = load_config(sweep_spec.compose(spec.engine_base(), grid, root=spec.root))
                out[f"sweep:{f.name}:{profile or '-'}:{i}"] = cfg.to_dict()
    return _portable(json.loads(json.dumps(out, default=str)))


def test_every_entry_point_composes_the_same_configuration() -> None:
    expected = json.loads(FIXTURE.read_text(encoding="utf-8"))
    actual = effective_configs()
    assert sorted(actual) == sorted(expected)
    for name in expected:
        for section in expected[name]:
            for key, value in expected[name][section].items():
                assert actual[name][section].get(key) == value, f"{name}: {section}.{key}"
        assert actual[name] == expected[name], name


if __name__ == "__main__" and "--write" in sys.argv:
    sys.path.insert(0, str(REPO))
    FIXTURE.write_text(json.dumps(effective_configs(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {FIXTURE}")
elif __name__ == "__main__":
    pytest.main([__file__, "-q"])
