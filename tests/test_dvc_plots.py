"""``dvc plots show``: every plot file drawn once, axes named after the quantity, beta on a log axis.

The training curves are drawn by the top-level ``plots:`` of ``dvc.yaml`` (several lines per
panel); their files are plain ``outs`` of the train stage, since a stage-level ``plots:``
entry would draw the same file a second time. The per-set evaluation plots are stage-level
(a ``foreach`` stage; nothing at the top level draws them). Beta axes use the templates in
``.dvc/plots/`` (DVC's built-in ``linear`` with a log scale on that axis).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())
DVC = Path(sys.executable).parent / "dvc"


def definitions() -> list[tuple[str, dict, list[str], list[str]]]:
    """(name, properties, files, y fields) of every plot: top-level, then stage-level."""
    out = []
    for entry in DVC_YAML.get("plots", []):
        ((name, props),) = entry.items() if isinstance(entry, dict) else ((entry, {}),)
        props = props or {}
        y = props.get("y")
        if isinstance(y, dict):
            files, fields = list(y), [f for v in y.values() for f in ([v] if isinstance(v, str) else v)]
        else:
            files, fields = [name], ([y] if isinstance(y, str) else list(y or []))
        out.append((name, props, files, fields))
    for stage in DVC_YAML["stages"].values():
        body = stage.get("do", stage)
        for entry in body.get("plots", []):
            ((path, props),) = entry.items() if isinstance(entry, dict) else ((entry, {}),)
            props = props or {}
            y = props.get("y")
            out.append((path, props, [path], [y] if isinstance(y, str) else list(y or [])))
    return out


PLOTS = definitions()


def test_no_file_is_drawn_twice():
    """No column of a file in two panels, and no stage-level plot file in a top-level panel
    (DVC draws a stage-level ``plots:`` entry on its own, whatever the top level draws)."""
    seen: dict[tuple[str, str], str] = {}
    for name, _, files, fields in PLOTS:
        for f in files:
            for col in fields:
                assert (f, col) not in seen, f"{f}:{col} is drawn by both {seen[f, col]!r} and {name!r}"
                seen[f, col] = name
    n_top = len(DVC_YAML.get("plots", []))
    top_files = {f for _, _, files, _ in PLOTS[:n_top] for f in files}
    stage_files = {f for _, _, files, _ in PLOTS[n_top:] for f in files}
    assert not top_files & stage_files, f"drawn at the top level and by a stage: {sorted(top_files & stage_files)}"


@pytest.mark.parametrize("plot", PLOTS, ids=[p[0] for p in PLOTS])
def test_axes_are_named_after_the_quantity(plot):
    name, props, _, fields = plot
    for axis in ("x_label", "y_label"):
        label = props.get(axis)
        assert isinstance(label, str) and label.strip() and label not in ("x", "y"), f"{name}: {axis} {label!r}"
    assert props.get("x") and fields, f"{name}: x and y name the columns"


def log_axes(template: str) -> set[str]:
    """The axes a template puts on a log scale (``.dvc/plots/<template>.json``)."""
    path = REPO / ".dvc" / "plots" / f"{template}.json"
    if not path.exists():
        return set()
    axes = set()

    def walk(o):
        if isinstance(o, dict):
            for ax in ("x", "y"):
                enc = o.get(ax)
                if isinstance(enc, dict) and (enc.get("scale") or {}).get("type") == "log":
                    axes.add(ax)
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(json.loads(path.read_text()))
    return axes


@pytest.mark.parametrize("plot", PLOTS, ids=[p[0] for p in PLOTS])
def test_beta_is_on_a_log_axis(plot):
    name, props, _, fields = plot
    want = {
        ax for ax, cols in (("x", [props.get("x", "")]), ("y", fields)) if any(str(c).startswith("beta") for c in cols)
    }
    have = log_axes(props.get("template", "linear"))
    assert want <= have, (
        f"{name}: beta on axis {sorted(want - have)} but template {props.get('template')!r} is linear there"
    )
    assert have <= want or not have, f"{name}: log axis {sorted(have - want)} holds no beta"


def test_the_training_plot_files_are_outputs_not_stage_plots():
    outs = {next(iter(o)) if isinstance(o, dict) else o for o in DVC_YAML["stages"]["train"]["outs"]}
    assert {"reports/train/steps.csv", "reports/train/val_pck.csv"} <= outs
    assert not DVC_YAML["stages"]["train"].get("plots")


def plot_project(tmp_path: Path) -> list[str]:
    """A git + DVC folder with this dvc.yaml and a little data for every plot; returns the
    evaluation sets."""
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy2(REPO / f, tmp_path / f)
    shutil.copytree(REPO / ".dvc" / "plots", tmp_path / ".dvc" / "plots")
    (tmp_path / ".dvc" / "config").write_text("")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    train = tmp_path / "reports/train"
    train.mkdir(parents=True)
    (train / "steps.csv").write_text(
        "step,loss,beta_a,beta_b,beta_eff,lr_backbone\n1,2.0,0.5,0.4,0.3,1e-4\n2,1.5,0.1,0.09,0.05,1e-4\n"
    )
    (train / "val_pck.csv").write_text("epoch,step,pck@0.05,pck@0.1,pck@0.15\n0,1,10,20,30\n1,2,15,25,35\n")
    sets = yaml.safe_load((REPO / "params.yaml").read_text())["evaluate"]["sets"]
    for s in sets:
        d = tmp_path / "reports/eval" / s
        d.mkdir(parents=True)
        (d / "pck_vs_alpha.json").write_text(json.dumps([{"alpha": 0.05, "pck": 10}, {"alpha": 0.1, "pck": 20}]))
        (d / "pck_vs_beta.json").write_text(
            json.dumps([{"beta_eval": 0.01, "pck@0.1": 10}, {"beta_eval": 1, "pck@0.1": 20}])
        )
    return list(sets)


@pytest.mark.skipif(not DVC.exists(), reason="dvc is not installed")
def test_dvc_plots_show_draws_each_panel_once(tmp_path):
    sets = plot_project(tmp_path)
    res = subprocess.run(
        [str(DVC), "plots", "show", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "DVC_NO_ANALYTICS": "1"},
    )
    assert res.returncode == 0, res.stderr
    panels = json.loads(res.stdout)["data"]
    assert len(panels) == len(DVC_YAML["plots"]) + 2 * len(sets), list(panels)
    assert all(len(v) == 1 for v in panels.values()), "one panel per definition"

    def titles(o, out):
        if isinstance(o, dict):
            enc = o.get("encoding")
            if isinstance(enc, dict):
                for ax in ("x", "y"):
                    if isinstance(enc.get(ax), dict) and "title" in enc[ax]:
                        out.add((ax, enc[ax]["title"], (enc[ax].get("scale") or {}).get("type")))
            for v in o.values():
                titles(v, out)
        elif isinstance(o, list):
            for v in o:
                titles(v, out)
        return out

    for name, (panel,) in panels.items():
        axes = titles(panel["content"], set())
        assert axes and all(t not in ("x", "y", "") for _, t, _ in axes), (name, axes)
        if "beta" in name or "pck_vs_beta" in name:
            assert any(scale == "log" and "beta" in t for _, t, scale in axes), (name, axes)


@pytest.mark.slow
@pytest.mark.skipif(not DVC.exists(), reason="dvc is not installed")
def test_make_plots_page_needs_no_network(tmp_path):
    """``python -m pipeline.plots`` (``make plots``): DVC's page with Vega, Vega-Lite and
    Vega-Embed inline instead of CDN script tags, so it draws offline; it opens nothing."""
    import os

    sets = plot_project(tmp_path)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(REPO), "BROWSER": "false"}
    res = subprocess.run(
        [sys.executable, "-m", "pipeline.plots", "show", "-o", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert "plots: out/index.html (draws offline: Vega inline)" in res.stdout
    page = (tmp_path / "out" / "index.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc\s*=", page) and "cdn.jsdelivr" not in page
    assert "window.vegaEmbed=" in page and "{plot_divs}" not in page
    assert page.count("vegaEmbed('#") == len(DVC_YAML["plots"]) + 2 * len(sets)
