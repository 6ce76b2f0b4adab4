"""CATs (Cho et al., NeurIPS 2021) as a matching head: multi-level correlation aggregated
by a transformer with appearance embedding.

As CATs computes it (``SunghwanHong/Cost-Aggregation-transformers``, ``models/cats.py``):

* each level's features are resampled to the fixed feature grid (bilinear,
  ``align_corners=True``); per level the correlation of the L2-normalised maps
  (``x / sqrt(sum x^2 + 1e-6)``) forms an ``L x N_A x N_B`` stack, filtered level by level by
  mutual nearest neighbours ``c * ((c / max_B c) * (c / max_A c))`` (zero maxima replaced by
  1e-30) before the aggregation;
* a token is a correlation row concatenated with the appearance embedding of its cell (a
  linear projection per level of the resampled, unnormalised features), plus a learned
  positional embedding per level whose first half varies along x and second half along y;
* blocks (pre-norm, LayerNorm eps 1e-6): self-attention over the cells of a level, MLP,
  self-attention across the levels of a cell, MLP; linear layers initialised truncated
  normal (std 0.02), zero bias;
* swapping, sequential and with shared weights: first the tokens are the query image's
  (A's) cells with A's appearance, the output is transposed and added to the input
  correlation; then the tokens are B's cells with B's appearance, and the input correlation is
  added again; the mean over levels is the refined correlation;
* CATs' soft-argmax temperature (0.02) divides the refined correlation: SimSC's temperature
  enters there (scores divided by ``beta_A beta_B``), so ``fixed:0.02`` is CATs'.

Differences, and why: the levels are the stage outputs ``layer2, layer3, layer4`` (timm's
``forward_intermediates`` exposes stages; CATs picks 8 bottleneck outputs of ResNet-101,
taken before the block's last ReLU), the temperature module reads ``layer3``; the loss is
the shared cross-entropy instead of CATs' flow EPE; no dropout (CATs' aggregator has none by
default either). CATs works at one feature grid (16 x 16 for 256 px images) because the
correlation rows are tokens of that length: at other input sizes the features are resampled
to that grid and the refined correlation back to the input's grid (bilinear,
``align_corners=True``, as CATs resamples); CATs itself only runs at its training size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import MatchingHead, inverse_temperature, sample_correlation
from .registry import register_head

_PRESETS = {
    # CATs' PF-Pascal model: 128-d appearance, 4 blocks, 6 heads, MLP ratio 4.
    "paper": {"app_dim": 128, "depth": 4, "heads": 6, "mlp_ratio": 4},
    "small": {"app_dim": 16, "depth": 1, "heads": 2, "mlp_ratio": 2},
}
#: CATs' LayerNorm epsilon (``partial(nn.LayerNorm, eps=1e-6)``), not PyTorch's default 1e-5.
LN_EPS = 1e-6
#: What CATs' mutual-NN filter puts in place of a zero maximum.
MNN_ZERO = 1e-30


class Attention(nn.Module):
    """Multi-head self-attention with one ``qkv`` projection (bias) and an output projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, e = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, e // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, e))


def _mlp(dim: int, ratio: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim * ratio), nn.GELU(), nn.Linear(dim * ratio, dim))


class MultiLevelBlock(nn.Module):
    """Self-attention over cells within each level, then across levels within each cell."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3, self.norm4 = (nn.LayerNorm(dim, eps=LN_EPS) for _ in range(4))
        self.attn_cells = Attention(dim, heads)
        self.attn_levels = Attention(dim, heads)
        self.mlp1, self.mlp2 = _mlp(dim, mlp_ratio), _mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, N, E] -> [B, L, N, E]``."""
        b, lv, n, e = x.shape
        t = x.reshape(b * lv, n, e)
        t = t + self.attn_cells(self.norm1(t))
        t = t + self.mlp1(self.norm2(t))
        t = t.view(b, lv, n, e).transpose(1, 2).reshape(b * n, lv, e)
        t = t + self.attn_levels(self.norm3(t))
        t = t + self.mlp2(self.norm4(t))
        return t.view(b, n, lv, e).transpose(1, 2)


def resize_grid(feat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resampling with ``align_corners=True`` (CATs' hyperpixel resampling)."""
    if tuple(feat.shape[-2:]) == tuple(size):
        return feat
    return F.interpolate(feat, size=size, mode="bilinear", align_corners=True)


def mutual_nn_filter(corr: torch.Tensor) -> torch.Tensor:
    """CATs' mutual nearest-neighbour filter of ``[..., N_A, N_B]`` (every leading index separately):
    ``c * ((c / max over B) * (c / max over A))``, a zero maximum replaced by 1e-30."""
    max_b = corr.max(dim=-1, keepdim=True).values  # best B cell of each A cell
    max_a = corr.max(dim=-2, keepdim=True).values  # best A cell of each B cell
    max_b = torch.where(max_b == 0, torch.full_like(max_b, MNN_ZERO), max_b)
    max_a = torch.where(max_a == 0, torch.full_like(max_a, MNN_ZERO), max_a)
    return corr * ((corr / max_b) * (corr / max_a))


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
        # The token width must split into heads, and into the x and y halves of the positional embedding.
        unit = heads * 2 // math.gcd(heads, 2)
        app_dim = p["app_dim"] + (-(n + p["app_dim"])) % unit
        dim = n + app_dim
        self.proj = nn.ModuleList(nn.Linear(c, app_dim) for c in self.level_channels)
        levels = len(self.level_channels)
        # Per level: the x half indexed by the column, the y half by the row of the token's cell.
        self.pos_x = nn.Parameter(torch.zeros(1, levels, 1, self.grid[1], dim // 2))
        self.pos_y = nn.Parameter(torch.zeros(1, levels, self.grid[0], 1, dim // 2))
        self.blocks = nn.Sequential(*(MultiLevelBlock(dim, heads, p["mlp_ratio"]) for _ in range(p["depth"])))
        self.out = nn.Linear(dim, n)
        nn.init.trunc_normal_(self.pos_x, std=0.02)
        nn.init.trunc_normal_(self.pos_y, std=0.02)
        # CATs initialises the aggregator's linear layers (not the appearance projections) this way.
        for m in [*self.blocks.modules(), self.out]:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def positional_embedding(self) -> torch.Tensor:
        """``[1, L, N, E]``: token of cell (row i, column j) at level l is ``[pos_x[l, j] | pos_y[l, i]]``."""
        gh, gw = self.grid
        lv = self.pos_x.shape[1]
        pos = torch.cat([self.pos_x.expand(1, lv, gh, gw, -1), self.pos_y.expand(1, lv, gh, gw, -1)], dim=-1)
        return pos.flatten(2, 3)

    def _aggregate(self, corr: torch.Tensor, app: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One pass: tokens are the rows of ``corr [B, L, N, N]`` with appearance ``app [B, L, N, d]``."""
        return self.out(self.blocks(torch.cat([corr, app], dim=-1) + pos))

    def refine(self, corr: torch.Tensor, app_a: torch.Tensor, app_b: torch.Tensor) -> torch.Tensor:
        """``[B, L, N_A, N_B]`` (mutual-NN filtered) -> refined ``[B, N_A, N_B]``: CATs' sequential swapping."""
        pos = self.positional_embedding()
        x = self._aggregate(corr, app_a, pos) + corr  # tokens: A's cells
        t = corr.transpose(-1, -2)
        x = self._aggregate(x.transpose(-1, -2), app_b, pos) + t  # tokens: B's cells
        return x.mean(1).transpose(-1, -2)

    def forward(self, levels_a, levels_b, beta_a, beta_b, l2: bool = True) -> dict[str, torch.Tensor]:
        size_a, size_b = tuple(levels_a[0].shape[-2:]), tuple(levels_b[0].shape[-2:])
        feats_a = [resize_grid(f, self.grid) for f in levels_a]
        feats_b = [resize_grid(f, self.grid) for f in levels_b]
        corr = torch.stack(
            [
                torch.einsum("bci,bcj->bij", self.normalized(fa, l2).flatten(2), self.normalized(fb, l2).flatten(2))
                for fa, fb in zip(feats_a, feats_b, strict=True)
            ],
            1,
        )  # [B, L, N, N]
        corr = mutual_nn_filter(corr)
        app_a = torch.stack([p(f.flatten(2).transpose(1, 2)) for p, f in zip(self.proj, feats_a, strict=True)], 1)
        app_b = torch.stack([p(f.flatten(2).transpose(1, 2)) for p, f in zip(self.proj, feats_b, strict=True)], 1)
        refined = self.refine(corr, app_a, app_b)
        b = refined.shape[0]
        gh, gw = self.grid
        refined = refined.view(b, gh, gw, gh, gw)
        if size_b != self.grid:  # back to B's grid
            refined = resize_grid(refined.reshape(b * gh * gw, 1, gh, gw), size_b).view(b, gh, gw, *size_b)
        if size_a != self.grid:  # back to A's grid
            t = refined.permute(0, 3, 4, 1, 2).reshape(b * size_b[0] * size_b[1], 1, gh, gw)
            refined = resize_grid(t, size_a).view(b, *size_b, *size_a).permute(0, 3, 4, 1, 2)
        return {"corr": refined * inverse_temperature(beta_a, beta_b, 4)}

    def query_scores(self, out: dict[str, torch.Tensor], uv_a: torch.Tensor) -> torch.Tensor:
        return sample_correlation(out["corr"], uv_a)
