"""MLflow tracking against a real ``mlflow server``: a run logged live, a run whose server
dies mid-training (warning, complete local outputs), re-logged after a restart; the DVC
stages run as processes (what the UI shows, the model's packaging, no warnings); the
``champion`` alias of the registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
import warnings
from pathlib import Path

import pytest
import yaml

pytest.importorskip("mlflow")

from simsc.data.embedded import build_embedded_dataset
from tests.http_server import unused_port
from tests.mlflow_server import MlflowServer as Server

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def entry_points_dir(tmp_path_factory) -> Path:
    """A folder holding a distribution whose entry points are pyproject.toml's ``simsc.model_uri``
    group: on ``sys.path`` / ``PYTHONPATH`` it makes ``importlib.metadata`` find the resolvers
    the way an install of this checkout would (the shared venv may hold older metadata)."""
    root = tmp_path_factory.mktemp("entry_points")
    group = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["simsc.model_uri"]
    dist = root / "simsc_model_uri_test-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: simsc-model-uri-test\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[simsc.model_uri]\n" + "".join(f"{k} = {v}\n" for k, v in group.items()))
    return root


@pytest.fixture
def resolvers(entry_points_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(entry_points_dir))
    return entry_points_dir


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
        "train": {
            "epochs": 10,
            "max_steps": max_steps,
            "lr_backbone": 1e-3,
            "out_dir": str(out_dir),
            "progress": False,
            "device": "cpu",
            "val_max_pairs": 4,
        },
        "eval": {"resolution": 64, "batch_size": 4},
        "evaluate": {
            "sets": {"test_64": {"dataset": "embedded", "root": str(root), "split": "test", "resolution": 64}},
            "sweep": False,
        },
        "report": {"n_pictures": 0},
        "tracking": {"enabled": True, "experiment": "pytest", "registered_model": registered},
    }


def run_training(params, callbacks_extra=()):
    from pipeline.stage_train import engine_config
    from pipeline.tracking.callback import MlflowCallback
    from simsc.engine.trainer import train

    cfg = engine_config(params)
    cb = MlflowCallback(
        cfg,
        cfg.train.out_dir,
        experiment=params["tracking"]["experiment"],
        registered_model=params["tracking"]["registered_model"],
    )
    summary = train(cfg, callbacks=[cb, *callbacks_extra])
    return cb, summary


def test_live_run_is_tracked_and_registered(server, embedded, tmp_path, monkeypatch, resolvers):
    from mlflow.tracking import MlflowClient

    from pipeline.stage_evaluate import stage_evaluate
    from pipeline.tracking.results import load_reports, log_results

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
    for key in ("beta_b", "beta_eff", "loss", "lr", "log10_lr", "log10_lr_temperature"):
        assert len(client.get_metric_history(cb.run_id, key)) == 5
    # the real rate, and its log10, which the UI's 3-decimal rounding does not flatten to 0
    assert {m.value for m in client.get_metric_history(cb.run_id, "lr")} == {1e-3}
    assert [round(m.value, 9) for m in client.get_metric_history(cb.run_id, "log10_lr")] == [-3.0] * 5
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
    # the logged model carries the best epoch's validation metrics, not epoch 0's
    from simsc.engine.checkpoint import load_checkpoint

    best_ck = load_checkpoint(Path(params["train"]["out_dir"]) / "checkpoints" / "best.pt")
    (logged,) = client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{cb.run_id}'"
    )
    model_metrics = {m.key: m for m in logged.metrics}
    assert model_metrics["val_pck_0.1"].step == best_ck["best"]["epoch"]
    assert model_metrics["val_pck_0.1"].value == pytest.approx(best_ck["best"]["metric"])
    assert "loss" not in model_metrics and "beta_eff" not in model_metrics

    # the registered model evaluates exactly like the local checkpoint
    from simsc.cli import main as simsc_main

    local_out, reg_out = tmp_path / "local.json", tmp_path / "registered.json"
    common = [
        "--dataset",
        "embedded",
        "--root",
        str(embedded),
        "--resolution",
        "64",
        "--no-progress",
        "--device",
        "cpu",
    ]
    best = Path(params["train"]["out_dir"]) / "checkpoints" / "best.pt"
    assert simsc_main(["evaluate", "--checkpoint", str(best), "--out", str(local_out), *common]) == 0
    assert simsc_main(["evaluate", "--model", f"models:/simsc-pytest/{version}", "--out", str(reg_out), *common]) == 0
    local, reg = json.loads(local_out.read_text()), json.loads(reg_out.read_text())
    assert reg["per_image"] == local["per_image"] == reports["test_64"]["per_image"]


def test_the_logged_model_gets_the_best_epochs_metrics(server):
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.client import metric
    from pipeline.tracking.models import link_best_metrics

    client = MlflowClient(server.uri)
    exp = client.create_experiment("link-best")
    rid = client.create_run(exp).info.run_id
    vals = [9.74, 45.2, 30.0]
    client.log_batch(rid, metrics=[metric("val_pck_0.1", v, epoch) for epoch, v in enumerate(vals)])
    client.log_batch(rid, metrics=[metric("loss", 3.0, 1), metric("lr", 1e-4, 1)])
    model = client.create_logged_model(exp, source_run_id=rid)
    assert link_best_metrics(client, rid, model.model_id, 1) == 1
    got = client.get_logged_model(model.model_id).metrics
    assert [(m.key, m.value, m.step) for m in got] == [("val_pck_0.1", 45.2, 1)]


def test_dead_server_costs_nothing_and_relog_restores(tmp_path_factory, embedded, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipeline.relog import main as relog_main
    from pipeline.tracking.client import SafeMlflow
    from simsc.engine.callbacks import Callback

    root = tmp_path_factory.mktemp("mlflow_dead")
    srv = Server(root, unused_port())
    srv.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", srv.uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.chdir(tmp_path)
    # every MLflow call the training run makes, with whether the tracker was already offline:
    # "costs nothing" is that no call reaches for the dead server once one has failed (a
    # structural check in place of a wall-clock bound)
    attempts: list[tuple[str, bool]] = []
    real_connect = SafeMlflow.connect

    class Recorder:
        def __init__(self, client, ml):
            self._client, self._ml = client, ml

        def __getattr__(self, name):
            attr = getattr(self._client, name)
            if not callable(attr):
                return attr

            def recorded(*args, **kwargs):
                attempts.append((name, self._ml.offline))
                return attr(*args, **kwargs)

            return recorded

    def connect(self):
        if self.client is None:
            self.client = Recorder(real_connect(self), self)
        return self.client

    monkeypatch.setattr(SafeMlflow, "connect", connect)

    class KillAt(Callback):
        def on_step(self, metrics):
            if metrics["step"] == 3:
                srv.stop()

    out_dir = tmp_path / "runs" / "dead"
    params = params_for(embedded, out_dir, max_steps=8, registered="simsc-pytest-dead")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cb, summary = run_training(params, callbacks_extra=[KillAt()])
        assert summary["status"] == "finished" and summary["step"] == 8
        msgs = [str(w.message) for w in caught if "MLflow" in str(w.message)]
        assert msgs and "not logged" in msgs[0] and "pipeline.relog" in msgs[0]
        assert cb.ml.offline
        assert [n for n, _ in attempts].count("log_batch") >= 3  # steps 1-3 reached the live server
        assert [a for a in attempts if a[1]] == [], "MLflow calls after the server was found dead"
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


# ------------------------------------------------------------------------------------------
# The DVC stages as processes: what a user sees in the UI, and on the terminal
# ------------------------------------------------------------------------------------------


def run_stage(module: str, *args: str, cwd: Path, env: dict) -> str:
    """Run ``python -m pipeline.<module>`` like ``dvc repro`` does; returns its stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", f"pipeline.{module}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"{module}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc.stderr


def stage_env(server, extra_path: Path | None = None) -> dict:
    path = [str(REPO)] + ([str(extra_path)] if extra_path else [])
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": server.uri,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(path + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }


@pytest.fixture(scope="module")
def stage_run(server, embedded, tmp_path_factory, entry_points_dir):
    """train, evaluate and report run as processes in a project folder, logging to ``server``."""
    from mlflow.tracking import MlflowClient

    cwd = tmp_path_factory.mktemp("project")
    params = params_for(embedded, Path("runs") / "default", max_steps=3, registered="simsc-stages")
    params["tracking"]["experiment"] = "stages"
    params["report"] = {"out": "reports/report.md", "n_pictures": 1, "picture_set": "test_64"}
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    env = stage_env(server, entry_points_dir)
    stderr = {
        "train": run_stage("stage_train", cwd=cwd, env=env),
        "evaluate": run_stage("stage_evaluate", "test_64", cwd=cwd, env=env),
        "baseline": run_stage("stage_baseline", "test_64", cwd=cwd, env=env),
        "report": run_stage("stage_report", cwd=cwd, env=env),
    }
    state = json.loads((cwd / "runs" / "default" / "tracking.json").read_text())
    return {
        "cwd": cwd,
        "params": params,
        "env": env,
        "stderr": stderr,
        "state": state,
        "client": MlflowClient(server.uri),
    }


def test_stages_print_no_mlflow_warnings(stage_run):
    for stage, err in stage_run["stderr"].items():
        print(f"--- {stage} stderr:\n{err}")  # shown when the test fails
        noisy = [
            line
            for line in err.splitlines()
            if "warning" in line.lower()
            or "alembic" in line.lower()
            or " INFO " in line
            or "Downloading artifacts" in line
        ]
        assert not noisy, f"stage {stage} printed:\n" + "\n".join(noisy)
    assert "champion: " in stage_run["stderr"]["report"]


def test_the_ui_shows_a_training_run(stage_run):
    client, state = stage_run["client"], stage_run["state"]
    exp = client.get_experiment_by_name("stages")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # not the GenAI traces page
    run = client.get_run(state["run_id"])
    assert run.info.run_name == "resnet18 T=mlp embedded@64"
    assert run.data.tags["dvc.stage"] == "train"
    assert run.data.tags["git_revision"] not in ("", "unknown")  # the checkout's, from a non-git cwd
    system = {k for k in run.data.metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system
    arts = {a.path for a in client.list_artifacts(state["run_id"], "report")}
    assert {"report/report.md", "report/report.html", "report/figures"} <= arts
    figures = {a.path for a in client.list_artifacts(state["run_id"], "report/figures")}
    assert "report/figures/beta_trajectory.png" in figures
    # the checkpoint is stored once: as the model's artifact
    assert "checkpoint" not in {a.path for a in client.list_artifacts(state["run_id"])}


def test_report_leads_with_this_runs_numbers_and_compares_it_in_mlflow(stage_run):
    """The report a reader opens: the headline first, its numbers the evaluation's and the
    not-fine-tuned baseline's; what ran; PCK defined once; styled inline; and the local page
    with the run's MLflow link, the champion comparison and the tables it is a row of."""
    cwd, client, state = stage_run["cwd"], stage_run["client"], stage_run["state"]
    evaluated = json.loads((cwd / "reports/eval/test_64/report.json").read_text())
    ours, n_pairs = evaluated["per_image"]["0.1"], evaluated["n_pairs"]
    base = json.loads((cwd / "reports/baseline/test_64/report.json").read_text())["per_image"]["0.1"]
    md = (cwd / "reports/report.md").read_text()
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections[:2] == ["## Headline", "## PCK (per image, %), laid out like the paper's Table 1"]
    headline = md.split("## Headline", 1)[1].split("\n## ", 1)[0]
    assert (
        f"- test_64 (embedded test, 64 px, {n_pairs} pairs): PCK@0.1 fine-tuned **{ours:.1f}**; "
        f"not fine-tuned **{base:.1f}** ({ours - base:+.1f} from fine-tuning)"
    ) in headline
    what_ran = "**What ran:** backbone resnet18, randomly initialised, fine-tuned: all; temperature mlp; 3 training"
    assert what_ran in md
    assert md.count("**PCK@alpha** (percentage of correct keypoints): ") == 1
    # the embedded set has no paper number: said once in the notes, no row of dashes
    assert "| paper |" not in md and "no paper number for this configuration (the embedded set" in md
    page = (cwd / "reports/report.html").read_text()
    head = page.split("<body>")[0]
    assert "<style>" in head and "http" not in head.replace("http-equiv", "")  # nothing fetched
    assert '<div class="headline">' in page and '<a href="this_run.html">' in page
    assert page.index('<div class="headline">') < page.index("</div>") < page.index("<b>What ran:</b>")

    exp = client.get_experiment_by_name("stages").experiment_id
    url = f"{client.tracking_uri}/#/experiments/{exp}/runs/{state['run_id']}?workflowType=machine_learning"
    this_run = (cwd / "reports/this_run.md").read_text()
    assert f"- MLflow run page: [{state['run_id'][:8]} in the MLflow UI]({url})" in this_run
    assert f'<a href="{url}">' in (cwd / "reports/this_run.html").read_text()
    assert "## This run against the previous run and the champion (from MLflow)" in this_run
    assert "This run is the champion of simsc-stages (v1)." in this_run
    row = next(line for line in this_run.splitlines() if line.startswith("| [this run]("))
    assert f"| {ours:.1f} |" in row  # the final PCK logged to MLflow is the evaluation's
    assert "## The tables this run belongs to (experiment stages, 1 runs)" in this_run
    assert "### Tab. 1: PCK per data set and alpha" in this_run and "← this run" in this_run


def test_logged_model_installs_and_predicts_in_a_fresh_process(stage_run, embedded, tmp_path):
    import mlflow
    from mlflow.models import get_model_info

    client, state = stage_run["client"], stage_run["state"]
    uri = f"models:/simsc-stages/{state['model_version']}"
    with _uri(client.tracking_uri):
        info = get_model_info(uri)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "model")))
    assert info.signature is not None
    assert [s.name for s in info.signature.inputs.inputs] == ["src_img", "trg_img", "src_kps"]
    assert info.saved_input_example_info is not None
    assert len(list(local.rglob("*.pt"))) == 1  # the checkpoint, stored once
    assert (local / "code" / "simsc" / "model.py").exists()
    lines = [x for x in (local / "requirements.txt").read_text().splitlines() if x and not x.startswith("#")]
    assert not any("simsc" in x for x in lines), lines
    assert all("==" in x for x in lines), lines
    assert {"torch", "torchvision", "timm", "numpy", "pillow", "mlflow"} <= {x.split("==")[0] for x in lines}

    # fresh process, no PYTHONPATH: `simsc` comes from the model's code/ folder; a pair at another
    # size than the input example (96 px, 3 points) predicts what the local checkpoint predicts
    best = stage_run["cwd"] / "runs" / "default" / "checkpoints" / "best.pt"
    script = textwrap.dedent(f"""
        import json, sys, numpy as np, mlflow.pyfunc
        m = mlflow.pyfunc.load_model({uri!r})
        import simsc
        rng = np.random.default_rng(1)
        pair = {{"src_img": rng.standard_normal((1, 3, 96, 96)).astype(np.float32),
                 "trg_img": rng.standard_normal((1, 3, 96, 96)).astype(np.float32),
                 "src_kps": np.array([[[10, 20], [50, 50], [90, 5]]], dtype=np.float32)}}
        out = m.predict(pair)
        from simsc.engine.checkpoint import load_model
        import torch
        model, _, _ = load_model({str(best)!r})
        ref = model.predict(*(torch.as_tensor(pair[k]) for k in ("src_img", "trg_img", "src_kps"))).numpy()
        print(json.dumps({{"shape": list(out.shape), "diff": float(np.abs(out - ref).max()),
                          "simsc": simsc.__file__}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(MLFLOW_TRACKING_URI=client.tracking_uri, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["shape"] == [1, 3, 2] and out["diff"] < 1e-4
    assert "/code/simsc/" in out["simsc"], out["simsc"]  # shipped with the model, not this checkout


def test_simsc_evaluate_the_champion(stage_run, embedded, tmp_path):
    """``simsc evaluate --model models:/NAME@champion`` in a process: the pipeline's resolver
    found through the entry point; the same PCK as the evaluate stage."""
    client = stage_run["client"]
    assert client.get_model_version_by_alias("simsc-stages", "champion").version == stage_run["state"]["model_version"]
    out = tmp_path / "champion.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "simsc.cli",
            "evaluate",
            "--model",
            "models:/simsc-stages@champion",
            "--dataset",
            "embedded",
            "--root",
            str(embedded),
            "--resolution",
            "64",
            "--no-progress",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        env=stage_run["env"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    stage = json.loads((stage_run["cwd"] / "reports" / "eval" / "test_64" / "report.json").read_text())
    assert json.loads(out.read_text())["per_image"] == stage["per_image"]


# ------------------------------------------------------------------------------------------
# The champion alias
# ------------------------------------------------------------------------------------------


def test_champion_moves_only_for_a_better_version(server, embedded, tmp_path, monkeypatch):
    """Three runs registered in turn, their evaluation reports set to PCK@0.1 30, 20, 40:
    every run registers a version with its PCK tags; the alias goes 1st -> stays -> 3rd.
    A version measured on another set is not compared (the alias stays, with a warning)."""
    from mlflow.tracking import MlflowClient

    from pipeline.stage_evaluate import stage_evaluate
    from pipeline.stage_report import stage_report
    from pipeline.tracking.champion import ChampionWarning

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.chdir(tmp_path)
    client = MlflowClient(server.uri)
    name = "simsc-champion"
    report_p = tmp_path / "reports" / "eval" / "test_64" / "report.json"
    measured = None
    decisions = []
    for i, pck in enumerate((30.0, 20.0, 40.0, 90.0)):
        params = params_for(embedded, tmp_path / "runs" / f"r{i}", max_steps=1, registered=name)
        params["report"] = {"out": f"reports/r{i}/report.md", "n_pictures": 0}
        run_training(params)
        if measured is None:
            stage_evaluate(params, "test_64")
            measured = json.loads(report_p.read_text())
        rep = dict(measured, per_image={**measured["per_image"], "0.1": pck})
        if i == 3:  # another set size: not comparable with the champion's key
            rep["n_pairs"] = measured["n_pairs"] - 1
        report_p.write_text(json.dumps(rep))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stage_report(params)
        decisions.append([str(w.message) for w in caught if issubclass(w.category, ChampionWarning)])
        version = json.loads((tmp_path / "runs" / f"r{i}" / "tracking.json").read_text())["model_version"]
        mv = client.get_model_version(name, version)
        assert mv.tags["pck.test_64.0.1"] == f"{pck:.4f}" and mv.tags["champion.value"] == f"{pck:.4f}"
        assert mv.tags["champion.key"].endswith(":pck@0.1") and mv.tags["champion.key"].startswith("test_64=")
        assert mv.tags["git_revision"] not in ("", "unknown")
        champion = client.get_model_version_by_alias(name, "champion").version
        assert champion == {0: "1", 1: "1", 2: "3", 3: "3"}[i], (i, pck, champion)
    assert decisions[:3] == [[], [], []]
    assert len(decisions[3]) == 1 and "measured differently" in decisions[3][0]


def test_champion_without_key_is_kept(server, tmp_path):
    """The documented rule for a champion that lacks ``champion.key`` (registered before the
    tags existed, or by a sweep): not compared, left where it is."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.champion import ChampionWarning, promote_champion

    client = MlflowClient(server.uri)
    name = "simsc-nokey"
    client.create_registered_model(name)
    v1 = client.create_model_version(name, "s3://simsc-test/model").version
    client.set_registered_model_alias(name, "champion", v1)
    v2 = client.create_model_version(name, "s3://simsc-test/model").version
    rep = {
        "dataset": "embedded",
        "split": "test",
        "resolution": 64,
        "n_pairs": 4,
        "per_image": {"0.05": 1.0, "0.1": 99.0, "0.15": 100.0},
    }
    with pytest.warns(ChampionWarning, match="champion.key 'missing'"):
        out = promote_champion(client, name, v2, {"test_64": rep}, ("test_64", "pck@0.1"))
    assert out["moved"] is False and client.get_model_version_by_alias(name, "champion").version == v1


def test_champion_rule_names_the_bad_key():
    from pipeline.tracking.champion import champion_measure, champion_rule

    sets = ["test_160", "test_original"]
    assert champion_rule({}, sets) == ("test_160", "pck@0.1")
    assert champion_rule({"champion_set": "test_original", "champion_metric": "pck@0.05"}, sets) == (
        "test_original",
        "pck@0.05",
    )
    with pytest.raises(ValueError, match="tracking.champion_set 'test_64' is not one of evaluate.sets"):
        champion_rule({"champion_set": "test_64"}, sets)
    assert champion_rule({"champion_metric": "pck@0.10"}, sets)[1] == "pck@0.1"  # one key per metric
    for bad in ("accuracy", "pck@x", 0.1):
        with pytest.raises(ValueError, match="tracking.champion_metric must be 'pck@<alpha>'"):
            champion_rule({"champion_metric": bad}, sets)
    rep = {
        "dataset": "embedded",
        "split": "test",
        "resolution": 160,
        "n_pairs": 100,
        "per_image": {"0.05": 10.0, "0.1": 20.123456, "0.15": 30.0},
    }
    assert champion_measure({"test_160": rep}, ("test_160", "pck@0.10")) == (
        "test_160=embedded/test@160/n100:pck@0.10",
        20.1235,
    )
    with pytest.raises(ValueError, match=r"tracking.champion_metric 'pck@0.2': .* alphas \['0.05', '0.1', '0.15'\]"):
        champion_measure({"test_160": rep}, ("test_160", "pck@0.2"))


def _uri(uri: str):
    from pipeline.tracking.client import fluent_uri

    return fluent_uri(uri)


# ------------------------------------------------------------------------------------------
# Hardening: concurrent stages, a tampered registry, downloads, malformed files
# ------------------------------------------------------------------------------------------


def run_proc(args: list[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def copy_project(stage_run, dst: Path) -> Path:
    """A copy of the stage run's project folder (params, run folder, reports)."""
    import shutil

    shutil.copytree(stage_run["cwd"], dst)
    return dst


# Runs the report stage with two barriers that make the window of a real race wide enough to
# hit every time, on a loaded machine too: the stages wait for each other (up to 300 s) once
# their version's champion tags are written, just before the decision, so the decisions
# start together however long each process took to start; then the read of the model's alias
# table waits (up to 5 s) until both got there. Both barriers are in MLflow client calls, not
# in the decision code: a decision under a lock passes the second one alone after 5 s.
RACE_DRIVER = """
import os, sys, time
from pathlib import Path
from mlflow.tracking import MlflowClient

def barrier(step, timeout_s):
    folder = Path(os.environ["RACE_DIR"], step)
    folder.mkdir(exist_ok=True)
    (folder / str(os.getpid())).touch()
    deadline = time.time() + timeout_s
    while len(os.listdir(folder)) < 2 and time.time() < deadline:
        time.sleep(0.05)

real_tag, real_read = MlflowClient.set_model_version_tag, MlflowClient.get_registered_model

def tag_then_wait(self, name, version=None, key=None, value=None, *args, **kwargs):
    out = real_tag(self, name, version, key, value, *args, **kwargs)
    if name == os.environ["RACE_MODEL"] and key == "champion.value":
        barrier("tagged", 300)
    return out

def wait_then_read(self, name):
    if name == os.environ["RACE_MODEL"]:
        barrier("read", 5)
    return real_read(self, name)

MlflowClient.set_model_version_tag = tag_then_wait
MlflowClient.get_registered_model = wait_then_read
from pipeline.stage_report import main
sys.exit(main())
"""


def test_two_report_stages_racing_for_the_champion(stage_run, server, tmp_path):
    """v1 is the champion at PCK 50; report stages of v2 (70) and v3 (60) run at once: the alias
    ends on v2 and each stage's line says what it did (the later one compared with the
    earlier one's result)."""
    import re

    from pipeline.tracking.champion import champion_measure

    client, name = stage_run["client"], "simsc-race"
    report = json.loads((stage_run["cwd"] / "reports" / "eval" / "test_64" / "report.json").read_text())
    rule = ("test_64", "pck@0.1")
    key, _ = champion_measure({"test_64": report}, rule)
    client.create_registered_model(name)
    versions = [client.create_model_version(name, "s3://simsc-test/model").version for _ in range(3)]
    assert versions == ["1", "2", "3"]
    client.set_model_version_tag(name, "1", "champion.key", key)
    client.set_model_version_tag(name, "1", "champion.value", "50.0000")
    client.set_registered_model_alias(name, "champion", "1")
    procs = {}
    race_dir = tmp_path / "barrier"
    race_dir.mkdir()
    env = {**stage_run["env"], "RACE_MODEL": name, "RACE_DIR": str(race_dir)}
    for version, pck in (("2", 70.0), ("3", 60.0)):
        cwd = copy_project(stage_run, tmp_path / f"v{version}")
        state_p = cwd / "runs" / "default" / "tracking.json"
        state = json.loads(state_p.read_text())
        state.update(registered_model=name, model_version=version)
        state_p.write_text(json.dumps(state))
        rep_p = cwd / "reports" / "eval" / "test_64" / "report.json"
        rep_p.write_text(json.dumps(dict(report, per_image={**report["per_image"], "0.1": pck})))
        procs[version] = subprocess.Popen(
            [sys.executable, "-c", RACE_DRIVER], cwd=cwd, env=env, stderr=subprocess.PIPE, text=True
        )
    lines = {}
    for version, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        (line,) = [x for x in err.splitlines() if x.startswith("champion: ")]
        lines[version] = line
    print(lines)
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    pattern = r"for v(\d); alias (moved to|stays on) v(\d) \(.*?(?:champion v(\d)'s [\d.]+)?\)$"
    (v2_where, v2_on, v2_vs), (v3_where, v3_on, v3_vs) = (
        re.search(pattern, lines[v]).group(2, 3, 4) for v in ("2", "3")
    )
    assert (v2_where, v2_on) == ("moved to", "2"), lines
    if v3_where == "moved to":  # v3 went first: v2 then beat v3, not the old v1
        assert (v3_on, v3_vs, v2_vs) == ("3", "1", "3"), lines
    else:  # v2 went first: v3 compared with v2
        assert (v3_on, v3_vs, v2_vs) == ("2", "2", "1"), lines
    assert name + ".champion-lock" not in {m.name for m in client.search_registered_models()}


def test_two_trainings_on_a_fresh_sqlite_store(embedded, tmp_path, entry_points_dir):
    """Two train stages start together on a store that does not exist yet: both runs are
    tracked (the store is created and migrated once), nothing warns."""
    import sqlite3

    store = tmp_path / "store" / "mlflow.db"
    env = {**stage_env_for(f"sqlite:///{store}", entry_points_dir)}
    procs = []
    for i in range(2):
        cwd = tmp_path / f"p{i}"
        cwd.mkdir()
        params = params_for(embedded, Path("runs") / "default", max_steps=1, registered="simsc-fresh")
        (cwd / "params.yaml").write_text(yaml.safe_dump(params))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "pipeline.stage_train"], cwd=cwd, env=env, stderr=subprocess.PIPE, text=True
            )
        )
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    for err in errs:
        assert "MLflow (" not in err, err[-3000:]
    states = [json.loads((tmp_path / f"p{i}" / "runs" / "default" / "tracking.json").read_text()) for i in range(2)]
    assert all(s["run_id"] and not s["failed"] and s["model_version"] for s in states), states
    con = sqlite3.connect(store)
    try:
        assert con.execute("select count(*) from runs where status = 'FINISHED'").fetchone() == (2,)
        assert con.execute("select count(*) from model_versions").fetchone() == (2,)
    finally:
        con.close()


def stage_env_for(uri: str, extra_path: Path | None = None) -> dict:
    path = [str(REPO)] + ([str(extra_path)] if extra_path else [])
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(path + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }


def test_a_store_that_cannot_open_is_named_in_the_warning(embedded, tmp_path, entry_points_dir):
    """A store MLflow cannot create (its folder is a file): the run trains, untracked, and the
    warning names the store instead of ``MLflow (None)``."""
    (tmp_path / "afile").write_text("not a folder\n")
    uri = f"sqlite:///{tmp_path / 'afile' / 'mlflow.db'}"
    cwd = tmp_path / "p"
    cwd.mkdir()
    params = params_for(embedded, Path("runs") / "default", max_steps=1, registered="simsc-none")
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    err = run_stage("stage_train", cwd=cwd, env=stage_env_for(uri, entry_points_dir))
    assert f"MLflow ({uri}) failed" in err, err[-3000:]
    assert "MLflow (None)" not in err


def simsc_evaluate(model: str, embedded: Path, out: Path, env: dict) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "simsc.cli", "evaluate", "--model", model, "--dataset", "embedded"]
    args += ["--root", str(embedded), "--resolution", "64", "--no-progress", "--device", "cpu", "--out", str(out)]
    return run_proc(args, out.parent, env)


def test_a_replaced_checkpoint_is_refused(stage_run, server, embedded, tmp_path):
    """The registered version records its checkpoint's SHA-256: a ``best.pt`` replaced in the
    artifact store by another model's is refused naming the URI and both digests; a version
    registered before the tag existed loads with one warning line."""
    import hashlib

    from pipeline.tracking.models import DIGEST_TAG

    client, state = stage_run["client"], stage_run["state"]
    version = state["model_version"]
    want = client.get_model_version("simsc-stages", version).tags[DIGEST_TAG]
    assert want == state["best_sha256"]
    (stored,) = [p for p in server.root.rglob("*.pt") if hashlib.sha256(p.read_bytes()).hexdigest() == want]
    other = stage_run["cwd"] / "runs" / "default" / "checkpoints" / "last.pt"
    other_sha = hashlib.sha256(other.read_bytes()).hexdigest()
    assert other_sha != want
    env = {**stage_run["env"], "SIMSC_MODEL_CACHE": str(tmp_path / "cache")}
    good = stored.read_bytes()
    stored.write_bytes(other.read_bytes())
    try:
        for uri in (f"models:/simsc-stages/{version}", "models:/simsc-stages@champion"):
            proc = simsc_evaluate(uri, embedded, tmp_path / "out.json", env)
            assert proc.returncode == 2, proc.stderr[-3000:]
            (line,) = proc.stderr.strip().splitlines()[-1:]
            assert line.startswith(f"simsc evaluate: error: --model {uri}: ") and want in line and other_sha in line
            assert not (tmp_path / "out.json").exists()
    finally:
        stored.write_bytes(good)
    # a version registered without the tag (before digests were recorded) still loads
    mv = client.get_model_version("simsc-stages", version)
    model_id = mv.source.removeprefix("models:/")  # the logged model's id (get_model_version leaves it out)
    old = client.create_model_version("simsc-stages", mv.source, run_id=mv.run_id, model_id=model_id)
    proc = simsc_evaluate(f"models:/simsc-stages/{old.version}", embedded, tmp_path / "old.json", env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warned = [x for x in proc.stderr.splitlines() if "warning" in x.lower()]
    assert len(warned) == 1 and f"models:/simsc-stages/{old.version}" in warned[0] and DIGEST_TAG in warned[0]


def test_runs_uri_leaves_no_download_behind(stage_run, embedded, tmp_path):
    """``--model runs:/ID/model`` keeps one copy of the checkpoint in the model cache, named
    by its digest, and nothing in TMPDIR; a second fetch reuses it. A wrong artifact path is
    an error naming the URI, not a temporary folder."""
    state = stage_run["state"]
    tmpdir, cache = tmp_path / "tmp", tmp_path / "cache"
    tmpdir.mkdir()
    env = {**stage_run["env"], "TMPDIR": str(tmpdir), "SIMSC_MODEL_CACHE": str(cache)}
    for i in range(2):
        proc = simsc_evaluate(f"runs:/{state['run_id']}/model", embedded, tmp_path / f"r{i}.json", env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    left = [p for p in tmpdir.rglob("*") if p.is_file()]
    assert not left, left
    assert sorted(p.name for p in cache.iterdir()) == [f"{state['best_sha256']}.pt"]
    bad = f"runs:/{state['run_id']}/no-such-model"
    proc = simsc_evaluate(bad, embedded, tmp_path / "bad.json", env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"simsc evaluate: error: --model {bad}: "), line
    assert str(tmpdir) not in line and str(cache) not in line and "/tmp" not in line.replace(bad, ""), line


def test_a_cached_version_is_not_downloaded_again(stage_run, server, embedded, tmp_path):
    """A registered version fetched once is read from the model cache (``<sha256>.pt``) the
    next time: with its file in the artifact store broken, ``--model models:/...`` still
    evaluates, to the same numbers, and leaves nothing in TMPDIR."""
    import hashlib

    client, state = stage_run["client"], stage_run["state"]
    uri = f"models:/simsc-stages/{state['model_version']}"
    want = state["best_sha256"]
    (stored,) = [p for p in server.root.rglob("*.pt") if hashlib.sha256(p.read_bytes()).hexdigest() == want]
    tmpdir, cache = tmp_path / "tmp", tmp_path / "cache"
    tmpdir.mkdir()
    env = {**stage_run["env"], "TMPDIR": str(tmpdir), "SIMSC_MODEL_CACHE": str(cache)}
    first = simsc_evaluate(uri, embedded, tmp_path / "first.json", env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(p.name for p in cache.iterdir()) == [f"{want}.pt"]
    good = stored.read_bytes()
    stored.write_bytes(b"not a checkpoint")
    try:
        again = simsc_evaluate(uri, embedded, tmp_path / "again.json", env)
    finally:
        stored.write_bytes(good)
    assert again.returncode == 0, again.stderr[-3000:]
    pck = [json.loads((tmp_path / f).read_text())["per_image"] for f in ("first.json", "again.json")]
    assert pck[0] == pck[1], pck
    assert not [p for p in tmpdir.rglob("*") if p.is_file()]
    assert client.get_model_version("simsc-stages", state["model_version"]).tags["checkpoint.sha256"] == want


def test_malformed_tracking_and_report_files(stage_run, tmp_path):
    """A cut-short ``tracking.json`` or ``report.json``: the report stage exits 2 with one line
    naming the file and how to regenerate it."""
    cwd = copy_project(stage_run, tmp_path / "p")
    state_p = cwd / "runs" / "default" / "tracking.json"
    rep_p = cwd / "reports" / "eval" / "test_64" / "report.json"
    args = [sys.executable, "-m", "pipeline.stage_report"]
    for path, advice in ((state_p, "python -m pipeline.relog runs/default"), (rep_p, "dvc repro -f evaluate@test_64")):
        good = path.read_text()
        path.write_text(good[: len(good) // 2])
        proc = run_proc(args, cwd, stage_run["env"])
        assert proc.returncode == 2, proc.stderr[-3000:]
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"pipeline.stages report: error: {path.relative_to(cwd)}: not valid JSON"), line
        assert advice in line, line
        path.write_text(good)


def test_a_relative_sqlite_store_in_a_dvc_temporary_copy(embedded, tmp_path, entry_points_dir):
    """A train stage run in a temporary copy of the project (what ``dvc exp run --queue`` /
    ``--temp`` do: the working directory is ``.dvc/tmp/exps/tmpXXX``, ``$DVC_ROOT`` the
    checkout) with MLflow's relative default store tracks into the checkout's ``mlflow.db``,
    and the model's files go to the checkout's ``mlruns/``, nothing into the copy."""
    import sqlite3

    root = tmp_path / "project"
    copy = root / ".dvc" / "tmp" / "exps" / "tmpcopy"
    copy.mkdir(parents=True)
    params = params_for(embedded, Path("runs") / "default", max_steps=1, registered="simsc-temp")
    (copy / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**stage_env_for("sqlite:///mlflow.db", entry_points_dir), "DVC_ROOT": str(root)}
    err = run_stage("stage_train", cwd=copy, env=env)
    assert "MLflow (" not in err, err[-3000:]
    assert not (copy / "mlflow.db").exists() and not (copy / "mlruns").exists(), sorted(copy.iterdir())
    state = json.loads((copy / "runs" / "default" / "tracking.json").read_text())
    con = sqlite3.connect(root / "mlflow.db")
    try:
        runs = con.execute("select run_uuid from runs where status = 'FINISHED'").fetchall()
        versions = con.execute("select version from model_versions where name = 'simsc-temp'").fetchall()
        (location,) = con.execute("select artifact_location from experiments where name = 'pytest'").fetchone()
    finally:
        con.close()
    assert runs == [(state["run_id"],)] and versions == [(1,)], (runs, versions, state)
    assert location == (root / "mlruns" / "pytest").as_uri(), location
    assert list((root / "mlruns").rglob("best.pt")), "the registered checkpoint is not in the checkout's mlruns/"
