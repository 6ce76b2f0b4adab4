"""``simsc evaluate``: PCK of a checkpoint (or an un-fine-tuned backbone) on a dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .. import defaults as D
from ..io import atomic_write_json, refuse_overwriting_inputs
from . import add_model_source, load_model_from_args, model_files, positive_int, user_errors

EPILOG = """\
examples:
  simsc evaluate --checkpoint runs/default/checkpoints/best.pt --dataset embedded --root data/embedded \\
      --out reports/default_test.json
  simsc evaluate --checkpoint best.pt --dataset pfpascal --root data/PF-Pascal --resolution original --out r.json
  simsc evaluate --backbone resnet101 --pretrained --dataset pfpascal --root data/PF-Pascal --out r.json
  simsc evaluate --checkpoint best.pt --dataset embedded --root data/embedded --beta-sweep --out sweep.json
  simsc evaluate --model models:/simsc-default/1 --out reports/registered_test.json
  simsc evaluate --model models:/simsc-default@champion --out reports/champion_test.json

The report (JSON) holds per_image / per_keypoint / per_category PCK in % at alpha 0.05/0.1/0.15,
n_pairs, the beta_eval used and the learned effective temperature (mean, std) over the pairs.
Per-pair predictions go to --predictions (default: OUT with .predictions.jsonl).
"""


HELP = "PCK of a checkpoint or an un-fine-tuned backbone"
DESCRIPTION = "Evaluate a model with PCK (per image, per keypoint, per category), or sweep beta_eval."


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``simsc evaluate``."""
    add_model_source(p)
    p.add_argument("--dataset", help="pfpascal, pfwillow, spair or embedded (default: the checkpoint's)")
    p.add_argument("--root", help="dataset folder (default: the checkpoint's data.root)")
    p.add_argument("--split", default=None, help="split to evaluate (default: test)")
    p.add_argument(
        "--resolution",
        default=None,
        help="pixels (square resize) or original (batch size 1); default: a checkpoint's training "
        f"resolution (its eval.resolution if it sets one), else {D.RESOLUTION}",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--beta-eval",
        type=float,
        default=None,
        metavar="X",
        help="soft-argmax temperature (default: the model's: 1 if learned, 0.02 for fixed:1/backbones)",
    )
    g.add_argument(
        "--beta-sweep",
        nargs="?",
        const="default",
        default=None,
        metavar="V,V,...",
        help="evaluate at several beta_eval values reusing the features (default values: "
        "13 log-spaced from 0.005 to 1)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="report JSON")
    p.add_argument("--predictions", metavar="FILE", help="per-pair predictions (JSON lines)")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help=f"pairs per batch (default: {D.EVAL_BATCH_SIZE}; 1 at original size)",
    )
    p.add_argument("--workers", type=int, default=D.WORKERS, help=f"data loader workers (default: {D.WORKERS})")
    p.add_argument("--cache-dir", default=None, help="decoded-image cache folder")
    p.add_argument("--max-pairs", type=positive_int, default=None, help="evaluate only the first N pairs (N >= 1)")
    p.add_argument(
        "--quiet",
        "--no-progress",
        dest="quiet",
        action="store_true",
        help="no progress output; the result line is still printed (default: a bar on a terminal, "
        "else a plain line every 20 s)",
    )


def _parse_betas(text: str) -> list[float]:
    """The values of ``--beta-sweep V,V,...`` (the bare flag, ``"default"``, is not parsed)."""
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ValueError(f"--beta-sweep: expected comma-separated numbers, got {text!r}") from None
    if not vals or any(not v > 0 for v in vals):
        raise ValueError(f"--beta-sweep: values must be > 0, got {text!r}")
    return vals


@user_errors("evaluate")
def run(args: argparse.Namespace) -> int:
    from ..config import EvalConfig
    from ..evaluate import beta_sweep, checkpoint_resolution, eval_dataset, evaluate_to_files, sweep_betas

    out = Path(args.out)
    preds = Path(args.predictions) if args.predictions else out.with_name(out.stem + ".predictions.jsonl")
    # Before any work: a report written over its own checkpoint (--out c.pt) or over the
    # predictions would replace that file.
    refuse_overwriting_inputs(
        model_files(args),
        [("--out", out), ("--predictions", None if args.beta_sweep is not None else preds)],
    )
    model, cfg = load_model_from_args(args)
    ev = cfg.eval if cfg is not None else EvalConfig()
    dataset_name = args.dataset or (cfg.data.dataset if cfg is not None else None)
    root = args.root or (cfg.data.root if cfg is not None else None)
    if not dataset_name or not root:
        raise ValueError("--dataset and --root are required with --backbone")
    batch_size = args.batch_size if args.batch_size is not None else ev.batch_size
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    beta_eval = args.beta_eval if args.beta_eval is not None else ev.beta_eval
    resolution = args.resolution
    if resolution is None and cfg is not None:
        resolution = checkpoint_resolution(cfg)
    if isinstance(resolution, int) or str(resolution).isdigit():
        from ..memory import check_memory, inference_bytes

        side = int(resolution)
        flag = f"--resolution {side}" if args.resolution is not None else f"the checkpoint's resolution {side}"
        check_memory(
            batch_size * inference_bytes(getattr(model.backbone, "name", ""), [(side, side)]),
            next(model.parameters()).device,
            f"{flag} (a batch of {batch_size} pairs of {side} x {side} pixels)",
            "use a smaller --resolution or --batch-size",
        )
    dataset = eval_dataset(ev, dataset_name, root, split=args.split, resolution=resolution, cache_dir=args.cache_dir)
    out.parent.mkdir(parents=True, exist_ok=True)  # a folder that cannot be made fails before the evaluation
    common: dict[str, Any] = {
        "batch_size": batch_size,
        "alphas": ev.alphas,
        "workers": args.workers,
        "max_pairs": args.max_pairs,
        "progress": "off" if args.quiet else "auto",
    }
    source = (
        {"model": args.model}
        if getattr(args, "model", None)
        else {"checkpoint": args.checkpoint}
        if args.checkpoint
        else {"backbone": args.backbone, "pretrained": args.pretrained}
    )
    if args.beta_sweep is not None:
        betas = sweep_betas(ev, None if args.beta_sweep == "default" else _parse_betas(args.beta_sweep))
        result = beta_sweep(model, dataset, betas, **common)
        result["model"] = source
        atomic_write_json(out, result, indent=2)
        print(f"{'beta_eval':>10} " + " ".join(f"{'PCK@' + a:>9}" for a in result["rows"][0]["per_image"]))
        for row in result["rows"]:
            print(f"{row['beta_eval']:>10.4g} " + " ".join(f"{v:>9.2f}" for v in row["per_image"].values()))
        print(f"report: {out}", file=sys.stderr)
        return 0
    report = evaluate_to_files(
        model, dataset, out, preds, beta_eval=beta_eval, **common, extra={"model": source, "predictions": str(preds)}
    )
    pck = ", ".join(f"PCK@{a} {v:.2f}" for a, v in report["per_image"].items())
    print(
        f"{report['dataset']} {report['split']} @{report['resolution']} ({report['n_pairs']} pairs, "
        f"beta_eval {report['beta_eval']:g}): {pck}"
    )
    print(f"report: {out}; predictions: {preds}", file=sys.stderr)
    return 0
