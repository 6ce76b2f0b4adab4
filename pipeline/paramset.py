"""Apply a named parameter set (``configs/paper/*.yaml``, a sweep's ``best_params.yaml``) to
``params.yaml``.

    python -m pipeline.paramset configs/paper/pfpascal_resnet101.yaml           # show the changes
    python -m pipeline.paramset configs/paper/pfpascal_resnet101.yaml --apply   # write params.yaml
    dvc exp run                                                                 # then run it

A parameter set describes one whole experiment as its differences from the schema's defaults
(:mod:`simsc.defaults`, :mod:`simsc.config`); it may build on other files through a
``defaults:`` list (:func:`simsc.config.read_overlay`). Applying it:

- replaces the engine sections of ``params.yaml`` (model, data, train, eval) by the set's, so
  nothing of the previous experiment (e.g. the CPU-sized default run) leaks into the new one;
- merges the pipeline's sections (preprocess, evaluate, report, tracking, ...) key by key,
  except ``evaluate.sets``, which is replaced whole (a protocol's evaluation sets are not added
  to the default's).

The result is checked with :func:`simsc.config.load_config` and every dataset name against the
registry, and written in place with the round-trip writer ``dvc exp run -S`` uses (comments
and layout kept, only changed lines move).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simsc.config import SECTIONS, compose, load_config, merge_mappings, read_overlay
from simsc.data.registry import DATASETS
from simsc.io import atomic_write_bytes, read_yaml_mapping

#: Dotted keys whose mapping is replaced whole instead of merged.
REPLACED = frozenset({"evaluate.sets"})


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base`` (``evaluate.sets`` replaced whole)."""
    return merge_mappings(base, override, replace=REPLACED)


def apply_set(params: dict[str, Any], paramset: dict[str, Any]) -> dict[str, Any]:
    """``params`` with ``paramset`` applied (see the module docstring): engine sections replaced,
    pipeline sections merged."""
    pipeline_part = {k: v for k, v in params.items() if k not in SECTIONS}
    merged = merge(pipeline_part, {k: v for k, v in paramset.items() if k not in SECTIONS})
    for name in SECTIONS:
        if name in params or name in paramset:
            merged[name] = dict(paramset.get(name) or {})
    order = list(params) + [k for k in merged if k not in params]
    return {k: merged[k] for k in order if k in merged}


def keep_declared(merged: dict[str, Any], declared: Sequence[str]) -> dict[str, Any]:
    """Write the default value of every engine key a DVC stage declares one by one (``data.root``)
    that ``merged`` leaves out: DVC refuses a stage whose declared param is missing."""
    defaults = load_config().to_dict()
    out = dict(merged)
    for key in declared:
        section, _, name = key.partition(".")
        if section in SECTIONS and name and name not in (out.get(section) or {}):
            out[section] = {**(out.get(section) or {}), name: defaults[section][name]}
    return out


def dvc_declared(dvc_yaml: Path) -> list[str]:
    """The ``section.key`` params that the stages of ``dvc_yaml`` declare one by one."""
    if not dvc_yaml.is_file():
        return []
    stages = (read_yaml_mapping(dvc_yaml, what="dvc file", error=SystemExit).get("stages") or {}).values()
    return sorted({p for s in stages for p in (s.get("do", s).get("params") or []) if isinstance(p, str) and "." in p})


def effective(params: dict[str, Any]) -> dict[str, Any]:
    """The engine sections as the trainer sees them: every key, learning rates resolved."""
    cfg = compose(base=params)
    out = cfg.to_dict()
    out["train"].update(
        lr_backbone=cfg.resolved_lr_backbone(),
        lr_temperature=cfg.resolved_lr_temperature(),
        lr_head=cfg.resolved_lr_head(),
    )
    return out


def changes(base: dict[str, Any], merged: dict[str, Any]) -> list[str]:
    """``key: old -> new`` lines for every value that changes: engine keys compare their
    effective values (a key left to its default shows the default), pipeline keys as written."""
    lines = _leaf_changes(effective(base), effective(merged))
    lines += _leaf_changes(
        {k: v for k, v in base.items() if k not in SECTIONS}, {k: v for k, v in merged.items() if k not in SECTIONS}
    )
    return lines


def _leaf_changes(base: Any, merged: Any, prefix: str = "") -> list[str]:
    if isinstance(base, dict) and isinstance(merged, dict):
        lines = []
        for key in sorted(set(base) | set(merged)):
            lines += _leaf_changes(base.get(key), merged.get(key), f"{prefix}{key}.")
        return lines
    return [] if base == merged else [f"{prefix[:-1]}: {base!r} -> {merged!r}"]


def check(params: dict[str, Any], source: str) -> None:
    """The parameters must load as an engine config and name registered data sets."""
    try:
        compose(base=params)
    except ValueError as exc:
        raise SystemExit(f"{source}: the merged parameters are not a valid config: {exc}") from None
    names = [(params.get("data") or {}).get("dataset", load_config().data.dataset)]
    names += [s.get("dataset") for s in ((params.get("evaluate") or {}).get("sets") or {}).values()]
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
        for key in [k for k in node if k not in values and (prefix[:-1] in SECTIONS or prefix == "")]:
            del node[key]
        for key, value in values.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict) and isinstance(node.get(key), dict) and dotted not in REPLACED:
                assign(node[key], value, dotted + ".")
            elif node.get(key) != value or key not in node:
                node[key] = value

    assign(data, merged, "")
    for name in SECTIONS:
        if name in data and not data[name]:
            _flow_empty(data, name)
    buf = io.StringIO()
    rt.dump(data, buf)
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def _flow_empty(data: Any, key: str) -> None:
    """Write the emptied mapping ``data[key]`` as ``key: {}``, its end-of-line comment kept
    (ruamel would write an empty block mapping as a bare ``{}`` line below the comment)."""
    from ruamel.yaml.comments import CommentedMap

    token = data.ca.items.pop(key, None)
    empty = CommentedMap()
    empty.fa.set_flow_style()
    data[key] = empty
    if token and len(token) > 2 and token[2] is not None:
        data.yaml_add_eol_comment(token[2].value.strip(), key, column=token[2].column)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.paramset", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paramset", type=Path, help="a parameter set, e.g. configs/paper/X.yaml")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--apply", action="store_true", help="write the new params.yaml")
    args = parser.parse_args(argv)
    base = read_yaml_mapping(args.params, what="params file", contents="a mapping of stage sections", error=SystemExit)
    paramset = read_overlay(
        args.paramset,
        what="parameter set",
        contents="a mapping of params.yaml sections",
        error=SystemExit,
        replace=REPLACED,
    )
    merged = keep_declared(apply_set(base, paramset), dvc_declared(args.params.parent / "dvc.yaml"))
    check(merged, str(args.paramset))
    for line in changes(base, merged):
        print(line)
    if args.apply:
        write_in_place(args.params, merged)
        print(f"wrote {args.params}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
