"""The paper's tables from the finished runs of an MLflow experiment.

``python -m pipeline.tables [--experiment NAME] [--out DIR]`` (``make tables``) reads every
finished run of the experiment (the tracking URI as the stages resolve it: ``--tracking-uri``,
else ``MLFLOW_TRACKING_URI``, else MLflow's default ``sqlite:///mlflow.db``) and lays them out
as the paper does: Tab. 1 (data sets x alpha), Tab. 2 (backbones), Tab. 3 (L2 norm /
temperature ablation), supp. Tab. 2 (matching heads), supp. Tab. 3 (single vs mlp).

Rows are the configurations: runs are grouped by the params that differ between them
(``train.seed`` and bookkeeping keys excepted, see :data:`NOT_A_SETTING`), and a cell is the
mean ± sample standard deviation over the group's runs, with their count ``n``. The paper's
number stands beside a cell only when the protocol matches (:func:`paper_number`); otherwise
the table says once why it has none. Writes ``tables.md``, ``tables.html`` and ``tables.json``
to ``--out`` and logs them as the artifacts ``tables/`` of the experiment's run named
``tables`` (tag ``simsc.kind=tables``; MLflow 3.17 has no artifacts of an experiment itself).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simsc.errors import ArgumentParser, UserError, add_debug_flag, run_main

#: The replicate axis: runs that differ only here are one row, averaged.
REPLICATE_KEYS = ("train.seed",)
#: Params that never define a configuration: where a run writes, how often it checkpoints or
#: logs, how many loader workers it uses (a sweep's trials each have their own run folder).
NOT_A_SETTING = (
    "train.out_dir",
    "train.checkpoint_every_steps",
    "train.log_every_steps",
    "train.log_grad_stats",
    "train.progress",
    "train.progress_every_s",
    "train.num_threads",
    "train.device",
    "data.cache_dir",
    "data.workers",
    "data.root",  # the data set is data.dataset; a sweep makes its root absolute
)
#: Sections of the params that are not the training's settings: ``eval`` in a training run
#: holds the engine's defaults (the evaluation protocol is the report stage's), ``tracking``
#: says where it was logged.
NOT_A_SETTING_SECTIONS = ("eval.", "tracking.")
#: The tag of the run that holds the tables as artifacts (never a row of them).
TABLES_TAG = ("simsc.kind", "tables")
ALPHAS = ("0.05", "0.1", "0.15")
_TEST_METRIC = re.compile(r"^test_pck_(?P<set>.+)_(?P<alpha>\d+(?:\.\d+)?)$")
_VAL_METRIC = re.compile(r"^val_pck_(?P<alpha>\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class Result:
    """One evaluation of a run: PCK per alpha (per image, %) on a data set's split at a size."""

    dataset: str
    split: str
    resolution: str
    pck: Mapping[str, float]


@dataclass
class RunRow:
    """A finished run as the tables see it: its flattened params and its evaluations."""

    run_id: str
    name: str
    params: Mapping[str, str]
    results: list[Result]
    start_time: int = 0
    url: str | None = None


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (``None`` for one value) and count of a cell."""

    mean: float
    std: float | None
    n: int


def summarize(values: Sequence[float]) -> Stat:
    """Mean ± sample standard deviation (n - 1 in the denominator) of ``values`` (not empty)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return Stat(mean, std, n)


def setting_keys(params: Mapping[str, str]) -> list[str]:
    """The keys of ``params`` that define a configuration (not replicate, not bookkeeping)."""
    return [
        k
        for k in params
        if k not in REPLICATE_KEYS and k not in NOT_A_SETTING and not k.startswith(NOT_A_SETTING_SECTIONS)
    ]


def varying_keys(runs: Sequence[RunRow]) -> list[str]:
    """The setting keys whose value differs between ``runs`` (a key some runs lack counts as
    differing), in sorted order."""
    keys = sorted({k for r in runs for k in setting_keys(r.params)})
    return [k for k in keys if len({r.params.get(k) for r in runs}) > 1]


def group_runs(runs: Sequence[RunRow], keys: Sequence[str]) -> dict[tuple[str | None, ...], list[RunRow]]:
    """``runs`` grouped by their values of ``keys``, groups in the order of their first run."""
    groups: dict[tuple[str | None, ...], list[RunRow]] = {}
    for r in runs:
        groups.setdefault(tuple(r.params.get(k) for k in keys), []).append(r)
    return groups


def _short(key: str) -> str:
    """``model.temperature`` -> ``temperature``: the section is clear from the value."""
    return key.rsplit(".", 1)[-1]


def group_label(keys: Sequence[str], values: Sequence[str | None]) -> str:
    return (
        ", ".join(f"{_short(k)} {'(unset)' if v is None else v}" for k, v in zip(keys, values, strict=True))
        or "all runs"
    )


def _truthy(value: str | None) -> bool:
    return value not in (None, "", "False", "false", "None", "none", "0")


def paper_number(
    params: Mapping[str, str], result: Result, alpha: str, numbers: Mapping[str, Any]
) -> tuple[str, float] | str:
    """``(paper model, PCK)`` when the run's protocol is the paper's, else the reason it is not.

    The paper's protocol: pretrained backbone, no matching head, trained at 256 px, the same
    backbone / temperature / fine-tuned part as a paper model (``paper_numbers.yaml: match``),
    evaluated on the test split of a data set the paper reports for that training set
    (PF-Pascal-trained: PF-Pascal, PF-Willow, SPair-71k (T); SPair-trained: SPair-71k (F)), at
    256 px or the original size, PCK per image at this alpha."""
    from .page import DATASET_TITLES, paper_column

    if result.dataset == "embedded":
        return "the embedded set is this project's own: the paper has no number for it"
    if result.split != "test":
        return f"{result.split} split: the paper reports the test split"
    col = paper_column(result.dataset, str(params.get("data.dataset")))
    if col is None:
        title = DATASET_TITLES.get(result.dataset, result.dataset)
        return f"the paper has no {title} column for training on {params.get('data.dataset')}"
    if not _truthy(params.get("model.pretrained")):
        return "random initialisation: the paper's backbones are pretrained"
    if params.get("model.head", "none") not in ("none", None):
        return "a matching head: supp. Tab. 2 has those"
    if str(params.get("data.resolution")) != "256":
        return f"trained at {params.get('data.resolution')} px, the paper at 256"
    res = "original" if result.resolution == "original" else str(result.resolution)
    for name, entry in numbers.get("models", {}).items():
        if all(str(params.get(f"model.{k}")) == str(v) for k, v in entry["match"].items()):
            ref = (entry.get(res) or {}).get(col) or {}
            if alpha in ref:
                return name, float(ref[alpha])
            return f"{name} has no number at {res} px, alpha {alpha}"
    return (
        f"no paper model is {params.get('model.backbone')} / {params.get('model.temperature')} / "
        f"{params.get('model.finetune')}"
    )


@dataclass(frozen=True)
class TableSpec:
    """One of the paper's tables: which runs belong, what must differ between them, alphas."""

    key: str
    title: str
    axis: tuple[str, ...]  # the params the table compares; empty: every configuration
    alphas: tuple[str, ...]
    belongs: Callable[[Mapping[str, str]], bool] = lambda p: True
    empty: str = ""


def _temperature_in(*names: str, fixed: bool = False) -> Callable[[Mapping[str, str]], bool]:
    def belongs(p: Mapping[str, str]) -> bool:
        t = str(p.get("model.temperature"))
        return t in names or (fixed and t.startswith("fixed:"))

    return belongs


TABLES = (
    TableSpec("tab1", "Tab. 1: PCK per data set and alpha", (), ALPHAS, empty="no finished run with PCK"),
    TableSpec(
        "tab2",
        "Tab. 2: backbones (PCK@0.1)",
        ("model.backbone", "model.finetune", "model.pretrained"),
        ("0.1",),
        empty="no two runs differ in backbone, fine-tuned part or pretrained weights",
    ),
    TableSpec(
        "tab3",
        "Tab. 3: L2 norm and temperature ablation (no-l2 = NoL2Norm, fixed:1 = WithL2Norm, mlp = SimSC)",
        ("model.temperature",),
        ALPHAS,
        _temperature_in("mlp", "no-l2", fixed=True),
        empty="no two runs differ in temperature among mlp, fixed:<beta>, no-l2",
    ),
    TableSpec(
        "supp_tab2",
        "Supp. Tab. 2: matching heads",
        ("model.head",),
        ("0.05", "0.1"),
        empty="no two runs differ in matching head (model.head)",
    ),
    TableSpec(
        "supp_tab3",
        "Supp. Tab. 3: single temperature parameter vs mlp",
        ("model.temperature",),
        ALPHAS,
        _temperature_in("single", "mlp"),
        empty="no runs of both single and mlp temperature",
    ),
)


@dataclass
class Table:
    """A laid-out table: ``rows`` of cells (strings), notes under it, or an empty message."""

    key: str
    title: str
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    empty: str | None = None
    run_ids: set[str] = field(default_factory=set)
    row_runs: list[set[str]] = field(default_factory=list)  # the run ids of each row
    cells: list[dict[str, Any]] = field(default_factory=list)  # machine-readable, for tables.json


def _fmt(stat: Stat) -> str:
    return f"{stat.mean:.1f} ± {stat.std:.1f} (n={stat.n})" if stat.std is not None else f"{stat.mean:.1f} (n=1)"


def _res_key(res: str) -> tuple[int, str]:
    return (1, res) if not res.isdigit() else (0, f"{int(res):08d}")


def _run_link(r: RunRow) -> str:
    label = f"seed {r.params.get('train.seed', '?')}"
    return f"[{label}]({r.url})" if r.url else f"{label} ({r.run_id[:8]})"


def build_table(
    spec: TableSpec, runs: Sequence[RunRow], numbers: Mapping[str, Any], baseline: Sequence[str] | None = None
) -> Table:
    """Lay out ``spec`` over ``runs``: rows = (configuration, eval size), columns = (data set and
    split, alpha); ``baseline``: the run ids whose group is the reference of the deltas (default:
    the group of the earliest run)."""
    table = Table(spec.key, spec.title)
    mine = [r for r in runs if r.results and spec.belongs(r.params)]
    if spec.axis and len({tuple(r.params.get(k) for k in spec.axis) for r in mine}) < 2:
        table.empty = spec.empty
        return table
    if not mine:
        table.empty = spec.empty
        return table
    keys = varying_keys(mine)
    groups = group_runs(sorted(mine, key=lambda r: r.start_time), keys)
    labels = {g: group_label(keys, g) for g in groups}
    base_ids = set(baseline or [min(mine, key=lambda r: r.start_time).run_id])
    base_group = next((g for g, rs in groups.items() if base_ids & {r.run_id for r in rs}), None)
    columns = sorted({(res.dataset, res.split) for r in mine for res in r.results})
    sizes = sorted({res.resolution for r in mine for res in r.results}, key=_res_key)
    table.header = ["configuration", "eval size"]
    from .page import DATASET_TITLES

    table.header += [f"{DATASET_TITLES.get(d, d)} {s} PCK@{a}" for d, s in columns for a in spec.alphas]
    table.header.append("runs")

    def stat(group: Sequence[RunRow], d: str, s: str, size: str, a: str) -> tuple[Stat | None, list[RunRow]]:
        vals, who = [], []
        for r in group:
            for res in r.results:
                if (res.dataset, res.split, res.resolution) == (d, s, size) and a in res.pck:
                    vals.append(res.pck[a])
                    who.append(r)
        return (summarize(vals) if vals else None), who

    reasons: dict[str, None] = {}
    any_paper = False
    for g, group in groups.items():
        for size in sizes:
            row = [labels[g] + (" (baseline)" if g == base_group and len(groups) > 1 else ""), size]
            filled = False
            for d, s in columns:
                for a in spec.alphas:
                    st, who = stat(group, d, s, size, a)
                    if st is None:
                        row.append("")
                        continue
                    filled = True
                    text = _fmt(st)
                    res = Result(d, s, size, {})
                    refs = {paper_number(r.params, res, a, numbers) for r in who}
                    ref = next(iter(refs)) if len(refs) == 1 else "the group's runs differ in protocol"
                    cell: dict[str, Any] = {
                        "configuration": labels[g],
                        "dataset": d,
                        "split": s,
                        "resolution": size,
                        "alpha": a,
                        "mean": st.mean,
                        "std": st.std,
                        "n": st.n,
                        "runs": [r.run_id for r in who],
                    }
                    if isinstance(ref, tuple):
                        any_paper = True
                        text += f"; paper {ref[1]:.1f} ({ref[0]}), Δ {st.mean - ref[1]:+.1f}"
                        cell["paper"] = {"model": ref[0], "value": ref[1]}
                    else:
                        reasons[ref] = None
                        if base_group is not None and g != base_group:
                            bst, _ = stat(groups[base_group], d, s, size, a)
                            if bst is not None:
                                text += f"; Δ {st.mean - bst.mean:+.1f} vs baseline"
                                cell["delta_vs_baseline"] = st.mean - bst.mean
                    row.append(text)
                    table.cells.append(cell)
            if filled:
                first = not table.row_runs or table.row_runs[-1] != {r.run_id for r in group}
                # the group's links once, on its first row (its other rows are the other eval sizes)
                row.append(" ".join(_run_link(r) for r in group) if first else "″")
                table.rows.append(row)
                table.row_runs.append({r.run_id for r in group})
                table.run_ids |= {r.run_id for r in group}
    if keys:
        table.notes.append(
            "Rows: the params that differ between these runs (" + ", ".join(keys) + "); each cell is the mean ± "
            "sample std over the row's runs (seeds), n of them; PCK per image, %."
        )
    else:
        table.notes.append("These runs share every setting but the seed: one row, mean ± sample std over seeds.")
    if base_group is not None and len(groups) > 1:
        table.notes.append(f"Δ without a paper number: against the baseline row ({labels[base_group]}).")
    if reasons:
        lead = "paper: protocol differs" if not any_paper else "paper: protocol differs for the cells without one"
        table.notes.append(f"{lead} ({'; '.join(reasons)}).")
    return table


def build_tables(
    runs: Sequence[RunRow], numbers: Mapping[str, Any], baseline: Sequence[str] | None = None
) -> list[Table]:
    """Every table of :data:`TABLES` over ``runs``."""
    return [build_table(spec, runs, numbers, baseline) for spec in TABLES]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(
    tables: Sequence[Table], heading: str = "#", intro: Sequence[str] = (), highlight: str | None = None
) -> str:
    """The tables as Markdown; an empty table is one line saying so; the row holding run
    ``highlight`` is marked."""
    out: list[str] = []
    if heading == "#":
        out += ["# The paper's tables from the runs", ""]
    out += [*intro, ""] if intro else []
    sub = heading + "#" if heading == "#" else heading
    for t in tables:
        out += [f"{sub} {t.title}", ""]
        if t.empty:
            out += [f"No table: {t.empty}.", ""]
            continue
        out.append("| " + " | ".join(t.header) + " |")
        out.append("|" + "---|" * len(t.header))
        for i, row in enumerate(t.rows):
            mine = highlight is not None and i < len(t.row_runs) and highlight in t.row_runs[i]
            cells = [f"**{row[0]}** ← this run", *row[1:]] if mine else row
            out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        out.append("")
        out += [f"- {n}" for n in t.notes] + [""]
    return "\n".join(out).rstrip() + "\n"


# --- MLflow ------------------------------------------------------------------------------


def ui_base(tracking_uri: str, ui_url: str | None = None) -> str:
    """Where the MLflow UI of ``tracking_uri`` is: the server itself for http(s) stores, else
    ``ui_url`` or ``mlflow ui``'s default address (a local store's UI runs on this machine)."""
    if ui_url:
        return ui_url.rstrip("/")
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return "http://127.0.0.1:5000"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the UI's model-training view (MLflow 3.17 opens the GenAI view without
    the parameter, whatever the experiment's tags say)."""
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def _search_all(client: Any, experiment_id: str, filter_string: str = "") -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=filter_string,
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs += list(page)
        token = getattr(page, "token", None)
        if not token:
            return runs


def _set_meta(client: Any, run_id: str) -> dict[str, dict[str, Any]]:
    """``{set: row}`` of the run's ``results/pck_table.json`` (data set, split, resolution),
    or ``{}`` when the run has none."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "results/pck_table.json", tmp)
            rows = json.loads(Path(path).read_text(encoding="utf-8"))
        except Exception:  # noqa: BLE001 - a run without the table still has its metrics
            return {}
    return {str(r.get("set")): r for r in rows if isinstance(r, dict)}


def run_results(client: Any, run: Any) -> list[Result]:
    """The run's evaluations: the final test PCK the report stage logs (``test_pck_<set>_<alpha>``,
    described by ``results/pck_table.json``), else the validation PCK of its best epoch (by
    ``train.best_alpha``), the only PCK a sweep trial logs; none for a pipeline run (tag
    ``dvc.stage``) whose report stage has not logged its test PCK yet."""
    metrics: Mapping[str, float] = run.data.metrics
    params: Mapping[str, str] = run.data.params
    by_set: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        m = _TEST_METRIC.match(key)
        if m:
            by_set.setdefault(m["set"], {})[m["alpha"]] = float(value)
    if by_set:
        meta = _set_meta(client, run.info.run_id)
        out = []
        for name, pck in sorted(by_set.items()):
            row = meta.get(name, {})
            out.append(
                Result(
                    str(row.get("dataset") or name),
                    str(row.get("split") or "test"),
                    str(row.get("resolution") or "?"),
                    pck,
                )
            )
        return out
    if run.data.tags.get("dvc.stage"):
        # a pipeline run between its train and report stages: its test PCK is not logged yet,
        # and its validation PCK is no number for the paper's tables
        return []
    alphas = [m["alpha"] for k in metrics if (m := _VAL_METRIC.match(k))]
    if not alphas:
        return []
    best_alpha = str(params.get("train.best_alpha", "0.1"))
    lead = best_alpha if best_alpha in alphas else alphas[0]
    hist = {a: {h.step: h.value for h in client.get_metric_history(run.info.run_id, f"val_pck_{a}")} for a in alphas}
    epoch = max(hist[lead], key=lambda s: (hist[lead][s], -s))
    pck = {a: float(h[epoch]) for a, h in hist.items() if epoch in h}
    return [
        Result(
            str(params.get("data.dataset", "?")),
            f"{params.get('data.val_split', 'val')}",
            str(params.get("data.resolution", "?")),
            pck,
        )
    ]


def experiment_of(client: Any, experiment: str) -> Any:
    """The experiment named ``experiment``; :class:`UserError` naming the store and the ones it has."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise UserError(
            f"MLflow store {client.tracking_uri}: no experiment {experiment!r} (it has: {', '.join(names) or 'none'})"
        )
    return exp


def collect_runs(client: Any, experiment: str, ui_url: str | None = None) -> list[RunRow]:
    """Every finished run of ``experiment`` with PCK, oldest first; sweep parent runs and the
    tables run are left out."""
    exp = experiment_of(client, experiment)
    runs = _search_all(client, exp.experiment_id, "attributes.status = 'FINISHED'")
    parents = {r.data.tags.get("mlflow.parentRunId") for r in runs}
    base = ui_base(client.tracking_uri, ui_url)
    out = []
    for run in runs:
        if run.info.run_id in parents or run.data.tags.get(TABLES_TAG[0]) == TABLES_TAG[1]:
            continue
        if "model.backbone" not in run.data.params:
            continue
        results = run_results(client, run)
        if results:
            out.append(
                RunRow(
                    run.info.run_id,
                    run.info.run_name or run.info.run_id,
                    dict(run.data.params),
                    results,
                    int(run.info.start_time or 0),
                    run_url(base, exp.experiment_id, run.info.run_id),
                )
            )
    return out


def log_tables(client: Any, experiment: str, folder: Path) -> str:
    """Log ``folder``'s files as the artifacts ``tables/`` of the experiment's ``tables`` run
    (created once, found again by its tag); returns the run id."""
    from .tracking.runs import experiment_id, find_tagged_run

    run = find_tagged_run(client, experiment, dict([TABLES_TAG]))
    if run is None:
        run_id = client.create_run(
            experiment_id(client, experiment), tags={TABLES_TAG[0]: TABLES_TAG[1]}, run_name="tables"
        ).info.run_id
    else:
        run_id = run.info.run_id
    client.log_artifacts(run_id, str(folder), "tables")
    client.set_terminated(run_id, "FINISHED")
    return str(run_id)


def _write(path: Path, text: str) -> None:
    """Write ``text`` whole or not at all (temporary file + rename)."""
    from simsc.io import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))


def write_tables(tables: Sequence[Table], out: Path, intro: Sequence[str] = ()) -> list[Path]:
    """``tables.md``, ``tables.html`` and ``tables.json`` under ``out``."""
    from .page import html_page

    out.mkdir(parents=True, exist_ok=True)
    md = render_markdown(tables, intro=intro)
    data = [{"key": t.key, "title": t.title, "empty": t.empty, "notes": t.notes, "cells": t.cells} for t in tables]
    paths = [out / "tables.md", out / "tables.html", out / "tables.json"]
    _write(paths[0], md)
    _write(paths[1], html_page(md, "SimSC: the paper's tables from the runs"))
    _write(paths[2], json.dumps(data, indent=2) + "\n")
    return paths


def _default_experiment() -> str:
    """``tracking.experiment`` of ``params.yaml`` when run from the project root, as the stages do."""
    try:
        import yaml

        params = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8")) or {}
        name = (params.get("tracking") or {}).get("experiment")
        return str(name) if name else "simsc-pipeline"
    except (OSError, ValueError, AttributeError):
        return "simsc-pipeline"


def tables_for_experiment(client: Any, experiment: str, ui_url: str | None = None) -> tuple[list[Table], list[RunRow]]:
    """The tables of ``experiment`` and the runs they were built from."""
    from simsc.io import read_yaml_mapping

    from .page import PAPER_NUMBERS

    runs = collect_runs(client, experiment, ui_url)
    numbers = read_yaml_mapping(PAPER_NUMBERS, what="paper numbers")
    return build_tables(runs, numbers), runs


def _pck_cells(metrics: Mapping[str, float], sets: Sequence[str]) -> list[str]:
    return [
        f"{metrics[f'test_pck_{s}_{a}']:.1f}" if f"test_pck_{s}_{a}" in metrics else "" for s in sets for a in ALPHAS
    ]


def comparison_lines(
    client: Any, run_id: str, registered_model: str | None = None, ui_url: str | None = None
) -> list[str]:
    """Markdown: this run's final PCK beside the previous finished run of the same configuration
    (same ``params_hash`` tag: the identical training config, seed included) and the registered
    model's champion, each linked, with the PCK@0.1 difference to this run."""
    run = client.get_run(run_id)
    exp_id = run.info.experiment_id
    base = ui_base(client.tracking_uri, ui_url)
    mine = run.data.metrics
    sets = sorted({m["set"] for k in mine if (m := _TEST_METRIC.match(k))})
    if not sets:
        return ["This run has no final PCK in MLflow yet: nothing to compare."]
    rows: list[tuple[str, Any]] = [("this run", run)]
    notes = []
    h = run.data.tags.get("params_hash")
    prev = None
    if h:
        earlier = client.search_runs(
            [exp_id],
            filter_string=f"tags.params_hash = '{h}' and attributes.status = 'FINISHED' "
            f"and attributes.start_time < {int(run.info.start_time)}",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        prev = earlier[0] if earlier else None
    if prev is not None:
        rows.append(("previous run, same configuration", prev))
    else:
        notes.append("No earlier finished run of this exact configuration (same params_hash) in this experiment.")
    if registered_model:
        try:
            champ = client.get_model_version_by_alias(registered_model, "champion")
        except Exception:  # noqa: BLE001 - no alias yet (or no such model): said below
            champ = None
        if champ is not None and champ.run_id:
            label = f"champion ({registered_model} v{champ.version})"
            if champ.run_id == run_id:
                notes.append(f"This run is the champion of {registered_model} (v{champ.version}).")
            else:
                rows.append((label, client.get_run(champ.run_id)))
        else:
            notes.append(f"{registered_model} has no champion alias yet.")
    header = ["run", *[f"{s} PCK@{a}" for s in sets for a in ALPHAS], "Δ PCK@0.1 vs this run (" + sets[0] + ")"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    key = f"test_pck_{sets[0]}_0.1"
    for label, r in rows:
        link = f"[{label}]({run_url(base, r.info.experiment_id, r.info.run_id)})"
        seed = r.data.params.get("train.seed", "?")
        rev = (r.data.tags.get("git_revision") or "?")[:12]
        delta = ""
        if r is not run and key in r.data.metrics and key in mine:
            delta = f"{r.data.metrics[key] - mine[key]:+.1f}"
        cells = [f"{link}, seed {seed}, {rev}", *_pck_cells(r.data.metrics, sets), delta]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return [*lines, "", *[f"- {n}" for n in notes]]


def run_context_markdown(
    client: Any, run_id: str, experiment: str, registered_model: str | None = None, ui_url: str | None = None
) -> list[str]:
    """The MLflow sections of a run's own page: how it compares with the previous run of its
    configuration and the champion, and the paper's tables it is a row of."""
    lines = ["## This run against the previous run and the champion (from MLflow)", ""]
    lines += comparison_lines(client, run_id, registered_model, ui_url)
    tables, runs = tables_for_experiment(client, experiment, ui_url)
    mine = [t for t in tables if run_id in t.run_ids]
    lines += ["", f"## The tables this run belongs to (experiment {experiment}, {len(runs)} runs)", ""]
    if not mine:
        lines.append("This run is in none of the experiment's tables (no final PCK logged).")
    else:
        lines += render_markdown(mine, heading="###", highlight=run_id).splitlines()
        lines += ["", "All the tables of the experiment: `make tables` (`python -m pipeline.tables`)."]
    return lines


def _main(args: argparse.Namespace) -> int:
    from .tracking.client import client_for

    experiment = args.experiment or _default_experiment()
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        # MLflow would create an empty store there and report no experiment
        raise UserError(
            f"MLflow store {uri}: no such file (run the pipeline first: make repro, or pass --tracking-uri)"
        )
    client = client_for(uri)
    tables, runs = tables_for_experiment(client, experiment, args.ui_url)
    ui = ui_base(client.tracking_uri, args.ui_url)
    intro = [
        f"Experiment `{experiment}` at `{client.tracking_uri}`: {len(runs)} finished runs with PCK. "
        "Test PCK where the report stage logged it, else the best epoch's validation PCK (sweep trials). "
        f"Run links open the MLflow UI at [{ui}]({ui}) in its training view"
        + (
            ""
            if client.tracking_uri.startswith("http")
            else " (`mlflow ui --backend-store-uri URI`; --ui-url to change)"
        )
        + "."
    ]
    paths = write_tables(tables, args.out, intro)
    for p in paths:
        print(f"wrote {p}", file=sys.stderr)
    if not args.no_log:
        run_id = log_tables(client, experiment, args.out)
        print(f"logged as artifacts tables/ of run {run_id} ('tables') in {experiment}", file=sys.stderr)
    print(render_markdown(tables, intro=intro))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status as :mod:`simsc.errors` says: 0 written, 2 user error, 3 internal error."""
    p = ArgumentParser(
        prog="python -m pipeline.tables", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: params.yaml tracking.experiment)")
    p.add_argument("--out", type=Path, default=Path("reports/tables"), help="folder of tables.md/.html/.json")
    p.add_argument(
        "--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db (MLflow's)"
    )
    p.add_argument("--ui-url", default=None, help="MLflow UI address for the run links (default: the server)")
    p.add_argument("--no-log", action="store_true", help="do not log the tables to MLflow")
    add_debug_flag(p)
    args = p.parse_args(argv)
    return run_main("pipeline.tables", lambda: _main(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
