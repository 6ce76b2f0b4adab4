"""A shrunk copy of the project in a temporary git repository, for tests that run real DVC.

``make_project`` copies the files the pipeline needs, shrinks ``params.yaml`` the way
``dvc exp run -S`` edits it (round-trip YAML: comments and layout kept), and commits.
``run`` runs a command and fails the test with its output when it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DVC = BIN / "dvc"
GIT = ["git", "-c", "user.email=t@example.com", "-c", "user.name=test"]
KEEP = ("simsc/", "pipeline/", ".dvc/", "dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "pyproject.toml")

# Every key the tests shrink, dotted; values as DVC's ``-S`` would set them.
SHRINK: dict[str, Any] = {
    "embedded.n_train": 12,
    "embedded.n_val": 4,
    "embedded.n_test": 4,
    "preprocess.resolutions": [64],
    "data.resolution": 64,
    "data.batch_size": 4,
    "train.max_steps": 4,
    "train.val_max_pairs": 4,
    "train.checkpoint_every_steps": None,
    "eval.resolution": 64,
    "eval.batch_size": 4,
    "eval.beta_sweep": [0.02, 0.1, 1.0],
    # one set keeps the tests short; the foreach over several sets is the same code path
    "evaluate.sets": {"test_64": {"dataset": "embedded", "root": "data/embedded", "split": "test", "resolution": 64}},
    "evaluate.sweep": ["test_64"],
    "report.n_pictures": 1,
    "report.picture_set": "test_64",
    "tracking.enabled": False,
}


def project_files() -> list[str]:
    """The project's tracked and untracked-but-not-ignored files that the pipeline needs."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [f for f in out if f.startswith(KEEP) and (REPO / f).is_file()]


def set_params(path: Path, updates: Mapping[str, Any]) -> None:
    """Set dotted keys in a params file with DVC's own round-trip YAML writer (as ``-S`` does)."""
    from dvc.utils.serialize._yaml import modify_yaml

    with modify_yaml(str(path)) as data:
        for dotted, value in updates.items():
            *parents, leaf = dotted.split(".")
            node = data
            for p in parents:
                node = node[p]
            node[leaf] = value


def dvc_env(work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "PYTHONPATH": str(work),
        "OMP_NUM_THREADS": "2",
    }


def make_project(work: Path, updates: Mapping[str, Any] = SHRINK) -> dict[str, str]:
    """Copy the project into ``work``, shrink its params, ``git init`` and commit; returns the env."""
    for f in project_files():
        dst = work / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dst)
    set_params(work / "params.yaml", updates)
    env = dvc_env(work)
    run(["git", "init", "-q"], work, env)
    run([*GIT, "add", "-A"], work, env)
    run([*GIT, "commit", "-qm", "project"], work, env)
    return env


def run(cmd, cwd, env, timeout: int = 600) -> str:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res.stdout + res.stderr


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)
