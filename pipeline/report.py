"""The report stage: ``reports/report.md`` and ``reports/report.html``.

PCK laid out like the paper's Table 1 (one row per evaluation resolution, one column group
per data set, alphas 0.05 / 0.1 / 0.15) with the paper's numbers beside ours where the
configuration matches (``pipeline/paper_numbers.yaml``), the beta trajectory, PCK against
beta_eval, a few qualitative match pictures of test pairs and the run's metadata. With
``report.heads_tab2`` set to a matching-head grid's results file (``experiments/heads_toy.py``
writes one), a section in the layout of supp. Tab. 2 with the paper's numbers beside ours.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from simsc.errors import UserError
from simsc.io import atomic_write_bytes, read_yaml_mapping

from .page import DATASET_TITLES, PAPER_NUMBERS, html_page, paper_column

EVAL_DIR = Path("reports/eval")
#: the not-fine-tuned backbone's evaluations (pipeline/stage_baseline.py), beside the fine-tuned model's
BASELINE_DIR = Path("reports/baseline")
TRAIN_PLOTS = Path("reports/train")
#: The run's identity (git revision, MLflow run id and page, registered version, timings),
#: written next to the report and ignored by git: the committed report stays reproducible.
THIS_RUN = Path("reports/this_run.md")
PCK_DEFINITION = (
    "**PCK@alpha** (percentage of correct keypoints): the share of a pair's annotated keypoints "
    "predicted within alpha x theta of the true position, theta being the data set's size threshold "
    "(the target image's larger side for PF-Pascal and the embedded set, the keypoints' extent for "
    "PF-Willow, the object's box for SPair-71k), averaged over the pairs (per image), in %."
)


def what_ran(cfg: Mapping[str, Any], train_metrics: Mapping[str, Any]) -> str:
    """One paragraph: the backbone and its initialisation, what was fine-tuned, the
    temperature, the steps and the training data (from the run's config.yaml)."""
    m, d, t = cfg["model"], cfg["data"], cfg["train"]
    from simsc.backbones import weights_source

    init = weights_source(str(m["backbone"]), m.get("pretrained"))
    steps = train_metrics.get("steps")
    budget = f"max_steps {t['max_steps']}" if t.get("max_steps") else f"{t.get('epochs')} epochs"
    return (
        f"**What ran:** backbone {m['backbone']}, {init}, fine-tuned: {m['finetune']}; temperature "
        f"{m['temperature']}; {steps if steps is not None else '?'} training steps ({budget}, batch "
        f"{d.get('batch_size')}, seed {t.get('seed')}); data: {d['dataset']} ({d['root']}, split "
        f"{d.get('train_split')}) at {d['resolution']} px; validation on {d.get('val_split')}."
    )


def paper_reference(
    cfg: Mapping[str, Any], dataset: str, resolution: str, numbers: Mapping[str, Any]
) -> tuple[str, dict[str, float]] | None:
    """``(paper model name, {alpha: PCK})`` when our configuration matches a paper row."""
    col = paper_column(dataset, cfg["data"]["dataset"])
    if col is None or not cfg["model"].get("pretrained") or cfg["model"].get("head", "none") != "none":
        return None
    for name, entry in numbers["models"].items():
        if all(str(cfg["model"].get(k)) == str(v) for k, v in entry["match"].items()):
            ref = (entry.get(str(resolution)) or {}).get(col)
            if ref:
                return name, ref
    return None


#: Rows of supp. Tab. 2: (results key, label).
HEADS_TAB2_ROWS = (
    ("default", "default temperature, beta_eval 0.02"),
    ("simsc_0.02", "+ SimSC, beta_eval 0.02"),
    ("simsc_learned", "+ SimSC, beta_eval = learned"),
)


def heads_tab2_table(summary: Mapping[str, Any], heads: list[str], paper: Mapping[str, Any]) -> str:
    """Supp. Tab. 2 layout: ours (``summary["<row>|<head>"]["0.05"|"0.1"]`` mean ± std over seeds)
    beside the paper's numbers (``paper_numbers.yaml: heads_tab2``)."""
    lines = [
        "| | " + " | ".join(f"{h}: ours PCK@0.05 / 0.1 | {h}: paper" for h in heads) + " |",
        "|---|" + "---|---|" * len(heads),
    ]
    for key, label in HEADS_TAB2_ROWS:
        cells = []
        for h in heads:
            c = summary.get(f"{key}|{h}")
            cells.append(
                "-" if c is None else " / ".join(f"{c[a]['mean']:.1f} ± {c[a]['std']:.1f}" for a in ("0.05", "0.1"))
            )
            p = (paper.get(h) or {}).get(key)
            cells.append("-" if p is None else f"{p['0.05']} / {p['0.1']}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def heads_tab2_section(results: Path, numbers: Mapping[str, Any]) -> list[str]:
    """Markdown lines of the matching-head section from a heads grid's results JSON."""
    res = json.loads(Path(results).read_text(encoding="utf-8"))
    setup = res["setup"]
    data = Path(str(setup.get("data", ""))).name or "?"
    where = (
        "PF-Pascal"
        if "pfpascal" in data.lower()
        else f"**{data}** (not PF-Pascal: compare the ordering, not the values)"
    )
    return [
        "## Matching heads (supp. Tab. 2), PCK@0.05 / 0.1 per image, %",
        "",
        f"Ours: {where}, {setup.get('backbone')} at {setup.get('resolution')} px, {setup.get('steps')} steps, "
        f"seeds {setup.get('seeds')} (`{results}`). Paper: PF-Pascal, 256 px, ResNet-101.",
        "",
        heads_tab2_table(res["summary"], list(setup["heads"]), numbers.get("heads_tab2") or {}),
        "",
    ]


def _read_csv(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [
            {k: (float(v) if v not in ("", None) else float("nan")) for k, v in row.items()}
            for row in csv.DictReader(fh)
        ]


def _plot_beta(steps: list[dict[str, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    x = [r["step"] for r in steps]
    for key in ("beta_a", "beta_b", "beta_eff"):
        ax1.plot(x, [r[key] for r in steps], label=key, lw=1)
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_ylabel("temperature")
    ax1.set_title("learned temperature (batch mean)")
    ax1.legend()
    ax2.plot(x, [r["loss"] for r in steps], lw=0.8, color="tab:gray")
    ax2.set_xlabel("step")
    ax2.set_ylabel("loss")
    ax2.set_title("training loss")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _plot_sweep(sweeps: Mapping[str, list[dict[str, float]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, rows in sweeps.items():
        if rows:
            ax.plot([r["beta_eval"] for r in rows], [r["pck@0.1"] for r in rows], marker="o", ms=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("beta_eval")
    ax.set_ylabel("PCK@0.1 (%)")
    ax.set_title("PCK vs beta_eval (paper Fig. 6)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


#: The PCK threshold the match pictures judge by (the paper's headline alpha).
PICTURE_ALPHA = 0.1


def _pictures(params: Mapping[str, Any], eval_dir: Path, out_dir: Path) -> list[tuple[str, str]]:
    """Match pictures of a few pairs of ``report.picture_set``, drawn from that set's
    ``predictions.jsonl``: exactly the predictions its PCK counted, in the evaluated images'
    pixels, each coloured right or wrong at alpha 0.1 with the true points shown.
    Returns ``(path, caption)`` per picture."""
    rep_cfg = params.get("report") or {}
    n = int(rep_cfg.get("n_pictures", 3))
    sets = (params.get("evaluate") or {}).get("sets", {})
    name = rep_cfg.get("picture_set") or next(iter(sets), None)
    spec = sets.get(name)
    preds_p = eval_dir / str(name) / "predictions.jsonl"
    if n <= 0 or spec is None or not preds_p.exists():
        return []
    from simsc.data.records import parse_resolution
    from simsc.data.registry import build_dataset
    from simsc.visualize import draw_judged_matches

    rows = {}
    for line in preds_p.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        rows[str(row["pair_id"])] = row
    ds = build_dataset(
        spec["dataset"], spec["root"], spec.get("split", "test"), parse_resolution(spec.get("resolution", 256))
    )
    ids = [i for i, ann in enumerate(ds.pairs) if str(ann.pair_id) in rows]
    step = max(1, len(ids) // n) if ids else 1
    out = []
    for i in ids[::step][:n]:
        rec = ds[i]
        row = rows[str(rec["pair_id"])]
        keep = [k for k, ok in enumerate(row["valid"]) if ok]
        src, pred, gt = ([row[key][k] for k in keep] for key in ("src", "pred", "gt"))
        pic, right = draw_judged_matches(
            rec["src_img"], rec["trg_img"], src, pred, gt, row["threshold"], PICTURE_ALPHA, height=240
        )
        path = out_dir / f"match_{i:03d}.png"
        pic.save(path, format="PNG")
        n_right = int(right.sum())
        caption = (
            f"{name}, pair {row['pair_id']} ({row['category']}): PCK@{PICTURE_ALPHA} "
            f"{100.0 * n_right / max(len(keep), 1):.1f}% ({n_right} of {len(keep)} keypoints within "
            f"{PICTURE_ALPHA} x {row['threshold']:.1f} px)"
        )
        out.append((str(path), caption))
    return out


def best_beta_eval(sweep_rows: list[Mapping[str, Any]], alpha: str = "0.1") -> Mapping[str, Any] | None:
    """The beta_eval row of a PCK-vs-beta_eval sweep with the highest PCK@alpha (the smaller
    beta_eval on a tie)."""
    key = f"pck@{alpha}"
    rows = [r for r in sweep_rows if r.get(key) is not None]
    return max(rows, key=lambda r: (r[key], -r["beta_eval"])) if rows else None


def beta_eval_lines(reports: Mapping[str, Mapping[str, Any]], sweeps: Mapping[str, list]) -> list[str]:
    """One sentence per swept set: the best beta_eval found next to the one the evaluation used."""
    lines = []
    for name, rows in sweeps.items():
        best = best_beta_eval(rows)
        rep = reports.get(name)
        if best is None or rep is None:
            continue
        used = rep.get("beta_eval")
        used_txt = (
            f"beta_eval {used:g}"
            if used is not None
            else f"the learned temperature (mean beta_eff {rep['beta_eff']['mean']:.3g})"
        )
        lines.append(
            f"{name}: PCK@0.1 peaks at {best['pck@0.1']:.1f} with beta_eval {best['beta_eval']:.3g} "
            f"(of {len(rows)} values swept); the evaluation above used {used_txt}: "
            f"{rep['per_image']['0.1']:.1f}."
        )
    return lines


def headline_lines(
    reports: Mapping[str, Mapping[str, Any]],
    baselines: Mapping[str, Mapping[str, Any]],
    train_metrics: Mapping[str, Any],
    sweeps: Mapping[str, list],
    temperature: str,
) -> list[str]:
    """The report's first section: PCK@0.1 per evaluation set, fine-tuned beside the backbone
    not fine-tuned, the learned temperature and the best beta_eval of the sweep."""
    lines = ["## Headline", ""]
    for name, rep in reports.items():
        ours = rep["per_image"].get("0.1")
        if ours is None:
            continue
        base = (baselines.get(name) or {}).get("per_image", {}).get("0.1")
        vs = f"; not fine-tuned **{base:.1f}** ({ours - base:+.1f} from fine-tuning)" if base is not None else ""
        lines.append(
            f"- {name} ({DATASET_TITLES.get(str(rep.get('dataset')), rep.get('dataset'))} {rep.get('split')}, "
            f"{rep.get('resolution')} px, {rep.get('n_pairs')} pairs): PCK@0.1 fine-tuned **{ours:.1f}**{vs}"
        )
    final = (train_metrics.get("final") or {}).get("beta_eff")
    if final is not None and temperature in ("mlp", "single"):
        lines.append(
            f"- learned effective temperature at the end of training: beta_eff {final:.3g} (paper: about 0.03)"
        )
    for name, rows in sweeps.items():
        best = best_beta_eval(rows)
        if best is not None:
            lines.append(
                f"- {name}: best PCK@0.1 over beta_eval {best['pck@0.1']:.1f} at beta_eval {best['beta_eval']:.3g}"
            )
    lines.append(
        f"- this run against the champion and the previous run of its configuration, and the paper's tables it "
        f"belongs to: [{THIS_RUN.name}]({THIS_RUN.name}) (from MLflow; not committed)"
    )
    return lines


def mlflow_context(state: Mapping[str, Any], tracking: Mapping[str, Any]) -> list[str]:
    """The MLflow sections of this run's page (:func:`pipeline.tables.run_context_markdown`),
    or one line saying why there are none: tracking off, no run, or MLflow failing (the report
    never fails for it)."""
    run_id, uri = state.get("run_id"), state.get("tracking_uri")
    if not tracking.get("enabled") or not run_id:
        return ["No MLflow run: no comparison with other runs."]
    from .tables import run_context_markdown
    from .tracking.client import client_for

    try:
        return run_context_markdown(
            client_for(uri), str(run_id), str(tracking.get("experiment") or "Default"), tracking.get("registered_model")
        )
    except Exception as exc:  # noqa: BLE001 - a comparison is a convenience: the report goes on
        return [f"MLflow ({uri}) could not be read for the comparison: {type(exc).__name__}: {str(exc)[:200]}"]


def _r1(value: Any) -> Any:
    return f"{value:.1f}" if isinstance(value, float) else value


def build_report(
    params: Mapping[str, Any],
    eval_dir: Path = EVAL_DIR,
    train_plots: Path = TRAIN_PLOTS,
    baseline_dir: Path = BASELINE_DIR,
    compare: bool = True,
) -> Path:
    """Write the report (``report.out``: Markdown and HTML) and the run's local page
    ``this_run.md`` / ``.html`` beside it; ``compare``: add the page's MLflow sections now
    (the report stage adds them after the champion decision: :func:`add_mlflow_sections`)."""
    from .tracking.results import load_reports, log_results, pck_table, table_markdown
    from .tracking.runs import git_revision, run_page_url, state_of_checkpoint

    rep_cfg = params.get("report") or {}
    out_md = Path(rep_cfg.get("out", "reports/report.md"))
    fig_dir = out_md.parent / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(params["train"]["out_dir"])
    cfg = read_yaml_mapping(run_dir / "config.yaml", what="run config", error=UserError)
    sets = (params.get("evaluate") or {}).get("sets", {})
    reports = {k: v for k, v in load_reports(eval_dir).items() if k in sets}
    baselines = {k: v for k, v in load_reports(baseline_dir).items() if k in sets}
    numbers = read_yaml_mapping(PAPER_NUMBERS, what="paper numbers")

    steps = _read_csv(train_plots / "steps.csv")
    figs = []
    if steps:
        _plot_beta(steps, fig_dir / "beta_trajectory.png")
        figs.append(("Temperature trajectory and loss", "figures/beta_trajectory.png"))
    sweeps = {}
    for k in reports:
        p = eval_dir / k / "pck_vs_beta.json"
        if p.exists():
            sweeps[k] = json.loads(p.read_text())
    if any(sweeps.values()):
        _plot_sweep(sweeps, fig_dir / "pck_vs_beta_eval.png")
        figs.append(("PCK against beta_eval", "figures/pck_vs_beta_eval.png"))
    pics = _pictures(params, eval_dir, fig_dir)

    # Table 1 layout: rows = (model, resolution), column groups = data sets, alphas inside.
    alphas = ["0.05", "0.1", "0.15"]
    datasets = list(dict.fromkeys(r.get("dataset") for r in reports.values()))
    header = ["model", "eval size"] + [f"{DATASET_TITLES.get(d, d)} {a}" for d in datasets for a in alphas]
    rows: list[list[str]] = []
    notes = []
    resolutions = list(dict.fromkeys(str(r.get("resolution")) for r in reports.values()))
    ours_name = f"ours: {cfg['model']['backbone']} {cfg['model']['temperature']} ({cfg['model']['finetune']})"
    init = "pretrained" if cfg["model"].get("pretrained") else "random init"
    base_name = f"not fine-tuned: {cfg['model']['backbone']} {init} (fixed:1, beta_eval 0.02)"

    def matching(group: Mapping[str, Any], d: Any, res: str) -> Any:
        return next((r for r in group.values() if r.get("dataset") == d and str(r.get("resolution")) == res), None)

    for res in resolutions:
        ours, paper = [ours_name, res], None
        base = [base_name, res]
        paper_row = []
        for d in datasets:
            rep = matching(reports, d, res)
            brep = matching(baselines, d, res)
            ref = paper_reference(cfg, d, res, numbers) if rep else None
            for a in alphas:
                ours.append(f"{rep['per_image'][a]:.1f}" if rep and a in rep["per_image"] else "")
                base.append(f"{brep['per_image'][a]:.1f}" if brep and a in brep["per_image"] else "")
                paper_row.append(f"{ref[1][a]:.1f}" if ref and a in ref[1] else "-")
                if rep and brep and a == "0.1":
                    gain = rep["per_image"][a] - brep["per_image"][a]
                    notes.append(
                        f"{DATASET_TITLES.get(d, d)} @ {res}: fine-tuning moves PCK@0.1 from "
                        f"{brep['per_image'][a]:.1f} to {rep['per_image'][a]:.1f} ({gain:+.1f})"
                    )
            if ref:
                paper = ref[0]
            elif rep:
                notes.append(
                    f"{DATASET_TITLES.get(d, d)} @ {res}: no paper number for this configuration"
                    + (" (the embedded set is this project's own)" if d == "embedded" else "")
                )
        rows.append(ours)
        if any(base[2:]):
            rows.append(base)
        if any(v != "-" for v in paper_row):  # no number: said once in the notes, not as a row of dashes
            rows.append([f"paper: {paper}" if paper else "paper", res] + paper_row)

    def md_table(head, body):
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])

    state = state_of_checkpoint(run_dir)
    tracking = params.get("tracking") or {}
    results_logged = None
    if tracking.get("enabled") and state.get("run_id"):
        results_logged = log_results(run_dir, reports, record=False)
    summary_p = run_dir / "summary.json"
    summary = json.loads(summary_p.read_text()) if summary_p.exists() else {}
    train_metrics_p = train_plots / "metrics.json"
    train_metrics = json.loads(train_metrics_p.read_text()) if train_metrics_p.exists() else {}
    best = train_metrics.get("best") or {}
    best_alpha = cfg["train"].get("best_alpha", 0.1)

    md = [
        "# SimSC pipeline report",
        "",
        *headline_lines(reports, baselines, train_metrics, sweeps, str(cfg["model"]["temperature"])),
        "",
        what_ran(cfg, train_metrics),
        "",
        PCK_DEFINITION,
        "",
        "## PCK (per image, %), laid out like the paper's Table 1",
        "",
        md_table(header, rows),
        "",
    ]
    md += [f"- {n}" for n in dict.fromkeys(notes)]
    if rep_cfg.get("heads_tab2"):
        md += [""] + heads_tab2_section(Path(rep_cfg["heads_tab2"]), numbers)
    md += ["", "### The evaluation sets that ran", ""]
    set_rows = [
        {
            **r,
            "beta_eval": "learned" if r.get("beta_eval") is None else r["beta_eval"],
            **{k: _r1(v) for k, v in r.items() if k.startswith("PCK@")},
        }
        for r in pck_table(reports)
    ]
    md += [table_markdown(set_rows)]
    best_lines = beta_eval_lines(reports, sweeps)
    if best_lines:
        md += ["### Temperature at evaluation", ""] + [f"- {line}" for line in best_lines] + [""]
    md += ["## Figures", ""]
    md += [f"![{t}]({p})" for t, p in figs]
    if pics:
        md += [
            "",
            f"## Matches on test pairs: green within {PICTURE_ALPHA} x threshold of the truth, red "
            "farther; white rings are the true points",
            "",
        ]
        for p, caption in pics:
            md += [f"![{caption}]({Path(p).relative_to(out_md.parent)})", caption, ""]
    # Only what the same code, data and params reproduce goes into the committed report; the
    # run's own identity (git revision, MLflow run id, store, registered version, timings)
    # goes to this_run.md next to it, which git ignores.
    registered = tracking.get("registered_model") if tracking.get("enabled") else None
    meta = {
        "training steps": train_metrics.get("steps"),
        "best step": best.get("step"),
        f"best val PCK@{best_alpha}": _r1(best.get(f"val_pck@{best_alpha}")),
        "MLflow": (
            f"experiment {tracking.get('experiment')}"
            + (f", registered model {registered}" if registered else "")
            + f"; this run's page, id and version: [{THIS_RUN.name}]({THIS_RUN.name}) (not committed)"
            if tracking.get("enabled")
            else "tracking disabled"
        ),
    }
    url = run_page_url(run_dir)
    this_run = {
        "git revision": git_revision(),
        "MLflow run page": f"[{str(state.get('run_id'))[:8]} in the MLflow UI]({url})" if url else "-",
        "MLflow run id": state.get("run_id") or "none (tracking disabled or failed)",
        "MLflow tracking URI": state.get("tracking_uri") or "-",
        "final PCK logged to MLflow": {
            None: "-",
            True: "yes",
            False: "no (see the warning; python -m pipeline.relog RUN_DIR --reports reports/eval)",
        }[results_logged],
        "registered model": (
            f"{state.get('registered_model')} v{state['model_version']}" if state.get("model_version") else "-"
        ),
        "train time (s)": _r1(summary.get("train_time_s")),
    }
    this_md = (
        "\n".join(
            [
                "# This run (not committed: it differs between machines and runs)",
                "",
                f"Report: [{out_md.name}]({out_md.name})",
                "",
            ]
            + [f"- {k}: {v}" for k, v in this_run.items()]
        )
        + "\n"
    )
    this_p = out_md.parent / THIS_RUN.name
    _write_page(this_p, this_md)
    if compare:
        add_mlflow_sections(out_md, params)
    md += ["", "## Run metadata", ""] + [f"- {k}: {v}" for k, v in meta.items()]
    # the run's eval section holds the engine defaults, not what ran: show the protocol instead
    trained = {k: v for k, v in cfg.items() if k != "eval"}
    protocol = {
        "sets": sets,
        "beta_eval": (params.get("eval") or {}).get("beta_eval"),
        "max_pairs": (params.get("evaluate") or {}).get("max_pairs"),
    }
    md += [
        "",
        "### Training configuration (runs/.../config.yaml)",
        "",
        "```yaml",
        yaml.safe_dump(trained, sort_keys=False).rstrip(),
        "```",
        "",
        "### Evaluation protocol (params.yaml: evaluate, eval.beta_eval)",
        "",
        "```yaml",
        yaml.safe_dump(protocol, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    _write_page(out_md, "\n".join(md))
    return out_md


def _write_page(md_path: Path, text: str) -> None:
    """``md_path`` and its HTML twin, each written whole or not at all."""
    atomic_write_bytes(md_path, text.encode("utf-8"))
    atomic_write_bytes(md_path.with_suffix(".html"), _html(text).encode("utf-8"))


def add_mlflow_sections(out_md: Path, params: Mapping[str, Any]) -> Path:
    """Append to the run's page (``this_run.md`` beside ``out_md``, as :func:`build_report`
    wrote it) how the run compares with the previous run of its configuration and the
    champion, and the paper's tables it is a row of, as MLflow has them now."""
    from .tracking.runs import state_of_checkpoint

    this_p = out_md.parent / THIS_RUN.name
    state = state_of_checkpoint(Path(params["train"]["out_dir"]))
    text = this_p.read_text(encoding="utf-8").rstrip("\n")
    text += "\n\n" + "\n".join(mlflow_context(state, params.get("tracking") or {})) + "\n"
    _write_page(this_p, text)
    return this_p


def _html(md: str) -> str:
    """The report's page: :func:`html_page` with the report's title; links to the Markdown
    pages beside it point at their HTML twins."""
    md = md.replace(f"]({THIS_RUN.name})", f"]({THIS_RUN.with_suffix('.html').name})")
    md = re.sub(r"\]\(report\.md\)", "](report.html)", md)
    return html_page(md, "SimSC report")
