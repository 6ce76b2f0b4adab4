"""``python -m pipeline.relog RUN_DIR [--reports reports/eval]``: log a finished run to MLflow.

For runs whose tracking failed (server down during training): params, every step and epoch
metric missing on the server, the best checkpoint (MLflow model, registered) and, with
``--reports``, the final PCK table. ``MLFLOW_TRACKING_URI`` or ``--tracking-uri`` picks the
server; by default the one recorded in ``RUN_DIR/tracking.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from simsc.errors import ArgumentParser, UserError, add_debug_flag, run_main


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status as :mod:`simsc.errors` says: 0 logged, 2 user error, 3 internal error."""
    p = ArgumentParser(prog="python -m pipeline.relog", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--reports", type=Path, default=None, help="evaluation folder (reports/eval)")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--experiment", default=None)
    p.add_argument("--registered-model", default=None)
    add_debug_flag(p)
    args = p.parse_args(argv)
    return run_main("pipeline.relog", lambda: _relog(args), debug=args.debug)


def _relog(args: argparse.Namespace) -> int:
    if not (args.run_dir / "metrics.jsonl").exists():
        raise UserError(f"{args.run_dir} holds no metrics.jsonl; expected a simsc run folder")
    from .tracking import load_reports, relog

    reports = load_reports(args.reports) if args.reports else None
    out = relog(args.run_dir, reports, tracking_uri=args.tracking_uri, experiment=args.experiment,
                registered_model=args.registered_model)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
