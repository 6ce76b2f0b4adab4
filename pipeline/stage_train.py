"""DVC stage ``train``: train with the MLflow callback and export the plot data."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.stage_common import STAGE_PARAMS, round_metric, stage_main, tracking_section

# The params.yaml keys this stage reads, and all it is given (its params: in dvc.yaml).
PARAMS = STAGE_PARAMS["train"]

PLOTS_DIR = Path("reports/train")


def engine_config(params: dict[str, Any]):
    """The training config: the :data:`simsc.config.TRAIN_SECTIONS` of params.yaml (``eval`` is
    the evaluate stage's), on top of the schema's defaults."""
    from simsc.config import TRAIN_SECTIONS, compose, engine_sections

    return compose(base=engine_sections(params, TRAIN_SECTIONS))


def stage_train(params: dict[str, Any]) -> None:
    """Train with the MLflow callback (when ``tracking.enabled``) and export the plot data."""
    from simsc.engine.runtime import resolve_device
    from simsc.engine.trainer import train

    cfg = engine_config(params)
    resolve_device(cfg.train.device, "params.yaml: train.device")  # before anything is built
    callbacks = []
    tracking = tracking_section(params)
    if tracking.get("enabled", False):
        from .tracking.callback import MlflowCallback

        callbacks.append(
            MlflowCallback(
                cfg,
                cfg.train.out_dir,
                experiment=tracking.get("experiment"),
                registered_model=tracking.get("registered_model"),
                tags={"dvc.stage": "train"},
            )
        )
    # DVC removed this stage's outputs (best.pt, config.yaml, metrics.jsonl) before running it;
    # the run folder's local state of the previous run (last.pt, summary.json) is replaced.
    summary = train(cfg, callbacks=callbacks, overwrite=True)
    metrics = Path(cfg.train.out_dir) / "metrics.jsonl"
    export_train_plots(metrics, PLOTS_DIR)
    train_metrics = export_train_metrics(metrics, PLOTS_DIR / "metrics.json")
    print(summary_line(summary, train_metrics))


def summary_line(summary: dict[str, Any], metrics: dict[str, Any]) -> str:
    """One line for the log (the full summary is ``<out_dir>/summary.json``)."""
    best = metrics.get("best") or {}
    final = metrics.get("final") or {}
    alpha = summary.get("best_alpha", 0.1)
    parts = [f"train: {summary.get('step')} steps in {summary.get('train_time_s', 0):.0f} s"]
    if best:
        parts.append(f"best val PCK@{alpha} {summary.get('best_metric', float('nan')):.1f} at step {best.get('step')}")
    if final:
        parts.append(f"final beta_eff {final.get('beta_eff'):.3g}")
    parts.append(f"checkpoint {summary.get('best_checkpoint') or summary.get('last_checkpoint')}")
    return "; ".join(parts)


def export_train_plots(metrics: Path, out_dir: Path) -> None:
    """metrics.jsonl -> ``steps.csv`` (loss, betas, lr per step) and ``val_pck.csv`` (per epoch)."""
    import csv

    from simsc.engine.records import read_records

    out_dir.mkdir(parents=True, exist_ok=True)
    steps, epochs = [], []
    for rec in read_records(metrics):
        if rec.get("type") == "step":
            steps.append(
                {
                    "step": rec["step"],
                    "loss": rec["loss"],
                    "beta_a": rec["beta_a_mean"],
                    "beta_b": rec["beta_b_mean"],
                    "beta_eff": rec["beta_eff_mean"],
                    "lr_backbone": rec.get("lr_backbone"),
                }
            )
        elif rec.get("type") == "epoch":
            row = {"epoch": rec["epoch"], "step": rec["step"]}
            row.update({f"pck@{a}": v for a, v in rec["val"]["per_image"].items()})
            epochs.append(row)
    for name, rows in (("steps.csv", steps), ("val_pck.csv", epochs)):
        with open(out_dir / name, "w", newline="", encoding="utf-8") as fh:
            fields = list(rows[0]) if rows else ["step"]
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)


def export_train_metrics(metrics: Path, out: Path) -> dict[str, Any]:
    """metrics.jsonl -> the train stage's DVC metrics file (``dvc exp show`` columns).

    ``final``: the last step's loss and beta_eff; ``best``: the epoch whose validation
    PCK@best_alpha was highest (the one ``best.pt`` holds): its step, its PCK per alpha and
    its mean beta_eff over the validation pairs. Numbers are rounded so diffs stay readable.
    """
    from simsc.engine.records import read_records
    from simsc.io import atomic_write_json

    last_step, best = None, None
    for rec in read_records(metrics):
        if rec.get("type") == "step":
            last_step = rec
        elif rec.get("type") == "epoch" and rec.get("is_best"):
            best = rec
    result: dict[str, Any] = {"steps": last_step["step"] if last_step else 0}
    if last_step:
        result["final"] = {
            "loss": round_metric(last_step["loss"]),
            "beta_eff": round_metric(last_step["beta_eff_mean"]),
        }
    if best:
        result["best"] = {
            "epoch": best["epoch"],
            "step": best["step"],
            **{f"val_pck@{a}": round_metric(v) for a, v in best["val"]["per_image"].items()},
            "val_beta_eff": round_metric(best["val_beta_eff_mean"]),
        }
    atomic_write_json(out, result, indent=2)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("train", stage_train, PARAMS, argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
