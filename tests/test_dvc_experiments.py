"""Experiments the way DVC users compare them, in a temporary git repository with real DVC:

- a baseline ``dvc repro`` whose metrics (PCK per set, the train summary) and plot data are
  cache-less outputs committed to git with ``dvc.lock``;
- a shared remote: ``dvc push`` from clone A, ``dvc pull`` in a fresh clone B, and B's
  ``dvc repro`` finds every stage up to date with ``reports/`` identical to A's;
- two ``dvc exp run -S`` experiments: each changes only its key's line in ``params.yaml``;
  ``dvc exp show --json`` has numeric PCK@0.05/0.1/0.15 and beta_eff for all three rows;
  ``dvc params diff`` and ``dvc metrics diff`` print the changed values; ``dvc exp apply``
  + commit makes an experiment the new baseline.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.dvc_project import DVC, GIT, make_project, ran_stages, run

pytestmark = pytest.mark.slow

if not DVC.exists():  # pragma: no cover - dvc is a pipeline dependency
    pytest.skip("dvc is not installed", allow_module_level=True)

PCK_FILE = "reports/eval/test_64/pck.json"
TRAIN_FILE = "reports/train/metrics.json"
COMMITTED = (
    "dvc.lock",
    PCK_FILE,
    TRAIN_FILE,
    "reports/train/steps.csv",
    "reports/train/val_pck.csv",
    "reports/eval/test_64/pck_vs_beta.json",
    "reports/report.md",
    "reports/report.html",
)


def tree_digest(root: Path) -> dict[str, str]:
    """Digests of the files under ``root`` that git or DVC share: not ``this_run.*``, the
    report's local page of this machine's run (its MLflow ids; git-ignored, never pushed)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith("this_run.")
    }


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """Clone A: the shrunk project after ``dvc repro`` and a commit of everything git tracks."""
    work = tmp_path_factory.mktemp("dvcexp") / "a"
    env = make_project(work)
    run([DVC, "repro"], work, env)
    run([*GIT, "add", "-A"], work, env)
    run([*GIT, "commit", "-qm", "baseline: dvc repro"], work, env)
    return work, env, tree_digest(work / "reports")


def test_metrics_and_lock_are_committed(baseline):
    work, env, _ = baseline
    tracked = set(run(["git", "ls-files"], work, env).split())
    assert set(COMMITTED) <= tracked, set(COMMITTED) - tracked
    # cached outputs stay out of git (DVC's own .gitignore files)
    assert "reports/eval/test_64/predictions.jsonl" not in tracked
    assert run(["git", "status", "--porcelain"], work, env).strip() == ""
    pck = json.loads((work / PCK_FILE).read_text())
    assert {"pck@0.05", "pck@0.1", "pck@0.15", "beta_eff"} <= set(pck)
    assert pck["pck@0.05"] <= pck["pck@0.1"] <= pck["pck@0.15"]  # a larger threshold counts more
    train = json.loads((work / TRAIN_FILE).read_text())
    assert train["steps"] == 4 and train["final"]["beta_eff"] > 0
    last = [json.loads(line) for line in (work / "runs/default/metrics.jsonl").read_text().splitlines()]
    last_step = [r for r in last if r.get("type") == "step"][-1]
    assert train["final"]["beta_eff"] == pytest.approx(last_step["beta_eff_mean"], rel=1e-4)


def test_shared_remote_push_pull(baseline, tmp_path):
    work_a, env, reports_a = baseline
    remote = tmp_path / "remote"
    # --local: the remote lives in .dvc/config.local, so the committed config stays untouched
    run([DVC, "remote", "add", "--local", "-d", "shared", remote], work_a, env)
    run([DVC, "push"], work_a, env)
    work_b = tmp_path / "b"
    run(["git", "clone", "-q", work_a, work_b], tmp_path, env)
    env_b = {**env, "PYTHONPATH": str(work_b)}
    run([DVC, "remote", "add", "--local", "-d", "shared", remote], work_b, env_b)
    run([DVC, "pull"], work_b, env_b)
    out = run([DVC, "repro"], work_b, env_b)
    assert ran_stages(out) == [], out
    status = json.loads(run([DVC, "status", "--json"], work_b, env_b))
    assert status == {}, status
    assert tree_digest(work_b / "reports") == reports_a
    assert (work_b / "runs/default/checkpoints/best.pt").read_bytes() == (
        work_a / "runs/default/checkpoints/best.pt"
    ).read_bytes()


def exp_rows(shown: Any) -> dict[str, dict[str, Any]]:
    """``dvc exp show --json`` -> {experiment name or "workspace"/"baseline": flat metrics+params}."""
    rows: dict[str, dict[str, Any]] = {}

    def flat(data: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kind in ("metrics", "params"):
            for path, entry in (data.get(kind) or {}).items():
                stack = [("", entry.get("data") or {})]
                while stack:
                    prefix, node = stack.pop()
                    for k, v in node.items():
                        if isinstance(v, dict) and k not in ("sets",):
                            stack.append((f"{prefix}{k}.", v))
                        else:
                            out[f"{path}:{prefix}{k}"] = v
        return out

    for commit in shown:
        name = commit.get("name") or commit.get("rev")
        rows["workspace" if commit.get("rev") == "workspace" else "baseline"] = flat(commit.get("data") or {})
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                rows[rev.get("name") or rev.get("rev")] = flat(rev.get("data") or {})
        del name
    return rows


def changed_lines(work: Path, env) -> list[str]:
    diff = run(["git", "diff", "-U0", "HEAD", "--", "params.yaml"], work, env)
    return [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def test_experiments_compare_and_apply(baseline):
    work, env, _ = baseline
    # params.yaml leaves lr_backbone at the paper's default, so -S adds it with ++
    out = run([DVC, "exp", "run", "-n", "lr-high", "-S", "++train.lr_backbone=0.002"], work, env)
    assert set(ran_stages(out)) == {"train", "evaluate@test_64", "report"}
    # -S adds only its key's line: comments, blank lines and layout are kept
    assert changed_lines(work, env) == ["+  lr_backbone: 0.002"]

    params_diff = json.loads(run([DVC, "params", "diff", "--json"], work, env))
    assert list(params_diff["params.yaml"]) == ["train.lr_backbone"]
    assert params_diff["params.yaml"]["train.lr_backbone"]["old"] is None
    assert params_diff["params.yaml"]["train.lr_backbone"]["new"] == 0.002
    text = run([DVC, "params", "diff"], work, env)
    assert "train.lr_backbone" in text and "0.002" in text
    metrics_diff = json.loads(run([DVC, "metrics", "diff", "--json"], work, env))
    beta = metrics_diff[TRAIN_FILE]["final.beta_eff"]
    assert beta["old"] != beta["new"] and isinstance(beta["diff"], float), metrics_diff
    assert "final.beta_eff" in run([DVC, "metrics", "diff"], work, env)

    subprocess.run(["git", "checkout", "--", "params.yaml"], cwd=work, env=env, check=True)
    before = next(line for line in (work / "params.yaml").read_text().splitlines() if "max_steps:" in line)
    run([DVC, "exp", "run", "-n", "six-steps", "-S", "train.max_steps=6"], work, env)
    # only the value changes: the line keeps its indentation, alignment and comment
    assert changed_lines(work, env) == [f"-{before}", "+" + before.replace("max_steps: 4", "max_steps: 6")]

    shown = exp_rows(json.loads(run([DVC, "exp", "show", "--json"], work, env)))
    print(
        run(
            [
                DVC,
                "exp",
                "show",
                "--no-pager",
                "--md",
                "--drop",
                "^(?!.*(pck@|beta_eff|lr_backbone|max_steps|Experiment)).*$",
            ],
            work,
            env,
        )
    )
    for name in ("baseline", "lr-high", "six-steps"):
        row = shown[name]
        for a in ("0.05", "0.1", "0.15"):
            assert isinstance(row[f"{PCK_FILE}:pck@{a}"], (int, float)), (name, a, row)
        assert row[f"{PCK_FILE}:beta_eff"] > 0 and row[f"{TRAIN_FILE}:final.beta_eff"] > 0
    assert shown["lr-high"]["params.yaml:train.lr_backbone"] == 0.002
    assert shown["six-steps"]["params.yaml:train.max_steps"] == 6
    assert shown["six-steps"][f"{TRAIN_FILE}:steps"] == 6

    # apply + commit: the experiment is the new baseline, and nothing needs re-running
    subprocess.run(["git", "checkout", "--", "params.yaml"], cwd=work, env=env, check=True)
    run([DVC, "exp", "apply", "lr-high"], work, env)
    run([*GIT, "add", "-A"], work, env)
    run([*GIT, "commit", "-qm", "adopt lr-high"], work, env)
    after = exp_rows(json.loads(run([DVC, "exp", "show", "--json"], work, env)))
    assert after["baseline"]["params.yaml:train.lr_backbone"] == 0.002
    assert after["baseline"][f"{PCK_FILE}:pck@0.1"] == shown["lr-high"][f"{PCK_FILE}:pck@0.1"]
    assert json.loads(run([DVC, "status", "--json"], work, env)) == {}


def test_make_exp_runs_do_not_compound_and_a_failed_one_changes_nothing(baseline):
    """``make exp`` (``python -m pipeline.exp``) with the real ``dvc exp run``: the second
    experiment carries only its own ``-S``, not the first one's; a mistyped key fails and
    leaves ``params.yaml`` as committed."""
    import sys

    work, env, _ = baseline
    subprocess.run(["git", "checkout", "--", "params.yaml"], cwd=work, env=env, check=True)
    committed = (work / "params.yaml").read_bytes()
    exp = [sys.executable, "-m", "pipeline.exp"]
    out = run([*exp, "-n", "lr2x", "-S", "++train.lr_backbone=2e-4"], work, env)
    assert "params.yaml restored" in out and (work / "params.yaml").read_bytes() == committed
    run([*exp, "-n", "seed1", "-S", "++train.seed=1"], work, env)
    assert (work / "params.yaml").read_bytes() == committed

    rows = exp_rows(json.loads(run([DVC, "exp", "show", "--json"], work, env)))
    base, lr2x, seed1 = rows["baseline"], rows["lr2x"], rows["seed1"]
    changed = {k for k in base.keys() | seed1.keys() if k.startswith("params.yaml:") and base.get(k) != seed1.get(k)}
    assert changed == {"params.yaml:train.seed"}, changed  # not lr_backbone=2e-4 from lr2x
    assert seed1["params.yaml:train.seed"] == 1
    assert lr2x["params.yaml:train.lr_backbone"] == 2e-4 and lr2x.get("params.yaml:train.seed") == base.get(
        "params.yaml:train.seed"
    )
    print(run([DVC, "exp", "show", "--no-pager", "--only-changed", "--md"], work, env))

    res = subprocess.run(
        [*exp, "-n", "typo", "-S", "++model.backbon=resnet18"], cwd=work, env=env, capture_output=True, text=True
    )
    assert res.returncode != 0
    assert "params.yaml restored" in res.stderr
    assert (work / "params.yaml").read_bytes() == committed
    assert run(["git", "status", "--porcelain", "--", "params.yaml"], work, env).strip() == ""
