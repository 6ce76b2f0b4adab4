"""Results of a finished run into its MLflow run: the final PCK per set and alpha, the PCK
table (JSON, Markdown, ``log_table``), and the report stage's upload (the report as artifacts,
the model version's PCK tags and the champion decision)."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .champion import champion_measure, promote_champion
from .client import SafeMlflow, TrackingWarning, metric
from .runs import state_of_checkpoint, write_state


def load_reports(eval_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """``{set name: report}`` from ``<eval_dir>/<name>/report.json``; ValueError naming a
    file that is not a JSON object with ``per_image`` PCK, and the stage that rewrites it."""
    out = {}
    for p in sorted(Path(eval_dir).glob("*/report.json")):
        try:
            rep = json.loads(p.read_text(encoding="utf-8"))
            problem = None if isinstance(rep, dict) and isinstance(rep.get("per_image"), dict) else "no per_image PCK"
        except (ValueError, UnicodeDecodeError) as exc:
            problem = f"not valid JSON ({exc})"
        if problem is not None:
            stage = "baseline" if Path(eval_dir).name == "baseline" else "evaluate"
            raise ValueError(
                f"{p}: {problem}; regenerate it with `dvc repro -f {stage}@{p.parent.name}` "
                f"(or `python -m pipeline.stage_{stage} {p.parent.name}`)"
            )
        out[p.parent.name] = rep
    return out


def pck_table(reports: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per evaluation set: dataset, split, resolution, n_pairs, PCK per alpha."""
    rows = []
    for name, rep in reports.items():
        row = {
            "set": name,
            "dataset": rep.get("dataset"),
            "split": rep.get("split"),
            "resolution": str(rep.get("resolution")),
            "n_pairs": rep.get("n_pairs"),
            "beta_eval": rep.get("beta_eval"),
        }
        row.update({f"PCK@{a}": round(float(v), 2) for a, v in rep["per_image"].items()})
        rows.append(row)
    return rows


def table_markdown(rows: list[dict[str, Any]]) -> str:
    """``rows`` as a Markdown table, columns in the first row's order."""
    if not rows:
        return "(no evaluation)\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def log_results(
    run_dir: str | os.PathLike[str],
    reports: Mapping[str, Mapping[str, Any]],
    tracking_uri: str | None = None,
    record: bool = True,
) -> bool:
    """Log final PCK per set/alpha and the PCK table (JSON, Markdown, ``log_table``) into the
    run recorded in ``RUN_DIR/tracking.json``. MLflow failures never raise (a malformed
    ``tracking.json`` does: :class:`~.runs.TrackingStateError`); returns whether it all worked.
    ``record=False`` leaves ``tracking.json`` untouched (the report stage: the run folder is
    the train stage's output and must not change after it)."""
    run_dir = Path(run_dir)
    state = state_of_checkpoint(run_dir)
    run_id = state.get("run_id")
    ml = SafeMlflow(tracking_uri or state.get("tracking_uri"))
    if not run_id:
        warnings.warn(
            f"{run_dir}: no MLflow run recorded; results not logged (run `python -m pipeline.relog {run_dir}`)",
            TrackingWarning,
            stacklevel=2,
        )
        return False
    rows = pck_table(reports)
    ok = ml.call("final PCK and the PCK table", upload_results, ml.connect, run_id, reports, rows) is not None
    if record:
        state.setdefault("failed", {}).update(ml.failed)
        state["results_logged"] = ok
        write_state(run_dir, state)
    return ok


def upload_results(
    connect: Any, run_id: str, reports: Mapping[str, Mapping[str, Any]], rows: list[dict[str, Any]]
) -> bool:
    """The MLflow calls of :func:`log_results` (they raise on failure): ``connect()`` gives
    the client; metrics ``test_pck_<set>_<alpha>`` at step 0 and the table under ``results/``."""
    client = connect()
    metrics = [
        metric(f"test_pck_{name}_{a}", v, 0) for name, rep in reports.items() for a, v in rep["per_image"].items()
    ]
    client.log_batch(run_id, metrics=metrics)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "pck_table.json").write_text(json.dumps(rows, indent=2) + "\n")
        Path(tmp, "pck_table.md").write_text(table_markdown(rows))
        client.log_artifact(run_id, str(Path(tmp, "pck_table.json")), "results")
        client.log_artifact(run_id, str(Path(tmp, "pck_table.md")), "results")
    columns = {k: [r.get(k) for r in rows] for k in (rows[0] if rows else {})}
    client.log_table(run_id, columns, "results/pck_table_mlflow.json")
    return True


def log_report(
    run_dir: str | os.PathLike[str],
    report_md: str | os.PathLike[str],
    reports: Mapping[str, Mapping[str, Any]],
    rule: tuple[str, str] | None,
    tracking_uri: str | None = None,
) -> dict[str, Any] | None:
    """The report stage's MLflow step, after the report is written: the report (Markdown,
    HTML, figures) as artifacts ``report/`` of the run recorded in ``RUN_DIR/tracking.json``,
    and, when the run registered a model version, its PCK tags and the champion decision
    (:func:`~pipeline.tracking.champion.promote_champion`). MLflow failures never raise (a
    warning says what was not logged); returns the champion decision, or ``None``.
    ``tracking.json`` is left as it is. ValueError (before any call) when ``rule`` names a set
    or metric the reports lack."""
    run_dir, report_md = Path(run_dir), Path(report_md)
    if rule is not None:
        champion_measure(reports, rule)  # a bad rule is the user's error, not the server's
    state = state_of_checkpoint(run_dir)
    run_id = state.get("run_id")
    if not run_id:
        return None
    ml = SafeMlflow(tracking_uri or state.get("tracking_uri"))

    def upload() -> bool:
        client = ml.connect()
        folder = report_md.parent
        for p in (report_md, report_md.with_suffix(".html")):
            if p.exists():
                client.log_artifact(run_id, str(p), "report")
        if (folder / "figures").is_dir():
            client.log_artifacts(run_id, str(folder / "figures"), "report/figures")
        return True

    ml.call("the report (artifacts)", upload)
    name, version = state.get("registered_model"), state.get("model_version")
    if rule is None or not name or not version:
        return None
    decision: dict[str, Any] | None = ml.call(
        "the model version's PCK tags and the champion alias",
        lambda: promote_champion(ml.connect(), name, str(version), reports, rule),
    )
    return decision
