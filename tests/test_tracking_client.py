"""The MLflow connection layer (``pipeline.tracking.client``) without a server: importing the
pipeline changes no environment variable; the HTTP defaults are applied when a connection is
made, never over a value the user set; a failing call warns once and turns the tracker
offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HTTP_VARS = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")

# Imports the modules named on the command line with an audit hook on ``os.putenv`` /
# ``os.unsetenv`` (what every write to ``os.environ`` raises) and prints each write whose
# writer, the nearest frame outside ``os`` and ``collections.abc`` (setdefault, pop), is a
# file under one of the given roots and outside site-packages: a third-party library setting its
# own variables at import (mlflow, torch, threadpoolctl, numpy's OpenBLAS do) is not this project's doing.
ENV_PROBE = """
import importlib, json, os, sys
roots = tuple(sys.argv[1].split(os.pathsep))
writes = []

def hook(event, args):
    if event not in ("os.putenv", "os.unsetenv"):
        return
    f = sys._getframe(1)
    while f is not None and f.f_code.co_filename.endswith(("os.py", "<frozen os>", "_collections_abc.py",
                                                            "<frozen _collections_abc>")):
        f = f.f_back
    # the project's own files: under a root, not an installed library (a venv may sit in the root)
    if f is not None and f.f_code.co_filename.startswith(roots) and "site-packages" not in f.f_code.co_filename:
        key = args[0].decode() if isinstance(args[0], bytes) else args[0]
        writes.append(f"{os.path.basename(f.f_code.co_filename)}:{f.f_lineno}: {key}")

sys.addaudithook(hook)
for name in sys.argv[2:]:
    importlib.import_module(name)
print(json.dumps(writes))
"""


def env_writes(modules: list[str], roots: list[Path]) -> list[str]:
    """``file:line: VARIABLE`` for each environment variable that code under ``roots`` sets or
    removes while ``modules`` are imported in a fresh process (on ``sys.path``: the roots),
    whose environment lacks the HTTP variables so that a ``setdefault`` of one writes."""
    env = {k: v for k, v in os.environ.items() if k not in HTTP_VARS}
    env["PYTHONPATH"] = os.pathsep.join(map(str, roots))
    out = subprocess.run(
        [sys.executable, "-c", ENV_PROBE, os.pathsep.join(map(str, roots)), *modules],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def pipeline_modules() -> list[str]:
    return sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for p in (REPO / "pipeline").rglob("*.py")
    )


def test_the_probe_names_a_module_that_sets_a_variable_at_import(tmp_path, monkeypatch):
    (tmp_path / "planted_env.py").write_text(
        "import os\n\nos.environ.setdefault('MLFLOW_HTTP_REQUEST_TIMEOUT', '5')\n"
        "os.environ.pop('SIMSC_PROBE_UNSET', None)\n"
    )
    (tmp_path / "planted_clean.py").write_text(
        "import os\nTIMEOUT = os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT')\ndef later():\n    os.environ['X'] = '1'\n"
    )
    monkeypatch.setenv("SIMSC_PROBE_UNSET", "1")
    assert env_writes(["planted_clean", "planted_env"], [tmp_path]) == [
        "planted_env.py:3: MLFLOW_HTTP_REQUEST_TIMEOUT",
        "planted_env.py:4: SIMSC_PROBE_UNSET",
    ]


def test_importing_the_pipeline_leaves_the_environment_alone():
    modules = pipeline_modules()
    assert {"pipeline.tracking.client", "pipeline.tracking.callback", "pipeline.relog"} <= set(modules)
    assert env_writes(modules, [REPO]) == []


def test_connecting_applies_the_http_defaults_unless_set(monkeypatch):
    pytest.importorskip("mlflow")
    from pipeline.tracking.client import HTTP_DEFAULTS, SafeMlflow

    for name in HTTP_VARS:  # set, then removed: monkeypatch puts back whatever was there before
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")  # the user's choice wins
    assert HTTP_DEFAULTS == {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    }
    ml = SafeMlflow("http://127.0.0.1:9")  # a client is made without a request
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    ml.connect()
    assert {k: os.environ.get(k) for k in HTTP_VARS} == {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    }
    assert ml.tracking_uri == "http://127.0.0.1:9"


def test_a_failure_warns_once_and_later_calls_are_skipped():
    from pipeline.tracking.client import SafeMlflow, TrackingWarning

    ml = SafeMlflow("http://tracking.invalid")
    calls = []

    def boom(x):
        calls.append(x)
        raise ConnectionError("refused")

    assert ml.call("ok", lambda: 7) == 7
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ml.call("step metrics", boom, 1) is None
        assert ml.call("step metrics", boom, 2) is None
        assert ml.call("run status", boom, 3) is None
    assert calls == [1]  # offline after the first failure: the server is not asked again
    assert ml.offline and ml.failed == {"step metrics": 2, "run status": 1}
    assert [w.category for w in caught] == [TrackingWarning]
    msg = str(caught[0].message)
    assert "http://tracking.invalid" in msg and "ConnectionError: refused" in msg and "not logged: step metrics" in msg
    assert "python -m pipeline.relog" in msg


def test_the_package_names_resolve_to_their_modules():
    """``pipeline.tracking.NAME`` (what an install made before the split names in its entry
    points: ``pipeline.tracking:fetch_checkpoint``) is the submodule's object."""
    import importlib

    from pipeline import tracking

    assert "fetch_checkpoint" in tracking._LAZY["models"]
    for module, names in tracking._LAZY.items():
        for name in names:
            assert getattr(tracking, name) is getattr(importlib.import_module(f"pipeline.tracking.{module}"), name)


def test_git_revision_is_clean_when_only_pipeline_outputs_changed(tmp_path):
    """``dvc repro`` rewrites dvc.lock (and reports/) before the train stage runs: that must
    not tag a clean checkout's run ``-dirty``; a changed code file does."""
    import subprocess

    from pipeline.tracking.runs import git_revision

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "reports").mkdir()
    for name in ("dvc.lock", "params.yaml", "reports/report.md", "code.py"):
        (tmp_path / name).write_text("a\n")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x")
    for name in ("dvc.lock", "params.yaml", "reports/report.md"):
        (tmp_path / name).write_text("b\n")
    rev = git_revision(tmp_path / "reports")
    assert len(rev) == 40 and not rev.endswith("-dirty")
    (tmp_path / "code.py").write_text("b\n")
    assert git_revision(tmp_path / "reports").endswith("-dirty")
