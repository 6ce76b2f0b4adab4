"""Sweeps on a real multi-node Ray cluster (``ray start`` head + worker on 127.0.0.1), tracked
by a real ``mlflow server``, driven through the command line as a user would:

- a 4-trial sweep: 4 nested child runs under one parent, each with its beta history;
- the worker node is killed mid-sweep: every trial still completes, from its checkpoints;
- the driver is interrupted (Ctrl+C) mid-sweep: ``--resume`` finishes the rest and does not
  rerun the finished trials.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("ray")
pytest.importorskip("mlflow")

from tests.http_server import unused_port
from tests.mlflow_server import MlflowServer
from tests.ray_cluster import LocalRayCluster

# One Ray cluster at a time on this machine: `ray start --head` takes fixed default ports (the
# client server's among them), so these tests share one test process (make test: --dist loadgroup).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LocalRayCluster(tmp_path_factory.mktemp("ray-logs"))
    try:
        c.start_head(num_cpus=1)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow"), unused_port())
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def worker(cluster):
    node = cluster.add_worker(num_cpus=1)
    yield node
    cluster.remove_node(node)


def write_spec(
    path: Path,
    data_root: Path,
    name: str,
    *,
    epochs: int,
    resolution: int = 64,
    batch_size: int = 4,
    max_concurrent: int = 2,
    scheduler: str = "fifo",
) -> Path:
    spec = {
        "name": name,
        "base": [],
        "set": {
            "model.backbone": "resnet18",
            "model.pretrained": False,
            "model.finetune": "all",
            "data.dataset": "embedded",
            "data.root": str(data_root),
            "data.resolution": resolution,
            "data.batch_size": batch_size,
            "train.epochs": epochs,
            "train.lr_backbone": 1e-3,
            "train.val_max_pairs": 4,
            "train.device": "cpu",
            "eval.resolution": resolution,
        },
        "search": {"model.temperature": {"grid": ["mlp", "fixed:0.05"]}, "train.seed": {"grid": [0, 1]}},
        "scheduler": {"type": scheduler},
        "resources": {"cpu": 1},
        "max_concurrent_trials": max_concurrent,
        "max_failures": 3,
        "tracking": {"enabled": True, "experiment": f"sweep-{name}"},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def sweep_cmd(spec: Path, cluster: LocalRayCluster, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.sweep", str(spec), "--address", cluster.address, *extra]


def env_for(cluster: LocalRayCluster, server: MlflowServer) -> dict[str, str]:
    return dict(cluster.env, MLFLOW_TRACKING_URI=server.uri, PYTHONPATH=str(REPO))


def start_sweep(spec: Path, cluster: LocalRayCluster, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """The sweep driver in the background (its own session: a test can signal its group)."""
    return subprocess.Popen(
        sweep_cmd(spec, cluster),
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def run(cmd, cwd, env, timeout=600) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return out


def trial_dirs(storage: Path, name: str) -> list[Path]:
    return sorted(p for p in (storage / name).glob("run_trial_*") if p.is_dir())


def read_results(trial_dir: Path) -> list[dict]:
    f = trial_dir / "result.json"
    if not f.exists():
        return []
    rows = []
    for line in f.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    return rows


def latest_checkpoint(trial_dir: Path) -> Path:
    return max(trial_dir.glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[1]))


def child_runs(server: MlflowServer, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def check_beta_histories(client, children, steps_per_trial: int) -> None:
    for r in children:
        hist = client.get_metric_history(r.info.run_id, "beta_eff")
        steps = sorted(m.step for m in hist)
        # every step once: nothing lost, nothing logged twice by a restarted trial
        assert steps == list(range(1, steps_per_trial + 1)), (r.info.run_name, steps)
        assert all(m.value > 0 for m in hist)


def test_four_trial_sweep_on_a_two_node_cluster(cluster, worker, mlflow_server, tiny_embedded, tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", tiny_embedded, "four", epochs=2)
    out = run(sweep_cmd(spec, cluster), tmp_path, env_for(cluster, mlflow_server))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    # a worker runs several trials (reuse_actors, 4 trials 2 at a time): none warns about a closed log file
    assert "ValueError when calling" not in out.stdout + out.stderr

    # both nodes ran trials
    worker_id = cluster.node_ids[worker.pid]
    nodes = [read_results(d)[-1]["node_id"] for d in trial_dirs(tmp_path / "sweeps" / "ray_results", "four")]
    assert 1 <= nodes.count(worker_id) <= 3, (nodes, worker_id)

    client, parents, children = child_runs(mlflow_server, "sweep-four")
    assert len(parents) == 1 and len(children) == 4
    parent_id = parents[0].info.run_id
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent_id}
    assert all(c.info.status == "FINISHED" for c in children)
    # the checkout's revision (the trials ran in scratch folders outside it), the trial's storage folder
    revision = parents[0].data.tags["git_revision"]
    assert revision != "unknown" and {c.data.tags["git_revision"] for c in children} == {revision}
    assert all(
        Path(c.data.tags["run_dir"]).parent == tmp_path / "sweeps" / "ray_results" / "four"
        and Path(c.data.tags["run_dir"]).is_dir()
        for c in children
    )
    assert all(
        c.data.tags["mlflow.runName"].startswith("four/") and " resnet18 " in c.data.tags["mlflow.runName"]
        for c in children
    )
    # 8 training pairs, batch 4: 2 steps an epoch, 2 epochs
    check_beta_histories(client, children, steps_per_trial=4)
    for c in children:
        assert [m.step for m in client.get_metric_history(c.info.run_id, "val_pck_0.1")] == [0, 1]
    temps = sorted(c.data.params["model.temperature"] for c in children)
    assert temps == ["fixed:0.05", "fixed:0.05", "mlp", "mlp"]

    # results table, best params, best checkpoint
    sweep_dir = tmp_path / "sweeps" / "four"
    rows = list(csv.DictReader(open(sweep_dir / "results.csv")))
    assert len(rows) == 4 and all(r["status"] == "completed" and r["epochs_done"] == "2" for r in rows)
    assert {r["mlflow_run_id"] for r in rows} == {c.info.run_id for c in children}
    best = max(rows, key=lambda r: float(r["best_val_pck"]))
    assert (sweep_dir / "results.md").read_text().count("| completed |") == 4
    params = yaml.safe_load((sweep_dir / "best_params.yaml").read_text())
    from simsc.config import load_config
    from simsc.engine.checkpoint import load_checkpoint

    # a parameter set: the engine sections as differences from the schema defaults
    assert set(params) <= {"model", "data", "train", "eval"}
    best_cfg = load_config(params)
    assert best_cfg.model.temperature == best["model.temperature"] and best_cfg.train.seed == int(best["train.seed"])
    ckpt = load_checkpoint(sweep_dir / "best.pt")
    assert ckpt["config"]["model"]["temperature"] == best["model.temperature"]
    # the parent's results artifacts are the files the sweep wrote, child run ids included
    logged = Path(client.download_artifacts(parent_id, "results", str(tmp_path / "logged")))
    assert sorted(p.name for p in logged.iterdir()) == ["best_params.yaml", "results.csv", "results.md"]
    for f in logged.iterdir():
        assert f.read_bytes() == (sweep_dir / f.name).read_bytes(), f.name
    assert parents[0].data.tags["sweep.best_trial"] == best["trial_id"]

    # the finished trials keep their newest checkpoint, without the resume state (last.pt)
    assert "MiB of finished trials' resume state (last.pt, older checkpoints) removed" in out.stderr
    for d in trial_dirs(tmp_path / "sweeps" / "ray_results", "four"):
        (ckpt,) = d.glob("checkpoint_*")
        assert sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*.*")) == [
            "checkpoints/best.pt",
            "config.yaml",
            "metrics.jsonl",
            "trial_state.json",
        ]


def _wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep ended before {what}: rc {proc.returncode}\n" + proc.stdout.read()[-4000:])
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_worker_node_killed_mid_sweep(cluster, worker, mlflow_server, tiny_embedded, tmp_path):
    # 4 epochs of 4 steps: long enough to kill the worker between two checkpoints
    spec = write_spec(tmp_path / "spec.yaml", tiny_embedded, "fault", epochs=4, resolution=96, batch_size=2)
    storage = tmp_path / "sweeps" / "ray_results"
    proc = start_sweep(spec, cluster, tmp_path, env_for(cluster, mlflow_server))
    try:
        worker_id = cluster.node_ids[worker.pid]

        def trial_on_worker_checkpointed():
            for d in trial_dirs(storage, "fault"):
                res = read_results(d)
                if (
                    res
                    and res[-1]["node_id"] == worker_id
                    and 1 <= res[-1]["epochs_done"] < 4
                    and list(d.glob("checkpoint_*"))
                ):
                    return d
            return None

        victim = _wait_for(trial_on_worker_checkpointed, 240, "a checkpoint of a trial on the worker", proc)
        epochs_before = read_results(victim)[-1]["epochs_done"]
        cluster.kill_node(worker)
        stdout, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stdout[-5000:]

    rows = {r["trial_id"]: r for r in csv.DictReader(open(tmp_path / "sweeps" / "fault" / "results.csv"))}
    assert len(rows) == 4 and all(r["status"] == "completed" and r["epochs_done"] == "4" for r in rows.values())
    # the victim restarted from its checkpoint: a second start, resumed at the checkpointed epoch
    res = read_results(victim)
    victim_id = res[-1]["trial_id"]
    assert int(rows[victim_id]["trial_starts"]) >= 2
    assert [r["epochs_done"] for r in res if r["trial_starts"] == 1][-1] >= epochs_before
    restarted = [r for r in res if r["trial_starts"] >= 2]
    assert restarted and restarted[0]["epochs_done"] > 1  # it did not start over from epoch 1
    assert len(json.loads(rows[victim_id]["val_pck_history"])) >= 4
    # the newest checkpoint holds the whole run: a step record for every step, once
    records = [json.loads(x) for x in (latest_checkpoint(victim) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "step"] == list(range(1, 17))
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [0, 1, 2, 3]
    client, parents, children = child_runs(mlflow_server, "sweep-fault")
    assert len(parents) == 1 and len(children) == 4  # the restarted trial kept its run
    check_beta_histories(client, children, steps_per_trial=16)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_interrupted_driver_resumes_without_rerunning_finished_trials(
    cluster, mlflow_server, tiny_embedded, tmp_path, sig
):
    name = f"resume-{sig.name.lower()}"  # own MLflow experiment per variant (one server for the module)
    spec = write_spec(tmp_path / "spec.yaml", tiny_embedded, name, epochs=3, max_concurrent=1)
    storage = tmp_path / "sweeps" / "ray_results"
    env = env_for(cluster, mlflow_server)
    proc = start_sweep(spec, cluster, tmp_path, env)
    try:

        def one_finished_one_running():
            dirs = trial_dirs(storage, name)
            done = [d for d in dirs if (read_results(d) or [{}])[-1].get("epochs_done") == 3]
            running = [d for d in dirs if d not in done and read_results(d)]
            return (done, running) if done and running else None

        done, _ = _wait_for(one_finished_one_running, 240, "one finished trial and one running", proc)
        os.kill(proc.pid, sig)  # Ctrl+C, or a driver that dies at once (Tune saves no final state)
        stdout, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    state = json.loads((tmp_path / "sweeps" / name / "sweep.json").read_text())
    if sig == signal.SIGINT:
        assert proc.returncode == 130, stdout[-5000:]
        assert state["status"] == "interrupted"
    else:
        assert proc.returncode == -signal.SIGKILL and state["status"] == "running"
    finished = {d.name: (d / "result.json").read_bytes() for d in done}
    finished_ckpt = {d.name: latest_checkpoint(d).name for d in done}

    out = run(sweep_cmd(spec, cluster, "--resume"), tmp_path, env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    rows = list(csv.DictReader(open(tmp_path / "sweeps" / name / "results.csv")))
    assert len(rows) == 4 and all(r["status"] == "completed" and r["epochs_done"] == "3" for r in rows)
    for trial, data in finished.items():  # finished trials: not one more report, not one more step
        assert (storage / name / trial / "result.json").read_bytes() == data
        assert latest_checkpoint(storage / name / trial).name == finished_ckpt[trial]
    client, parents, children = child_runs(mlflow_server, f"sweep-{name}")
    assert len(parents) == 1 and len(children) == 4
    check_beta_histories(client, children, steps_per_trial=6)
    assert parents[0].info.status == "FINISHED"


def test_random_search_with_asha_stops_trials_below_the_rung_median(cluster, mlflow_server, tiny_embedded, tmp_path):
    spec_path = write_spec(tmp_path / "spec.yaml", tiny_embedded, "asha", epochs=4, max_concurrent=1, scheduler="asha")
    spec = yaml.safe_load(spec_path.read_text())
    spec["set"].pop("train.lr_backbone")
    spec["search"] = {"train.lr_backbone": {"loguniform": [1e-6, 1e-1]}, "model.temperature": {"choice": ["mlp"]}}
    spec.update(search_alg="random", num_samples=6, seed=3)
    spec["scheduler"].update(grace_period=1, reduction_factor=2)
    spec_path.write_text(yaml.safe_dump(spec))
    out = run(sweep_cmd(spec_path, cluster), tmp_path, env_for(cluster, mlflow_server))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    rows = list(csv.DictReader(open(tmp_path / "sweeps" / "asha" / "results.csv")))
    assert len(rows) == 6 and len({r["train.lr_backbone"] for r in rows}) == 6  # 6 distinct draws
    assert all(1e-6 <= float(r["train.lr_backbone"]) <= 1e-1 for r in rows)
    stopped = [r for r in rows if r["status"] == "stopped early"]
    assert stopped and all(r["status"] in ("completed", "stopped early", "diverged") for r in rows)
    # ASHA's rungs for grace 1, reduction 2, max_t 4: epochs 1 and 2
    assert all(r["epochs_done"] in ("1", "2") for r in stopped)
    assert all(r["epochs_done"] == "4" for r in rows if r["status"] == "completed")
    # each stopped trial scored below the median of the values recorded before it at its rung
    storage = tmp_path / "sweeps" / "ray_results" / "asha"
    history = [read_results(d) for d in trial_dirs(storage, "asha")]  # in trial order: one at a time
    for i, hist in enumerate(history):
        last = hist[-1]
        if last["epochs_done"] < 4 and not last.get("diverged"):
            rung = last["epochs_done"]
            before = [r["val_pck"] for h in history[:i] for r in h if r["epochs_done"] == rung]
            assert before and last["val_pck"] < float(np.percentile(before, 50)), (last, before)
    client, parents, children = child_runs(mlflow_server, "sweep-asha")
    assert len(children) == 6
    statuses = sorted(client.get_run(c.info.run_id).data.tags["sweep.status"] for c in children)
    assert statuses.count("stopped early") == len(stopped)


def test_two_worker_trials_across_two_nodes_survive_a_killed_worker(
    cluster, worker, mlflow_server, tiny_embedded, tmp_path
):
    """Each trial is a Ray Train job of 2 DDP workers, one on each node (1 CPU each); a
    training worker is killed during the first trial: Ray Train restarts the group from the
    trial's newest checkpoint, and both trials finish with complete results and MLflow runs."""
    spec_path = write_spec(tmp_path / "spec.yaml", tiny_embedded, "ddp", epochs=4, resolution=96, batch_size=2)
    spec = yaml.safe_load(spec_path.read_text())
    spec["search"] = {"train.seed": {"grid": [0, 1]}}
    spec["resources"] = {"workers": 2, "cpus_per_worker": 1}
    spec["max_concurrent_trials"] = 1
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    storage = tmp_path / "sweeps" / "ray_results"
    t0 = time.time()
    proc = start_sweep(spec_path, cluster, tmp_path, env_for(cluster, mlflow_server))
    try:

        def trial_mid_run():
            for d in trial_dirs(storage, "ddp"):
                res = read_results(d)
                if res and 1 <= res[-1]["epochs_done"] < 4:
                    return d
            return None

        victim = _wait_for(trial_mid_run, 300, "a checkpointed epoch of a 2-worker trial", proc)
        epochs_before = read_results(victim)[-1]["epochs_done"]
        workers = [
            p
            for p in cluster.processes(worker)
            if any("RayTrainWorker" in part for part in (p.cmdline() if p.is_running() else []))
        ]
        assert workers, [p.cmdline() for p in cluster.processes(worker)]
        workers[0].kill()
        stdout, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    wall = time.time() - t0
    print(f"2 trials x 2 workers on 2 nodes, one training worker killed: {wall:.0f} s")
    assert proc.returncode == 0, stdout[-5000:]

    rows = {r["trial_id"]: r for r in csv.DictReader(open(tmp_path / "sweeps" / "ddp" / "results.csv"))}
    assert len(rows) == 2 and all(r["status"] == "completed" and r["epochs_done"] == "4" for r in rows.values())
    res = read_results(victim)
    victim_id = res[-1]["trial_id"]
    # the group restarted from the trial's checkpoint, not from the start
    assert int(rows[victim_id]["trial_starts"]) >= 2
    restarted = [r for r in res if r["trial_starts"] >= 2]
    assert restarted and restarted[0]["epochs_done"] > 1 and epochs_before >= 1
    assert len(json.loads(rows[victim_id]["val_pck_history"])) >= 4
    # the newest checkpoint (Ray Train's storage) holds the whole run, each step once
    ckpt = Path(res[-1]["checkpoint_path"])
    records = [json.loads(x) for x in (ckpt / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "step"] == list(range(1, 17))
    assert (tmp_path / "sweeps" / "ddp" / "best.pt").exists()
    client, parents, children = child_runs(mlflow_server, "sweep-ddp")
    assert len(parents) == 1 and len(children) == 2
    assert all(c.info.status == "FINISHED" for c in children)
    assert {c.data.params["train.devices"] for c in children} == {"2"}
    check_beta_histories(client, children, steps_per_trial=16)


def test_a_trial_failing_on_user_input_is_an_error_not_retried(cluster, mlflow_server, tiny_embedded, tmp_path):
    """max_failures restarts trials whose worker died; a trial that fails on the user's input
    (here a data root without the data set) would fail again: it ends at once as an error."""
    spec_path = write_spec(tmp_path / "spec.yaml", tiny_embedded, "usererr", epochs=1, max_concurrent=1)
    spec = yaml.safe_load(spec_path.read_text())
    spec["set"].update({"data.dataset": "spair", "data.root": str(tmp_path / "no-spair-here")})
    spec["search"] = {"train.seed": {"grid": [0]}}
    spec_path.write_text(yaml.safe_dump(spec))
    out = run(sweep_cmd(spec_path, cluster), tmp_path, env_for(cluster, mlflow_server))
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]  # errored trials: exit 1
    rows = list(csv.DictReader(open(tmp_path / "sweeps" / "usererr" / "results.csv")))
    assert len(rows) == 1 and rows[0]["status"] == "error"
    assert rows[0]["trial_starts"] == "1"  # not restarted
    assert "no-spair-here" in rows[0]["error"], rows[0]["error"]


def test_resume_refuses_a_completed_trial_whose_folder_is_gone(cluster, tiny_embedded, tmp_path):
    # resumed, Tune keeps a completed trial as it is: without its folder it would be reported
    # completed with no history
    spec_path = write_spec(tmp_path / "spec.yaml", tiny_embedded, "gone", epochs=1, max_concurrent=1)
    spec = yaml.safe_load(spec_path.read_text())
    spec.update(search={"train.seed": {"grid": [0]}}, tracking={"enabled": False})
    spec_path.write_text(yaml.safe_dump(spec))
    env = dict(cluster.env, PYTHONPATH=str(REPO))
    out = run(sweep_cmd(spec_path, cluster), tmp_path, env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    # without MLflow the results are written all the same, with no run id column
    rows = list(csv.DictReader(open(tmp_path / "sweeps" / "gone" / "results.csv")))
    assert len(rows) == 1 and rows[0]["status"] == "completed" and "mlflow_run_id" not in rows[0]
    (trial,) = trial_dirs(tmp_path / "sweeps" / "ray_results", "gone")
    shutil.rmtree(trial)
    out = run(sweep_cmd(spec_path, cluster, "--resume"), tmp_path, env)
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-5000:]
    lines = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and f"{trial}/result.json is gone" in lines[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr
