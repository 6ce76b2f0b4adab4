"""Toy version of supp. Tab. 2: SimSC with the SFNet, NCNet and CATs matching heads.

Every head is trained with its own default temperature (``model.temperature: default``:
SFNet/CATs fixed:0.02, NCNet fixed:1) and with the learned one (``mlp``, "+ SimSC"), with
the miniature's machinery (:func:`experiments.miniature.train_run`), fine-tuned entirely on
the embedded set of ``--difficulty`` at 160 px, batch 8, heads at the ``small`` preset: by
default a random-init ResNet-18 at 1e-4 (:data:`experiments.miniature.RANDOM_INIT_SET`);
``--pretrained``: the miniature's ImageNet EfficientNet-Lite0 at the paper's learning rates
(:data:`experiments.miniature.PRETRAINED_SET`). Then evaluated on the embedded test split at 160 px:

    default          the model's default beta_eval: the head's temperature is already in the
                     scores, so this is "0.02" for SFNet/CATs and 0.02 for NCNet (fixed:1)
    + SimSC, 0.02    learned temperature, soft-argmax at beta_eval 0.02 on the head's scores
    + SimSC, learned learned temperature, beta_eval 1 (the scores carry 1 / beta_eff)

Writes ``heads_toy.json`` and ``heads_toy.md`` (``heads_toy_pretrained.*`` with
``--pretrained``; the Tab. 2 layout with the paper's PF-Pascal numbers beside ours) to
``--results``. Runs resume and cache their evaluation, as in miniature.py; run folders under
``runs/heads_toy_<random|pretrained>_<difficulty>``.

    nice -n 10 .venv/bin/python -m experiments.heads_toy --threads 1 --difficulty mild
    nice -n 10 .venv/bin/python -m experiments.heads_toy --threads 1 --pretrained   # hard set, as miniature.py
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from experiments.miniature import (
    PRETRAINED_SET,
    RANDOM_INIT_SET,
    _mean_spread,
    _trajectory,
    add_common_arguments,
    base_config,
    build_data,
    cached_row,
    code_version,
    resolve_dirs,
    run_config,
    run_setup,
    train_run,
)
from pipeline.report import HEADS_TAB2_ROWS, heads_tab2_table
from simsc.data.registry import build_dataset
from simsc.engine import load_model
from simsc.evaluate import evaluate
from simsc.io import atomic_write_bytes, atomic_write_json, read_yaml_mapping

REPO = Path(__file__).resolve().parents[1]

HEADS = ("sfnet", "ncnet", "cats")
TEMPERATURES = ("default", "mlp")
# (key, label, temperature, beta_eval: None = the model's default)
ROWS = tuple(
    (k, label, t, b)
    for (k, label), (t, b) in zip(HEADS_TAB2_ROWS, (("default", None), ("mlp", 0.02), ("mlp", None)), strict=True)
)
ALPHAS = ("0.05", "0.1", "0.15")
PAPER = REPO / "pipeline" / "paper_numbers.yaml"
#: What the toy grid changes from the default run (params.yaml): 50 steps (epochs never the
#: limit), images decoded from the data set (no cache), the heads' small preset and a head
#: learning rate 3x the random-init backbone's (the heads start from random weights; with
#: ``--pretrained`` the backbone trains at the paper's 2e-5 and the heads keep 3e-4).
HEADS_SET = (
    "train.max_steps=50",
    "train.epochs=1000",
    "data.cache_dir=null",
    "model.head_preset=small",
    "train.lr_head=0.0003",
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap, "HEADS_SET", "heads_toy", seeds="0,1")
    ap.add_argument(
        "--pretrained",
        action="store_true",
        help="the miniature's pretrained setup (ImageNet efficientnet_lite0, the paper's learning rates) "
        "instead of the random-init ResNet-18 of the earlier toy grid",
    )
    ap.add_argument("--heads", default=",".join(HEADS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1, help="accepted for symmetry with miniature.py; runs are sequential")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    setup = "pretrained" if args.pretrained else "random"
    resolve_dirs(args, f"heads_toy_{setup}_{args.difficulty}")

    t_start = time.time()
    torch.set_num_threads(args.threads)
    data_dir = build_data(args)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    heads = [h for h in args.heads.split(",") if h]
    overrides = [*HEADS_SET, *(PRETRAINED_SET if args.pretrained else RANDOM_INIT_SET), *args.overrides]
    cfg = base_config(args.config, overrides)
    test = build_dataset("embedded", str(data_dir), "test", cfg.data.resolution)
    runs = [
        run_one(
            dict(
                vars(args), overrides=overrides, data_dir=str(data_dir), variant=temp, form="prob", seed=seed, head=head
            ),
            test,
        )
        for seed in seeds
        for head in heads
        for temp in TEMPERATURES
    ]
    out = {
        "setup": {
            **run_setup(cfg, data_dir),
            "lr_head": cfg.resolved_lr_head(),
            "head_preset": cfg.model.head_preset,
            "seeds": seeds,
            "heads": heads,
            "threads": args.threads,
            "checkpoint": "best validation PCK@0.1 (val split, per image, 160 px)",
            "command": "python -m experiments.heads_toy " + " ".join(argv if argv is not None else sys.argv[1:]),
            "git_commit": code_version(),
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "wall_time_s": time.time() - t_start,
        },
        "runs": runs,
        "summary": summarise(runs),
    }
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    stem = "heads_toy_pretrained" if args.pretrained else "heads_toy"
    atomic_write_json(res / f"{stem}.json", out, indent=1)
    atomic_write_bytes(res / f"{stem}.md", markdown(out).encode("utf-8"))
    print(markdown(out))
    return 0


def run_one(task: dict[str, Any], test) -> dict[str, Any]:
    """Train (or resume) one (head, temperature, seed) run, evaluate it at both beta_eval settings; cached."""
    head, temp, seed = task["head"], task["variant"], task["seed"]
    out_dir = Path(task["runs_dir"]) / f"{head}_{temp}_s{seed}"
    cached = out_dir / "heads_eval.json"
    cfg = run_config(task, out_dir, [f"model.head={head}"])
    row = cached_row(cached, cfg)
    if row is not None:
        return row
    print(f"== {head} {temp} seed {seed} -> {out_dir}", flush=True)
    summary = train_run(task, out_dir, [f"model.head={head}"])
    batch_size = base_config(task["config"], task["overrides"]).data.batch_size
    model, _, meta = load_model(out_dir / "checkpoints" / "best.pt")
    evals = {}
    for key, _, row_temp, beta_eval in ROWS:
        if row_temp == temp:
            rep = evaluate(model, test, batch_size=batch_size, beta_eval=beta_eval)
            evals[key] = {k: rep[k] for k in ("per_image", "beta_eval", "beta_eff", "n_pairs")}
    row = {
        "head": head,
        "temperature": temp,
        "seed": seed,
        "model_temperature": model.temperature.name,
        "test": evals,
        "best_step": meta["best"]["step"],
        "best_val_pck@0.1": meta["best"]["metric"],
        "steps": summary["step"],
        "train_time_s": summary["train_time_s"],
        "steps_per_s": summary["steps_per_s"],
        "beta_eff_trajectory": _trajectory(out_dir / "metrics.jsonl"),
        "config": cfg.to_dict(),
    }
    atomic_write_json(cached, row)
    print("   " + ", ".join(f"{k}: PCK@0.1 {v['per_image']['0.1']:.1f}" for k, v in evals.items()), flush=True)
    return row


def summarise(runs: list[dict]) -> dict[str, dict]:
    """Mean and spread over seeds per (row, head)."""
    out: dict[str, dict] = {}
    for key, _, temp, _ in ROWS:
        for head in {r["head"] for r in runs}:
            rows = [r for r in runs if r["head"] == head and r["temperature"] == temp and key in r["test"]]
            if rows:
                cell = {a: _mean_spread([r["test"][key]["per_image"][a] for r in rows]) for a in ALPHAS}
                cell["beta_eff"] = _mean_spread([r["test"][key]["beta_eff"]["mean"] for r in rows])
                cell["beta_eval"] = rows[0]["test"][key]["beta_eval"]
                out[f"{key}|{head}"] = cell
    return out


def markdown(out: dict) -> str:
    s, summ = out["setup"], out["summary"]
    heads = s["heads"]
    lines = [
        f"Toy supp. Tab. 2 on the **embedded** test split ({s.get('difficulty')}; not PF-Pascal): {s['backbone']} "
        f"{'pretrained' if s['pretrained'] else 'random init'}, finetune "
        f"{s['finetune']}, heads at the `{s['head_preset']}` preset, {s['resolution']} px, batch {s['batch_size']}, "
        f"{s['steps']} steps, lr_backbone {s['lr_backbone']:g}, lr_head {s['lr_head']:g}, seeds {s['seeds']} "
        f"(mean ± std over seeds); checkpoint: {s['checkpoint']}. PCK in % per image.",
        "",
        f"Command: `{s['command']}` ({s['wall_time_s'] / 60:.0f} min wall, {s['threads']} thread(s)); "
        f"code {s.get('git_commit', '?')}.",
        "",
        heads_tab2_table(summ, heads, read_yaml_mapping(PAPER, what="paper numbers")["heads_tab2"]),
        "",
        "Paper columns: supp. Tab. 2, PF-Pascal, 256 px, ResNet-101 (pretrained).",
        "",
        "### Learned beta_eff (test mean) and beta_eval per row",
        "",
        "| row | " + " | ".join(f"{h}: beta_eval | {h}: beta_eff" for h in heads) + " |",
        "|---|" + "---|---|" * len(heads),
    ]
    for key, label, _, _ in ROWS:
        parts = []
        for h in heads:
            c = summ.get(f"{key}|{h}")
            parts += (
                ["-", "-"]
                if c is None
                else [f"{c['beta_eval']:g}", f"{c['beta_eff']['mean']:.4f} ± {c['beta_eff']['std']:.4f}"]
            )
        lines.append(f"| {label} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
