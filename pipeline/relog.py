"""``python -m pipeline.relog RUN_DIR [--reports reports/eval]``: log a finished run to MLflow.

For runs whose tracking failed (server down during training): params, every step and epoch
metric missing on the server, the best checkpoint (MLflow model, registered) and, with
``--reports``, the final PCK table. ``MLFLOW_TRACKING_URI`` or ``--tracking-uri`` picks the
server; by default the one recorded in ``RUN_DIR/tracking.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from simsc.errors import ArgumentParser, UserError, add_debug_flag, run_main


def relog(
    run_dir: str | os.PathLike[str],
    reports: Mapping[str, Mapping[str, Any]] | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    registered_model: str | None = None,
) -> dict[str, Any]:
    """Log a finished run from its local outputs: params, every step and epoch metric missing
    on the server, the best checkpoint (model + registration unless already registered) and
    the results. Reuses the recorded run when the server knows it, else creates one.
    Raises on MLflow errors (this is the explicit, interactive path)."""
    from simsc.config import load_config

    from .tracking.callback import epoch_metrics, step_metrics
    from .tracking.client import client_for
    from .tracking.models import log_checkpoint_model
    from .tracking.results import pck_table, upload_results
    from .tracking.runs import describe_run, read_state, start_run, write_state

    run_dir = Path(run_dir)
    state = read_state(run_dir)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or state.get("tracking_uri")
    client = client_for(uri)
    cfg = load_config(run_dir / "config.yaml").to_dict()
    experiment = experiment or state.get("experiment") or "simsc"
    registered_model = registered_model or state.get("registered_model")
    run_id = state.get("run_id")
    if run_id:
        try:
            client.get_run(run_id)
        except Exception:  # noqa: BLE001 - unknown to this server: make a new run
            run_id = None
    created = run_id is None
    if run_id is None:
        run_id = start_run(client, experiment, describe_run(cfg), cfg, run_dir=run_dir)
    from simsc.engine.records import read_records

    records = list(read_records(run_dir / "metrics.jsonl"))
    metrics = []
    for rec in records:
        if rec.get("type") == "step":
            metrics += step_metrics(rec)
        elif rec.get("type") == "epoch":
            metrics += epoch_metrics(rec)
    have: dict[str, set[int]] = {}
    for key in {m.key for m in metrics}:
        have[key] = {m.step for m in client.get_metric_history(run_id, key)}
    missing = [m for m in metrics if m.step not in have.get(m.key, set())]
    for i in range(0, len(missing), 900):  # under MLflow's 1000 metrics per batch
        client.log_batch(run_id, metrics=missing[i : i + 900])
    version = state.get("model_version")
    best = run_dir / "checkpoints" / "best.pt"
    if (created or not version) and best.exists():
        version = log_checkpoint_model(client, run_id, best, registered_model, cfg)
    client.set_terminated(run_id, "FINISHED")
    state.update(
        {
            "tracking_uri": client.tracking_uri,
            "experiment": experiment,
            "run_id": run_id,
            "registered_model": registered_model,
            "model_version": version,
            "failed": {},
            "relogged": True,
        }
    )
    write_state(run_dir, state)
    if reports:
        upload_results(lambda: client, run_id, reports, pck_table(reports))
        state["results_logged"] = True
        write_state(run_dir, state)
    return {"run_id": run_id, "created": created, "metrics_logged": len(missing), "model_version": version}


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status as :mod:`simsc.errors` says: 0 logged, 2 user error, 3 internal error."""
    p = ArgumentParser(
        prog="python -m pipeline.relog", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    from .tracking.results import load_reports

    reports = load_reports(args.reports) if args.reports else None
    out = relog(
        args.run_dir,
        reports,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        registered_model=args.registered_model,
    )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
