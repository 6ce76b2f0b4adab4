"""The records of ``metrics.jsonl``, one JSON object a line: ``type`` ``step`` after every
optimiser step, ``epoch`` after every validation, ``diverged`` when the run stops on a
non-finite value. The types below are the one definition of their fields: the trainer writes
them, and the MLflow callback, the DVC stage exports, ``relog``, the sweep and the tests read
them by these names."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    import torch


class StepRecord(TypedDict, total=False):
    """One optimiser step; values of the global batch (all ranks together)."""

    type: str  # "step"
    step: int  # global step, 1-based
    epoch: int
    batch: int  # batches done in this epoch
    loss: float
    ce: float
    reg: float
    beta_a_mean: float
    beta_a_std: float
    beta_b_mean: float
    beta_b_std: float
    beta_eff_mean: float
    lr_backbone: float | None
    lr_temperature: float | None
    grad_abs_mean: dict[str, float]  # only with train.log_grad_stats


class EpochRecord(TypedDict, total=False):
    """One validation (at an epoch's end, or a partial epoch's when max_steps stops it);
    besides these fields, ``val_pck@<alpha>`` per alpha (per image, %)."""

    type: str  # "epoch"
    epoch: int
    step: int
    partial: bool
    train_loss_mean: float | None
    val: dict[str, Any]  # the evaluator's report: per_image, per_keypoint, per_category, n_pairs, beta_*
    val_beta_eff_mean: float
    best_metric: float | None
    is_best: bool


class DivergedRecord(TypedDict):
    """The run stopped: a non-finite loss, gradient or weight."""

    type: str  # "diverged"
    step: int
    epoch: int
    loss: float | None
    reason: str
    beta_a: list[float | None]
    beta_b: list[float | None]
    last_checkpoint: str | None


#: Field order of a step record as written.
STEP_FIELDS: tuple[str, ...] = tuple(StepRecord.__annotations__)
#: Fields every step record has (the others are optional).
STEP_REQUIRED: tuple[str, ...] = tuple(f for f in STEP_FIELDS if f != "grad_abs_mean")
#: The evaluator's report entries an epoch record keeps under ``val``.
EPOCH_VAL_KEYS = ("per_image", "per_keypoint", "per_category", "n_pairs", "beta_eff", "beta_eval")


def step_record(fields: Mapping[str, Any]) -> StepRecord:
    """A step record with its fields in :data:`STEP_FIELDS` order (unknown keys dropped)."""
    return {k: fields[k] for k in STEP_FIELDS if k in fields}  # type: ignore[return-value]


def step_record_from_values(fields: Mapping[str, Any], values: Mapping[str, torch.Tensor]) -> StepRecord:
    """A step's record from its host ``fields`` (type, step, epoch, batch, learning rates) and
    the values the step left on the device, read back (loss terms, temperatures, and the
    ``grad:<layer>`` gradient means when logged)."""
    record = dict(fields)
    record["loss"], record["ce"], record["reg"] = float(values["loss"]), float(values["ce"]), float(values["reg"])
    record["beta_a_mean"], record["beta_a_std"] = mean_std(values["beta_a"])
    record["beta_b_mean"], record["beta_b_std"] = mean_std(values["beta_b"])
    record["beta_eff_mean"] = mean_std(values["beta_eff"])[0]
    grad = {k.removeprefix("grad:"): float(x) for k, x in values.items() if k.startswith("grad:")}
    if grad:
        record["grad_abs_mean"] = grad
    return step_record(record)


def epoch_record(
    epoch: int,
    step: int,
    partial: bool,
    train_loss_mean: float | None,
    report: Mapping[str, Any],
    best_metric: float | None,
    is_best: bool,
) -> EpochRecord:
    """The record of one validation from the evaluator's ``report``."""
    record: dict[str, Any] = {
        "type": "epoch",
        "epoch": epoch,
        "step": step,
        "partial": partial,
        "train_loss_mean": train_loss_mean,
        "val": {k: report[k] for k in EPOCH_VAL_KEYS},
        **{f"val_pck@{a}": v for a, v in report["per_image"].items()},
        "val_beta_eff_mean": report["beta_eff"]["mean"],
        "best_metric": best_metric,
        "is_best": is_best,
    }
    return record  # type: ignore[return-value]  # val_pck@<alpha> keys: not expressible in a TypedDict


def _finite(x: float) -> float | None:
    """JSON has no NaN/inf: non-finite numbers become ``null``."""
    return x if math.isfinite(x) else None


def diverged_record(
    step: int, epoch: int, loss: float, reason: str, beta_a: list[float], beta_b: list[float], last: Path | None
) -> DivergedRecord:
    """The record written when the run stops on a non-finite value."""
    return {
        "type": "diverged",
        "step": step,
        "epoch": epoch,
        "loss": _finite(loss),
        "reason": reason,
        "beta_a": [_finite(float(b)) for b in beta_a],
        "beta_b": [_finite(float(b)) for b in beta_b],
        "last_checkpoint": str(last) if last else None,
    }


def read_records(path: str | os.PathLike, kind: str | None = None) -> Iterator[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (only those of type ``kind`` if given)."""
    with open(Path(path), encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                if kind is None or rec.get("type") == kind:
                    yield rec


def mean_std(x: torch.Tensor) -> tuple[float, float]:
    """Mean and population standard deviation of a tensor's values, as floats."""
    x = x.detach().double().flatten()
    return float(x.mean()), float(x.std(unbiased=False)) if x.numel() > 1 else 0.0
