"""SFNet (Lee et al., CVPR 2019) as a matching head: adaptation layers on two backbone
levels and the product of their correlations.

SFNet reads ResNet-101 ``layer3`` (conv4-23, stride 16) and ``layer4`` (conv5-3, stride 32),
passes each through an adaptation layer (3 x 3 conv, BatchNorm, ReLU; same width as its
input), upsamples the ``layer4`` map to the ``layer3`` grid, L2-normalises both and
multiplies the two correlation maps. Its kernel soft-argmax is :mod:`simsc.soft_argmax`
(SFNet introduced it) and is shared with every head.

Temperature: SFNet's own is 0.02 (``fixed:0.02``). The temperature divides the normalised
``layer3`` features only, so that the product of the two correlations is scaled by exactly
``1 / (beta_A beta_B)``, as a single SimSC correlation is. Not kept from SFNet: its
mask/flow consistency and smoothness losses (the experiment trains every head with the
same cross-entropy) and the flow-field output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..matching import query_score_maps
from .base import MatchingHead
from .registry import register_head


def _adaptation(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


@register_head("sfnet")
class SFNetHead(MatchingHead):
    level_offsets = (0, 1)  # layer3, layer4
    default_temperature = "fixed:0.02"

    def __init__(self, level_channels, preset: str = "paper", grid=None) -> None:
        super().__init__(level_channels, preset, grid)
        # Both presets keep SFNet's layout: the adaptation layers are cheap next to the backbone.
        self.adapt = nn.ModuleList(_adaptation(c) for c in self.level_channels)

    def _embed(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        f3, f4 = (a(f) for a, f in zip(self.adapt, levels, strict=True))
        f4 = F.interpolate(f4, size=f3.shape[-2:], mode="bilinear", align_corners=False)
        return [f3, f4]

    def forward(self, levels_a, levels_b, beta_a, beta_b, l2: bool = True) -> dict[str, torch.Tensor]:
        if levels_a[0].shape[-2:] == levels_b[0].shape[-2:]:
            # One pass for both images, as the backbone does (BatchNorm sees the pair batch).
            both = self._embed([torch.cat([a, b]) for a, b in zip(levels_a, levels_b, strict=True)])
            (a3, b3), (a4, b4) = (t.chunk(2) for t in both)
        else:
            a3, a4 = self._embed(levels_a)
            b3, b4 = self._embed(levels_b)
        ones_a, ones_b = torch.ones_like(beta_a), torch.ones_like(beta_b)
        return {
            "a3": self.scaled(a3, beta_a, l2),
            "b3": self.scaled(b3, beta_b, l2),
            "a4": self.scaled(a4, ones_a, l2),
            "b4": self.scaled(b4, ones_b, l2),
        }

    def query_scores(self, out: dict[str, torch.Tensor], uv_a: torch.Tensor) -> torch.Tensor:
        return query_score_maps(out["a3"], out["b3"], uv_a) * query_score_maps(out["a4"], out["b4"], uv_a)
