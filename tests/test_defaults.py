"""Every default is written once (issue: defaults lived in six places).

The home of the paper's values is :mod:`simsc.defaults`, of every key the schema
(:mod:`simsc.config`). Config files, sweep profiles, command lines and function signatures
hold only what differs. The YAML checks are one rule: removing a key from a file must change
what the file composes to; a key whose removal changes nothing restates a default (of the
schema, of ``params.yaml`` or of the files it builds on). The code checks find literal
defaults equal to the schema's under the schema's key names.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.paramset import REPLACED, apply_set
from pipeline.paramset import effective as engine_effective
from pipeline.sweep_spec import load_sweep_spec
from simsc.config import SECTIONS, engine_sections, load_config, merge_mappings, read_overlay
from simsc.io import read_yaml_mapping

REPO = Path(__file__).resolve().parents[1]
PARAMS = read_yaml_mapping(REPO / "params.yaml")
PARAMSETS = sorted((REPO / "configs" / "paper").glob("*.yaml")) + sorted(
    (REPO / "configs" / "protocols").glob("*.yaml")
)
OVERLAYS = sorted((REPO / "configs" / "overlays").glob("*.yaml"))
SPECS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


def effective(params: dict[str, Any]) -> dict[str, Any]:
    """What a params mapping means: the engine config as the trainer sees it (learning rates
    resolved: ``null`` is the paper's rate for the mode), and the pipeline sections as written."""
    return {**engine_effective(params), **{k: v for k, v in params.items() if k not in SECTIONS}}


def leaves(node: dict[str, Any], prefix: str = ""):
    """Dotted keys of every leaf (a mapping in ``REPLACED`` counts as one leaf)."""
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and dotted not in REPLACED:
            yield from leaves(value, dotted + ".")
        else:
            yield dotted


def without(node: dict[str, Any], dotted: str) -> dict[str, Any]:
    out = copy.deepcopy(node)
    *parents, last = dotted.split(".")
    cur = out
    for p in parents:
        cur = cur[p]
    del cur[last]
    return out


def restated(own: dict[str, Any], compose) -> list[str]:
    """The keys of ``own`` whose removal leaves ``compose(own)`` unchanged (a key whose removal
    makes the config invalid is needed)."""
    full = compose(own)

    def same_without(key: str) -> bool:
        try:
            return compose(without(own, key)) == full
        except ValueError:
            return False

    return [key for key in leaves(own) if same_without(key)]


def test_the_restatement_check_finds_a_planted_default():
    # guards the tests below: a paper config restating resolution 256 (the schema's) and one
    # restating the protocol's dataset are both found; a real change is not
    own = {"model": {"backbone": "resnet50"}, "data": {"resolution": 256, "dataset": "pfpascal"}}
    parents = read_overlay(REPO / "configs" / "protocols" / "pfpascal.yaml", replace=REPLACED)
    assert restated(own, lambda o: effective(apply_set(PARAMS, merge_mappings(parents, o, replace=REPLACED)))) == [
        "data.resolution",
        "data.dataset",
    ]


@pytest.mark.parametrize("path", PARAMSETS, ids=[p.stem for p in PARAMSETS])
def test_parameter_sets_hold_only_what_differs(path):
    """A paper config (or protocol) applied to params.yaml replaces the engine sections, so its
    engine keys must differ from the schema's defaults and from the files it builds on; its
    pipeline keys from params.yaml's."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    parents: dict[str, Any] = {}
    for parent in raw.pop("defaults", []):
        parents = merge_mappings(parents, read_overlay(path.parent / parent, replace=REPLACED), replace=REPLACED)
    assert restated(raw, lambda own: effective(apply_set(PARAMS, merge_mappings(parents, own, replace=REPLACED)))) == []


@pytest.mark.parametrize("path", OVERLAYS, ids=[p.stem for p in OVERLAYS])
def test_overlays_hold_only_what_differs_from_params_yaml(path):
    own = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert restated(own, lambda o: effective(merge_mappings(PARAMS, o, replace=REPLACED))) == []


def dvc_declared_keys() -> set[str]:
    """``section.key`` params a DVC stage declares one by one: DVC needs them in params.yaml."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return {p for s in stages.values() for p in s.get("do", s).get("params", []) if isinstance(p, str) and "." in p}


def test_params_yaml_engine_sections_hold_only_what_the_default_run_changes():
    engine = engine_sections(PARAMS)
    rest = {k: v for k, v in PARAMS.items() if k not in SECTIONS}
    found = restated(engine, lambda e: effective({**rest, **e}))
    assert sorted(set(found) - dvc_declared_keys()) == []
    assert dvc_declared_keys() & set(leaves(engine)) == {"data.dataset", "data.root", "train.out_dir"}


def spec_fingerprint(spec) -> dict[str, Any]:
    """Everything a loaded sweep spec decides, except the ``set`` mapping itself (its effect
    is in ``params``)."""
    out = dataclasses.asdict(spec)
    for key in ("path", "set", "params_raw", "name", "description"):
        out.pop(key)
    out["params"] = effective(out["params"])
    return out


def spec_restated(path: Path, tmp_path: Path) -> list[str]:
    """Keys of a sweep spec (top level, ``set`` entries, profile keys) whose removal changes
    no profile's loaded spec."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    profiles = [None, *(raw.get("profiles") or {})]

    def loaded(data: dict[str, Any]) -> list[dict[str, Any]]:
        f = tmp_path / path.name
        f.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return [spec_fingerprint(load_sweep_spec(f, p, root=REPO)) for p in profiles]

    full = loaded(raw)
    candidates = [k for k in raw if k not in ("name", "description", "set", "profiles", "search")]
    candidates += [f"set.{k}" for k in raw.get("set") or {}]
    for name, prof in (raw.get("profiles") or {}).items():
        candidates += [f"profiles.{name}.{k}" for k in prof if k not in ("set", "search")]
        candidates += [f"profiles.{name}.set.{k}" for k in prof.get("set") or {}]
    found = []
    for key in candidates:
        data = copy.deepcopy(raw)
        *parents, last = _split(key)
        node = data
        for p in parents:
            node = node[p]
        del node[last]
        try:
            if loaded(data) == full:
                found.append(key)
        except ValueError:
            pass
    return found


def _split(key: str) -> list[str]:
    """``profiles.toy.set.train.seed`` -> ``[profiles, toy, set, train.seed]`` (set keys are dotted)."""
    head, sep, tail = key.partition("set.")
    parts = [p for p in head.split(".") if p]
    return parts + ["set", tail] if sep else parts


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_sweep_specs_hold_only_what_differs(path, tmp_path):
    assert spec_restated(path, tmp_path) == []


def test_the_sweep_check_finds_planted_restatements(tmp_path):
    spec = tmp_path / "src.yaml"
    spec.write_text(
        "name: x\nbase: [params.yaml]\nset: {train.seed: 0, train.max_steps: 7}\nsearch_alg: grid\n"
        "scheduler: {type: fifo}\nsearch: {model.temperature: {grid: [mlp, single]}}\n"
    )
    assert spec_restated(spec, tmp_path) == ["search_alg", "scheduler", "set.train.seed"]


# --- code -----------------------------------------------------------------------------------

#: Literal defaults that share a schema key's name but not its meaning.
ALLOWED = {
    ("simsc/backbones.py", "measure_cell_origin", "seed"): "the probe's random input, not training",
    ("simsc/data/embedded.py", "build_embedded_dataset", "seed"): "the embedded set's draw (params.yaml embedded.seed)",
    ("simsc/data/embedded.py", "--seed", "seed"): "the embedded set's draw (params.yaml embedded.seed)",
    ("simsc/data/pfwillow.py", "__init__", "split"): "PF-Willow has only a test split",
    ("simsc/engine/toy.py", "__init__", "seed"): "the toy data's draw",
}


def schema_defaults() -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for section in load_config().to_dict().values():
        for key, value in section.items():
            out.setdefault(key, []).append(value)
    return out


def literal_defaults(path: Path, source: str) -> list[tuple[str, str, Any, int]]:
    """``(owner, name, value, line)`` of literal parameter defaults and ``add_argument(default=)``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            positional = a.posonlyargs + a.args
            pairs = list(zip(positional[len(positional) - len(a.defaults) :], a.defaults, strict=True))
            pairs += [(x, d) for x, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is not None]
            for arg, default in pairs:
                if isinstance(default, (ast.Constant, ast.List, ast.Tuple)):
                    out.append((node.name, arg.arg, ast.literal_eval(default), node.lineno))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            flags = [c.value for c in node.args if isinstance(c, ast.Constant) and isinstance(c.value, str)]
            kws = {kw.arg: kw.value for kw in node.keywords}
            dest = (
                kws["dest"].value
                if isinstance(kws.get("dest"), ast.Constant)
                else (flags[0].lstrip("-").replace("-", "_") if flags else None)
            )
            if dest and isinstance(kws.get("default"), ast.Constant):
                out.append((flags[0] if flags else dest, dest, kws["default"].value, node.lineno))
    return out


def restated_in_code(path: Path, source: str, defaults: dict[str, list[Any]]) -> list[str]:
    rel = path.relative_to(REPO).as_posix() if path.is_absolute() else path.as_posix()
    found = []
    for owner, name, value, line in literal_defaults(path, source):
        if value is None or name not in defaults or (rel, owner, name) in ALLOWED:
            continue
        if any(value == d and type(value) is type(d) or str(value) == str(d) for d in defaults[name]):
            found.append(f"{rel}:{line} {owner}({name}={value!r})")
    return found


CODE = [
    p
    for d in ("simsc", "pipeline", "experiments")
    for p in sorted((REPO / d).rglob("*.py"))
    if p.name not in ("config.py", "defaults.py")
]


def test_no_signature_or_command_line_restates_a_schema_default():
    defaults = schema_defaults()
    found = [hit for path in CODE for hit in restated_in_code(path, path.read_text(encoding="utf-8"), defaults)]
    assert found == []


def test_the_code_check_finds_planted_defaults():
    source = (
        "def f(x, gamma: float = 0.2, nk=5, resolution=128):\n    pass\n"
        "parser.add_argument('--batch-size', type=int, default=8)\n"
        "parser.add_argument('--seed', default=3)\n"
    )
    assert restated_in_code(Path("simsc/planted.py"), source, schema_defaults()) == [
        "simsc/planted.py:1 f(gamma=0.2)",
        "simsc/planted.py:1 f(nk=5)",
        "simsc/planted.py:3 --batch-size(batch_size=8)",
    ]


def test_the_schema_reads_the_papers_values_from_simsc_defaults():
    """config.py writes no paper value itself: every field default that is one of
    simsc.defaults' values is a reference to it, not a literal."""
    from simsc import defaults as D

    values = {v for k, v in vars(D).items() if k.isupper() and isinstance(v, (int, float, str))}
    tree = ast.parse((REPO / "simsc" / "config.py").read_text(encoding="utf-8"))
    literal_fields = [
        (n.target.id, n.value.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.AnnAssign)
        and isinstance(n.target, ast.Name)
        and isinstance(n.value, ast.Constant)
        and n.value.value in values
        and not isinstance(n.value.value, bool)
        and n.value.value is not None
    ]
    # allowed: a literal equal to a defaults value by coincidence, with its own meaning
    assert literal_fields == [("best_alpha", 0.1)]
