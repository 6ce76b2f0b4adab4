"""One sweep trial: the engine's :class:`~simsc.engine.trainer.Trainer`, driven by Ray Tune.

There is no second training loop: a trial composes its engine config (the sweep's base +
the sampled values), trains with the same ``Trainer`` as ``simsc train``, and follows it
through callbacks:

- :class:`TuneReporter` calls ``tune.report(metrics, checkpoint=...)`` once per validated
  epoch, right after the trainer wrote ``checkpoints/last.pt``; the checkpoint folder holds
  ``last.pt`` (full training state), ``best.pt``, ``metrics.jsonl``, ``config.yaml`` and
  ``trial_state.json`` (how many times the trial started).
- :class:`~pipeline.tracking.callback.MlflowCallback` logs a child run nested under the sweep's
  parent run (tag ``mlflow.parentRunId``), with every step's beta and every epoch's PCK.

A restarted trial (its worker died, or ``--resume``) gets its newest checkpoint from
``tune.get_checkpoint()``, copies it into its run folder and resumes exactly where that
checkpoint was taken (``Trainer.fit(resume=True)``); the MLflow child run is found again by
its tags and only the steps it lacks are logged.

The run folder is node-local scratch (:func:`scratch_dir`), removed when the trial ends; a
trial's outputs live in the storage: ``<storage>/<sweep>/<trial>/checkpoint_<n>/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simsc.engine.callbacks import Callback
from simsc.io import atomic_copy

#: Files of the run folder that travel in every checkpoint.
CHECKPOINT_FILES = ("checkpoints/last.pt", "checkpoints/best.pt", "metrics.jsonl", "config.yaml")
TRIAL_STATE = "trial_state.json"


@dataclass
class TrialContext:
    """What every trial needs besides its sampled values (sent once through the object store)."""

    spec_name: str
    engine_base: dict[str, Any]
    search: list[Any]  # SearchEntry list
    best_alpha: float
    root: str  # the driver's folder: relative paths of sampled values resolve against it
    tracking: dict[str, Any] | None = None  # {uri, experiment, parent_run_id}
    cpus_per_trial: float = 1.0  # per worker when workers > 1
    #: data-parallel workers per trial (> 1: a Ray Train job inside the trial) and their GPUs
    workers: int = 1
    gpus_per_worker: float = 0.0
    #: Ray Train's storage of the multi-worker trials' runs (checkpoints) and their restarts
    train_storage: str | None = None
    max_failures: int = 3
    keep_checkpoints: int = 2
    #: params.yaml's ``embedded`` section of the spec's base (seed, pair counts, difficulty): a node
    #: that lacks the embedded set builds the one the driver's params describe
    embedded: dict[str, Any] | None = None


def _copy_checkpoint_files(src_dir: Path, dst_dir: Path, link: bool = False) -> None:
    """The :data:`CHECKPOINT_FILES` that ``src_dir`` holds, copied into ``dst_dir`` (``link``: hard
    linked where the file system allows; the trainer replaces files atomically, so links stay
    consistent)."""
    for name in CHECKPOINT_FILES:
        src, dst = src_dir / name, dst_dir / name
        if not src.exists():
            continue
        if link:
            dst.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                os.link(src, dst)
                continue
        atomic_copy(src, dst)


@contextlib.contextmanager
def checkpoint_folder(run_dir: Path, trial_state: dict[str, Any]) -> Iterator[Path]:
    """A temporary folder with hard links to the run folder's checkpoint files.

    It lives inside the run folder, so a trial killed mid-report leaves it in the scratch that
    the trial's end (or its restart) removes, not in the temp folder."""
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=run_dir))
    try:
        _copy_checkpoint_files(run_dir, tmp, link=True)
        (tmp / TRIAL_STATE).write_text(json.dumps(trial_state) + "\n", encoding="utf-8")
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class TuneReporter(Callback):
    """Reports each validated epoch to Ray Tune with the checkpoint written right after it.

    ``train_rank``: inside a Ray Train job (a multi-worker trial), this worker's rank: every
    rank reports (Ray Train's report is a barrier), rank 0 with the checkpoint; Ray Train's
    ``TuneReportCallback`` forwards rank 0's metrics to Tune."""

    #: the trainer calls it on every rank, not only rank 0
    all_ranks = True

    def __init__(
        self,
        run_dir: Path,
        best_alpha: float,
        trial_state: dict[str, Any],
        extra: dict[str, Any] | None = None,
        train_rank: int | None = None,
    ) -> None:
        from simsc.evaluate import alpha_key

        self.train_rank = train_rank
        self.run_dir = Path(run_dir)
        self.key = alpha_key(best_alpha)
        self.trial_state = trial_state
        self.extra = dict(extra or {})
        self.pending: dict[str, Any] | None = None
        self.last_step: dict[str, Any] = {}
        self.last_report: dict[str, Any] = {}

    def on_step(self, metrics):
        self.last_step = metrics

    def on_epoch(self, metrics):
        self.pending = metrics

    def on_checkpoint(self, path, is_best):
        # The trainer writes last.pt after every validation: report then, with that state.
        if is_best or self.pending is None:
            return
        rec, self.pending = self.pending, None
        metrics = {
            "epochs_done": rec["epoch"] + 1,
            "step": rec["step"],
            "partial_epoch": bool(rec["partial"]),
            "val_pck": rec["val"]["per_image"][self.key],
            "best_val_pck": rec["best_metric"],
            **{k: v for k, v in rec.items() if k.startswith("val_pck@")},
            "val_beta_eff": rec.get("val_beta_eff_mean"),
            "train_loss": rec.get("train_loss_mean"),
            "beta_eff": self.last_step.get("beta_eff_mean"),
            "trial_starts": self.trial_state["starts"],
            **self.extra,
        }
        self.trial_state["epochs_done"] = metrics["epochs_done"]
        self.last_report = metrics
        if self.train_rank not in (None, 0):
            self._report(metrics, None)  # rank 0 wrote the checkpoint; the others join the barrier
            return
        with checkpoint_folder(self.run_dir, self.trial_state) as folder:
            self._report(metrics, folder)

    def _report(self, metrics: dict[str, Any], folder: Path | None) -> None:
        if self.train_rank is None:
            from ray import tune

            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)) if folder else None)
        else:
            import ray.train

            ckpt = ray.train.Checkpoint.from_directory(str(folder)) if folder else None
            ray.train.report(metrics, checkpoint=ckpt)

    def _final_metrics(self) -> dict[str, Any]:
        """The last validated numbers of a trial that ends early (defaults before any)."""
        return dict(self.last_report) or {
            "epochs_done": 0,
            "val_pck": float("nan"),
            "best_val_pck": None,
            "trial_starts": self.trial_state["starts"],
            **self.extra,
        }

    def report_user_error(self, message: str) -> None:
        """A trial that fails on the user's input (a missing data root, a bad file) ends as an
        error result: restarting it (``max_failures``, meant for dead workers) fails again."""
        metrics = self._final_metrics()
        metrics["user_error"] = message[:300]
        self._report(metrics, None)

    def report_diverged(self, exc: Exception) -> None:
        """A diverged trial ends as a result, not an error: retrying would diverge again
        (supp. Fig. 3: beta_trn = 0.004 gives NaN). Its last validated numbers stay."""
        metrics = self._final_metrics()
        metrics.update(diverged=True, diverged_step=getattr(exc, "step", None), diverged_reason=str(exc)[:300])
        self._report(metrics, None)


def _restore(run_dir: Path, in_train_job: bool = False) -> tuple[bool, dict[str, Any]]:
    """Put the newest Tune (or, in a Ray Train job, Train) checkpoint (if any) into ``run_dir``;
    returns (resumed, trial_state)."""
    if in_train_job:
        import ray.train

        ckpt = ray.train.get_checkpoint()
    else:
        from ray import tune

        ckpt = tune.get_checkpoint()
    shutil.rmtree(run_dir, ignore_errors=True)
    if ckpt is None:  # a first start, or a restart before the first checkpoint: begin afresh
        return False, {"starts": 1}
    run_dir.mkdir(parents=True, exist_ok=True)
    with ckpt.as_directory() as d:
        d = Path(d)
        _copy_checkpoint_files(d, run_dir)
        state = json.loads((d / TRIAL_STATE).read_text(encoding="utf-8")) if (d / TRIAL_STATE).exists() else {}
    state["starts"] = int(state.get("starts", 1)) + 1
    return True, state


def _ensure_data(engine: dict[str, Any], embedded: dict[str, Any] | None = None) -> None:
    """Build the embedded data set on this node if it is missing (once per node: a file lock),
    as the spec's ``embedded`` section describes it (the download stage's settings)."""
    data = engine.get("data") or {}
    if data.get("dataset") != "embedded":
        return
    root = Path(data["root"])
    if (root / "manifest.json").exists():
        return
    import fcntl

    from simsc.data.embedded import build_embedded_dataset

    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "manifest.json").exists():
            keys = ("seed", "n_train", "n_val", "n_test", "difficulty")
            build_embedded_dataset(root, progress=False, **{k: v for k, v in (embedded or {}).items() if k in keys})


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """The Ray Tune function trainable (wrapped with ``tune.with_parameters(context=...)``).

    One worker: the trial trains in this process. ``context.workers > 1``: the trial is the
    driver of a Ray Train job (``TorchTrainer``, DDP over the workers, :func:`train_worker`),
    whose rank 0 reports to Tune through Ray Train's ``TuneReportCallback``."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    if context.workers > 1:
        _run_train_job(config, context, trial_id)
        return
    _fit_trial(config, context, trial_id, train_rank=None)


def train_worker(loop_config: dict[str, Any]) -> None:
    """One rank of a multi-worker trial (Ray Train's ``train_loop_per_worker``); the process
    group is set up by Ray Train (gloo on CPU, NCCL on GPUs)."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    _fit_trial(loop_config["config"], loop_config["context"], loop_config["trial_id"], train_rank=rank)


def _run_train_job(config: dict[str, Any], context: TrialContext, trial_id: str) -> None:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    use_gpu = context.gpus_per_worker > 0
    per_worker = {"CPU": context.cpus_per_trial, **({"GPU": context.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": config, "context": context, "trial_id": trial_id},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=context.workers, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=f"{context.spec_name}-{trial_id}",
            storage_path=context.train_storage,
            # A dead worker restarts the whole group from the newest checkpoint (in the job).
            failure_config=ray.train.FailureConfig(max_failures=context.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=context.keep_checkpoints),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def _fit_trial(config: dict[str, Any], context: TrialContext, trial_id: str, train_rank: int | None) -> None:
    """Train one trial in this process (one worker, or one rank of a Ray Train job)."""
    import ray

    from simsc.config import load_config
    from simsc.engine.trainer import Trainer, TrainingDivergedError

    from .sweep_spec import SweepSpec, compose, sample_overrides, trial_label

    rank_dir = "run" if train_rank is None else f"rank{train_rank}"
    run_dir = scratch_dir(context.spec_name, trial_id, rank_dir)
    shim = SweepSpec(name=context.spec_name, path="", search=context.search)
    overrides = sample_overrides(shim, config)
    engine = compose(context.engine_base, overrides, root=context.root)
    engine.setdefault("train", {})
    engine["train"]["out_dir"] = str(run_dir)
    engine["train"]["progress"] = False
    if engine["train"].get("num_threads") is None:
        engine["train"]["num_threads"] = max(1, int(context.cpus_per_trial))
    cfg = load_config(engine)
    resumed, trial_state = _restore(run_dir, in_train_job=train_rank is not None)
    _ensure_data(engine, context.embedded)

    node_id = ray.get_runtime_context().get_node_id()
    callbacks: list[Any] = []
    tr = context.tracking
    if tr and train_rank in (None, 0):
        from .tracking.callback import MlflowCallback
        from .tracking.runs import describe_run

        tags = {"mlflow.parentRunId": tr["parent_run_id"], "sweep.name": context.spec_name, "sweep.trial_id": trial_id}
        callbacks.append(
            MlflowCallback(
                cfg,
                run_dir,
                experiment=tr["experiment"],
                tracking_uri=tr["uri"],
                run_name=f"{context.spec_name}/{trial_id} {describe_run(cfg.to_dict())} {trial_label(shim, config)}",
                tags=tags,
                reuse_tagged_run=True,
                log_model=False,
                run_dir_tag=False,
                extra_tags={"git_revision": tr.get("git_revision") or "unknown"},
            )
        )
    extra = {"node_id": node_id}
    reporter = TuneReporter(run_dir, cfg.train.best_alpha, trial_state, extra=extra, train_rank=train_rank)
    callbacks.append(reporter)
    try:
        Trainer(cfg, callbacks=callbacks).fit(resume=resumed)
    except TrainingDivergedError as exc:
        reporter.report_diverged(exc)
    except Exception as exc:
        from simsc.errors import describe_user_error, one_line

        message = describe_user_error(exc)
        if message is None or isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            raise  # a bug or a machine's trouble (a full disk, a dead peer): Ray may retry it
        reporter.report_user_error(one_line(message))
    finally:
        # Everything worth keeping went to the storage with the last report.
        shutil.rmtree(run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # the trial's folder, once its last rank has left
            run_dir.parent.rmdir()


def scratch_dir(spec_name: str, trial_id: str, name: str = "run") -> Path:
    """The trial's node-local run folder (``SIMSC_SWEEP_SCRATCH``, default the temp folder).

    Not Ray's trial folder: its location differs between a fresh worker and a reused one.
    The run folder only stages checkpoints; the storage keeps them."""
    base = Path(os.environ.get("SIMSC_SWEEP_SCRATCH") or tempfile.gettempdir())
    return base / "simsc-sweeps" / f"{spec_name}-{trial_id}" / name
