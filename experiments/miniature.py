"""Miniature of the paper's central claim (Tab. 3 / supp. Tab. 3 in spirit) on the embedded data set.

Trains a random-init ResNet-18 (no pretrained weights exist offline) with the whole backbone
fine-tuned, at 160 x 160, batch 8, the same step budget for every temperature variant, under
both readings of the sub-pixel cross-entropy (``model.ce_interpolation``: ``prob``, the
paper's log of the interpolated probability, and ``logprob``, the interpolated
log-probability) and several seeds, then evaluates test PCK@0.05/0.1/0.15:

    mlp        learned temperature (SimSC)
    single     one learned scalar (supp. Sec. 6)
    fixed:1    WithL2Norm baseline, evaluated with beta_eval 0.02
    no-l2      NoL2Norm baseline
    untrained  the random-init backbone, no training, fixed:1, beta_eval 0.02

Every model is trained with the backbone's own cell centres (``model.cell_centre:
backbone``) and evaluated at 160 px and at the original size twice: with those centres and
with the previous mapping (``patch``: the patch centre ``(s - 1) / 2`` for every backbone).

Writes ``miniature.json``, ``miniature.md`` and ``miniature_beta_eff.png`` (the learned
beta_eff during training) to ``--results``. Runs resume from their checkpoints and keep
their evaluation in the run folder, so re-running after an interruption continues and a
finished run is reused. ``--jobs 2`` trains two runs at a time (one thread each).

    .venv/bin/python -m experiments.miniature --jobs 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from simsc.config import Config, apply_overrides, engine_sections, load_config, read_yaml
from simsc.data.embedded import build_embedded_dataset
from simsc.data.registry import build_dataset
from simsc.engine import load_model, train
from simsc.evaluate import evaluate
from simsc.io import atomic_write_bytes, atomic_write_json
from simsc.model import SimSC

REPO = Path(__file__).resolve().parents[1]

VARIANTS = ("mlp", "single", "fixed:1", "no-l2")
FORMS = ("prob", "logprob")
EVAL_SETS = ("160", "original")
MAPPINGS = ("backbone", "patch")
PAPER_BETA_EFF = 0.03  # supp. Tab. 4, ResNet101*
#: What the miniature changes from the default run (params.yaml): 600 steps (epochs never the
#: limit), validation on the whole val split, images decoded from the data set (no cache).
MINIATURE_SET = ("train.max_steps=600", "train.epochs=1000", "train.val_max_pairs=null", "data.cache_dir=null")


def run_setup(cfg: Config, data_dir: str | Path) -> dict[str, Any]:
    """The trained configuration, as the results files record it."""
    return {
        "data": str(data_dir),
        "split": "test",
        "backbone": cfg.model.backbone,
        "pretrained": cfg.model.pretrained,
        "finetune": cfg.model.finetune,
        "resolution": cfg.data.resolution,
        "batch_size": cfg.data.batch_size,
        "steps": cfg.train.max_steps,
        "lr_backbone": cfg.resolved_lr_backbone(),
    }


def add_common_arguments(ap: argparse.ArgumentParser, own_set: str, name: str) -> None:
    """The flags the experiments share: ``--config`` (the base: params.yaml's engine sections),
    ``--set`` (after ``own_set``, the experiment's own changes), the data, run and results
    folders (runs under ``runs/<name>``) and the seeds."""
    ap.add_argument(
        "--config",
        default=str(REPO / "params.yaml"),
        help="the base config (its engine sections; default: the default run's params.yaml)",
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value after the experiment's own changes ({own_set}), "
        "e.g. --set train.max_steps=300 (repeatable)",
    )
    ap.add_argument("--data-dir", default=str(REPO / "data" / "embedded"), help="embedded data set (built if missing)")
    ap.add_argument("--runs-dir", default=str(REPO / "runs" / name))
    ap.add_argument("--results", default=str(REPO / "experiments" / "results"))
    ap.add_argument("--seeds", default="0,1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap, "MINIATURE_SET", "miniature")
    ap.add_argument("--forms", default=",".join(FORMS), help="ce_interpolation forms (default: prob,logprob)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=2, help="torch threads in all (split over --jobs)")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    t_start = time.time()
    overrides = [*MINIATURE_SET, *args.overrides]
    cfg = base_config(args.config, overrides)
    data_dir = build_embedded_dataset(args.data_dir, progress=not args.no_progress)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    forms = [f for f in args.forms.split(",") if f]
    variants = [v for v in args.variants.split(",") if v]
    threads = max(1, args.threads // max(1, args.jobs))
    tasks = [
        dict(vars(args), overrides=overrides, data_dir=str(data_dir), variant=v, form=f, seed=s, threads=threads)
        for s in seeds
        for v in variants
        for f in forms
    ]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            runs = list(pool.map(run_one, tasks))
    else:
        runs = [run_one(t) for t in tasks]
    torch.set_num_threads(args.threads)
    runs += [untrained(str(data_dir), s, cfg) for s in seeds]

    out = {
        "setup": {
            **run_setup(cfg, data_dir),
            "seeds": seeds,
            "forms": forms,
            "threads_per_run": threads,
            "jobs": args.jobs,
            "train_cell_centre": "backbone",
            "eval_sets": list(EVAL_SETS),
            "eval_mappings": list(MAPPINGS),
            "checkpoint": "best validation PCK@0.1 (val split, per image, 160 px)",
            "command": "python -m experiments.miniature " + " ".join(argv if argv is not None else sys.argv[1:]),
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "wall_time_s": time.time() - t_start,
        },
        "runs": runs,
        "summary": summarise(runs, forms),
    }
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    atomic_write_json(res / "miniature.json", out, indent=1)
    atomic_write_bytes(res / "miniature.md", markdown(out).encode("utf-8"))
    plot_beta_eff(runs, forms, res / "miniature_beta_eff.png")
    print(markdown(out))
    return 0


def _test_sets(data_dir: str, resolution: int) -> dict[str, Any]:
    return {
        "160": build_dataset("embedded", data_dir, "test", resolution),
        "original": build_dataset("embedded", data_dir, "test", "original"),
    }


def _evaluate_all(model: SimSC, sets: dict[str, Any], batch_size: int, beta_eval: float | None = None) -> dict:
    """PCK of ``model`` on every test set under both cell-centre mappings (the model is left as given)."""
    reports: dict[str, dict] = {}
    keep = model.cell_centre
    try:
        for mapping in MAPPINGS:
            model.cell_centre = mapping
            for name, ds in sets.items():
                rep = evaluate(model, ds, batch_size=batch_size, beta_eval=beta_eval)
                reports[f"{name}/{mapping}"] = {
                    k: rep[k] for k in ("per_image", "per_keypoint", "beta_eval", "beta_eff", "n_pairs")
                }
    finally:
        model.cell_centre = keep
    return reports


def base_config(path: str | Path, overrides: list[str] | tuple[str, ...]) -> Config:
    """The engine sections of ``path`` (params.yaml by default) with ``overrides`` applied."""
    return load_config(apply_overrides(engine_sections(read_yaml(path)), list(overrides)))


def train_run(task: dict[str, Any], out_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Train (or resume) one miniature run of ``task`` into ``out_dir``: the base config with
    ``task["overrides"]``, the run's own variant, form and seed, then ``overrides`` (e.g.
    ``model.head=ncnet`` for the matching-head grid, heads_toy.py)."""
    base = base_config(task["config"], task["overrides"])
    cfg = base_config(
        task["config"],
        [
            *task["overrides"],
            f"model.temperature={task['variant']}",
            f"model.ce_interpolation={task['form']}",
            f"data.root={task['data_dir']}",
            f"train.seed={task['seed']}",
            f"train.out_dir={out_dir}",
            f"train.num_threads={task['threads']}",
            f"train.progress={not task['no_progress'] and task['jobs'] == 1}",
            f"eval.resolution={base.data.resolution}",
            *overrides,
        ],
    )
    return train(cfg, resume=True)


def run_one(task: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume) one (variant, form, seed) run and evaluate it; the result is cached in the run folder."""
    torch.set_num_threads(task["threads"])
    variant, form, seed = task["variant"], task["form"], task["seed"]
    out_dir = Path(task["runs_dir"]) / f"{form}_{variant.replace(':', '')}_s{seed}"
    cached = out_dir / "miniature_eval.json"
    if cached.is_file():
        return json.loads(cached.read_text(encoding="utf-8"))
    print(f"== {form} {variant} seed {seed} -> {out_dir}", flush=True)
    summary = train_run(task, out_dir)
    cfg = base_config(task["config"], task["overrides"])
    res, batch_size = cfg.data.resolution, cfg.data.batch_size
    model, _, meta = load_model(out_dir / "checkpoints" / "best.pt")
    sets = _test_sets(task["data_dir"], res)
    last, _, _ = load_model(out_dir / "checkpoints" / "last.pt")
    row = {
        "variant": variant,
        "form": form,
        "seed": seed,
        "trained": True,
        "test": _evaluate_all(model, sets, batch_size),
        "test_last_160": evaluate(last, sets["160"], batch_size=batch_size)["per_image"],
        "best_step": meta["best"]["step"],
        "best_val_pck@0.1": meta["best"]["metric"],
        "steps": summary["step"],
        "train_time_s": summary["train_time_s"],
        "steps_per_s": summary["steps_per_s"],
        "beta_eff_trajectory": _trajectory(out_dir / "metrics.jsonl"),
    }
    atomic_write_json(cached, row)
    pck = row["test"]["160/backbone"]["per_image"]["0.1"]
    print(
        f"   {form} {variant} seed {seed}: test PCK@0.1 {pck:.1f}, beta_eff {row['test']['160/backbone']['beta_eff']}",
        flush=True,
    )
    return row


def untrained(data_dir: str, seed: int, cfg: Config) -> dict[str, Any]:
    """The random-init backbone of ``seed``, no training, WithL2Norm inference (beta_eval 0.02)."""
    torch.manual_seed(seed)
    model = SimSC(cfg.model.backbone, "fixed:1", pretrained=False, finetune="none").eval()
    test = _evaluate_all(model, _test_sets(data_dir, cfg.data.resolution), cfg.data.batch_size, beta_eval=0.02)
    return {"variant": "untrained", "form": None, "seed": seed, "trained": False, "test": test, "steps": 0}


def _trajectory(metrics: Path, every: int = 10) -> list[list[float]]:
    """``[step, beta_eff]`` every ``every`` steps from a run's metrics.jsonl."""
    points = []
    for line in metrics.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec.get("type") == "step" and (rec["step"] % every == 0 or rec["step"] == 1):
            points.append([rec["step"], rec["beta_eff_mean"]])
    return points


def _mean_spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summarise(runs: list[dict], forms: list[str]) -> dict[str, dict]:
    """Mean and spread over seeds of every PCK cell and of the test beta_eff, per (variant, form)."""
    out: dict[str, dict] = {}
    for variant in [*VARIANTS, "untrained"]:
        for form in forms:
            rows = [r for r in runs if r["variant"] == variant and (r["form"] == form or not r["trained"])]
            if not rows:
                continue
            cell: dict[str, Any] = {}
            for key in rows[0]["test"]:
                for alpha in ("0.05", "0.1", "0.15"):
                    cell[f"{key}@{alpha}"] = _mean_spread([r["test"][key]["per_image"][alpha] for r in rows])
            cell["beta_eff"] = _mean_spread([r["test"]["160/backbone"]["beta_eff"]["mean"] for r in rows])
            cell["beta_eval"] = rows[0]["test"]["160/backbone"]["beta_eval"]
            out[f"{variant}|{form}"] = cell
    return out


def _fmt(s: dict[str, float], digits: int = 1) -> str:
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def markdown(out: dict) -> str:
    s, summ = out["setup"], out["summary"]
    forms = s["forms"]
    n = len(s["seeds"])
    lines = [
        f"Embedded test split, {s['backbone']} random init, finetune {s['finetune']}, trained at {s['resolution']} px, "
        f"batch {s['batch_size']}, {s['steps']} steps, lr_backbone {s['lr_backbone']:g}, seeds {s['seeds']} "
        f"(mean ± standard deviation over the {n} seeds); checkpoint: {s['checkpoint']}. "
        "Trained with the backbone's cell centres (ResNet layer3: pixel 16 u). PCK in % (per image).",
        "",
        f"Command: `{s['command']}` ({s['wall_time_s'] / 60:.0f} min wall, "
        f"{s['jobs']} job(s) x {s['threads_per_run']} thread(s)).",
        "",
        "### Test PCK at 160 px and the learned temperature",
        "",
        "| variant | beta_eval | "
        + " | ".join(f"{f}: PCK@0.05 | {f}: PCK@0.1 | {f}: PCK@0.15 | {f}: beta_eff (test)" for f in forms)
        + " |",
        "|---|---|" + "---|---|---|---|" * len(forms),
    ]
    for variant in [*VARIANTS, "untrained"]:
        cells = [summ.get(f"{variant}|{f}") for f in forms]
        if not any(cells):
            continue
        beta_eval = next(c for c in cells if c)["beta_eval"]
        parts = []
        for c in cells:
            if c is None:
                parts += ["-"] * 4
                continue
            parts += [_fmt(c[f"160/backbone@{a}"]) for a in ("0.05", "0.1", "0.15")]
            parts.append(_fmt(c["beta_eff"], 4))
        lines.append(f"| {variant} | {beta_eval:g} | " + " | ".join(parts) + " |")
    lines += [
        "",
        f"Paper (supp. Tab. 4): learned beta_eff about {PAPER_BETA_EFF} for ResNet101* on PF-Pascal.",
        "",
        "### Cell centres: the backbone's (new) vs the patch centre (old mapping), PCK@0.1",
        "",
        "| variant | form | 160 px new | 160 px old | original size new | original size old |",
        "|---|---|---|---|---|---|",
    ]
    for variant in [*VARIANTS, "untrained"]:
        for f in forms:
            c = summ.get(f"{variant}|{f}")
            if c is None or (variant == "untrained" and f != forms[0]):
                continue
            lines.append(
                f"| {variant} | {f if variant != 'untrained' else '-'} | "
                + " | ".join(
                    _fmt(c[f"{k}@0.1"]) for k in ("160/backbone", "160/patch", "original/backbone", "original/patch")
                )
                + " |"
            )
    return "\n".join(lines) + "\n"


def plot_beta_eff(runs: list[dict], forms: list[str], path: Path) -> None:
    """The learned beta_eff during training, one panel per form, log scale, the paper's value dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(forms), figsize=(5.5 * len(forms), 4), sharey=True, squeeze=False)
    colours = {"mlp": "tab:blue", "single": "tab:orange"}
    for ax, form in zip(axes[0], forms, strict=True):
        for r in runs:
            if r["trained"] and r["form"] == form and r["variant"] in colours:
                steps, beta = zip(*r["beta_eff_trajectory"], strict=True)
                ax.plot(
                    steps,
                    beta,
                    color=colours[r["variant"]],
                    alpha=0.85,
                    lw=1.2,
                    ls="-" if r["seed"] == 0 else "--",
                    label=f"{r['variant']} seed {r['seed']}",
                )
        ax.axhline(PAPER_BETA_EFF, color="grey", ls=":", lw=1, label=f"paper ~{PAPER_BETA_EFF}")
        ax.set_yscale("log")
        ax.set_title(f"ce_interpolation = {form}")
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("beta_eff = beta_A * beta_B (batch mean)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
