"""The DVC pipeline end to end, shrunk: a real ``dvc repro`` in a temporary git repository
holding the project's files, then a no-op second repro, then a learning-rate change that
reruns exactly train, evaluate and report, then a code change in ``simsc/soft_argmax.py``
that ``dvc status`` reports for exactly the stages whose import closure holds it
(``tests/test_dvc_deps.py``): evaluate, report and train (which validates with the
evaluator), not download or preprocess."""

from __future__ import annotations

import json

import pytest

from tests.dvc_project import DVC, make_project, ran_stages, run, set_params
from tests.test_dvc_deps import closure

pytestmark = pytest.mark.slow

if not DVC.exists():  # pragma: no cover - dvc is a pipeline dependency
    pytest.skip("dvc is not installed", allow_module_level=True)


def test_dvc_repro_end_to_end(tmp_path):
    work = tmp_path / "proj"
    env = make_project(work)

    out = run([str(DVC), "repro"], work, env)
    assert ran_stages(out) == ["download", "preprocess", "train", "evaluate@test_64", "report"]
    for p in ("runs/default/checkpoints/best.pt", "runs/default/metrics.jsonl", "reports/train/steps.csv",
              "reports/train/val_pck.csv", "reports/eval/test_64/pck.json", "reports/eval/test_64/pck_vs_beta.json", "reports/report.md", "reports/report.html",
              "reports/figures/beta_trajectory.png", "reports/figures/pck_vs_beta_eval.png", "dvc.lock"):
        assert (work / p).exists(), p
    steps = (work / "reports/train/steps.csv").read_text().splitlines()
    assert steps[0].startswith("step,loss,beta_a,beta_b,beta_eff") and len(steps) == 5
    report = (work / "reports/report.md").read_text()
    assert "no paper number" in report and "Table 1" in report

    metrics = json.loads(run([str(DVC), "metrics", "show", "--json"], work, env))
    flat = json.dumps(metrics)
    assert "reports/eval/test_64/pck.json" in flat
    assert "0.1" in flat

    again = run([str(DVC), "repro"], work, env)
    assert ran_stages(again) == []
    assert "up to date" in again.lower()

    set_params(work / "params.yaml", {"train.lr_backbone": 0.0005})
    status = run([str(DVC), "status"], work, env)
    assert "train:" in status and "download:" not in status and "preprocess:" not in status
    third = run([str(DVC), "repro"], work, env)
    assert set(ran_stages(third)) == {"train", "evaluate@test_64", "report"}

    # deps cannot go stale: one changed line of library code
    soft = work / "simsc/soft_argmax.py"
    lines = soft.read_text().splitlines(keepends=True)
    lines[0] = lines[0].rstrip("\n") + "  \n"  # any byte counts: DVC hashes the content
    soft.write_text("".join(lines))
    stale = set(json.loads(run([str(DVC), "status", "--json"], work, env)))
    expected = {"download", "preprocess", "train", "evaluate@test_64", "report"}
    expected = {s for s in expected if "simsc/soft_argmax.py" in closure(f"pipeline.stage_{s.split('@')[0]}")}
    assert expected == {"train", "evaluate@test_64", "report"}
    assert stale == expected, stale
