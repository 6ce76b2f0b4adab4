"""Ray Tune sweeps over the SimSC engine, tracked in MLflow, that survive failures.

    python -m pipeline.sweep configs/sweeps/manual_temperature.yaml            # toy profile, local Ray
    python -m pipeline.sweep SPEC.yaml --profile full --address ray://head:10001
    python -m pipeline.sweep SPEC.yaml --resume                                # after an interruption
    python -m pipeline.sweep SPEC.yaml --dry-run                               # list the trials

The spec format is documented in :mod:`pipeline.sweep_spec`. Every trial runs the engine's
``Trainer`` (:mod:`pipeline.sweep_trial`), reports validation PCK every epoch with a
checkpoint, and restarts from that checkpoint when its worker dies (``max_failures``).

Outputs (``--out``, default ``sweeps/<name>``): ``sweep.json`` (state: spec digest, MLflow
parent run, Ray experiment path), ``results.csv`` / ``results.md`` (one row per trial),
``best_params.yaml`` (the best trial as a parameter set for ``pipeline.paramset``) and ``best.pt``
(its best checkpoint). Ray's own results (trial checkpoints, experiment state) go to the
storage (``--storage`` / spec ``storage``: a folder, shared NFS, or ``s3://...``), default
``sweeps/ray_results``.

MLflow: one parent run per sweep, one nested child run per trial (beta per step, PCK per
epoch); the results table and best params are artifacts of the parent; the best checkpoint
is logged as a model of the best trial's run (and registered when
``tracking.registered_model`` is set). The store is ``tracking.uri``, else
``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simsc.commands import add_overrides_flag
from simsc.errors import EXIT_INTERRUPTED, ArgumentParser, add_debug_flag, run_main
from simsc.io import atomic_copy, atomic_write_json

from .sweep_results import (
    STATUS_COMPLETED,
    STATUS_DIVERGED,
    STATUS_ERROR,
    STATUS_STOPPED,
    best_row,
    public,
    rows_from_results,
    write_results,
)
from .sweep_spec import SweepSpec, SweepSpecError, expand_grid, load_sweep_spec, n_trials, param_space

STATE_FILE = "sweep.json"
EXIT_TRIAL_ERRORS = 1


class SweepError(RuntimeError):
    """The sweep cannot start or continue (the message says why and what to do)."""


def tracking_uri(spec: SweepSpec) -> str:
    uri = spec.tracking.get("uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    # Trials run in their own folders (and on other nodes): never a relative sqlite path.
    return f"sqlite:///{Path(spec.root, 'mlflow.db').absolute()}"


def _experiment_path(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}"


# ------------------------------------------------------------------------------------------
# MLflow: the parent run and the end-of-sweep bookkeeping
# ------------------------------------------------------------------------------------------


def _start_parent(ml, spec: SweepSpec) -> str | None:
    from .tracking.runs import experiment_id, flatten, git_revision

    def create():
        client = ml.connect()
        exp = experiment_id(client, spec.tracking.get("experiment"))
        run = client.create_run(
            exp,
            run_name=spec.name,
            tags={
                "mlflow.runName": spec.name,
                "sweep.name": spec.name,
                "sweep.role": "parent",
                "sweep.spec": str(Path(spec.path).as_posix()),
                "sweep.spec_digest": spec.digest(),
                "git_revision": git_revision(spec.root),
            },
        )
        from mlflow.entities import Param

        summary = spec.summary()
        params = [Param(k, str(v)[:6000]) for k, v in summary.items()]
        params += [
            Param(f"base.{k}", v[:6000]) for k, v in flatten(spec.engine_base()).items() if f"set.{k}" not in summary
        ]
        for i in range(0, len(params), 100):
            client.log_batch(run.info.run_id, params=params[i : i + 100])
        return run.info.run_id

    return ml.call("the sweep's parent run", create)


def _start_tracking(spec: SweepSpec, state: dict[str, Any], tracking: bool | None):
    """The MLflow tracker of the sweep (None without tracking), its parent run created (first
    start, recorded in ``state``) or marked running again (``--resume``)."""
    from .tracking.client import SafeMlflow

    if not (spec.tracking.get("enabled", True) if tracking is None else tracking):
        return None
    ml = SafeMlflow(tracking_uri(spec))
    if not state.get("parent_run_id"):
        state["parent_run_id"] = _start_parent(ml, spec)
        state["tracking_uri"] = ml.tracking_uri
    else:
        ml.call("the parent run (resumed)", lambda: ml.connect().update_run(state["parent_run_id"], status="RUNNING"))
    return ml


def _close_trial_runs(ml, client, spec: SweepSpec, parent_run_id: str, rows: list[dict[str, Any]]) -> None:
    """Close the trials' child runs (status, tags, best PCK) and put each run id into its row
    (``mlflow_run_id``)."""
    from .tracking.client import metric
    from .tracking.runs import find_tagged_run

    for row in rows:
        tags = {"mlflow.parentRunId": parent_run_id, "sweep.trial_id": row["trial_id"]}
        run = ml.call(
            f"trial {row['trial_id']}'s run lookup", find_tagged_run, client, spec.tracking.get("experiment"), tags
        )
        if run is None:
            continue
        rid = row["mlflow_run_id"] = run.info.run_id
        ml.call("trial status tags", client.set_tag, rid, "sweep.status", row["status"])
        if row.get("_path"):  # the trial's folder in the storage (its run folder was scratch)
            ml.call("trial folder tag", client.set_tag, rid, "run_dir", str(row["_path"]))
        if row.get("best_val_pck") is not None:
            ml.call("trial best PCK", client.log_batch, rid, metrics=[metric("best_val_pck", row["best_val_pck"], 0)])
        # ASHA-stopped trials never reach the trainer's on_end: close their runs here.
        failed = row["status"] in (STATUS_ERROR, STATUS_DIVERGED)
        ml.call("trial run status", client.set_terminated, rid, "FAILED" if failed else "FINISHED")


def _log_to_parent(
    ml, client, spec: SweepSpec, parent_run_id: str, rows: list[dict[str, Any]], paths: dict[str, Path], best_ckpt
) -> str | None:
    """Log the written results files, the best result and the trial counts to the parent run,
    the best checkpoint as a model of the best trial's run (its registered version returned);
    close the parent run."""
    from .tracking.client import metric
    from .tracking.models import log_checkpoint_model

    version = None
    for key in ("csv", "md", "best_params"):
        if key in paths:
            ml.call(f"sweep {key}", client.log_artifact, parent_run_id, str(paths[key]), "results")
    best = best_row(rows)
    if best is not None:
        ml.call(
            "best result", client.log_batch, parent_run_id, metrics=[metric("best_val_pck", best["best_val_pck"], 0)]
        )
        ml.call("best trial tag", client.set_tag, parent_run_id, "sweep.best_trial", best["trial_id"])
        rid = best.get("mlflow_run_id")
        if rid and best_ckpt is not None:
            from simsc.engine.checkpoint import load_checkpoint

            cfg = load_checkpoint(best_ckpt).get("config") or {}
            registered = spec.tracking.get("registered_model")
            what = "the best checkpoint (model + registration)"
            version = ml.call(what, log_checkpoint_model, client, rid, best_ckpt, registered, cfg)
    counts = status_counts(rows)
    ml.call(
        "trial counts",
        client.log_batch,
        parent_run_id,
        metrics=[metric(f"trials_{k.replace(' ', '_')}", v, 0) for k, v in counts.items()],
    )
    ml.call("parent run status", client.set_terminated, parent_run_id, "FAILED" if counts[STATUS_ERROR] else "FINISHED")
    return version


def status_counts(rows) -> dict[str, int]:
    """How many trials ended in each status."""
    statuses = (STATUS_COMPLETED, STATUS_STOPPED, STATUS_DIVERGED, STATUS_ERROR)
    return {s: sum(r["status"] == s for r in rows) for s in statuses}


# ------------------------------------------------------------------------------------------
# The sweep
# ------------------------------------------------------------------------------------------


def _refuse_completed_without_results(exp_path: str) -> None:
    """A resumed sweep keeps its completed trials as they are: one whose folder (or its
    ``result.json``) was deleted would be reported completed with no history. Refuse, naming
    the folder, before the sweep continues (local storage; a remote one is not listed)."""
    from ray.tune import ExperimentAnalysis

    if "://" in exp_path:
        return
    for trial in ExperimentAnalysis(exp_path).trials:
        path = Path(trial.path or "")  # in the storage (local_path is a scratch copy)
        if trial.status == "TERMINATED" and not (path / "result.json").is_file():
            raise SweepError(
                f"--resume: completed trial {trial.trial_id} has no results: {path / 'result.json'} is gone, "
                "so it cannot be reported; restore that folder, or rerun the whole sweep under another "
                "--name / --out"
            )


def prune_finished_trials(rows: list[dict[str, Any]]) -> int:
    """Shrink the storage of the trials that are done for good: bytes freed.

    While a trial runs, Tune keeps its newest ``keep_checkpoints`` checkpoints, each with
    ``last.pt`` (the full training state a restart resumes from). A finished trial (completed,
    stopped early, diverged) never runs again (``--resume`` keeps it), so only its newest
    checkpoint stays, without ``last.pt``: ``best.pt``, ``metrics.jsonl``, ``config.yaml``.
    Errored trials keep everything: ``--resume`` retries them from their checkpoint. Called
    only after Tune saved the final experiment state, so no resume point refers to what goes.
    """
    import pyarrow.fs

    freed = 0
    for row in rows:
        if row["status"] == STATUS_ERROR or row.get("_checkpoint") is None or not row.get("_path"):
            continue
        keep = row["_checkpoint"]
        fs, trial_dir = keep.filesystem, str(Path(keep.path).parent)
        if Path(trial_dir).name != Path(str(row["_path"])).name:
            continue  # a multi-worker trial's checkpoints live in Ray Train's storage: left alone
        try:
            found = fs.get_file_info(pyarrow.fs.FileSelector(trial_dir, recursive=True))
            sizes = {Path(i.path): i.size or 0 for i in found if i.type == pyarrow.fs.FileType.File}
            for ckpt in [i.path for i in found if i.type == pyarrow.fs.FileType.Directory]:
                if Path(ckpt).parent == Path(trial_dir) and Path(ckpt).name.startswith("checkpoint_"):
                    if Path(ckpt) != Path(keep.path):
                        freed += sum(v for k, v in sizes.items() if Path(ckpt) in k.parents)
                        fs.delete_dir(ckpt)
            last = Path(keep.path, "checkpoints", "last.pt")
            if last in sizes:
                fs.delete_file(str(last))
                freed += sizes[last]
        except OSError as e:  # only space is at stake: say so and keep the rest of the sweep's work
            warnings.warn(f"sweep: {row['_path']}: finished trial not pruned ({e})", stacklevel=2)
    return freed


def check_embedded_roots(spec: SweepSpec) -> None:
    """Every embedded ``data.root`` a trial may use must hold the data set on the driver's
    machine: nodes without it build the one params.yaml describes, but a mistyped root must
    not become a new default data set (somewhere in the file system) and a sweep over it."""
    from .sweep_spec import _candidate_overrides, compose

    configs = [spec.engine_base()]
    for entry in spec.search:
        configs += [compose(spec.engine_base(), ov, root=spec.root) for ov in _candidate_overrides(entry)]
    for cfg in configs:
        data = cfg.get("data") or {}
        if data.get("dataset") == "embedded" and data.get("root"):
            root = Path(data["root"])
            if not (root / "manifest.json").is_file():
                raise SweepError(
                    f"{spec.path}: data.root {root} holds no embedded data set (no manifest.json); build it "
                    "first (dvc repro download, or python -m simsc.data.embedded ROOT) or fix the path"
                )


def _build_tuner(spec: SweepSpec, storage: str, context, restore_path: str | None):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from .sweep_trial import run_trial

    res = spec.resources
    # A multi-worker trial is a driver that holds nothing: its Ray Train workers hold the CPUs
    # and GPUs (each job reserves all its workers at once, so trials queue rather than deadlock).
    driver = {"cpu": res["cpu"], "gpu": res["gpu"]} if res["workers"] == 1 else {"cpu": 0, "memory": 1}
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), driver)
    if restore_path is not None:
        return tune.Tuner.restore(restore_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    if spec.scheduler["type"] == "asha":
        scheduler = ASHAScheduler(
            time_attr="epochs_done",
            max_t=spec.max_epochs(),
            grace_period=spec.scheduler["grace_period"],
            reduction_factor=spec.scheduler["reduction_factor"],
        )
    else:
        scheduler = FIFOScheduler()
    search_alg = BasicVariantGenerator(random_state=spec.seed) if spec.search_alg == "random" else None
    return tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            scheduler=scheduler,
            search_alg=search_alg,
            num_samples=spec.num_samples,
            max_concurrent_trials=spec.max_concurrent_trials,
            reuse_actors=spec.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints),
            verbose=1,
            # No per-trial capture of stdout/stderr: Tune swaps sys.stdout/stderr for a Tee per trial
            # and closes its file when a reused worker moves on, and what still holds the previous
            # trial's Tee then warns "ValueError when calling 'flush' on stream" at the end of the next
            # trial. The trials' output goes to the driver and Ray's worker logs all the same.
            log_to_file=False,
        ),
    )


def run_sweep(
    spec: SweepSpec,
    *,
    out_dir: str | os.PathLike | None = None,
    storage: str | None = None,
    address: str | None = None,
    resume: bool = False,
    tracking: bool | None = None,
    keep_all_checkpoints: bool = False,
) -> dict[str, Any]:
    """Run (or ``resume``) a sweep; returns a summary with the rows and output paths.

    Unless ``keep_all_checkpoints``, the finished trials' resume state goes at the end
    (:func:`prune_finished_trials`).

    Raises :class:`SweepError` when the sweep exists and ``resume`` is false, or when a
    resumed spec no longer matches the one that started the sweep.
    """
    out = Path(out_dir) if out_dir is not None else Path(spec.root, "sweeps", spec.name)
    storage = storage or spec.storage or str(Path(spec.root, "sweeps", "ray_results"))
    storage = storage if "://" in storage else str(Path(storage).absolute())
    state = _open_state(out, spec, resume, _experiment_path(storage, spec.name))
    exp_path = state["experiment_path"]
    check_embedded_roots(spec)
    restore = _restore_point(exp_path, resume, address)
    ml = _start_tracking(spec, state, tracking)
    state["status"] = "running"
    _save_state(out, state)
    parent = state.get("parent_run_id") if ml is not None and not ml.offline else None
    tuner = _build_tuner(spec, storage, _trial_context(spec, storage, ml, parent), restore)
    results, wall = _fit(tuner, spec, exp_path, out, state)

    rows = rows_from_results(results, spec)
    best = best_row(rows)
    best_ckpt = _copy_best_checkpoint(best, out)
    client = ml.connect() if parent else None  # parent is None when offline or untracked
    if client:  # the trials' runs first: the results then hold their ids
        _close_trial_runs(ml, client, spec, parent, rows)
    paths = write_results(out, spec, rows)  # once, complete
    version = _log_to_parent(ml, client, spec, parent, rows, paths, best_ckpt) if client else None
    if parent and ml.failed:
        warnings.warn(f"MLflow: not logged: {', '.join(ml.failed)}", stacklevel=2)

    state.update(
        status="finished with errors" if status_counts(rows)[STATUS_ERROR] else "finished",
        wall_s=round(wall, 1),
        n_trials=len(rows),
        best_trial=best["trial_id"] if best else None,
        best_val_pck=best["best_val_pck"] if best else None,
        model_version=version,
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    _save_state(out, state)
    if not keep_all_checkpoints and (freed := prune_finished_trials(rows)):
        print(
            f"sweep: {freed / 2**20:.1f} MiB of finished trials' resume state (last.pt, older checkpoints) removed",
            file=sys.stderr,
        )
    return {
        "state": state,
        "rows": [public(r) for r in rows],
        "paths": {k: str(v) for k, v in paths.items()},
        "best_checkpoint": str(best_ckpt) if best_ckpt else None,
        "experiment_path": exp_path,
        "wall_s": wall,
    }


def _open_state(out: Path, spec: SweepSpec, resume: bool, exp_path: str) -> dict[str, Any]:
    """The sweep's state: the saved one (``resume``, checked to be the same spec) or a new one."""
    p, state = out / STATE_FILE, None
    if p.exists():
        try:
            state = json.loads(p.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise SweepError(f"{p}: not readable JSON ({exc}); delete the folder to start the sweep afresh") from None
    if state is not None and not resume:
        raise SweepError(
            f"{out} already holds sweep {state.get('name')!r} ({state.get('status')}); continue it "
            "with --resume, or pick another --name / --out"
        )
    if not resume:
        return {
            "name": spec.name,
            "spec": spec.path,
            "profile": spec.profile,
            "spec_digest": spec.digest(),
            "experiment_path": exp_path,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    if state is None:
        raise SweepError(f"--resume: {p} not found: nothing to resume (run without --resume)")
    if state.get("spec_digest") != spec.digest():
        raise SweepError(
            f"--resume: the spec changed since the sweep started (digest {state.get('spec_digest')} "
            f"-> {spec.digest()}); resume with the same spec and profile, or start a new --name"
        )
    state.setdefault("experiment_path", exp_path)
    return state


def _save_state(out: Path, state: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / STATE_FILE, state, indent=2)


def _restore_point(exp_path: str, resume: bool, address: str | None) -> str | None:
    """Start Ray (or attach to ``address``); the experiment to restore when resuming one Tune
    saved, checked to have kept its completed trials' results."""
    import ray
    from ray import tune

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True, configure_logging=False)
    if not resume:
        return None
    if not tune.Tuner.can_restore(exp_path):
        print(f"sweep: no Ray experiment state at {exp_path} yet: starting the trials", file=sys.stderr)
        return None
    _refuse_completed_without_results(exp_path)  # before the sweep is marked running again
    return exp_path


def _trial_context(spec: SweepSpec, storage: str, ml, parent_run_id: str | None):
    from .sweep_trial import TrialContext
    from .tracking.runs import git_revision

    return TrialContext(
        spec_name=spec.name,
        engine_base=spec.engine_base(),
        search=spec.search,
        best_alpha=spec.engine_config().train.best_alpha,
        root=spec.root,
        embedded=spec.params.get("embedded"),
        # the trials run in scratch folders outside the checkout: they get its revision from here
        tracking={
            "uri": ml.tracking_uri,
            "experiment": spec.tracking.get("experiment"),
            "parent_run_id": parent_run_id,
            "git_revision": git_revision(spec.root),
        }
        if parent_run_id
        else None,
        cpus_per_trial=spec.resources["cpu"],
        workers=int(spec.resources["workers"]),
        gpus_per_worker=spec.resources["gpu"],
        train_storage=_experiment_path(storage, f"{spec.name}-train"),
        max_failures=spec.max_failures,
        keep_checkpoints=spec.keep_checkpoints,
    )


def _fit(tuner, spec: SweepSpec, exp_path: str, out: Path, state: dict[str, Any]):
    """Run the trials: (Tune's results, wall seconds). An interrupted sweep is saved as such and
    raises :class:`KeyboardInterrupt`: on Ctrl+C Tune saves its state (running trials as RUNNING,
    what resume continues) and returns normally, so the experiment state it saved tells."""
    from ray.tune import ExperimentAnalysis

    t0 = time.perf_counter()
    try:
        results = tuner.fit()
    except KeyboardInterrupt:
        results = None
    wall = time.perf_counter() - t0
    trials = ExperimentAnalysis(exp_path).trials if results is not None else []
    if results is None or len(trials) < n_trials(spec) or any(t.status not in ("TERMINATED", "ERROR") for t in trials):
        state["status"] = "interrupted"
        _save_state(out, state)
        raise KeyboardInterrupt
    return results, wall


def _copy_best_checkpoint(best, out: Path) -> Path | None:
    """The best trial's ``best.pt`` copied to ``out/best.pt`` (None when it has none)."""
    if best is None or best["_checkpoint"] is None:
        return None
    with best["_checkpoint"].as_directory() as d:
        src = Path(d) / "checkpoints" / "best.pt"
        return atomic_copy(src, out / "best.pt") if src.exists() else None


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------


#: The options after ``--profile`` and ``--set``, in ``--help``'s order: flag, value type (bool: a switch), help.
OPTIONS: tuple[tuple[str, type, str], ...] = (
    ("--name", str, "the sweep's name (default: the spec's name)"),
    ("--address", str, "Ray cluster to attach to (default: $RAY_ADDRESS, else a local Ray instance)"),
    (
        "--storage",
        str,
        "Ray results storage: folder, NFS path or s3://bucket/prefix (default: the spec's storage, else "
        "sweeps/ray_results)",
    ),
    ("--out", Path, "local outputs folder (default: sweeps/<name>)"),
    (
        "--resume",
        bool,
        "continue an interrupted sweep: finished trials are kept, unfinished ones resume from their last "
        "checkpoint, errored ones are retried",
    ),
    ("--max-concurrent", int, "override max_concurrent_trials"),
    (
        "--keep-all-checkpoints",
        bool,
        "keep every checkpoint of the finished trials, with last.pt (default: only the newest, without "
        "last.pt: best.pt, metrics.jsonl, config.yaml)",
    ),
    ("--no-tracking", bool, "do not log to MLflow"),
    ("--dry-run", bool, "print the trials and exit"),
)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m pipeline.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("spec", type=Path, help="the sweep spec (YAML), e.g. configs/sweeps/lr_beta1.yaml")
    p.add_argument("--profile", help="a profile of the spec (e.g. toy, full; default: the spec's default_profile)")
    add_overrides_flag(p, "add a fixed override to the spec's set: (repeatable), e.g. --set train.epochs=2")
    for flag, kind, text in OPTIONS:
        p.add_argument(flag, help=text, **({"action": "store_true"} if kind is bool else {"type": kind}))
    add_debug_flag(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 done, 1 some trials errored, 2 user error, 3 internal error, 130 interrupted
    (the contract of :mod:`simsc.errors`)."""
    args = build_parser().parse_args(argv)
    return run_main("sweep", lambda: _main(args), debug=args.debug, user_errors=(SweepSpecError, SweepError))


def _main(args: argparse.Namespace) -> int:
    spec = load_sweep_spec(args.spec, args.profile, overrides=args.overrides)
    if args.name:
        spec.name = args.name
    if args.max_concurrent is not None:
        if args.max_concurrent < 1:
            raise SweepSpecError("--max-concurrent: expected an integer >= 1")
        spec.max_concurrent_trials = args.max_concurrent
    if args.dry_run:
        trials = expand_grid(spec)
        print(
            f"sweep {spec.name} (profile {spec.profile}): {n_trials(spec)} trials, "
            f"resources {spec.resources}, scheduler {spec.scheduler}"
        )
        for i, ov in enumerate(trials):
            print(f"  {i:3d}  " + "  ".join(f"{k}={v}" for k, v in ov.items()))
        return 0
    try:
        summary = run_sweep(
            spec,
            out_dir=args.out,
            storage=args.storage,
            address=args.address,
            resume=args.resume,
            tracking=False if args.no_tracking else None,
            keep_all_checkpoints=args.keep_all_checkpoints,
        )
    except KeyboardInterrupt:
        print("sweep: interrupted; continue with the same command and --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(Path(summary["paths"]["md"]).read_text(encoding="utf-8"))
    print(
        f"sweep {spec.name}: {summary['state']['status']} in {summary['wall_s']:.0f} s; outputs in "
        f"{Path(summary['paths']['md']).parent}"
    )
    if summary["best_checkpoint"]:
        print(f"best checkpoint: {summary['best_checkpoint']}")
    return EXIT_TRIAL_ERRORS if status_counts(summary["rows"])[STATUS_ERROR] else 0


if __name__ == "__main__":
    sys.exit(main())
