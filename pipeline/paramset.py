"""Apply a named parameter set (``configs/paper/*.yaml``) to ``params.yaml``.

    python -m pipeline.paramset configs/paper/pfpascal_resnet101.yaml           # show the changes
    python -m pipeline.paramset configs/paper/pfpascal_resnet101.yaml --apply   # write params.yaml
    dvc exp run                                                                 # then run it

A parameter set is a partial ``params.yaml``: mappings are merged key by key, except
``evaluate.sets`` which is replaced whole (a protocol's evaluation sets are not added to the
default's), and lists and scalars replace the default. The merged file is checked with
:func:`simsc.config.load_config` and every dataset name against the registry before it is
written (atomically).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from simsc.config import load_config
from simsc.data.registry import DATASETS
from simsc.io import atomic_write_bytes, yaml_load

#: Dotted keys whose mapping is replaced whole instead of merged.
REPLACED = frozenset({"evaluate.sets"})
ENGINE_SECTIONS = ("model", "data", "train", "eval")


def merge(base: dict[str, Any], override: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base`` (see the module docstring)."""
    out = dict(base)
    for key, value in override.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict) and dotted not in REPLACED:
            out[key] = merge(out[key], value, dotted + ".")
        else:
            out[key] = value
    return out


def changes(base: Any, merged: Any, prefix: str = "") -> list[str]:
    """``key: old -> new`` lines for every leaf that differs."""
    if isinstance(base, dict) and isinstance(merged, dict):
        lines = []
        for key in sorted(set(base) | set(merged)):
            lines += changes(base.get(key), merged.get(key), f"{prefix}{key}.")
        return lines
    return [] if base == merged else [f"{prefix[:-1]}: {base!r} -> {merged!r}"]


def check(params: dict[str, Any], source: str) -> None:
    """The merged parameters must load as an engine config and name registered data sets."""
    try:
        load_config({k: params[k] for k in ENGINE_SECTIONS if k in params})
    except ValueError as exc:
        raise SystemExit(f"{source}: the merged parameters are not a valid config: {exc}") from None
    names = [params.get("data", {}).get("dataset")]
    names += [s.get("dataset") for s in params.get("evaluate", {}).get("sets", {}).values()]
    unknown = sorted({n for n in names if n not in DATASETS})
    if unknown:
        raise SystemExit(f"{source}: unknown data set(s) {unknown}; known: {sorted(DATASETS)}")


def write_in_place(path: Path, merged: dict[str, Any]) -> None:
    """Write ``merged`` over ``path`` with the round-trip YAML writer that ``dvc exp run -S``
    uses, so only the changed values' lines move: comments and layout are kept."""
    import io

    from ruamel.yaml import YAML

    rt = YAML(typ="rt")
    rt.default_flow_style = False
    data = rt.load(path.read_text(encoding="utf-8"))

    def assign(node: Any, values: dict[str, Any], prefix: str) -> None:
        for key, value in values.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict) and isinstance(node.get(key), dict) and dotted not in REPLACED:
                assign(node[key], value, dotted + ".")
            elif node.get(key) != value or key not in node:
                node[key] = value

    assign(data, merged, "")
    buf = io.StringIO()
    rt.dump(data, buf)
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a mapping of params.yaml sections")
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.paramset", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paramset", type=Path, help="a partial params.yaml, e.g. configs/paper/X.yaml")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--apply", action="store_true", help="write the merged params.yaml")
    args = parser.parse_args(argv)
    base = load_yaml(args.params)
    merged = merge(base, load_yaml(args.paramset))
    check(merged, str(args.paramset))
    for line in changes(base, merged):
        print(line)
    if args.apply:
        write_in_place(args.params, merged)
        print(f"wrote {args.params}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
