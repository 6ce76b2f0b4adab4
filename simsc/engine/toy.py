"""A tiny synthetic pair dataset (random textures and a known translation), for smoke tests,
benchmarks and examples. Records follow the contract of :mod:`simsc.data.records`."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


class ToyTranslationPairs(Dataset):
    """``n`` pairs of ``size x size`` crops of one random smooth texture; the target crop is
    shifted by ``(dx, dy)`` pixels (``max_shift`` bounds them; ``0`` gives identical images).

    Source keypoints lie on a ``grid x grid`` lattice placed so that their targets stay inside
    the image; ``threshold`` is ``theta_img = max(H, W)``. Pair ``i`` depends only on
    ``(seed, i)``. ``categories`` cycles pairs through that many category names.
    """

    name = "toy"
    threshold_kind = "img"

    def __init__(
        self,
        n: int = 16,
        size: int = 64,
        max_shift: int = 12,
        grid: int = 4,
        seed: int = 0,
        split: str = "trn",
        categories: int = 2,
        resolution: int | None = None,
    ) -> None:
        if size < 16 or max_shift < 0 or 2 * max_shift >= size:
            raise ValueError(f"need size >= 16 and 0 <= 2 * max_shift < size, got size={size}, max_shift={max_shift}")
        self.n, self.size, self.max_shift, self.grid = n, size, max_shift, grid
        self.seed, self.split, self.categories = seed, split, max(1, categories)
        self.resolution = resolution if resolution is not None else size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        g = torch.Generator().manual_seed(self.seed * 100_003 + i)
        s, m = self.size, self.max_shift
        canvas = s + 2 * m
        coarse = torch.rand(3, canvas // 4 + 2, canvas // 4 + 2, generator=g)
        fine = torch.rand(3, canvas, canvas, generator=g)
        tex = F.interpolate(coarse[None], size=(canvas, canvas), mode="bicubic", align_corners=False)[0]
        tex = (0.75 * tex + 0.25 * fine).clamp(0, 1)
        if m:
            dx, dy = (int(v) for v in torch.randint(-m, m + 1, (2,), generator=g))
        else:
            dx = dy = 0
        src = tex[:, m : m + s, m : m + s].contiguous()
        trg = tex[:, m + dy : m + dy + s, m + dx : m + dx + s].contiguous()
        # A source point at p shows texture pixel p + m; in the target it sits at p - (dx, dy).
        lo, hi = m + 2, s - 1 - m - 2
        lin = torch.linspace(lo, hi, self.grid)
        ys, xs = torch.meshgrid(lin, lin, indexing="ij")
        src_kps = torch.stack([xs.flatten(), ys.flatten()], dim=-1).round()
        trg_kps = src_kps - torch.tensor([dx, dy], dtype=torch.float32)
        n = src_kps.shape[0]
        bbox = torch.tensor([trg_kps[:, 0].min(), trg_kps[:, 1].min(), trg_kps[:, 0].max(), trg_kps[:, 1].max()])
        theta = torch.tensor(float(s))
        return {
            "pair_id": f"{self.split}-{i:05d}",
            "category": f"cat{i % self.categories}",
            "src_img": src,
            "trg_img": trg,
            "src_kps": src_kps,
            "trg_kps": trg_kps,
            "valid": torch.ones(n, dtype=torch.bool),
            "trg_bbox": bbox,
            "src_size": torch.tensor([s, s]),
            "trg_size": torch.tensor([s, s]),
            "threshold": theta,
            "threshold_kind": "img",
            "thresholds": {"img": theta, "kps": theta, "bbox": theta},
        }
