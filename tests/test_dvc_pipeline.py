"""The DVC pipeline end to end, shrunk: a real ``dvc repro`` in a temporary git repository
holding the project's files, then a no-op second repro, then a learning-rate change that
reruns exactly train, evaluate and report, then a code change in ``simsc/soft_argmax.py``
that ``dvc status`` reports for exactly the stages whose import closure holds it
(``tests/test_dvc_deps.py``): evaluate, report and train (which validates with the
evaluator), not download or preprocess."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import yaml

from pipeline.dvc_deps import closure
from simsc.config import engine_sections, load_config
from tests.dvc_project import DVC, make_project, ran_stages, run, set_params

pytestmark = pytest.mark.slow

if not DVC.exists():  # pragma: no cover - dvc is a pipeline dependency
    pytest.skip("dvc is not installed", allow_module_level=True)


def _rows(path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _check_outputs(work, lr: float) -> list[dict[str, float]]:
    """The values the stages wrote agree with the params and with each other; returns the step rows."""
    steps = _rows(work / "reports/train/steps.csv")
    assert [int(r["step"]) for r in steps] == [1, 2, 3, 4]  # train.max_steps of the shrunk params
    logged = [
        rec
        for line in (work / "runs/default/metrics.jsonl").read_text().splitlines()
        if (rec := json.loads(line)).get("type") == "step"
    ]
    for r, rec in zip(steps, logged, strict=True):
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert 0 < r["beta_a"] < 1 and 0 < r["beta_b"] < 1  # the mlp temperature ends in a sigmoid
        # batch means: mean(beta_a * beta_b) is the product of the means up to their covariance over
        # the batch, which Cauchy-Schwarz bounds by the product of the standard deviations
        bound = rec["beta_a_std"] * rec["beta_b_std"] + 1e-6
        assert abs(r["beta_eff"] - r["beta_a"] * r["beta_b"]) <= bound
        assert r["lr_backbone"] == pytest.approx(lr)
    summary = json.loads((work / "reports/train/metrics.json").read_text())
    assert summary["steps"] == 4 and summary["final"]["loss"] == pytest.approx(steps[-1]["loss"], abs=1e-4)
    ckpt = torch.load(work / "runs/default/checkpoints/best.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == summary["best"]["step"]
    assert load_config(ckpt["config"]).resolved_lr_backbone() == pytest.approx(lr)  # null: the paper's rate

    pck = json.loads((work / "reports/eval/test_64/pck.json").read_text())
    assert pck["n_pairs"] == 4 and pck["beta_eval"] == 1.0  # embedded.n_test; the mlp model's default
    assert 0.0 <= pck["pck@0.05"] <= pck["pck@0.1"] <= pck["pck@0.15"] <= 100.0  # a larger alpha accepts more
    sweep = json.loads((work / "reports/eval/test_64/pck_vs_beta.json").read_text())
    assert [r["beta_eval"] for r in sweep] == [0.02, 0.1, 1.0]  # eval.beta_sweep
    assert sweep[-1]["pck@0.1"] == pytest.approx(pck["pck@0.1"], abs=1e-4)  # beta 1 is the evaluation itself
    rep = json.loads((work / "reports/eval/test_64/report.json").read_text())
    cells = " | ".join(f"{rep['per_image'][a]:.1f}" for a in ("0.05", "0.1", "0.15"))
    report = (work / "reports/report.md").read_text()
    assert f"| test_64 | embedded | test | 64 | 4 | 1.0 | {cells} |" in report
    assert "no paper number" in report and "Table 1" in report
    assert f"- training steps: 4\n- best step: {summary['best']['step']}\n" in report
    return steps


def test_dvc_repro_end_to_end(tmp_path):
    work = tmp_path / "proj"
    env = make_project(work)

    out = run([str(DVC), "repro"], work, env)
    stages = ran_stages(out)
    assert sorted(stages) == sorted(
        ["download", "preprocess", "train", "evaluate@test_64", "baseline@test_64", "report"]
    )
    assert stages.index("preprocess") < stages.index("baseline@test_64") < stages.index("report")
    assert stages.index("train") < stages.index("evaluate@test_64") < stages.index("report")
    # the baseline is the configured backbone, not fine-tuned, and the report sets it beside the model
    base = json.loads((work / "reports/baseline/test_64/report.json").read_text())
    model_cfg = load_config(engine_sections(yaml.safe_load((work / "params.yaml").read_text()))).model
    assert base["model"].startswith(f"{model_cfg.backbone} pretrained={model_cfg.pretrained}")
    assert base["beta_eval"] == 0.02
    report_md = (work / "reports/report.md").read_text()
    assert f"| not fine-tuned: {model_cfg.backbone} " in report_md
    assert f"{base['per_image']['0.1']:.1f} to " in report_md  # the gain line starts from the baseline
    lr = load_config(engine_sections(yaml.safe_load((work / "params.yaml").read_text()))).resolved_lr_backbone()
    first = _check_outputs(work, lr)
    for p in ("reports/figures/beta_trajectory.png", "reports/figures/pck_vs_beta_eval.png"):
        assert (work / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", p

    # dvc reads the metrics the evaluate stage wrote, value for value
    metrics = json.loads(run([str(DVC), "metrics", "show", "--json"], work, env))[""]["data"]
    on_disk = json.loads((work / "reports/eval/test_64/pck.json").read_text())
    assert metrics["reports/eval/test_64/pck.json"]["data"] == on_disk

    again = run([str(DVC), "repro"], work, env)
    assert ran_stages(again) == []
    assert "up to date" in again.lower()

    set_params(work / "params.yaml", {"train.lr_backbone": 0.0005})
    status = run([str(DVC), "status"], work, env)
    assert "train:" in status and "download:" not in status and "preprocess:" not in status
    third = run([str(DVC), "repro"], work, env)
    assert set(ran_stages(third)) == {"train", "evaluate@test_64", "report"}
    rerun = _check_outputs(work, 0.0005)  # the outputs now come from the new learning rate
    assert lr != 0.0005 and [r["loss"] for r in rerun[1:]] != [r["loss"] for r in first[1:]]

    # deps cannot go stale: one changed line of library code
    soft = work / "simsc/soft_argmax.py"
    lines = soft.read_text().splitlines(keepends=True)
    lines[0] = lines[0].rstrip("\n") + "  \n"  # any byte counts: DVC hashes the content
    soft.write_text("".join(lines))
    stale = set(json.loads(run([str(DVC), "status", "--json"], work, env)))
    expected = {"download", "preprocess", "train", "evaluate@test_64", "baseline@test_64", "report"}
    expected = {s for s in expected if "simsc/soft_argmax.py" in closure(f"pipeline.stage_{s.split('@')[0]}")}
    assert expected == {"train", "evaluate@test_64", "baseline@test_64", "report"}
    assert stale == expected, stale
