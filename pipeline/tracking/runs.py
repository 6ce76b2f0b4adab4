"""Run identity: what a run is called and tagged with, how it is created or found again, and
the run folder's record of it (``RUN_DIR/tracking.json``: tracking URI, experiment, run id,
registered model version, which parts failed to log)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .client import client_for, project_root, sqlite_path

STATE_FILE = "tracking.json"
#: The project checkout: where the git revision comes from when the working directory is
#: outside any repository.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: The experiment's kind (``custom_model_development``: model training, not GenAI traces).
#: MLflow 3.17's UI still opens in its GenAI view unless the link asks for the training view,
#: which :func:`run_page_url` does (``?workflowType=machine_learning``).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


#: Tracked files a pipeline run itself rewrites (DVC's lock file and the committed outputs under
#: reports/) or whose values a run logs as its params (params.yaml, which ``dvc exp run -S``
#: edits): changes to them do not make the code ``-dirty``.
NOT_CODE = ("dvc.lock", "params.yaml", "reports")


def git_revision(cwd: str | os.PathLike[str] | None = None) -> str:
    """``HEAD`` of the repository at ``cwd`` (default: the working directory), ``-dirty`` when
    tracked files other than :data:`NOT_CODE` changed (``dvc repro`` rewrites ``dvc.lock``
    after its first stage: a clean checkout stays clean). Outside any repository (a Ray worker's scratch folder, a sweep
    driven from a plain folder): this project's checkout, the code that runs; ``unknown``
    when that is not a git checkout either (an installed wheel)."""
    rev = _git_revision(cwd)
    return rev if rev != "unknown" else _git_revision(PROJECT_ROOT)


def _git_revision(cwd: str | os.PathLike[str] | None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
        rev = out.stdout.strip()
        if out.returncode != 0 or not rev:
            return "unknown"
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ":/",
                *(f":(top,exclude){p}" for p in NOT_CODE),
            ],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def params_hash(config: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of ``config`` as sorted JSON: equal configs, equal hash."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"a.b": "value"}`` as MLflow params (lists and tuples as JSON)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def describe_run(cfg: Mapping[str, Any]) -> str:
    """What ran, as a run name: ``resnet18 T=mlp embedded@160``."""
    model, data = cfg.get("model") or {}, cfg.get("data") or {}
    return (
        f"{model.get('backbone', '?')} T={model.get('temperature', '?')} "
        f"{data.get('dataset', '?')}@{data.get('resolution', '?')}"
    )


def experiment_id(client: Any, experiment: str | None) -> str:
    """The id of ``experiment`` (``None``: MLflow's ``Default``), created when missing as a
    model-training experiment: tag ``mlflow.experimentKind``, unless the experiment already
    has a kind (someone chose it in the UI)."""
    exp_name = experiment or "Default"
    exp = client.get_experiment_by_name(exp_name)
    if exp is None:
        location = artifact_location(client.tracking_uri, exp_name)
        tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        return str(client.create_experiment(exp_name, artifact_location=location, tags=tags))
    if EXPERIMENT_KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return str(exp.experiment_id)


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Where a new experiment of a local sqlite store keeps its artifacts: MLflow's default
    (``None``: ``./mlruns/<id>`` of the working directory) unless the stage runs outside the
    project root, in a queued or ``--temp`` DVC experiment's temporary copy, which DVC deletes:
    then ``mlruns/<experiment>`` of the project root, beside its store."""
    if sqlite_path(tracking_uri) is None or project_root().resolve() == Path.cwd().resolve():
        return None
    slug = "".join(c if c.isalnum() or c in "._-" else "-" for c in experiment)
    return (project_root() / "mlruns" / slug).as_uri()


def find_tagged_run(client: Any, experiment: str | None, tags: Mapping[str, str]) -> Any:
    """The newest run of ``experiment`` carrying every tag of ``tags``, or ``None``."""
    exp = client.get_experiment_by_name(experiment or "Default")
    if exp is None:
        return None
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs(
        [exp.experiment_id], filter_string=query, max_results=1, order_by=["attributes.start_time DESC"]
    )
    return runs[0] if runs else None


def last_step(client: Any, run_id: str, key: str, default: int = 0) -> int:
    """The highest step the run holds for metric ``key`` (``default`` when none)."""
    history = client.get_metric_history(run_id, key)
    return max((m.step for m in history), default=default)


def start_run(
    client: Any,
    experiment: str | None,
    run_name: str,
    cfg: Mapping[str, Any],
    run_dir: Path | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Create a run of ``experiment`` tagged with git revision, params hash (and ``run_dir``
    when given) and log ``cfg`` flattened as its params; returns the run id."""
    exp_id = experiment_id(client, experiment)
    all_tags = {
        "git_revision": git_revision(),
        "params_hash": params_hash(cfg),
        "mlflow.runName": run_name,
        **dict(tags or {}),
    }
    if run_dir is not None:
        all_tags["run_dir"] = str(Path(run_dir).resolve())
    run = client.create_run(exp_id, tags=all_tags, run_name=run_name)
    run_id: str = run.info.run_id
    from mlflow.entities import Param

    # MLflow caps a param value at 6000 characters and a batch at 100 params
    params = [Param(k, v[:6000]) for k, v in flatten(cfg).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])
    return run_id


class TrackingStateError(ValueError):
    """``RUN_DIR/tracking.json`` exists but is not a JSON object (the message says how to redo it)."""


def read_state(run_dir: Path, strict: bool = True) -> dict[str, Any]:
    """``RUN_DIR/tracking.json``, or ``{}`` when missing. A file that is not a JSON object
    (cut short, edited by hand) is :class:`TrackingStateError` naming it and how to
    regenerate it; ``strict=False`` reads it as ``{}`` instead (a training run about to
    replace it)."""
    p = run_dir / STATE_FILE
    if not p.exists():
        return {}
    try:
        state = json.loads(p.read_text(encoding="utf-8"))
        problem = None if isinstance(state, dict) else f"a JSON {type(state).__name__}, not an object"
    except (ValueError, UnicodeDecodeError) as exc:
        problem = f"not valid JSON ({exc})"
    if problem is None:
        return state
    if not strict:
        return {}
    raise TrackingStateError(
        f"{p}: {problem}; it records the run's MLflow ids: delete it and re-log the run with "
        f"`python -m pipeline.relog {run_dir}` (a new MLflow run), or retrain (`dvc repro -f train`)"
    )


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_of_checkpoint(run_dir: Path) -> dict[str, Any]:
    """:func:`read_state`, or ``{}`` when it belongs to another checkpoint: tracking.json is
    the run folder's local state, not a DVC output, so after ``dvc exp apply`` / ``dvc
    checkout`` of another experiment it may name the MLflow run of a later training. The
    state records ``best_sha256`` (the best checkpoint's bytes) when the training ends."""
    state = read_state(run_dir)
    want = state.get("best_sha256")
    best = run_dir / "checkpoints" / "best.pt"
    if want and best.is_file() and file_sha256(best) != want:
        print(
            f"{run_dir / STATE_FILE} names the MLflow run of another checkpoint than {best} "
            "(a DVC checkout restored an older one): nothing is logged to MLflow for it",
            file=sys.stderr,
        )
        return {}
    return state


def write_state(run_dir: Path, state: dict[str, Any]) -> None:
    """Replace ``RUN_DIR/tracking.json`` atomically (temporary file + rename)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    tmp.replace(run_dir / STATE_FILE)


def run_page_url(run_dir: str | os.PathLike[str]) -> str | None:
    """The MLflow UI page of the run recorded in ``RUN_DIR/tracking.json``, in the UI's
    model-training view; ``None`` without a run. For a local store (sqlite, files) the page is
    served by ``mlflow ui --backend-store-uri URI`` (default address http://127.0.0.1:5000)."""
    state = state_of_checkpoint(Path(run_dir))
    run_id, uri = state.get("run_id"), state.get("tracking_uri")
    if not run_id or not uri:
        return None
    try:
        exp_id = client_for(uri).get_run(run_id).info.experiment_id
    except Exception:  # noqa: BLE001 - a link is a convenience: no server, no link
        return None
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{exp_id}/runs/{run_id}?workflowType=machine_learning"
