"""DVC stage ``report``: the Markdown/HTML report and its figures; with tracking, the report
goes to the training run's MLflow artifacts and the registered version gets its PCK tags and
the champion decision (``tracking.champion_set`` / ``tracking.champion_metric``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.stage_common import STAGE_PARAMS, stage_main, tracking_section
from simsc.errors import UserError

# The params.yaml keys this stage reads, and all it is given (its params: in dvc.yaml).
PARAMS = STAGE_PARAMS["report"]


def stage_report(params: dict[str, Any]) -> None:
    from .report import EVAL_DIR, add_mlflow_sections, build_report

    tracking = tracking_section(params)
    sets = list((params.get("evaluate") or {}).get("sets") or {})
    rule = None
    if tracking.get("enabled", False):
        from .tracking.champion import champion_rule

        try:  # a bad key fails before the report is built, naming itself
            rule = champion_rule(tracking, sets)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    out_md = build_report(params, compare=False)
    if rule is None:
        add_mlflow_sections(out_md, params)
        return
    from .tracking.results import load_reports, log_report

    reports = {k: v for k, v in load_reports(EVAL_DIR).items() if k in sets}
    run_dir = Path(params["train"]["out_dir"])
    from .tracking.runs import TrackingStateError

    try:
        decision = log_report(run_dir, out_md, reports, rule)
    except TrackingStateError:
        raise
    except ValueError as exc:  # the rule names a set or alpha the evaluations lack
        raise UserError(f"params.yaml: {exc}") from None
    if decision:
        where = "moved to" if decision["moved"] else "stays on"
        print(
            f"champion: {decision['key']} = {decision['value']:.2f} for v{decision['version']}; alias "
            f"{where} v{decision['champion']} ({decision['reason']})",
            file=sys.stderr,
        )
    # after the decision: the page compares the run with the champion as it now stands
    add_mlflow_sections(out_md, params)
    from .tracking.runs import run_page_url

    url = run_page_url(run_dir)
    if url:  # a local store's page is served by `mlflow ui` (README: Quick start)
        print(f"MLflow run: {url}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("report", stage_report, PARAMS, argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
