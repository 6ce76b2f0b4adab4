"""A training run that diverged: the error it raises, naming the step, the loss and the
temperatures, and where the last good checkpoint is."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import DivergedError

if TYPE_CHECKING:
    from ..model import SimSC


class TrainingDivergedError(DivergedError):
    """The loss (or a gradient / weight) became non-finite. No checkpoint of the bad state is
    written; ``last_checkpoint`` (if any) holds the last good state."""

    def __init__(
        self,
        step: int,
        epoch: int,
        loss: float,
        beta_a: Sequence[float],
        beta_b: Sequence[float],
        reason: str,
        last_checkpoint: Path | None,
    ) -> None:
        self.step, self.epoch, self.loss = step, epoch, loss
        self.beta_a, self.beta_b = list(beta_a), list(beta_b)
        self.reason, self.last_checkpoint = reason, last_checkpoint
        where = f"last good checkpoint: {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
        super().__init__(
            f"training diverged at step {step} (epoch {epoch}): {reason}; loss = {loss:.6g}, "
            f"beta_a = {_fmt_betas(self.beta_a)}, beta_b = {_fmt_betas(self.beta_b)}; {where}"
        )


def batch_temperatures(model: SimSC, batch: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    """The temperatures the model gives a batch's source and target images, for the
    message of a divergence found before the step's own were read (``[]`` when the forward
    fails: the diagnosis must not mask the divergence)."""
    try:
        with torch.no_grad():
            beta_a = model.temperature(model.backbone(batch["src_img"])).tolist()
            beta_b = model.temperature(model.backbone(batch["trg_img"])).tolist()
    except Exception:  # noqa: BLE001
        return [], []
    return beta_a, beta_b


def _fmt_betas(values: Sequence[float]) -> str:
    vals = [float(v) for v in values]
    if not vals:
        return "[]"
    shown = ", ".join(f"{v:.4g}" for v in vals[:8]) + (", ..." if len(vals) > 8 else "")
    finite = [v for v in vals if math.isfinite(v)]
    mean = f"{sum(finite) / len(finite):.4g}" if finite else "nan"
    return f"[{shown}] (mean {mean})"
