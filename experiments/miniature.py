"""Miniature of the paper's central claim (Tab. 3 / supp. Tab. 3 in spirit) on the embedded data set.

Trains a random-init ResNet-18 (no pretrained weights exist offline) with the whole backbone
fine-tuned, at 160 x 160, batch 8, the same seed and the same step budget for every
temperature variant, then evaluates test PCK@0.05/0.1/0.15 at 160 px:

    mlp        learned temperature (SimSC)
    single     one learned scalar (supp. Sec. 6)
    fixed:1    WithL2Norm baseline, evaluated with beta_eval 0.02
    no-l2      NoL2Norm baseline
    untrained  the random-init backbone, no training, fixed:1, beta_eval 0.02

Writes ``experiments/results/miniature.json`` and ``miniature.md``. Runs resume from their
checkpoints, so re-running after an interruption continues (and a finished run is reused).

    .venv/bin/python experiments/miniature.py --data-dir data/embedded
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from simsc.config import apply_overrides, load_config, read_yaml  # noqa: E402
from simsc.data.embedded import build_embedded_dataset  # noqa: E402
from simsc.data.registry import build_dataset  # noqa: E402
from simsc.engine import load_model, train  # noqa: E402
from simsc.evaluate import evaluate  # noqa: E402
from simsc.model import SimSC  # noqa: E402

VARIANTS = ("mlp", "single", "fixed:1", "no-l2")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    ap.add_argument("--data-dir", default=str(REPO / "data" / "embedded"), help="embedded data set (built if missing)")
    ap.add_argument("--runs-dir", default=str(REPO / "runs" / "miniature"))
    ap.add_argument("--results", default=str(REPO / "experiments" / "results"))
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=1e-4, help="backbone learning rate, all variants (default: 1e-4)")
    ap.add_argument("--resolution", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    t_start = time.time()
    data_dir = build_embedded_dataset(args.data_dir, progress=not args.no_progress)
    test = build_dataset("embedded", data_dir, "test", args.resolution)
    base = read_yaml(args.config)
    rows = []
    for variant in [v for v in args.variants.split(",") if v]:
        name = variant.replace(":", "")
        cfg = load_config(apply_overrides(base, [
            f"model.temperature={variant}", "model.finetune=all", "model.pretrained=false",
            f"data.root={data_dir}", f"data.resolution={args.resolution}", f"data.batch_size={args.batch_size}",
            f"train.max_steps={args.steps}", "train.epochs=1000", f"train.lr_backbone={args.lr}",
            f"train.seed={args.seed}", f"train.out_dir={Path(args.runs_dir) / name}",
            f"train.num_threads={args.threads}", f"train.progress={not args.no_progress}",
            f"eval.resolution={args.resolution}",
        ]))
        print(f"== {variant}: training {args.steps} steps (lr_backbone {cfg.resolved_lr_backbone():g}, "
              f"lr_temperature {cfg.resolved_lr_temperature():g}) -> {cfg.train.out_dir}", flush=True)
        summary = train(cfg, resume=True)
        model, _, meta = load_model(Path(cfg.train.out_dir) / "checkpoints" / "best.pt")
        rep = evaluate(model, test, batch_size=args.batch_size, progress=not args.no_progress)
        last_model, _, _ = load_model(Path(cfg.train.out_dir) / "checkpoints" / "last.pt")
        rep_last = evaluate(last_model, test, batch_size=args.batch_size)
        rows.append({
            "variant": variant, "trained": True, "test": rep, "test_last": rep_last,
            "best_step": meta["best"]["step"], "best_val_pck@0.1": meta["best"]["metric"],
            "steps": summary["step"], "train_time_s": summary["train_time_s"], "steps_per_s": summary["steps_per_s"],
            "lr_backbone": cfg.resolved_lr_backbone(), "lr_temperature": cfg.resolved_lr_temperature(),
        })
        print(f"   test PCK {rep['per_image']}  beta_eval {rep['beta_eval']}  beta_eff {rep['beta_eff']}", flush=True)

    torch.manual_seed(args.seed)
    untrained = SimSC("resnet18", "fixed:1", pretrained=False, finetune="none")
    rep = evaluate(untrained, test, beta_eval=0.02, batch_size=args.batch_size)
    rows.append({"variant": "untrained", "trained": False, "test": rep, "steps": 0})
    print(f"== untrained: test PCK {rep['per_image']}", flush=True)

    out = {
        "setup": {
            "data": str(data_dir), "split": "test", "n_test_pairs": len(test), "backbone": "resnet18",
            "pretrained": False, "finetune": "all", "resolution": args.resolution, "batch_size": args.batch_size,
            "steps": args.steps, "lr_backbone": args.lr, "seed": args.seed, "threads": args.threads,
            "checkpoint": "best validation PCK@0.1 (val split, per image)",
            "command": "python experiments/miniature.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "wall_time_s": time.time() - t_start,
        },
        "rows": rows,
    }
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    (res / "miniature.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    (res / "miniature.md").write_text(markdown(out), encoding="utf-8")
    print(markdown(out))
    return 0


def markdown(out: dict) -> str:
    s = out["setup"]
    lines = [
        f"Embedded test split ({s['n_test_pairs']} pairs), {s['backbone']} random init, finetune {s['finetune']}, "
        f"{s['resolution']} px, batch {s['batch_size']}, {s['steps']} steps, lr_backbone {s['lr_backbone']:g}, "
        f"seed {s['seed']}; checkpoint: {s['checkpoint']}. PCK in % (per image).",
        "",
        "| variant | beta_eval | PCK@0.05 | PCK@0.1 | PCK@0.15 | PCK@0.1 (last) | beta_eff (test) | best step | steps/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        p = r["test"]["per_image"]
        be = r["test"]["beta_eff"]
        last = f"{r['test_last']['per_image']['0.1']:.1f}" if "test_last" in r else "-"
        sps = f"{r['steps_per_s']:.2f}" if r.get("steps_per_s") else "-"
        lines.append(
            f"| {r['variant']} | {r['test']['beta_eval']:g} | {p['0.05']:.1f} | {p['0.1']:.1f} | {p['0.15']:.1f} | "
            f"{last} | {be['mean']:.4f} ± {be['std']:.4f} | {r.get('best_step', '-')} | {sps} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
