"""The DVC pipeline end to end, shrunk: a real ``dvc repro`` in a temporary git repository
holding the project's files, then a no-op second repro, then a learning-rate change that
reruns exactly train, evaluate and report, then a code change in ``simsc/soft_argmax.py``
that ``dvc status`` reports for exactly the stages whose import closure holds it
(``tests/test_dvc_deps.py``): evaluate, report and train (which validates with the
evaluator), not download or preprocess."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DVC = BIN / "dvc"

if not DVC.exists():  # pragma: no cover - dvc is a pipeline dependency
    pytest.skip("dvc is not installed", allow_module_level=True)


def project_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split()
    keep = ("simsc/", "pipeline/", ".dvc/", "dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "pyproject.toml")
    return [f for f in out if f.startswith(keep) and (REPO / f).is_file()]


def run(cmd, cwd, env):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res.stdout + res.stderr


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def shrink(params: dict) -> dict:
    params["embedded"].update(n_train=12, n_val=4, n_test=4)
    params["preprocess"]["resolutions"] = [64]
    params["data"]["resolution"] = 64
    params["data"]["batch_size"] = 4
    params["train"].update(max_steps=4, val_max_pairs=4, checkpoint_every_steps=None)
    params["eval"].update(resolution=64, batch_size=4, beta_sweep=[0.02, 0.1, 1.0])
    params["evaluate"]["sets"] = {
        "test_64": {"dataset": "embedded", "root": "data/embedded", "split": "test", "resolution": 64},
    }  # one set keeps the test short; the foreach over several sets is the same code path
    params["evaluate"]["sweep"] = ["test_64"]
    params["report"].update(n_pictures=1, picture_set="test_64")
    params["tracking"]["enabled"] = False
    return params


def test_dvc_repro_end_to_end(tmp_path):
    work = tmp_path / "proj"
    for f in project_files():
        dst = work / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dst)
    params_p = work / "params.yaml"
    params_p.write_text(yaml.safe_dump(shrink(yaml.safe_load(params_p.read_text())), sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
           "PYTHONPATH": str(work), "OMP_NUM_THREADS": "2"}
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=test"]
    run(["git", "init", "-q"], work, env)
    run([*git, "add", "-A"], work, env)
    run([*git, "commit", "-qm", "project"], work, env)

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

    params = yaml.safe_load(params_p.read_text())
    params["train"]["lr_backbone"] = 0.0005
    params_p.write_text(yaml.safe_dump(params, sort_keys=False))
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
    sys.path.insert(0, str(REPO / "tests"))
    from test_dvc_deps import closure

    expected = {"download", "preprocess", "train", "evaluate@test_64", "report"}
    expected = {s for s in expected if "simsc/soft_argmax.py" in closure(f"pipeline.stage_{s.split('@')[0]}")}
    assert expected == {"train", "evaluate@test_64", "report"}
    assert stale == expected, stale
