"""NCNet (Rocco et al., NeurIPS 2018) as a matching head: 4D neighbourhood consensus.

As NCNet computes it (``ignacio-rocco/ncnet``, ``lib/model.py``): the full correlation of the
L2-normalised (``x / sqrt(sum x^2 + 1e-6)``) ``layer3`` features is filtered by soft mutual
nearest neighbours ``c * ((c / max_A c) * (c / max_B c))`` (bracketed as NCNet's, so that
swapping A and B gives exactly the swapped result, not only to rounding), refined by a stack
of 4D convolutions (ReLU after each) applied symmetrically (``N(c) + swap(N(swap(c)))``), and
filtered by soft mutual nearest neighbours again. NCNet's softmax over its output has
temperature 1 (``fixed:1``); SimSC's temperature enters there: the output is divided by
``beta_A beta_B``, so ``fixed:1`` is NCNet's. Presets: ``paper`` = kernels 5-5-5, channels
16-16-1 (NCNet's PF-Pascal model); ``small`` = kernels 3-3, channels 8-1 for CPU toy runs.

Differences, and why: NCNet's weakly supervised loss is replaced by the shared
cross-entropy (the experiment's premise); the last 4D conv starts non-negative with zero
bias (see ``NCNetHead.__init__``) so that its ReLU output is not identically zero at the
start (with one output channel a random init is dead for about one seed in two).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import MatchingHead, correlation_4d, inverse_temperature, sample_correlation, swap_ab
from .registry import register_head

_PRESETS = {"paper": ((5, 5, 5), (16, 16, 1)), "small": ((3, 3), (8, 1))}


class Conv4d(nn.Module):
    """A 4D convolution (stride 1, zero 'same' padding) as ``k`` 3D convolutions over the first dim."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"Conv4d needs an odd kernel size, got {kernel_size}")
        self.k = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *(kernel_size,) * 4))
        self.bias = nn.Parameter(torch.empty(out_channels))
        fan_in = in_channels * kernel_size**4
        bound = 1 / math.sqrt(fan_in)
        nn.init.kaiming_uniform_(self.weight.view(out_channels, -1), a=math.sqrt(5))  # as nn.ConvNd
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, I, J, K, L] -> [B, C_out, I, J, K, L]``."""
        b, c, i, j, k, l_ = x.shape
        p = self.k // 2
        xp = F.pad(x, (0, 0, 0, 0, 0, 0, p, p))  # pad I only; J, K, L are padded by conv3d
        out: torch.Tensor | None = None
        for d in range(self.k):
            sl = xp[:, :, d : d + i].transpose(1, 2).reshape(b * i, c, j, k, l_)
            y = F.conv3d(sl, self.weight[:, :, d], None, padding=p)
            out = y if out is None else out + y
        assert out is not None  # self.k >= 1
        out = out.view(b, i, -1, j, k, l_).transpose(1, 2)
        return out + self.bias.view(1, -1, 1, 1, 1, 1)


def mutual_matching(corr: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Soft mutual nearest-neighbour filtering ``c * ((c / max_A c) * (c / max_B c))`` of ``[B, hA, wA, hB, wB]``.

    The two ratios are multiplied first, as in NCNet: swapping A and B swaps them, and their
    product is commutative in floating point, so the result is exactly symmetric.
    """
    b, ha, wa, hb, wb = corr.shape
    flat = corr.reshape(b, ha * wa, hb * wb)
    max_a = flat.max(dim=1, keepdim=True).values  # best A cell for each B cell
    max_b = flat.max(dim=2, keepdim=True).values  # best B cell for each A cell
    return (flat * ((flat / (max_a + eps)) * (flat / (max_b + eps)))).view_as(corr)


@register_head("ncnet")
class NCNetHead(MatchingHead):
    level_offsets = (0,)
    default_temperature = "fixed:1"

    def __init__(self, level_channels, preset: str = "paper", grid=None) -> None:
        super().__init__(level_channels, preset, grid)
        kernels, channels = _PRESETS[preset]
        layers: list[nn.Module] = []
        c_in = 1
        for k, c in zip(kernels, channels, strict=True):
            layers += [Conv4d(c_in, c, k), nn.ReLU(inplace=False)]
            c_in = c
        self.consensus = nn.Sequential(*layers)
        # Start the last 4D conv as a non-negative filter with zero bias: its input is >= 0 (a
        # ReLU or the mutual-matched correlation of ReLU features), so the final ReLU is not
        # dead everywhere at initialisation (with one output channel and a random init it is
        # for about one seed in two, and then no gradient ever flows).
        last = layers[-2]
        assert isinstance(last, Conv4d)
        with torch.no_grad():
            last.weight.abs_()
            last.bias.zero_()

    def neighbourhood_consensus(self, corr: torch.Tensor) -> torch.Tensor:
        """Symmetric 4D consensus of ``[B, hA, wA, hB, wB]``: ``N(c) + swap(N(swap(c)))``."""
        x = corr.unsqueeze(1)
        y = self.consensus(x) + swap_ab(self.consensus(swap_ab(x)))
        return y.squeeze(1)

    def refine(self, corr: torch.Tensor) -> torch.Tensor:
        """NCNet's pipeline on a correlation: mutual NN, consensus, mutual NN."""
        return mutual_matching(self.neighbourhood_consensus(mutual_matching(corr)))

    def forward(self, levels_a, levels_b, beta_a, beta_b, l2: bool = True) -> dict[str, torch.Tensor]:
        corr = correlation_4d(self.normalized(levels_a[0], l2), self.normalized(levels_b[0], l2))
        return {"corr": self.refine(corr) * inverse_temperature(beta_a, beta_b, 4)}

    def query_scores(self, out: dict[str, torch.Tensor], uv_a: torch.Tensor) -> torch.Tensor:
        return sample_correlation(out["corr"], uv_a)
