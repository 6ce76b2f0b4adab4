"""Matching scores: L2-normalised, temperature-scaled features and their correlations.

Everything here works in feature-cell coordinates (see :mod:`simsc.coords`). The
training path only ever builds the ``N x h_B x w_B`` score maps of the query
keypoints (:func:`query_score_maps`); the full ``h_A w_A x h_B w_B`` tensor
(:func:`full_correlation`) is for visualisation and tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_map(feat: torch.Tensor, name: str) -> None:
    if not isinstance(feat, torch.Tensor) or feat.dim() != 4:
        shape = tuple(feat.shape) if isinstance(feat, torch.Tensor) else type(feat).__name__
        raise ValueError(f"{name} must be a feature map [B, C, h, w], got {shape}")


def l2_normalize(feat: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Channel-wise L2 normalisation of ``[B, C, h, w]`` (paper Eq. 1)."""
    _check_map(feat, "feat")
    return F.normalize(feat, p=2.0, dim=1, eps=eps)


def scale_by_temperature(feat: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Divide each image's features by its partial temperature ``beta [B]`` (paper Eq. 5)."""
    _check_map(feat, "feat")
    if beta.shape != (feat.shape[0],):
        raise ValueError(f"beta must have shape [{feat.shape[0]}], got {tuple(beta.shape)}")
    if not bool((beta > 0).all()):
        raise ValueError(f"temperatures must be > 0, got min {float(beta.min())}")
    return feat / beta.view(-1, 1, 1, 1)


def normalize_and_scale(
    feat: torch.Tensor, beta: torch.Tensor, l2: bool = True, eps: float = 1e-6, check: bool = True
) -> torch.Tensor:
    """``scale_by_temperature(l2_normalize(feat), beta)`` in one pass over the feature map.

    The two steps are each a memory-bound pass (and another in backward) over the largest
    tensor of the step; folding them into a single multiply by a ``[B, 1, h, w]`` factor
    keeps SimSC's overhead over the backbone small. ``l2=False`` only divides by beta.
    ``check=False`` skips the ``beta > 0`` check, a host read (device sync) on accelerators.
    """
    _check_map(feat, "feat")
    if beta.shape != (feat.shape[0],):
        raise ValueError(f"beta must have shape [{feat.shape[0]}], got {tuple(beta.shape)}")
    if check and not bool((beta > 0).all()):
        raise ValueError(f"temperatures must be > 0, got min {float(beta.min())}")
    factor = beta.view(-1, 1, 1, 1)
    if l2:
        factor = torch.linalg.vector_norm(feat, dim=1, keepdim=True).clamp_min(eps) * factor
    return feat * factor.reciprocal()


def sample_features(feat: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``feat [B, C, h, w]`` at sub-cell positions ``uv [B, N, 2]`` -> ``[B, N, C]``.

    ``uv`` is in feature-cell units (x, y); positions beyond the border take the border value
    (``grid_sample(..., padding_mode="border", align_corners=False)`` at the same cells).
    Implemented as a gather of the 4 corners from the flattened ``[B, C, h*w]`` map: its
    backward adds into those 4 cells per query, where ``grid_sample``'s backward is a slow
    scatter over the whole map on GPUs.
    """
    _check_map(feat, "feat")
    if uv.dim() != 3 or uv.shape[-1] != 2 or uv.shape[0] != feat.shape[0]:
        raise ValueError(f"uv must be [B, N, 2] with B={feat.shape[0]}, got {tuple(uv.shape)}")
    b, c, h, w = feat.shape
    n = uv.shape[1]
    x = uv[..., 0].to(feat.dtype).clamp(0, w - 1)
    y = uv[..., 1].to(feat.dtype).clamp(0, h - 1)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp_max(w - 1), (y0 + 1).clamp_max(h - 1)
    index = torch.stack([y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1], dim=-1)  # [B, N, 4]
    weight = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=-1)
    corners = feat.flatten(2).gather(2, index.view(b, 1, n * 4).expand(b, c, n * 4))  # [B, C, N*4]
    return (corners.view(b, c, n, 4) * weight.unsqueeze(1)).sum(-1).transpose(1, 2)


def query_score_maps(feat_a: torch.Tensor, feat_b: torch.Tensor, uv_a: torch.Tensor) -> torch.Tensor:
    """Score maps of the query points only: ``[B, N, h_B, w_B]``.

    Samples the (normalised, scaled) ``feat_a`` at the queries ``uv_a`` and correlates
    with every cell of ``feat_b``. Because sampling is linear, the result equals the
    bilinear interpolation of the rows of :func:`full_correlation` at ``uv_a``.
    """
    _check_map(feat_b, "feat_b")
    queries = sample_features(feat_a, uv_a)  # [B, N, C]
    return torch.einsum("bnc,bchw->bnhw", queries, feat_b)


def full_correlation(feat_a: torch.Tensor, feat_b: torch.Tensor) -> torch.Tensor:
    """All-pairs scores ``[B, h_A * w_A, h_B * w_B]`` (paper Eq. 2/5); row ``i*w_A + j`` is cell (i, j)."""
    _check_map(feat_a, "feat_a")
    _check_map(feat_b, "feat_b")
    return torch.einsum("bci,bcj->bij", feat_a.flatten(2), feat_b.flatten(2))
