"""SFNet (Lee et al., CVPR 2019) as a matching head: adaptation layers on two backbone
levels and the normalised product of their correlations.

As SFNet computes it (``cvlab-yonsei/SFNet``, ``model.py``):

* adaptation per level: two residual conv-BN-ReLU blocks, ``f1 = x + B1(x)``,
  ``f2 = f1 + B2(f1)``, same width as the input, 5 x 5 kernels on ``layer3`` and 3 x 3 on
  ``layer4``; source and target go through them separately (BatchNorm in training mode sees
  the batch of one image side, as SFNet calls the layer once per side);
* ``layer4`` upsampled by 2 (bilinear, ``align_corners=True``) to the ``layer3`` grid;
* per level the correlation of the L2-normalised maps (``x / sqrt(sum x^2 + 1e-6)``), ReLU;
* the product of the two correlations, L2-normalised over the target cells, times
  ``1 / temperature``: SFNet's 50 (its temperature 0.02). SimSC's temperature enters there:
  the scores are divided by ``beta_A beta_B``, so ``fixed:0.02`` is SFNet's softmax;
* kernel soft-argmax with sigma 5 (:attr:`SFNetHead.default_sigma`, SFNet's ``kernel_sigma``).

Differences, and why: odd ``layer3`` grids (inputs not a multiple of 32 px; SFNet only runs
at fixed even sizes) have a ``layer4`` of ``ceil(h / 2)`` cells, whose x2 upsampling is one
row/column longer than ``layer3``: it is computed exactly as SFNet's and its last row/column
(from the zero padding past the image) is dropped. Scores at a sub-cell query are the
bilinear interpolation of the scores at the four neighbouring source cells (SFNet only
queries cells). Not kept: SFNet's mask/flow consistency and smoothness losses (the
experiment trains every head with the same cross-entropy) and the flow-field output. The
temperature module reads the backbone's ``layer3`` features, as SimSC's does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import MatchingHead, inverse_temperature, sample_correlation
from .registry import register_head

#: Kernel size of the adaptation blocks per level (SFNet: 5 x 5 on layer3, 3 x 3 on layer4).
KERNELS = (5, 3)
#: SFNet's epsilon of the score normalisation (inside the square root, as its ``L2normalize``).
SCORE_EPS = 1e-6


class ResidualAdaptation(nn.Module):
    """``x + B(x)`` with ``B`` = conv (same width, 'same' padding), BatchNorm, ReLU."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _adaptation(channels: int, kernel_size: int) -> nn.Sequential:
    """SFNet's adaptation layer: two residual blocks in sequence, ``f1 = x + B1(x); f1 + B2(f1)``."""
    return nn.Sequential(ResidualAdaptation(channels, kernel_size), ResidualAdaptation(channels, kernel_size))


def upsample_layer4(f4: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """SFNet's ``interpolate(scale_factor=2, bilinear, align_corners=True)``, cropped to the
    ``layer3`` grid ``size`` when that is odd (``layer4`` then has ``ceil(h / 2)`` cells: the
    upsampled map's extra last row/column comes from the zero padding past the image)."""
    h4, w4 = f4.shape[-2:]
    if not (2 * h4 - 1 <= size[0] <= 2 * h4 and 2 * w4 - 1 <= size[1] <= 2 * w4):
        raise ValueError(f"SFNet: layer4 grid {(h4, w4)} is not half the layer3 grid {tuple(size)}")
    up = F.interpolate(f4, size=(2 * h4, 2 * w4), mode="bilinear", align_corners=True)
    return up[..., : size[0], : size[1]]


def relu_correlation(feat_a: torch.Tensor, feat_b: torch.Tensor) -> torch.Tensor:
    """SFNet's matching layer on normalised maps: ``ReLU(<f_A(i), f_B(j)>)`` as ``[B, h_A, w_A, h_B, w_B]``."""
    b, _, ha, wa = feat_a.shape
    hb, wb = feat_b.shape[-2:]
    corr = torch.einsum("bci,bcj->bij", feat_a.flatten(2), feat_b.flatten(2))
    return F.relu(corr).view(b, ha, wa, hb, wb)


def normalise_over_target(scores: torch.Tensor, eps: float = SCORE_EPS) -> torch.Tensor:
    """``s / sqrt(sum_target s^2 + eps)`` of ``[B, h_A, w_A, h_B, w_B]``: each source cell's scores over B."""
    norm = (scores.pow(2).sum(dim=(-2, -1), keepdim=True) + eps).sqrt()
    return scores / norm


@register_head("sfnet")
class SFNetHead(MatchingHead):
    level_offsets = (0, 1)  # layer3, layer4
    default_temperature = "fixed:0.02"
    default_sigma = 5.0

    def __init__(self, level_channels, preset: str = "paper", grid=None) -> None:
        super().__init__(level_channels, preset, grid)
        # Both presets keep SFNet's layout: the adaptation layers are cheap next to the backbone.
        self.adapt = nn.ModuleList(_adaptation(c, k) for c, k in zip(self.level_channels, KERNELS, strict=True))

    def embed(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Adapted ``layer3`` and ``layer4`` (upsampled to the ``layer3`` grid) of one image side."""
        f3, f4 = (a(f) for a, f in zip(self.adapt, levels, strict=True))
        return [f3, upsample_layer4(f4, tuple(f3.shape[-2:]))]

    def forward(self, levels_a, levels_b, beta_a, beta_b, l2: bool = True) -> dict[str, torch.Tensor]:
        # One call per image side, as SFNet: in training mode BatchNorm normalises each side by its own statistics.
        a3, a4 = (self.normalized(f, l2) for f in self.embed(levels_a))
        b3, b4 = (self.normalized(f, l2) for f in self.embed(levels_b))
        scores = normalise_over_target(relu_correlation(a3, b3) * relu_correlation(a4, b4))
        return {"corr": scores * inverse_temperature(beta_a, beta_b, 4)}

    def query_scores(self, out: dict[str, torch.Tensor], uv_a: torch.Tensor) -> torch.Tensor:
        return sample_correlation(out["corr"], uv_a)
