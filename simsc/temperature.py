"""The temperature module g and its ablation variants, picked by name.

Each variant maps a feature map ``F [B, C, h, w]`` to a *partial* temperature
``beta [B]``; features are divided by it after L2 normalisation, so the effective
softmax temperature of a pair is ``beta_A * beta_B`` (paper Eq. 5).

- ``mlp``: GAP -> Linear(C, C) -> ReLU -> Linear(C, 1) -> sigmoid (paper Fig. 4). It
  reads ``F.detach()``: its gradient never reaches the backbone.
- ``single``: one learnable scalar ``beta_c`` for both images, so the effective
  temperature is ``beta_c ** 2`` (supplement Sec. 6).
- ``fixed:<beta>``: a manual training temperature; each side gets ``sqrt(beta)`` so the
  effective one is ``beta`` (``fixed:1`` is the "WithL2Norm" baseline).
- ``no-l2``: no L2 normalisation and beta = 1 ("NoL2Norm").
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .choices import TEMPERATURES as TEMPERATURES
from .choices import parse_temperature

# The WithL2Norm baseline and untrained backbones are evaluated with this soft-argmax
# temperature (paper supp. Tab. 1; SFNet/CATs default).
MANUAL_BETA_EVAL = 0.02


class Temperature(nn.Module):
    """Base class: ``forward(feat) -> beta [B]``."""

    #: L2-normalise features before scaling (False only for ``no-l2``).
    l2_normalize: bool = True
    #: has parameters that the loss (and L_reg) should train.
    learnable: bool = False
    #: soft-argmax temperature applied on top of the already-scaled scores at inference.
    default_beta_eval: float = 1.0
    name: str = ""

    def forward(self, feat: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class MLPTemperature(Temperature):
    learnable = True
    name = "mlp"

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(inplace=True), nn.Linear(channels, 1))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        pooled = feat.detach().mean(dim=(2, 3))  # stop-gradient into the backbone
        return torch.sigmoid(self.mlp(pooled)).squeeze(-1)


class SingleTemperature(Temperature):
    learnable = True
    name = "single"

    def __init__(self, init: float = 0.5) -> None:
        super().__init__()
        if init <= 0:
            raise ValueError(f"single temperature init must be > 0, got {init}")
        self.beta_c = nn.Parameter(torch.tensor(float(init)))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.beta_c.expand(feat.shape[0])


class FixedTemperature(Temperature):
    name = "fixed"

    def __init__(self, beta: float) -> None:
        super().__init__()
        if not beta > 0 or not math.isfinite(beta):
            raise ValueError(f"fixed temperature must be a finite number > 0, got {beta}")
        self.beta = float(beta)
        self.name = f"fixed:{beta:g}"
        # Fixed temperatures are evaluated at the training temperature (supp. Fig. 3),
        # except beta = 1, the no-temperature baseline (supp. Tab. 1 uses 0.02).
        self.default_beta_eval = 1.0 if self.beta < 1.0 else MANUAL_BETA_EVAL

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return feat.new_full((feat.shape[0],), math.sqrt(self.beta))


class NoL2Temperature(Temperature):
    l2_normalize = False
    name = "no-l2"

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return feat.new_ones(feat.shape[0])


def build_temperature(mode: str, channels: int) -> Temperature:
    """Build a temperature variant from its name (``mlp``, ``single``, ``fixed:<beta>``, ``no-l2``)."""
    kind, beta = parse_temperature(mode)
    if kind == "mlp":
        return MLPTemperature(channels)
    if kind == "single":
        return SingleTemperature()
    if kind == "no-l2":
        return NoL2Temperature()
    assert beta is not None  # parse_temperature gives fixed its beta
    return FixedTemperature(beta)


def effective_temperature(beta_a: torch.Tensor, beta_b: torch.Tensor) -> torch.Tensor:
    """The softmax temperature a pair is trained with: ``beta_A * beta_B`` (paper Eq. 5)."""
    return beta_a * beta_b
