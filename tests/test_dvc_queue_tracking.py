"""Queued DVC experiments track into the project's MLflow store.

``dvc exp run --queue`` runs each experiment in a temporary copy of the project
(``.dvc/tmp/exps/tmpXXX``) that DVC deletes afterwards; MLflow's default store,
``sqlite:///mlflow.db``, is relative, so without care the runs, the model versions and the
champion alias went into the copy and were lost. Two experiments queued and run at once
(``dvc queue start -j 2``) must leave both runs, both versions and the champion alias on
the better one in the project's ``mlflow.db`` (and, on the way, open that fresh store and
decide the alias concurrently).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from tests.dvc_project import DVC, SHRINK, make_project, run

pytestmark = pytest.mark.slow

if not DVC.exists():  # pragma: no cover - dvc is a pipeline dependency
    pytest.skip("dvc is not installed", allow_module_level=True)

MODEL = "simsc-queue"


def wait_for_queue(work: Path, env: dict, timeout_s: float = 900) -> str:
    """Poll ``dvc queue status`` until nothing is queued or running; returns the last status."""
    deadline = time.time() + timeout_s
    while True:
        status = run([DVC, "queue", "status"], work, env)
        if not any(word in status for word in ("Queued", "Running")):
            return status
        assert time.time() < deadline, f"queue not done after {timeout_s} s:\n{status}"
        time.sleep(5)


def test_queued_experiments_track_into_the_project_store(tmp_path):
    work = tmp_path / "project"
    updates = {
        **SHRINK,
        "train.max_steps": 2,
        "tracking.enabled": True,
        "tracking.experiment": "queue",
        "tracking.registered_model": MODEL,
    }
    env = make_project(work, updates)
    env.pop("MLFLOW_TRACKING_URI", None)  # MLflow's default store: sqlite:///mlflow.db, relative
    env["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "5"
    for seed in (1, 2):
        run([DVC, "exp", "run", "--queue", "-n", f"seed{seed}", "-S", f"++train.seed={seed}"], work, env)
    run([DVC, "queue", "start", "-j", "2"], work, env)
    status = wait_for_queue(work, env)
    print(status)
    assert status.count("Success") == 2, status
    print(run([DVC, "exp", "show", "--csv", "--only-changed"], work, env))
    for name in ("seed1", "seed2"):  # each report stage's champion decision, from the queue's logs
        print(name, [x for x in run([DVC, "queue", "logs", name], work, env).splitlines() if "champion" in x])

    db = work / "mlflow.db"
    assert db.is_file(), "no MLflow store in the project root"
    assert not list((work / ".dvc" / "tmp").rglob("mlflow.db")), "a store inside DVC's temporary copies"
    con = sqlite3.connect(db)
    try:
        runs = con.execute(
            "select r.run_uuid, r.status from runs r join experiments e using (experiment_id) where e.name = 'queue'"
        ).fetchall()
        versions = dict(con.execute("select version, run_id from model_versions where name = ?", (MODEL,)).fetchall())
        tags = con.execute(
            "select version, key, value from model_version_tags where name = ? and key like 'champion.%'", (MODEL,)
        ).fetchall()
        alias = con.execute("select version from registered_model_aliases where name = ?", (MODEL,)).fetchall()
        locations = [row[0] for row in con.execute("select artifact_location from experiments where name = 'queue'")]
    finally:
        con.close()
    print(json.dumps({"runs": runs, "versions": versions, "tags": tags, "alias": alias, "artifacts": locations}))
    assert len(runs) == 2 and {s for _, s in runs} == {"FINISHED"}, runs
    assert sorted(versions) == [1, 2] and set(versions.values()) == {r for r, _ in runs}, versions
    values = {v: float(val) for v, k, val in tags if k == "champion.value"}
    assert sorted(values) == [1, 2], tags
    best = max(values, key=lambda v: (values[v], -v))  # a tie keeps the first to get there
    assert alias == [(best,)] or (values[1] == values[2] and len(alias) == 1), (alias, values)
    # the model's files live beside the store, not in a deleted temporary copy
    assert locations and all(str(work) in loc and "/.dvc/tmp/" not in loc for loc in locations), locations
    assert list((work / "mlruns").rglob("best.pt")), "registered checkpoints missing from the project's mlruns/"
