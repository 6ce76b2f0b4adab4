"""What a finished sweep keeps of its trials in the storage (``prune_finished_trials``).

The folders are laid out as Ray Tune writes them (``<storage>/<sweep>/<trial>/checkpoint_<n>/``
with the files ``pipeline.sweep_trial`` puts in each checkpoint) and the rows carry Tune's own
``Checkpoint`` objects, as ``rows_from_results`` makes them. A real sweep's pruning is checked
by ``tests/test_sweep_cluster.py::test_four_trial_sweep_on_a_two_node_cluster``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.sweep import prune_finished_trials
from pipeline.sweep_results import STATUS_COMPLETED, STATUS_DIVERGED, STATUS_ERROR, STATUS_STOPPED
from pipeline.sweep_trial import CHECKPOINT_FILES, TRIAL_STATE

TRIAL_FILES = ("result.json", "params.json", "params.pkl", "progress.csv", "events.out.tfevents.1")


def make_trial(root: Path, name: str, n_checkpoints: int) -> Path:
    """A trial folder with ``n_checkpoints`` checkpoints; every file's size differs."""
    trial = root / name
    trial.mkdir(parents=True)
    for f in TRIAL_FILES:
        (trial / f).write_bytes(b"t" * 10)
    for i in range(n_checkpoints):
        ckpt = trial / f"checkpoint_{i:06d}"
        for j, f in enumerate((*CHECKPOINT_FILES, TRIAL_STATE)):
            (ckpt / f).parent.mkdir(parents=True, exist_ok=True)
            (ckpt / f).write_bytes(bytes([i]) * (1000 * (j + 1) + i))
    return trial


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def row(status: str, trial: Path, checkpoint: Path | None) -> dict:
    from ray.tune import Checkpoint

    return {
        "status": status,
        "trial_id": trial.name,
        "_path": str(trial),
        "_checkpoint": Checkpoint.from_directory(str(checkpoint)) if checkpoint else None,
    }


def test_finished_trials_keep_their_newest_checkpoint_without_last_pt(tmp_path):
    storage = tmp_path / "ray_results"
    done = {
        s: make_trial(storage / "sweep", f"run_trial_{i}", 3)
        for i, s in enumerate((STATUS_COMPLETED, STATUS_STOPPED, STATUS_DIVERGED))
    }
    errored = make_trial(storage / "sweep", "run_trial_error", 3)
    early = make_trial(storage / "sweep", "run_trial_early", 0)  # stopped before its first checkpoint
    # a multi-worker trial: its checkpoints are Ray Train's, in <storage>/<sweep>-train/
    multi = make_trial(storage / "sweep", "run_trial_multi", 0)
    train_run = make_trial(storage / "sweep-train", "run_trial_multi-job", 2)
    before = {p: files(p) for p in (*done.values(), errored, early, multi, train_run)}
    rows = [row(s, t, t / "checkpoint_000002") for s, t in done.items()]
    rows += [
        row(STATUS_ERROR, errored, errored / "checkpoint_000002"),
        row(STATUS_STOPPED, early, None),
        row(STATUS_COMPLETED, multi, train_run / "checkpoint_000001"),
    ]

    freed = prune_finished_trials(rows)

    kept = {f"checkpoint_000002/{f}" for f in ("checkpoints/best.pt", "metrics.jsonl", "config.yaml", TRIAL_STATE)}
    expected_freed = 0
    for trial in done.values():
        after = files(trial)
        assert set(after) == set(TRIAL_FILES) | kept, trial.name
        assert all(after[f] == before[trial][f] for f in after)
        expected_freed += sum(len(v) for f, v in before[trial].items() if f not in after)
    assert freed == expected_freed > 0
    # what a retry or someone else's storage needs is left alone
    for trial in (errored, early, multi, train_run):
        assert files(trial) == before[trial], trial.name


def test_a_trial_folder_that_went_away_is_a_warning_not_an_error(tmp_path):
    trial = make_trial(tmp_path / "sweep", "run_trial_0", 2)
    r = row(STATUS_COMPLETED, trial, trial / "checkpoint_000001")
    for p in sorted(trial.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    trial.rmdir()
    with pytest.warns(UserWarning, match=f"sweep: {trial}: finished trial not pruned"):
        assert prune_finished_trials([r]) == 0
