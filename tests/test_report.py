"""The report's statements about temperature at evaluation, checked on hand-made numbers."""

from __future__ import annotations

from pipeline.report import best_beta_eval, beta_eval_lines


def test_best_beta_eval_is_the_peak_smaller_beta_on_ties():
    rows = [
        {"beta_eval": 0.02, "pck@0.1": 50.0},
        {"beta_eval": 0.41, "pck@0.1": 69.0},
        {"beta_eval": 1.0, "pck@0.1": 63.3},
        {"beta_eval": 2.0, "pck@0.1": 69.0},
    ]
    assert best_beta_eval(rows)["beta_eval"] == 0.41
    assert best_beta_eval([]) is None


def test_beta_eval_lines_state_peak_and_what_ran():
    sweeps = {
        "test_160": [{"beta_eval": 0.41, "pck@0.1": 69.04}, {"beta_eval": 1.0, "pck@0.1": 63.3}],
        "test_original": [],
    }
    reports = {
        "test_160": {"beta_eval": 1.0, "per_image": {"0.1": 63.31}, "beta_eff": {"mean": 0.08}},
        "test_original": {"beta_eval": None, "per_image": {"0.1": 60.0}, "beta_eff": {"mean": 0.08}},
    }
    lines = beta_eval_lines(reports, sweeps)
    assert lines == [
        "test_160: PCK@0.1 peaks at 69.0 with beta_eval 0.41 (of 2 values swept); "
        "the evaluation above used beta_eval 1: 63.3."
    ]
    reports["test_160"]["beta_eval"] = None
    assert "the learned temperature (mean beta_eff 0.08): 63.3" in beta_eval_lines(reports, sweeps)[0]


def test_run_page_url_opens_the_training_view(tmp_path):
    """MLflow 3.17's UI opens in its GenAI view by default; the link the report prints asks for
    the model-training view, on the server of an http store or on `mlflow ui` for a local one."""
    import json

    import mlflow

    from pipeline.tracking.runs import run_page_url

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("e", artifact_location=str(tmp_path / "art"))
    run = client.create_run(exp)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert run_page_url(run_dir) is None  # no tracking.json: no run, no link
    (run_dir / "tracking.json").write_text(json.dumps({"tracking_uri": uri, "run_id": run.info.run_id}))
    assert run_page_url(run_dir) == (
        f"http://127.0.0.1:5000/#/experiments/{exp}/runs/{run.info.run_id}?workflowType=machine_learning"
    )
