"""``python -m pipeline.stages <stage>``: a thin dispatcher to the stage entry modules.

``dvc.yaml`` runs each stage's own module (``python -m pipeline.stage_<name>``), so that a
stage's dependencies are the import closure of that module alone (``pipeline/dvc_deps.py``);
this command runs the same code for people and tests that name the stage instead. It imports
a stage module only when that stage is asked for.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from pipeline.stage_common import add_stage_arguments, run_stage
from simsc.errors import ArgumentParser

STAGES = ("download", "preprocess", "train", "evaluate", "report")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one stage under the error contract of :mod:`simsc.errors` (user error: exit 2)."""
    parser = ArgumentParser(prog="python -m pipeline.stages", description=__doc__)
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("name", nargs="?", help="evaluate: the entry of evaluate.sets")
    add_stage_arguments(parser)
    args = parser.parse_args(argv)
    if args.stage == "evaluate" and not args.name:
        parser.error("evaluate needs the name of an evaluate.sets entry")
    module = importlib.import_module(f"pipeline.stage_{args.stage}")
    func = getattr(module, f"stage_{args.stage}")
    extra = (args.name,) if args.stage == "evaluate" else ()
    errors = module.user_errors() if hasattr(module, "user_errors") else ()
    return run_stage(args.stage, func, module.PARAMS, args.params, *extra, debug=args.debug, user_errors=errors)


if __name__ == "__main__":
    sys.exit(main())
