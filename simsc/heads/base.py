"""The matching-head interface and helpers shared by the heads."""

from __future__ import annotations

import torch
from torch import nn

from .. import defaults as D
from ..choices import HEAD_PRESETS as HEAD_PRESETS
from ..matching import normalize_and_scale, sample_features

#: Stored with every head's weights (``head.layout_version``): checkpoints of the heads before
#: they followed their originals (other layers, the temperature before the correlation) lack it
#: and are refused by :func:`simsc.engine.load_model` instead of loading into other computations.
HEAD_LAYOUT_VERSION = 2
#: The epsilon of the originals' feature L2 norm: ``x / sqrt(sum x^2 + 1e-6)`` (SFNet's
#: ``L2normalize``, NCNet's and CATs' ``featureL2Norm``).
L2_EPS = 1e-6


def l2_normalize(x: torch.Tensor, dim: int = 1, eps: float = L2_EPS) -> torch.Tensor:
    """``x / sqrt(sum_dim x^2 + eps)``: the L2 norm the three originals use (eps inside the root)."""
    return x / (x.pow(2).sum(dim=dim, keepdim=True) + eps).sqrt()


def inverse_temperature(beta_a: torch.Tensor, beta_b: torch.Tensor, dims: int) -> torch.Tensor:
    """``1 / (beta_A beta_B)`` per pair, shaped ``[B, 1, ...]`` (``dims`` trailing ones) to scale a score tensor."""
    return (beta_a * beta_b).reciprocal().view(-1, *(1,) * dims)


class MatchingHead(nn.Module):
    """Features of A and B (one map per backbone level) -> score maps of query points.

    Subclasses set :attr:`level_offsets` (the backbone levels they read, offsets from the
    main level; the first entry is the level the temperature module reads),
    :attr:`default_temperature` (their paper's training temperature) and
    :attr:`default_sigma` (the kernel soft-argmax's std their paper localises with), and
    implement :meth:`forward` and :meth:`query_scores`.

    Every head applies the temperature where its original applies its own: to its final
    scores, which are divided by ``beta_A beta_B`` (SimSC's effective temperature, paper
    Eq. 5) in place of the original's fixed constant; ``fixed:<beta>`` at the original's
    value then reproduces it (SFNet and CATs 0.02, NCNet 1).
    """

    name: str = ""
    level_offsets: tuple[int, ...] = (0,)
    default_temperature: str = "fixed:1"
    default_sigma: float = D.SIGMA

    def __init__(
        self, level_channels: tuple[int, ...], preset: str = "paper", grid: tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        if len(level_channels) != len(self.level_offsets):
            raise ValueError(
                f"{type(self).__name__} reads {len(self.level_offsets)} backbone levels, "
                f"got channels for {len(level_channels)}"
            )
        self.level_channels = tuple(int(c) for c in level_channels)
        self.preset = preset
        self.register_buffer("layout_version", torch.tensor(HEAD_LAYOUT_VERSION))

    def forward(
        self,
        levels_a: list[torch.Tensor],
        levels_b: list[torch.Tensor],
        beta_a: torch.Tensor,
        beta_b: torch.Tensor,
        l2: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Head state for the pair batch (whatever :meth:`query_scores` needs)."""
        raise NotImplementedError  # pragma: no cover - interface

    def query_scores(self, out: dict[str, torch.Tensor], uv_a: torch.Tensor) -> torch.Tensor:
        """Score maps ``[B, N, h_B, w_B]`` of the queries ``uv_a [B, N, 2]`` (main-level cells)."""
        raise NotImplementedError  # pragma: no cover - interface

    @staticmethod
    def scaled(feat: torch.Tensor, beta: torch.Tensor, l2: bool) -> torch.Tensor:
        """L2-normalise and divide by the partial temperature (paper Eq. 5), as SimSC does.
        No ``beta > 0`` check here (a host read, a device sync each step on accelerators):
        :meth:`SimSC._forward_head` checks the same betas once, when checks are on."""
        return normalize_and_scale(feat, beta, l2=l2, check=False)

    @staticmethod
    def normalized(feat: torch.Tensor, l2: bool) -> torch.Tensor:
        """The originals' feature L2 norm (:func:`l2_normalize`); ``l2=False`` (the ``no-l2``
        temperature) leaves the features as they are."""
        return l2_normalize(feat) if l2 else feat


def correlation_4d(feat_a: torch.Tensor, feat_b: torch.Tensor) -> torch.Tensor:
    """All-pairs dot products ``[B, h_A, w_A, h_B, w_B]`` of ``[B, C, h, w]`` maps."""
    b, _, ha, wa = feat_a.shape
    hb, wb = feat_b.shape[-2:]
    return torch.einsum("bci,bcj->bij", feat_a.flatten(2), feat_b.flatten(2)).view(b, ha, wa, hb, wb)


def swap_ab(corr: torch.Tensor) -> torch.Tensor:
    """``corr[..., iA, jA, iB, jB] -> [..., iB, jB, iA, jA]``: the correlation of (B, A)."""
    return corr.transpose(-4, -2).transpose(-3, -1)


def sample_correlation(corr: torch.Tensor, uv_a: torch.Tensor) -> torch.Tensor:
    """Rows of a full correlation ``[B, h_A, w_A, h_B, w_B]`` at sub-cell queries ``uv_a [B, N, 2]``.

    Bilinear in A, as :func:`~simsc.matching.query_score_maps` is for SimSC's feature
    correlation (the two agree on a plain correlation because sampling is linear).
    """
    b, ha, wa, hb, wb = corr.shape
    rows = sample_features(corr.reshape(b, ha, wa, hb * wb).permute(0, 3, 1, 2), uv_a)  # [B, N, hB*wB]
    return rows.view(b, uv_a.shape[1], hb, wb)
