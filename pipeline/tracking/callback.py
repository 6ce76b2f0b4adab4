"""The training callback: a simsc training run logged live to MLflow (params, per-step and
per-epoch metrics, system metrics, the best checkpoint as a registered model)."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from simsc.engine.callbacks import Callback

from .client import SafeMlflow, TrackingWarning, metric
from .models import log_checkpoint_model
from .runs import (
    describe_run,
    file_sha256,
    find_tagged_run,
    last_step,
    read_state,
    start_run,
    write_state,
)

#: Seconds between two samples of system metrics (CPU, memory, disk, network; GPU with
#: nvidia-ml-py installed); ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` overrides it.
SYSTEM_METRICS_INTERVAL_S = 10.0
#: MLflow metric name -> the key of a step record of ``metrics.jsonl``.
STEP_METRICS = {
    "beta_a": "beta_a_mean",
    "beta_b": "beta_b_mean",
    "beta_eff": "beta_eff_mean",
    "loss": "loss",
    "lr": "lr_backbone",
    "lr_temperature": "lr_temperature",
}


#: Learning rates also logged as log10: MLflow's UI rounds a metric below 10 to 3 decimals
#: (its formatMetric: mlflow/mlflow#2006), so a chart of 1e-4 reads as a flat 0; -4.0 reads.
LOG10_METRICS = {"log10_lr": "lr_backbone", "log10_lr_temperature": "lr_temperature"}


def step_metrics(record: Mapping[str, Any], ts: int | None = None) -> list[Any]:
    """The MLflow metrics of one step record (those of :data:`STEP_METRICS` it holds, and the
    :data:`LOG10_METRICS` of its positive learning rates)."""
    out = [
        metric(name, record[src], record["step"], ts)
        for name, src in STEP_METRICS.items()
        if record.get(src) is not None
    ]
    out += [
        metric(name, math.log10(record[src]), record["step"], ts)
        for name, src in LOG10_METRICS.items()
        if record.get(src) is not None and record[src] > 0
    ]
    return out


def epoch_metrics(record: Mapping[str, Any], ts: int | None = None) -> list[Any]:
    """The MLflow metrics of one epoch record: ``val_pck_<alpha>``, ``train_loss_epoch``,
    ``val_beta_eff``, at step = the epoch."""
    out = [metric(f"val_pck_{a}", v, record["epoch"], ts) for a, v in record["val"]["per_image"].items()]
    if record.get("train_loss_mean") is not None:
        out.append(metric("train_loss_epoch", record["train_loss_mean"], record["epoch"], ts))
    if record.get("val_beta_eff_mean") is not None:
        out.append(metric("val_beta_eff", record["val_beta_eff_mean"], record["epoch"], ts))
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

    def __init__(
        self,
        config: Any,
        run_dir: str | os.PathLike[str],
        *,
        experiment: str | None = "simsc",
        registered_model: str | None = None,
        tracking_uri: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        reuse_tagged_run: bool = False,
        log_model: bool = True,
        run_dir_tag: bool = True,
        extra_tags: Mapping[str, str] | None = None,
        system_metrics: bool = True,
        system_metrics_interval: float = SYSTEM_METRICS_INTERVAL_S,
    ) -> None:
        self.cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        self.run_dir = Path(run_dir)
        self.experiment = experiment
        self.registered_model = registered_model
        self.run_name = run_name or describe_run(self.cfg)
        self.run_dir_tag = run_dir_tag
        self.system_metrics = system_metrics
        self.system_metrics_interval = system_metrics_interval
        self._monitor: Any = None
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
                self._logged_step = last_step(client, run.info.run_id, "beta_eff")
                from simsc.evaluate import alpha_key

                first_alpha = alpha_key(self.cfg["train"]["alphas"][0])
                self._logged_epoch = last_step(client, run.info.run_id, f"val_pck_{first_alpha}", default=-1)
                client.update_run(self.run_id, status="RUNNING")
                self._start_monitor(resume=True)
                return
        self.run_id = start_run(
            client,
            self.experiment,
            self.run_name,
            self.cfg,
            run_dir=self.run_dir if self.run_dir_tag else None,
            tags={**self.extra_tags, **self.tags},
        )
        self._start_monitor(resume=False)

    def _start_monitor(self, resume: bool) -> None:
        if not self.system_metrics:
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(
            self.run_id,
            sampling_interval=self.system_metrics_interval,
            resume_logging=resume,
            tracking_uri=self.ml.tracking_uri,
        )
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

    def _save_state(self, **extra: Any) -> None:
        state = read_state(self.run_dir, strict=False)  # this run replaces whatever was there
        state.update(
            {
                "tracking_uri": self.ml.tracking_uri,
                "experiment": self.experiment,
                "run_id": self.run_id,
                "registered_model": self.registered_model,
                "failed": dict(self.ml.failed),
            }
        )
        state.update(extra)
        write_state(self.run_dir, state)

    # -- hooks -----------------------------------------------------------------------------
    def on_step(self, metrics: Mapping[str, Any]) -> None:
        self._start()
        if self.run_id and metrics["step"] > self._logged_step:
            self._log_batch(f"step metrics (from step {metrics['step']})", step_metrics(metrics))

    def on_epoch(self, metrics: Mapping[str, Any]) -> None:
        self._start()
        if self.run_id and metrics["epoch"] > self._logged_epoch:
            self._log_batch(f"validation PCK (from epoch {metrics['epoch']})", epoch_metrics(metrics))

    def _log_batch(self, what: str, metrics: list[Any]) -> None:
        """Log ``metrics`` to the run (a lost batch is a warning naming ``what``, see ``self.ml``)."""
        self.ml.call(what, self.ml.client.log_batch, self.run_id, metrics=metrics)

    def on_checkpoint(self, path: str | os.PathLike[str], is_best: bool) -> None:
        if is_best:
            self.best = Path(path)

    def on_end(self, summary: Mapping[str, Any]) -> None:
        self._start()
        extra: dict[str, Any] = {"status": summary.get("status")}
        try:  # not through self.ml: a lost sample must not stop the model from being logged
            self._stop_monitor()
        except Exception as exc:  # noqa: BLE001 - tracking must never end a run
            warnings.warn(
                f"MLflow ({self.ml.tracking_uri}): the last system-metrics sample was not logged: "
                f"{type(exc).__name__}: {str(exc)[:200]}",
                TrackingWarning,
                stacklevel=2,
            )
        if self.best is not None and self.best.is_file():
            extra["best_sha256"] = file_sha256(self.best)  # read once: the state and the model's tag
        if self.run_id and self.log_model and summary.get("status") == "finished" and self.best is not None:
            version = self.ml.call(
                "the best checkpoint (model + registration)",
                log_checkpoint_model,
                self.ml.client,
                self.run_id,
                self.best,
                self.registered_model,
                self.cfg,
                extra.get("best_sha256"),
            )
            if version is not None:
                extra["model_version"] = version
        if self.run_id:
            self.ml.call(
                "run status",
                self.ml.client.set_terminated,
                self.run_id,
                "FINISHED" if summary.get("status") == "finished" else "FAILED",
            )
        self._save_state(**extra)
