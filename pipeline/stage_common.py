"""What every DVC stage entry module shares: reading ``params.yaml`` and the command line.

Each stage is one small module, ``pipeline/stage_<name>.py`` (``python -m pipeline.stage_train``),
so that its transitive import closure inside ``simsc/`` and ``pipeline/`` is exactly the code
it runs: :mod:`pipeline.dvc_deps` computes that closure with ``ast`` and writes it into the
stage's ``deps`` in ``dvc.yaml`` (``make dvc-deps``; ``tests/test_dvc_deps.py`` checks it).
Keep this module small and its imports few: it is in every stage's closure.

The ``params.yaml`` keys each stage reads (``"section"`` or ``"section.key"``) have one home,
:data:`STAGE_PARAMS`, read without importing any stage: each stage module takes its ``PARAMS``
from it, :mod:`pipeline.dvc_deps` writes it into the stages' ``params:`` in ``dvc.yaml``, and
the sweep hand-off (:mod:`pipeline.sweep_results`) passes DVC only keys it names.
:func:`run_stage` hands the stage only its keys (:func:`select`), so a read of an undeclared key
finds nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from simsc.errors import ArgumentParser, UserError, add_debug_flag, run_main
from simsc.io import read_yaml_mapping

PARAMS_FILE = Path("params.yaml")

# Stage -> the params.yaml keys it reads, and all it is given (its params: in dvc.yaml, in this
# order). A literal: pipeline.dvc_deps reads it with ast, from the checkout it rewrites.
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "download": ("data.dataset", "data.root", "embedded"),
    "preprocess": ("data.dataset", "data.root", "preprocess"),
    "train": ("model", "data", "train", "tracking"),
    "evaluate": ("eval", "evaluate", "train.out_dir", "preprocess.cache_dir"),
    "baseline": ("model", "eval", "evaluate", "preprocess.cache_dir"),
    "report": ("report", "evaluate", "tracking", "train.out_dir"),
}


def load_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    """``params.yaml`` as a mapping; :class:`UserError` naming the file when it is not one."""
    return read_yaml_mapping(
        path,
        what="params file",
        contents="a mapping of stage sections",
        error=UserError,
        hint=" (run the stages from the project root)",
    )


def section(params: dict[str, Any], name: str, keys: Sequence[str]) -> dict[str, Any]:
    """The mapping ``params[name]``, checked to hold ``keys``; :class:`UserError` naming what is missing."""
    sec = params.get(name)
    if not isinstance(sec, dict):
        raise UserError(f"params.yaml: missing section {name!r}")
    missing = [k for k in keys if k not in sec]
    if missing:
        raise UserError(f"params.yaml: section {name!r} lacks {missing}")
    return sec


def tracking_section(params: dict[str, Any]) -> dict[str, Any]:
    """The ``tracking`` section, checked: a mapping whose ``enabled`` is a YAML boolean."""
    tracking = params.get("tracking")
    if tracking is None:
        return {}
    if not isinstance(tracking, dict):
        raise UserError(
            f"params.yaml: tracking must be a mapping (enabled, experiment, registered_model), got {tracking!r}"
        )
    enabled = tracking.get("enabled", False)
    if not isinstance(enabled, bool):
        raise UserError(f"params.yaml: tracking.enabled must be true or false, got {enabled!r}")
    for key in ("experiment", "registered_model"):
        if tracking.get(key) is not None and not isinstance(tracking[key], str):
            raise UserError(f"params.yaml: tracking.{key} must be a string or null, got {tracking[key]!r}")
    return tracking


def select(params: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """Only the declared ``keys`` of ``params`` (``"section"`` or ``"section.key"``).

    A section that is not a mapping is passed on as it is, so the stage's own check names it.
    """
    out: dict[str, Any] = {}
    for key in keys:
        sec, _, sub = key.partition(".")
        if sec not in params:
            continue
        if not sub:
            out[sec] = params[sec]
        elif isinstance(params[sec], dict):
            if sub in params[sec]:
                out.setdefault(sec, {})[sub] = params[sec][sub]
        else:
            out[sec] = params[sec]
    return out


def add_stage_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    add_debug_flag(parser)


def run_stage(
    stage: str,
    func: Callable[..., None],
    keys: Sequence[str],
    params_path: Path,
    *args: str,
    debug: bool = False,
    user_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Run ``func(params, *args)`` on the declared ``keys`` of ``params_path`` under the error
    contract of :mod:`simsc.errors` (user error: exit 2; ``user_errors``: the stage's own
    exception types that count as user errors)."""

    def body() -> int:
        func(select(load_params(params_path), keys), *args)
        return 0

    return run_main(f"pipeline.stages {stage}", body, debug=debug, user_errors=tuple(user_errors))


def stage_main(
    stage: str,
    func: Callable[..., None],
    keys: Sequence[str],
    argv: Sequence[str] | None = None,
    *,
    with_name: bool = False,
    doc: str | None = None,
    user_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """The command line of one stage module (``python -m pipeline.stage_<name>``)."""
    parser = ArgumentParser(prog=f"python -m pipeline.stage_{stage}", description=doc)
    if with_name:
        parser.add_argument("name", help="the entry of evaluate.sets")
    add_stage_arguments(parser)
    args = parser.parse_args(argv)
    extra = (args.name,) if with_name else ()
    return run_stage(stage, func, keys, args.params, *extra, debug=args.debug, user_errors=user_errors)


def round_metric(x: float | None, digits: int = 5) -> float | None:
    """``digits`` significant digits for a DVC metric: PCK in % keeps 3 decimals, a beta of
    0.0123 keeps 5, so ``dvc metrics diff`` shows changes, not float noise."""
    return None if x is None else float(f"{x:.{digits}g}")
