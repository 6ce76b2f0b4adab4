"""The training objective: Gaussian ground truth, cross-entropy, temperature regulariser.

``L = L_ce + gamma * (L_reg(beta_A) + L_reg(beta_B))`` (paper Eq. 3, 6, 7).
"""

from __future__ import annotations

import math

import torch


def gaussian_kernel_1d(ns: int = 3, nk: int = 5, dtype=torch.float32, device=None) -> torch.Tensor:
    """The ``ns`` central taps of an ``nk``-tap Gaussian with std ``floor(nk / 2)``, summing to 1."""
    if ns < 1 or ns % 2 == 0 or nk < ns:
        raise ValueError(f"need odd ns >= 1 and nk >= ns, got ns={ns}, nk={nk}")
    sigma = float(nk // 2)
    d = torch.arange(ns, dtype=dtype, device=device) - ns // 2
    t = torch.exp(-(d**2) / (2 * sigma**2))
    return t / t.sum()


def _profile(coord: torch.Tensor, length: int, taps: torch.Tensor) -> torch.Tensor:
    """1D ground-truth profile ``[..., length]``: the kernel splatted bilinearly at ``coord``."""
    half = taps.numel() // 2
    cells = torch.arange(length, dtype=coord.dtype, device=coord.device)
    base = torch.floor(coord).unsqueeze(-1)
    frac = (coord.unsqueeze(-1) - base)
    offset = cells - base  # cell index relative to floor(coord)
    prof = torch.zeros(*coord.shape, length, dtype=coord.dtype, device=coord.device)
    # sum_k w_k * t(cell - (base + k)) for the two bilinear neighbours k = 0, 1
    for k, wk in ((0, 1.0 - frac), (1, frac)):
        d = offset - k
        inside = d.abs() <= half
        idx = (d + half).clamp(0, taps.numel() - 1).long()
        prof = prof + torch.where(inside, taps[idx], prof.new_zeros(())) * wk
    return prof


def gaussian_target(uv_b: torch.Tensor, size: tuple[int, int], ns: int = 3, nk: int = 5) -> torch.Tensor:
    """Ground-truth distributions ``[B, N, h, w]`` for sub-cell targets ``uv_b [B, N, 2]``.

    An ``ns x ns`` region of an ``nk x nk`` Gaussian (std ``floor(nk/2)``) is placed at the
    sub-cell target by bilinear splatting, so that away from the border the distribution
    sums to 1 and its mean is exactly ``uv_b``; zero elsewhere; renormalised to 1 where the
    border clips it. Targets entirely off the map give an all-zero map.
    """
    if uv_b.dim() != 3 or uv_b.shape[-1] != 2:
        raise ValueError(f"uv_b must be [B, N, 2], got {tuple(uv_b.shape)}")
    h, w = size
    taps = gaussian_kernel_1d(ns, nk, dtype=uv_b.dtype, device=uv_b.device)
    px = _profile(uv_b[..., 0], w, taps)  # [B, N, w]
    py = _profile(uv_b[..., 1], h, taps)  # [B, N, h]
    target = py.unsqueeze(-1) * px.unsqueeze(-2)
    total = target.sum(dim=(-2, -1), keepdim=True)
    return target / total.clamp_min(1e-12)


def cross_entropy(scores: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 3: ``-1/n sum_q sum_uv M_gt log softmax(M)``, per pair over its valid queries, then
    averaged over the pairs of the batch. ``scores``/``target`` are ``[B, N, h, w]``."""
    if scores.shape != target.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and target {tuple(target.shape)} differ")
    logp = torch.log_softmax(scores.flatten(2).float(), dim=-1)
    per_query = -(target.flatten(2).float() * logp).sum(-1)  # [B, N]
    valid = valid.bool()
    n = valid.sum(-1)
    has = n > 0
    if not bool(has.any()):
        raise ValueError("cross_entropy: the batch has no valid keypoint")
    per_pair = torch.where(valid, per_query, per_query.new_zeros(())).sum(-1) / n.clamp_min(1)
    return per_pair[has].mean()


def temperature_regularizer(beta: torch.Tensor, beta_thres: float = 0.1) -> torch.Tensor:
    """Paper Eq. 6: ``max(0, -log(beta) + log(beta_thres))``, element-wise."""
    if not bool((beta > 0).all()):
        raise ValueError(f"temperature_regularizer: beta must be > 0, got min {float(beta.min())}")
    return torch.clamp(math.log(beta_thres) - torch.log(beta), min=0.0)


def simsc_loss(
    scores: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    beta_a: torch.Tensor | None = None,
    beta_b: torch.Tensor | None = None,
    gamma: float = 0.2,
    beta_thres: float = 0.1,
) -> dict[str, torch.Tensor]:
    """Paper Eq. 7: ``L_ce + gamma * (mean L_reg(beta_A) + mean L_reg(beta_B))``.

    Pass ``beta_a``/``beta_b`` only for learned temperatures (``L_reg`` regularises g).
    """
    ce = cross_entropy(scores, target, valid)
    reg = ce.new_zeros(())
    if beta_a is not None and beta_b is not None:
        reg = temperature_regularizer(beta_a, beta_thres).mean() + temperature_regularizer(beta_b, beta_thres).mean()
    return {"loss": ce + gamma * reg, "ce": ce, "reg": reg}
