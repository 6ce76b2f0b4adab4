"""DVC stage ``evaluate@<set>``: evaluate the best checkpoint on one entry of ``evaluate.sets``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.stage_common import STAGE_PARAMS, round_metric, section, stage_main
from simsc.errors import UserError
from simsc.io import atomic_write_json

# The params.yaml keys this stage reads, and all it is given (its params: in dvc.yaml).
PARAMS = STAGE_PARAMS["evaluate"]
EVAL_DIR = Path("reports/eval")


def stage_evaluate(params: dict[str, Any], name: str) -> None:
    """Evaluate the best checkpoint on one evaluation set of ``evaluate.sets``.

    Writes ``reports/eval/<name>/``: ``report.json`` (the full PCK report),
    ``pck.json`` (the DVC metrics), ``pck_vs_alpha.json`` and ``pck_vs_beta.json`` (plots),
    ``predictions.jsonl``.
    """
    from simsc.engine.checkpoint import load_model
    from simsc.evaluate import beta_sweep, sweep_betas

    ev, dataset = evaluation_set(params, name)
    train_sec = section(params, "train", ["out_dir"])
    ckpt = Path(train_sec["out_dir"]) / "checkpoints" / "best.pt"
    model, _, _ = load_model(ckpt)
    out = EVAL_DIR / name
    ev_sec = params["evaluate"]
    max_pairs = ev_sec.get("max_pairs")
    report = evaluate_into(
        out, model, dataset, ev, max_pairs, {"name": name, "checkpoint": str(ckpt)}, beta_eval=ev.beta_eval
    )
    write_json(out / "pck_vs_alpha.json", [{"alpha": float(a), "pck": v} for a, v in report["per_image"].items()])
    rows = []
    sweep_on = ev_sec.get("sweep", True)
    if sweep_on is True or (isinstance(sweep_on, list) and name in sweep_on):
        sweep = beta_sweep(
            model, dataset, sweep_betas(ev), batch_size=ev.batch_size, alphas=ev.alphas, max_pairs=max_pairs
        )
        rows = [
            {"beta_eval": r["beta_eval"], **{f"pck@{a}": v for a, v in r["per_image"].items()}} for r in sweep["rows"]
        ]
    write_json(out / "pck_vs_beta.json", rows)
    print(f"{name}: {pck_line(report)}")


def evaluate_into(
    out: Path,
    model: Any,
    dataset: Any,
    ev: Any,
    max_pairs: int | None,
    extra: dict[str, Any],
    beta_eval: float | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``dataset`` with the ``eval`` settings ``ev`` into the folder ``out``:
    ``report.json`` (with the ``extra`` entries), ``predictions.jsonl`` and ``pck.json`` (the DVC
    metrics). ``beta_eval=None``: the model's default. Returns the report."""
    from simsc.evaluate import evaluate_to_files

    report = evaluate_to_files(
        model,
        dataset,
        out / "report.json",
        out / "predictions.jsonl",
        beta_eval=beta_eval,
        batch_size=ev.batch_size,
        alphas=ev.alphas,
        max_pairs=max_pairs,
        extra=extra,
    )
    write_json(out / "pck.json", pck_metrics(report))
    return report


def pck_line(report: dict[str, Any]) -> str:
    """``<n> pairs, PCK@0.05 <v>, ...``: the one line a stage prints of an evaluation."""
    pck = ", ".join(f"PCK@{a} {v:.2f}" for a, v in report["per_image"].items())
    return f"{report['n_pairs']} pairs, {pck}"


def evaluation_set(params: dict[str, Any], name: str) -> tuple[Any, Any]:
    """The ``eval`` settings and the dataset of entry ``name`` of ``evaluate.sets`` (read from the cache)."""
    from simsc.config import EvalConfig, load_config
    from simsc.evaluate import eval_dataset

    sets = section(params, "evaluate", ["sets"])["sets"]
    if name not in sets:
        raise UserError(f"params.yaml: evaluate.sets has no entry {name!r} (known: {', '.join(sets)})")
    spec = sets[name]
    ev: EvalConfig = load_config({"eval": params.get("eval") or {}}).eval
    dataset = eval_dataset(
        ev,
        spec["dataset"],
        spec["root"],
        split=spec.get("split"),
        resolution=spec.get("resolution"),
        cache_dir=(params.get("preprocess") or {}).get("cache_dir"),
    )
    return ev, dataset


def pck_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The DVC metrics of one evaluation: flat keys, so ``dvc exp show`` has one column each
    (``pck@0.1`` per image as in the paper, ``pck_kp@0.1`` per keypoint, the mean beta_eff)."""
    return {
        **{f"pck@{a}": round_metric(v) for a, v in report["per_image"].items()},
        **{f"pck_kp@{a}": round_metric(v) for a, v in report["per_keypoint"].items()},
        "beta_eff": round_metric(report["beta_eff"]["mean"]),
        "beta_eval": report["beta_eval"],
        "n_pairs": report["n_pairs"],
    }


def write_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj, indent=2)


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("evaluate", stage_evaluate, PARAMS, argv, with_name=True, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
