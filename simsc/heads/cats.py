"""CATs (Cho et al., NeurIPS 2021) as a matching head: multi-level correlation aggregated
by a transformer with appearance embedding.

Correlations of L2-normalised features at several backbone levels (CATs' hyperpixels)
form an ``L x N_A x N_B`` stack. Each source cell becomes a token: its correlation row
concatenated with an appearance embedding (a linear projection of that level's features),
plus a learned positional embedding. Blocks alternate self-attention over the cells of a
level with self-attention across the levels of a cell (pre-norm, MLPs). The same
aggregator runs on the transposed stack with the target's appearance (CATs' swapping), the
two are summed, averaged over levels and added to the mean input correlation (residual).

Simplifications: the levels are the stage outputs ``layer2, layer3, layer4`` (timm's
``forward_intermediates`` exposes stages, CATs picks 8 bottleneck outputs of ResNet-101),
resampled to the ``layer3`` grid; no dropout; the loss is the shared cross-entropy instead
of CATs' flow EPE. CATs works at a fixed feature grid (16 x 16 for 256 px images): the
correlation rows are tokens of that length. At other input sizes the features are
resampled bilinearly to that grid and the refined correlation back to the input's grid.
Default temperature 0.02 (``fixed:0.02``) like CATs' soft-argmax, here applied, like every
temperature in this experiment, to the normalised features before the correlation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import MatchingHead, sample_correlation
from .registry import register_head

_PRESETS = {
    # CATs' PF-Pascal model: 128-d appearance, 4 blocks, 6 heads, MLP ratio 4.
    "paper": {"app_dim": 128, "depth": 4, "heads": 6, "mlp_ratio": 4},
    "small": {"app_dim": 16, "depth": 1, "heads": 2, "mlp_ratio": 2},
}


def _mlp(dim: int, ratio: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim * ratio), nn.GELU(), nn.Linear(dim * ratio, dim))


class MultiLevelBlock(nn.Module):
    """Self-attention over cells within each level, then across levels within each cell."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3, self.norm4 = (nn.LayerNorm(dim) for _ in range(4))
        self.attn_cells = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.attn_levels = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp1, self.mlp2 = _mlp(dim, mlp_ratio), _mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, N, E] -> [B, L, N, E]``."""
        b, lv, n, e = x.shape
        t = x.reshape(b * lv, n, e)
        h = self.norm1(t)
        t = t + self.attn_cells(h, h, h, need_weights=False)[0]
        t = t + self.mlp1(self.norm2(t))
        t = t.view(b, lv, n, e).transpose(1, 2).reshape(b * n, lv, e)
        h = self.norm3(t)
        t = t + self.attn_levels(h, h, h, need_weights=False)[0]
        t = t + self.mlp2(self.norm4(t))
        return t.view(b, n, lv, e).transpose(1, 2)


def _resize_grid(feat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(feat.shape[-2:]) == tuple(size):
        return feat
    return F.interpolate(feat, size=size, mode="bilinear", align_corners=False)


@register_head("cats")
class CATsHead(MatchingHead):
    level_offsets = (0, -1, 1)  # layer3 first (the temperature module reads it), layer2, layer4
    default_temperature = "fixed:0.02"

    def __init__(self, level_channels, preset: str = "paper", grid: tuple[int, int] | None = None) -> None:
        super().__init__(level_channels, preset, grid)
        p = _PRESETS[preset]
        gh, gw = grid or (16, 16)
        self.grid: tuple[int, int] = (int(gh), int(gw))
        n = self.grid[0] * self.grid[1]
        heads = p["heads"]
        app_dim = p["app_dim"] + (-(n + p["app_dim"])) % heads  # the token width must split into heads
        dim = n + app_dim
        self.proj = nn.ModuleList(nn.Linear(c, app_dim) for c in self.level_channels)
        self.pos = nn.Parameter(torch.zeros(1, 1, n, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*(MultiLevelBlock(dim, heads, p["mlp_ratio"]) for _ in range(p["depth"])))
        self.out = nn.Linear(dim, n)

    def _aggregate(self, corr: torch.Tensor, app: torch.Tensor) -> torch.Tensor:
        """One direction: tokens are the rows of ``corr [B, L, N, N]`` with appearance ``[B, L, N, d]``."""
        x = torch.cat([corr, app], dim=-1) + self.pos
        return self.out(self.blocks(x))

    def refine(self, corr: torch.Tensor, app_a: torch.Tensor, app_b: torch.Tensor) -> torch.Tensor:
        """``[B, L, N_A, N_B]`` multi-level correlation -> refined ``[B, N_A, N_B]``."""
        y = self._aggregate(corr, app_a) + self._aggregate(corr.transpose(-1, -2), app_b).transpose(-1, -2)
        return y.mean(1) + corr.mean(1)

    def forward(self, levels_a, levels_b, beta_a, beta_b, l2: bool = True) -> dict[str, torch.Tensor]:
        size_a, size_b = tuple(levels_a[0].shape[-2:]), tuple(levels_b[0].shape[-2:])
        feats_a = [_resize_grid(f, self.grid) for f in levels_a]
        feats_b = [_resize_grid(f, self.grid) for f in levels_b]
        corr = torch.stack(
            [
                torch.einsum(
                    "bci,bcj->bij", self.scaled(fa, beta_a, l2).flatten(2), self.scaled(fb, beta_b, l2).flatten(2)
                )
                for fa, fb in zip(feats_a, feats_b, strict=True)
            ],
            1,
        )  # [B, L, N, N]
        app_a = torch.stack([p(f.flatten(2).transpose(1, 2)) for p, f in zip(self.proj, feats_a, strict=True)], 1)
        app_b = torch.stack([p(f.flatten(2).transpose(1, 2)) for p, f in zip(self.proj, feats_b, strict=True)], 1)
        refined = self.refine(corr, app_a, app_b)
        b = refined.shape[0]
        gh, gw = self.grid
        refined = refined.view(b, gh, gw, gh, gw)
        if size_b != self.grid:  # back to B's grid
            refined = _resize_grid(refined.reshape(b * gh * gw, 1, gh, gw), size_b).view(b, gh, gw, *size_b)
        if size_a != self.grid:  # back to A's grid
            t = refined.permute(0, 3, 4, 1, 2).reshape(b * size_b[0] * size_b[1], 1, gh, gw)
            refined = _resize_grid(t, size_a).view(b, *size_b, *size_a).permute(0, 3, 4, 1, 2)
        return {"corr": refined}

    def query_scores(self, out: dict[str, torch.Tensor], uv_a: torch.Tensor) -> torch.Tensor:
        return sample_correlation(out["corr"], uv_a)
