"""MLflow tracking against a real ``mlflow server``: a run logged live, a run whose server
dies mid-training (warning, complete local outputs), re-logged after a restart."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from simsc.data.embedded import build_embedded_dataset  # noqa: E402

from http_server import unused_port  # noqa: E402
from mlflow_server import MlflowServer as Server  # noqa: E402

pytestmark = pytest.mark.slow
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    srv = Server(root, unused_port())
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "embedded"
    build_embedded_dataset(root, seed=0, n_train=12, n_val=4, n_test=4, progress=False)
    return root


def params_for(root: Path, out_dir: Path, max_steps: int, registered: str) -> dict:
    return {
        "model": {"backbone": "resnet18", "pretrained": False, "finetune": "all", "temperature": "mlp"},
        "data": {"dataset": "embedded", "root": str(root), "resolution": 64, "batch_size": 4},
        "train": {"epochs": 10, "max_steps": max_steps, "lr_backbone": 1e-3, "out_dir": str(out_dir),
                  "progress": False, "device": "cpu", "val_max_pairs": 4},
        "eval": {"resolution": 64, "batch_size": 4},
        "evaluate": {"sets": {"test_64": {"dataset": "embedded", "root": str(root), "split": "test",
                                          "resolution": 64}}, "sweep": False},
        "report": {"n_pictures": 0},
        "tracking": {"enabled": True, "experiment": "pytest", "registered_model": registered},
    }


def run_training(params, callbacks_extra=()):
    from simsc.engine.trainer import train

    from pipeline.stage_train import engine_config
    from pipeline.tracking import MlflowCallback

    cfg = engine_config(params)
    cb = MlflowCallback(cfg, cfg.train.out_dir, experiment=params["tracking"]["experiment"],
                        registered_model=params["tracking"]["registered_model"])
    summary = train(cfg, callbacks=[cb, *callbacks_extra])
    return cb, summary


def test_live_run_is_tracked_and_registered(server, embedded, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipeline.stage_evaluate import stage_evaluate
    from pipeline.tracking import load_reports, log_results

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.chdir(tmp_path)
    params = params_for(embedded, tmp_path / "runs" / "live", max_steps=5, registered="simsc-pytest")
    cb, summary = run_training(params)
    assert summary["status"] == "finished" and cb.run_id
    stage_evaluate(params, "test_64")
    reports = load_reports(tmp_path / "reports" / "eval")
    assert log_results(params["train"]["out_dir"], reports)

    client = MlflowClient(server.uri)
    hist = client.get_metric_history(cb.run_id, "beta_a")
    assert sorted(m.step for m in hist) == [1, 2, 3, 4, 5]
    for key in ("beta_b", "beta_eff", "loss", "lr"):
        assert len(client.get_metric_history(cb.run_id, key)) == 5
    run = client.get_run(cb.run_id)
    assert run.data.params["train.lr_backbone"] == "0.001"
    assert run.data.tags["params_hash"] and run.data.tags["git_revision"]
    assert "val_pck_0.1" in run.data.metrics and "test_pck_test_64_0.1" in run.data.metrics
    arts = {a.path for a in client.list_artifacts(cb.run_id, "results")}
    assert {"results/pck_table.json", "results/pck_table.md"} <= arts
    table = json.loads(Path(client.download_artifacts(cb.run_id, "results/pck_table.json", str(tmp_path))).read_text())
    assert table[0]["set"] == "test_64"

    state = json.loads((Path(params["train"]["out_dir"]) / "tracking.json").read_text())
    version = state["model_version"]
    mv = client.get_model_version("simsc-pytest", version)
    assert mv.tags["params_hash"] == run.data.tags["params_hash"]

    # the registered model evaluates exactly like the local checkpoint
    from simsc.cli import main as simsc_main

    local_out, reg_out = tmp_path / "local.json", tmp_path / "registered.json"
    common = ["--dataset", "embedded", "--root", str(embedded), "--resolution", "64", "--no-progress", "--device", "cpu"]
    best = Path(params["train"]["out_dir"]) / "checkpoints" / "best.pt"
    assert simsc_main(["evaluate", "--checkpoint", str(best), "--out", str(local_out), *common]) == 0
    assert simsc_main(["evaluate", "--model", f"models:/simsc-pytest/{version}", "--out", str(reg_out), *common]) == 0
    local, reg = json.loads(local_out.read_text()), json.loads(reg_out.read_text())
    assert reg["per_image"] == local["per_image"] == reports["test_64"]["per_image"]


def test_dead_server_costs_nothing_and_relog_restores(tmp_path_factory, embedded, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from simsc.engine.callbacks import Callback

    from pipeline.relog import main as relog_main

    root = tmp_path_factory.mktemp("mlflow_dead")
    srv = Server(root, unused_port())
    srv.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", srv.uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.chdir(tmp_path)

    class KillAt(Callback):
        def on_step(self, metrics):
            if metrics["step"] == 3:
                srv.stop()

    out_dir = tmp_path / "runs" / "dead"
    params = params_for(embedded, out_dir, max_steps=8, registered="simsc-pytest-dead")
    try:
        t0 = time.time()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cb, summary = run_training(params, callbacks_extra=[KillAt()])
        elapsed = time.time() - t0
        assert summary["status"] == "finished" and summary["step"] == 8
        msgs = [str(w.message) for w in caught if "MLflow" in str(w.message)]
        assert msgs and "not logged" in msgs[0] and "pipeline.relog" in msgs[0]
        assert elapsed < 60
        # local outputs are complete
        steps = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in steps if r["type"] == "step"] == list(range(1, 9))
        assert (out_dir / "checkpoints" / "best.pt").exists() and (out_dir / "summary.json").exists()
        state = json.loads((out_dir / "tracking.json").read_text())
        assert state["run_id"] == cb.run_id and state["failed"] and "model_version" not in state

        srv.start()  # same store
        client = MlflowClient(srv.uri)
        before = client.get_metric_history(cb.run_id, "beta_a")
        assert len(before) < 8
        assert relog_main([str(out_dir)]) == 0
        after = client.get_metric_history(cb.run_id, "beta_a")
        assert sorted(m.step for m in after) == list(range(1, 9))
        state = json.loads((out_dir / "tracking.json").read_text())
        assert client.get_model_version("simsc-pytest-dead", state["model_version"])
        assert relog_main([str(out_dir)]) == 0  # idempotent: nothing duplicated
        assert len(client.get_metric_history(cb.run_id, "beta_a")) == 8
    finally:
        srv.stop()


def test_no_mlflow_in_the_library():
    code = ("import sys, simsc, simsc.engine.trainer, simsc.commands.evaluate, simsc.cli; "
            "bad = [m for m in ('mlflow', 'ray', 'dvc') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
