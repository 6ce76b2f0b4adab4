"""MLflow tracking for simsc runs: a training callback, result logging, re-logging, fetching.

Tracking never costs a run: every MLflow call goes through :class:`SafeMlflow`, which turns
any failure (server down, timeout, bad store) into one warning naming what was not logged
and stops talking to the server after the first connection failure. The run folder keeps
everything needed to log it later: ``python -m pipeline.relog RUN_DIR``.

The store is MLflow's default (``sqlite:///mlflow.db`` in the working directory for
MLflow 3) unless ``MLFLOW_TRACKING_URI`` says otherwise. Short HTTP timeouts and few
retries are set unless the environment sets them (``MLFLOW_HTTP_REQUEST_TIMEOUT``,
``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``).

``RUN_DIR/tracking.json`` records the tracking URI, experiment, run id, registered model
version and which parts failed to log.

The registered model's alias ``champion`` (:data:`CHAMPION_ALIAS`) names the best version so
far: :func:`promote_champion` moves it only when a new version beats the champion on the same
comparison key (evaluation set + metric, tag ``champion.key``), so ``models:/NAME@champion``
is always the best model measured one way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

from simsc.engine.callbacks import Callback

os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")

STATE_FILE = "tracking.json"
#: The project checkout: where the git revision comes from when the working directory is
#: outside any repository.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: The experiment's kind (``custom_model_development``: model training, not GenAI traces).
#: MLflow 3.17's UI still opens in its GenAI view unless the link asks for the training view,
#: which :func:`run_page_url` does (``?workflowType=machine_learning``).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
CHAMPION_ALIAS = "champion"
#: Seconds between two samples of system metrics (CPU, memory, disk, network; GPU with
#: nvidia-ml-py installed); ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` overrides it.
SYSTEM_METRICS_INTERVAL_S = 10.0
STEP_METRICS = {"beta_a": "beta_a_mean", "beta_b": "beta_b_mean", "beta_eff": "beta_eff_mean", "loss": "loss",
                "lr": "lr_backbone", "lr_temperature": "lr_temperature"}


class TrackingWarning(UserWarning):
    """MLflow could not be reached or failed: something was not logged (the run goes on)."""


def _mlflow():
    try:
        import mlflow
    except ImportError as exc:  # pragma: no cover - mlflow is a pipeline dependency
        raise ImportError("MLflow tracking needs mlflow: pip install -e '.[pipeline]'") from exc
    quiet_mlflow_logging()
    return mlflow


#: Loggers whose INFO lines are bookkeeping, not news: the system-metrics thread starting and
#: stopping, the SQL store creating its tables (alembic migrations) on first use.
_CHATTY_LOGGERS = ("mlflow.system_metrics", "mlflow.store.db.utils", "alembic", "mlflow.pyfunc",
                   "mlflow.store.model_registry.abstract_store", "mlflow.tracking._model_registry.client")


def quiet_mlflow_logging() -> None:
    """Raise MLflow's bookkeeping loggers to WARNING: a clean run prints nothing from MLflow."""
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow's SQL store (the default sqlite:///mlflow.db) uses a SQLAlchemy option SQLAlchemy
    # deprecates: MLflow's to fix, nothing a user of this project can act on.
    warnings.filterwarnings("ignore", message=r"(?s).*``noload`` loader strategy is deprecated",
                            module=r"mlflow\.store")


def git_revision(cwd: str | os.PathLike | None = None) -> str:
    """``HEAD`` of the repository at ``cwd`` (default: the working directory), ``-dirty`` when
    tracked files changed. Outside any repository (a Ray worker's scratch folder, a sweep
    driven from a plain folder): this project's checkout, the code that runs; ``unknown``
    when that is not a git checkout either (an installed wheel)."""
    rev = _git_revision(cwd)
    return rev if rev != "unknown" else _git_revision(PROJECT_ROOT)


def _git_revision(cwd: str | os.PathLike | None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        rev = out.stdout.strip()
        if out.returncode != 0 or not rev:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def params_hash(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


class SafeMlflow:
    """Calls MLflow, never raises: a failure warns once per kind and is remembered.

    After the first failure the tracker goes *offline*: later calls are skipped (no timeout
    per training step against a dead server) and only counted in ``failed``.
    """

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.client = None
        self.offline = False
        self.failed: dict[str, int] = {}
        self._warned: set[str] = set()

    def connect(self):
        if self.client is None:
            _mlflow()
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(self.tracking_uri)
            self.tracking_uri = self.client.tracking_uri
        return self.client

    def call(self, what: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
        if self.offline:
            self.failed[what] = self.failed.get(what, 0) + 1
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must never end a run
            self.failed[what] = self.failed.get(what, 0) + 1
            self.offline = True
            if what not in self._warned:
                self._warned.add(what)
                warnings.warn(
                    f"MLflow ({self.tracking_uri}) failed: {type(exc).__name__}: {str(exc)[:300]}; not logged: "
                    f"{what} (and everything after it in this run); training goes on, local outputs are "
                    "complete: re-log later with `python -m pipeline.relog RUN_DIR`",
                    TrackingWarning, stacklevel=2,
                )
            return None


def run_page_url(run_dir: str | os.PathLike) -> str | None:
    """The MLflow UI page of the run recorded in ``RUN_DIR/tracking.json``, in the UI's
    model-training view; ``None`` without a run. For a local store (sqlite, files) the page is
    served by ``mlflow ui --backend-store-uri URI`` (default address http://127.0.0.1:5000)."""
    state = _read_state(Path(run_dir))
    run_id, uri = state.get("run_id"), state.get("tracking_uri")
    if not run_id or not uri:
        return None
    try:
        mlflow = _mlflow()
        experiment_id = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).info.experiment_id
    except Exception:  # noqa: BLE001 - a link is a convenience: no server, no link
        return None
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def _read_state(run_dir: Path) -> dict[str, Any]:
    p = run_dir / STATE_FILE
    if p.exists():
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except ValueError:
            return {}
    return {}


def _write_state(run_dir: Path, state: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    tmp.replace(run_dir / STATE_FILE)


def _metric(key: str, value: float, step: int, ts: int | None = None):
    from mlflow.entities import Metric

    return Metric(key, float(value), ts if ts is not None else int(time.time() * 1000), int(step))


def step_metrics(record: Mapping[str, Any], ts: int | None = None) -> list:
    return [_metric(name, record[src], record["step"], ts) for name, src in STEP_METRICS.items()
            if record.get(src) is not None]


def epoch_metrics(record: Mapping[str, Any], ts: int | None = None) -> list:
    out = [_metric(f"val_pck_{a}", v, record["epoch"], ts) for a, v in record["val"]["per_image"].items()]
    if record.get("train_loss_mean") is not None:
        out.append(_metric("train_loss_epoch", record["train_loss_mean"], record["epoch"], ts))
    if record.get("val_beta_eff_mean") is not None:
        out.append(_metric("val_beta_eff", record["val_beta_eff_mean"], record["epoch"], ts))
    return out


class MlflowCallback(Callback):
    """Logs a simsc training run to MLflow (a :class:`simsc.engine.Callback`).

    params: the flattened config, plus tags git revision and params hash; per step:
    ``beta_a``, ``beta_b``, ``beta_eff``, ``loss``, ``lr`` (backbone) and ``lr_temperature``;
    per epoch: ``val_pck_<alpha>``; in the background: system metrics (``system/...``,
    every ``system_metrics_interval`` seconds, and once more at the end); at the end: the
    best checkpoint as an MLflow model, registered under ``registered_model``.

    ``run_dir_tag=False`` leaves out the ``run_dir`` tag (a sweep trial's run folder is
    scratch, removed when the trial ends).
    """

    def __init__(self, config, run_dir: str | os.PathLike, *, experiment: str | None = "simsc",
                 registered_model: str | None = None, tracking_uri: str | None = None,
                 run_name: str | None = None, tags: Mapping[str, str] | None = None,
                 reuse_tagged_run: bool = False, log_model: bool = True, run_dir_tag: bool = True,
                 extra_tags: Mapping[str, str] | None = None,
                 system_metrics: bool = True,
                 system_metrics_interval: float = SYSTEM_METRICS_INTERVAL_S) -> None:
        self.cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        self.run_dir = Path(run_dir)
        self.experiment = experiment
        self.registered_model = registered_model
        self.run_name = run_name or describe_run(self.cfg)
        self.run_dir_tag = run_dir_tag
        self.system_metrics = system_metrics
        self.system_metrics_interval = system_metrics_interval
        self._monitor = None
        #: extra run tags, e.g. ``mlflow.parentRunId`` to nest the run under a sweep's run.
        self.tags = dict(tags or {})
        #: tags set when the run is created, not used to find it again (``git_revision``).
        self.extra_tags = dict(extra_tags or {})
        #: continue the run that carries exactly ``tags`` when one exists (a restarted sweep
        #: trial): steps and epochs it already holds are not logged twice.
        self.reuse_tagged_run = reuse_tagged_run
        self.log_model = log_model
        self.ml = SafeMlflow(tracking_uri)
        self.run_id: str | None = None
        self.best: Path | None = None
        self._started = False
        self._logged_step = 0
        self._logged_epoch = -1

    # -- lifecycle -------------------------------------------------------------------------
    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        self.ml.call("run creation", self._create_run)
        self._save_state()

    def _create_run(self) -> None:
        client = self.ml.connect()
        if self.reuse_tagged_run and self.tags:
            run = find_tagged_run(client, self.experiment, self.tags)
            if run is not None:
                self.run_id = run.info.run_id
                self._logged_step = _last_step(client, self.run_id, "beta_eff")
                from simsc.evaluate import alpha_key

                first_alpha = alpha_key(self.cfg["train"]["alphas"][0])
                self._logged_epoch = _last_step(client, self.run_id, f"val_pck_{first_alpha}", default=-1)
                client.update_run(self.run_id, status="RUNNING")
                self._start_monitor(resume=True)
                return
        self.run_id = start_run(client, self.experiment, self.run_name, self.cfg,
                                run_dir=self.run_dir if self.run_dir_tag else None,
                                tags={**self.extra_tags, **self.tags})
        self._start_monitor(resume=False)

    def _start_monitor(self, resume: bool) -> None:
        if not self.system_metrics:
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=self.system_metrics_interval,
                                             resume_logging=resume, tracking_uri=self.ml.tracking_uri)
        self._monitor.start()

    def _stop_monitor(self) -> None:
        """Stop the sampling thread and log one last sample: a run shorter than the interval
        still has its system metrics."""
        mon, self._monitor = self._monitor, None
        if mon is None:
            return
        mon.finish()
        if not self.ml.offline:
            mon.collect_metrics()
            mon.publish_metrics(mon.aggregate_metrics())
            mon.mlflow_logger.flush()

    def _save_state(self, **extra) -> None:
        state = _read_state(self.run_dir)
        state.update({"tracking_uri": self.ml.tracking_uri, "experiment": self.experiment,
                      "run_id": self.run_id, "registered_model": self.registered_model,
                      "failed": dict(self.ml.failed)})
        state.update(extra)
        _write_state(self.run_dir, state)

    # -- hooks -----------------------------------------------------------------------------
    def on_step(self, metrics):
        self._start()
        if self.run_id and metrics["step"] > self._logged_step:
            self.ml.call(f"step metrics (from step {metrics['step']})", self.ml.client.log_batch, self.run_id,
                         metrics=step_metrics(metrics))

    def on_epoch(self, metrics):
        self._start()
        if self.run_id and metrics["epoch"] > self._logged_epoch:
            self.ml.call(f"validation PCK (from epoch {metrics['epoch']})", self.ml.client.log_batch,
                         self.run_id, metrics=epoch_metrics(metrics))

    def on_checkpoint(self, path, is_best):
        if is_best:
            self.best = Path(path)

    def on_end(self, summary):
        self._start()
        extra: dict[str, Any] = {"status": summary.get("status")}
        try:  # not through self.ml: a lost sample must not stop the model from being logged
            self._stop_monitor()
        except Exception as exc:  # noqa: BLE001 - tracking must never end a run
            warnings.warn(f"MLflow ({self.ml.tracking_uri}): the last system-metrics sample was not logged: "
                          f"{type(exc).__name__}: {str(exc)[:200]}", TrackingWarning, stacklevel=2)
        if self.run_id and self.log_model and summary.get("status") == "finished" and self.best is not None:
            version = self.ml.call("the best checkpoint (model + registration)", log_checkpoint_model,
                                   self.ml.client, self.run_id, self.best, self.registered_model, self.cfg)
            if version is not None:
                extra["model_version"] = version
        if self.run_id:
            self.ml.call("run status", self.ml.client.set_terminated, self.run_id,
                         "FINISHED" if summary.get("status") == "finished" else "FAILED")
        self._save_state(**extra)


def describe_run(cfg: Mapping[str, Any]) -> str:
    """What ran, as a run name: ``resnet18 T=mlp embedded@160``."""
    model, data = cfg.get("model") or {}, cfg.get("data") or {}
    return f"{model.get('backbone', '?')} T={model.get('temperature', '?')} " \
           f"{data.get('dataset', '?')}@{data.get('resolution', '?')}"


def experiment_id(client, experiment: str | None) -> str:
    """The id of ``experiment`` (``None``: MLflow's ``Default``), created when missing as a
    model-training experiment: tag ``mlflow.experimentKind``, unless the experiment already
    has a kind (someone chose it in the UI)."""
    exp_name = experiment or "Default"
    exp = client.get_experiment_by_name(exp_name)
    if exp is None:
        return client.create_experiment(exp_name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if EXPERIMENT_KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def find_tagged_run(client, experiment: str | None, tags: Mapping[str, str]):
    """The newest run of ``experiment`` carrying every tag of ``tags``, or ``None``."""
    exp = client.get_experiment_by_name(experiment or "Default")
    if exp is None:
        return None
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([exp.experiment_id], filter_string=query, max_results=1,
                              order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def _last_step(client, run_id: str, key: str, default: int = 0) -> int:
    history = client.get_metric_history(run_id, key)
    return max((m.step for m in history), default=default)


def start_run(client, experiment: str | None, run_name: str, cfg: Mapping[str, Any],
              run_dir: Path | None = None, tags: Mapping[str, str] | None = None) -> str:
    exp_id = experiment_id(client, experiment)
    tags = {"git_revision": git_revision(), "params_hash": params_hash(cfg), "mlflow.runName": run_name,
            **dict(tags or {})}
    if run_dir is not None:
        tags["run_dir"] = str(Path(run_dir).resolve())
    run = client.create_run(exp_id, tags=tags, run_name=run_name)
    run_id = run.info.run_id
    from mlflow.entities import Param

    params = [Param(k, v[:6000]) for k, v in flatten(cfg).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])
    return run_id


#: What loading the model imports besides ``simsc`` (shipped as code) and mlflow: pinned to
#: the versions installed here, so the model installs the way it was trained.
MODEL_REQUIREMENTS = ("torch", "torchvision", "timm", "numpy", "pillow", "pyyaml")


def model_requirements() -> list[str]:
    """``name==version`` for each of :data:`MODEL_REQUIREMENTS`, from this environment."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in MODEL_REQUIREMENTS]


def model_example(n_points: int = 4, size: int = 64) -> dict[str, Any]:
    """A small input pair for the model's input example: two normalised random images of
    ``size`` pixels (seeded) and ``n_points`` source keypoints inside them."""
    import numpy as np

    rng = np.random.default_rng(0)
    img = lambda: rng.standard_normal((1, 3, size, size)).astype(np.float32)  # noqa: E731
    kps = rng.uniform(0, size - 1, (1, n_points, 2)).astype(np.float32)
    return {"src_img": img(), "trg_img": img(), "src_kps": kps}


def model_signature():
    """Tensor signature with free batch, image size and point count (any resolution works;
    a signature inferred from the example would pin them to the example's)."""
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    f32 = np.dtype(np.float32)
    inputs = Schema([TensorSpec(f32, (-1, 3, -1, -1), "src_img"), TensorSpec(f32, (-1, 3, -1, -1), "trg_img"),
                     TensorSpec(f32, (-1, -1, 2), "src_kps")])
    return ModelSignature(inputs=inputs, outputs=Schema([TensorSpec(f32, (-1, -1, 2))]))


def log_checkpoint_model(client, run_id: str, checkpoint: Path, registered_model: str | None,
                         cfg: Mapping[str, Any]) -> str | None:
    """Log ``checkpoint`` as a pyfunc model of the run (once: the checkpoint is the model's
    artifact; signature, input example, pinned requirements, ``simsc`` shipped as code) and
    register it; returns the version."""
    mlflow = _mlflow()
    import mlflow.pyfunc

    from simsc import config as simsc_config  # its folder is the package shipped with the model

    from . import mlflow_model

    tags = {"git_revision": git_revision(), "params_hash": params_hash(cfg)}
    with _fluent_uri(client.tracking_uri):
        with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=mlflow_model.__file__, artifacts={"checkpoint": str(checkpoint)},
                code_paths=[str(Path(simsc_config.__file__).parent)], pip_requirements=model_requirements(),
                signature=model_signature(), input_example=model_example(),
            )
        if not registered_model:
            return None
        mv = mlflow.register_model(info.model_uri, registered_model, tags=tags)
    return str(mv.version)


@contextlib.contextmanager
def _fluent_uri(uri: str):
    """Point MLflow's fluent API (needed by ``log_model``) at ``uri`` for a moment, then put
    back both the process-wide URI and ``MLFLOW_TRACKING_URI`` exactly as they were."""
    mlflow = _mlflow()
    from mlflow.tracking._tracking_service import utils as tu

    old_uri, old_env = getattr(tu, "_tracking_uri", None), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        if hasattr(tu, "_tracking_uri"):
            tu._tracking_uri = old_uri
        if old_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_env


# ------------------------------------------------------------------------------------------
# Results: final PCK, the PCK table
# ------------------------------------------------------------------------------------------


def pck_table(reports: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per evaluation set: dataset, split, resolution, n_pairs, PCK per alpha."""
    rows = []
    for name, rep in reports.items():
        row = {"set": name, "dataset": rep.get("dataset"), "split": rep.get("split"),
               "resolution": str(rep.get("resolution")), "n_pairs": rep.get("n_pairs"),
               "beta_eval": rep.get("beta_eval")}
        row.update({f"PCK@{a}": round(float(v), 2) for a, v in rep["per_image"].items()})
        rows.append(row)
    return rows


def table_markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no evaluation)\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def log_results(run_dir: str | os.PathLike, reports: Mapping[str, Mapping[str, Any]],
                tracking_uri: str | None = None, record: bool = True) -> bool:
    """Log final PCK per set/alpha and the PCK table (JSON, Markdown, ``log_table``) into the
    run recorded in ``RUN_DIR/tracking.json``. Never raises; returns whether it all worked.
    ``record=False`` leaves ``tracking.json`` untouched (the report stage: the run folder is
    the train stage's output and must not change after it)."""
    run_dir = Path(run_dir)
    state = _read_state(run_dir)
    run_id = state.get("run_id")
    ml = SafeMlflow(tracking_uri or state.get("tracking_uri"))
    if not run_id:
        warnings.warn(f"{run_dir}: no MLflow run recorded; results not logged (run `python -m pipeline.relog "
                      f"{run_dir}`)", TrackingWarning, stacklevel=2)
        return False
    rows = pck_table(reports)
    ok = ml.call("final PCK and the PCK table", _log_results, ml, run_id, reports, rows) is not None
    if record:
        state.setdefault("failed", {}).update(ml.failed)
        state["results_logged"] = ok
        _write_state(run_dir, state)
    return ok


def _log_results(ml: SafeMlflow, run_id: str, reports, rows) -> bool:
    import tempfile

    client = ml.connect()
    metrics = []
    for name, rep in reports.items():
        for a, v in rep["per_image"].items():
            metrics.append(_metric(f"test_pck_{name}_{a}", v, 0))
    client.log_batch(run_id, metrics=metrics)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "pck_table.json").write_text(json.dumps(rows, indent=2) + "\n")
        Path(tmp, "pck_table.md").write_text(table_markdown(rows))
        client.log_artifact(run_id, str(Path(tmp, "pck_table.json")), "results")
        client.log_artifact(run_id, str(Path(tmp, "pck_table.md")), "results")
    columns = {k: [r.get(k) for r in rows] for k in (rows[0] if rows else {})}
    client.log_table(run_id, columns, "results/pck_table_mlflow.json")
    return True


# ------------------------------------------------------------------------------------------
# The registry: PCK tags on a version, the champion alias, the report as an artifact
# ------------------------------------------------------------------------------------------


class ChampionWarning(UserWarning):
    """The champion alias could not be decided (versions measured differently): it stays."""


def champion_rule(tracking: Mapping[str, Any], sets: list[str]) -> tuple[str, str]:
    """``(set name, metric)`` the champion is chosen on, from params.yaml ``tracking``:
    ``champion_set`` (default: the first of ``evaluate.sets``) and ``champion_metric``
    (``pck@<alpha>``, per-image PCK; default ``pck@0.1``). ValueError naming the key when
    the set is not evaluated or the metric is not of that form."""
    metric = tracking.get("champion_metric") or "pck@0.1"
    try:  # one spelling per metric: pck@0.10 and pck@0.1 are the same comparison key
        metric = f"pck@{float(metric.removeprefix('pck@')):g}" if metric.startswith("pck@") else None
    except (AttributeError, ValueError):
        metric = None
    if metric is None:
        raise ValueError(f"params.yaml: tracking.champion_metric must be 'pck@<alpha>' (e.g. pck@0.1), "
                         f"got {tracking.get('champion_metric')!r}")
    name = tracking.get("champion_set") or (sets[0] if sets else None)
    if name not in sets:
        raise ValueError(f"params.yaml: tracking.champion_set {name!r} is not one of evaluate.sets {sets}")
    return name, metric


def metric_value(report: Mapping[str, Any], metric: str) -> float:
    """The value of ``pck@<alpha>`` in an evaluation report (per-image PCK, %)."""
    alpha = metric.removeprefix("pck@")
    per_image = report.get("per_image") or {}
    for key, value in per_image.items():
        if key == alpha or _same_number(key, alpha):
            return float(value)
    raise ValueError(f"tracking.champion_metric {metric!r}: the report has PCK at alphas {list(per_image)} only")


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def champion_key(set_name: str, report: Mapping[str, Any], metric: str) -> str:
    """What makes two versions comparable: the evaluation set (name, data set, split, size,
    number of pairs) and the metric, e.g. ``test_160=embedded/test@160/n100:pck@0.1``."""
    return (f"{set_name}={report.get('dataset')}/{report.get('split')}@{report.get('resolution')}"
            f"/n{report.get('n_pairs')}:{metric}")


def champion_measure(reports: Mapping[str, Mapping[str, Any]], rule: tuple[str, str]) -> tuple[str, float]:
    """``(champion.key, value)`` of the evaluation ``reports`` under ``rule`` (set, metric);
    the value is rounded as the tag stores it, so a re-read tag compares equal. ValueError
    when the set was not evaluated or lacks the metric."""
    set_name, metric = rule
    if set_name not in reports:
        raise ValueError(f"tracking.champion_set {set_name!r}: no evaluation report (have {sorted(reports)})")
    return champion_key(set_name, reports[set_name], metric), round(metric_value(reports[set_name], metric), 4)


def promote_champion(client, name: str, version: str, reports: Mapping[str, Mapping[str, Any]],
                     rule: tuple[str, str]) -> dict[str, Any]:
    """Tag version ``version`` of registered model ``name`` with its PCK and decide the alias.

    Tags: ``pck.<set>.<alpha>`` for every set and alpha, ``champion.key`` (what the value
    measures: :func:`champion_key`) and ``champion.value``. The alias ``champion`` moves to
    this version when there is none yet, or when the champion carries the same
    ``champion.key`` and a strictly lower ``champion.value``. Rule for a champion measured
    differently (another key, or no key: registered before these tags, or by a sweep): it
    stays, with a :class:`ChampionWarning` saying why; compare by hand and move it with
    ``MlflowClient().set_registered_model_alias(name, "champion", version)``.
    """
    key, value = champion_measure(reports, rule)
    for sname, rep in reports.items():
        for alpha, v in (rep.get("per_image") or {}).items():
            client.set_model_version_tag(name, version, f"pck.{sname}.{alpha}", f"{float(v):.4f}")
    client.set_model_version_tag(name, version, "champion.key", key)
    client.set_model_version_tag(name, version, "champion.value", f"{value:.4f}")
    # from the model's alias table: a missing alias is no error to tell from a failing server
    champ_version = client.get_registered_model(name).aliases.get(CHAMPION_ALIAS)
    champ = client.get_model_version(name, champ_version) if champ_version is not None else None
    out = {"version": version, "key": key, "value": value,
           "champion_before": champ.version if champ is not None else None}
    if champ is None:
        out["moved"], out["reason"] = True, "no champion yet"
    elif str(champ.version) == str(version):
        out["moved"], out["reason"] = False, "already the champion"
    elif champ.tags.get("champion.key") != key or "champion.value" not in champ.tags:
        out["moved"] = False
        out["reason"] = (f"the champion v{champ.version} was measured differently (champion.key "
                         f"{champ.tags.get('champion.key', 'missing')!r}, this version: {key!r}): not compared")
        warnings.warn(f"registered model {name}: alias {CHAMPION_ALIAS!r} stays on v{champ.version}: "
                      f"{out['reason']}; move it by hand if v{version} is better "
                      f"(MlflowClient().set_registered_model_alias({name!r}, {CHAMPION_ALIAS!r}, {version!r}))",
                      ChampionWarning, stacklevel=2)
    else:
        best = float(champ.tags["champion.value"])
        out["moved"] = value > best
        out["reason"] = f"{rule[1]} {value:.2f} {'>' if out['moved'] else '<='} champion v{champ.version}'s {best:.2f}"
    if out["moved"]:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    out["champion"] = version if out["moved"] else (champ.version if champ is not None else None)
    return out


def log_report(run_dir: str | os.PathLike, report_md: str | os.PathLike, reports: Mapping[str, Mapping[str, Any]],
               rule: tuple[str, str] | None, tracking_uri: str | None = None) -> dict[str, Any] | None:
    """The report stage's MLflow step, after the report is written: the report (Markdown,
    HTML, figures) as artifacts ``report/`` of the run recorded in ``RUN_DIR/tracking.json``,
    and, when the run registered a model version, its PCK tags and the champion decision
    (:func:`promote_champion`). MLflow failures never raise (a warning says what was not
    logged); returns the champion decision, or ``None``. ``tracking.json`` is left as it is.
    ValueError (before any call) when ``rule`` names a set or metric the reports lack."""
    run_dir, report_md = Path(run_dir), Path(report_md)
    if rule is not None:
        champion_measure(reports, rule)  # a bad rule is the user's error, not the server's
    state = _read_state(run_dir)
    run_id = state.get("run_id")
    if not run_id:
        return None
    ml = SafeMlflow(tracking_uri or state.get("tracking_uri"))

    def upload():
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
    return ml.call("the model version's PCK tags and the champion alias", lambda: promote_champion(
        ml.connect(), name, str(version), reports, rule))


# ------------------------------------------------------------------------------------------
# Re-logging a finished run, fetching a registered checkpoint
# ------------------------------------------------------------------------------------------


def relog(run_dir: str | os.PathLike, reports: Mapping[str, Mapping[str, Any]] | None = None,
          tracking_uri: str | None = None, experiment: str | None = None,
          registered_model: str | None = None) -> dict[str, Any]:
    """Log a finished run from its local outputs: params, every step and epoch metric missing
    on the server, the best checkpoint (model + registration unless already registered) and
    the results. Reuses the recorded run when the server knows it, else creates one.
    Raises on MLflow errors (this is the explicit, interactive path)."""
    from simsc.config import load_config

    run_dir = Path(run_dir)
    state = _read_state(run_dir)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or state.get("tracking_uri")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
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
    if created:
        run_id = start_run(client, experiment, describe_run(cfg), cfg, run_dir=run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
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
    for i in range(0, len(missing), 900):
        client.log_batch(run_id, metrics=missing[i:i + 900])
    version = state.get("model_version")
    best = run_dir / "checkpoints" / "best.pt"
    if (created or not version) and best.exists():
        version = log_checkpoint_model(client, run_id, best, registered_model, cfg)
    client.set_terminated(run_id, "FINISHED")
    state.update({"tracking_uri": client.tracking_uri if hasattr(client, "tracking_uri") else uri,
                  "experiment": experiment, "run_id": run_id, "registered_model": registered_model,
                  "model_version": version, "failed": {}, "relogged": True})
    _write_state(run_dir, state)
    if reports:
        ml = SafeMlflow(uri)
        ml.client = client
        _log_results(ml, run_id, reports, pck_table(reports))
        state["results_logged"] = True
        _write_state(run_dir, state)
    return {"run_id": run_id, "created": created, "metrics_logged": len(missing), "model_version": version}


def fetch_checkpoint(uri: str, dst: str | os.PathLike | None = None) -> Path:
    """Download the simsc checkpoint of an MLflow model (``models:/<name>/<version>``,
    ``runs:/<id>/model``, ...) and return the local ``.pt`` path."""
    mlflow = _mlflow()
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst) if dst else None))
    if local.is_file():
        return local
    found = sorted(local.rglob("*.pt"))
    if not found:
        raise FileNotFoundError(f"{uri}: no checkpoint (*.pt) in the downloaded model at {local}")
    return found[0]


def load_reports(eval_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``{set name: report}`` from ``reports/eval/<name>/report.json``."""
    out = {}
    for p in sorted(Path(eval_dir).glob("*/report.json")):
        out[p.parent.name] = json.loads(p.read_text(encoding="utf-8"))
    return out
