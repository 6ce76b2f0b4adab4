"""Kernel soft-argmax (SFNet; paper Eq. 8, 9): sub-cell localisation of a score map."""

from __future__ import annotations

import torch

from . import defaults as D


def kernel_soft_argmax(
    scores: torch.Tensor, sigma: float = D.SIGMA, beta: float = 1.0, check: bool = True
) -> torch.Tensor:
    """Localise the match of each score map: ``[B, N, h, w] -> [B, N, 2]`` (x, y) in feature cells.

    The map is multiplied by a Gaussian of std ``sigma`` cells centred at its argmax, turned
    into a distribution by a softmax at temperature ``beta``, and the expected cell
    coordinate is returned. Learned temperatures already scaled the scores: use ``beta=1``.
    ``check=False`` skips the NaN / inf check of the scores (a host read; non-finite scores then
    give non-finite coordinates), for loops that check their results in batches.
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() != 4:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"kernel_soft_argmax: scores must be [B, N, h, w], got {shape}")
    if not beta > 0:
        raise ValueError(f"kernel_soft_argmax: beta must be > 0, got {beta}")
    if not sigma > 0:
        raise ValueError(f"kernel_soft_argmax: sigma must be > 0, got {sigma}")
    b, n, h, w = scores.shape
    if n == 0:
        return scores.new_zeros(b, 0, 2)
    if check and not bool(torch.isfinite(scores).all()):
        raise ValueError("kernel_soft_argmax: scores contain NaN or inf")
    flat = scores.flatten(2)
    idx = flat.argmax(dim=-1)
    peak_y = torch.div(idx, w, rounding_mode="floor").to(scores.dtype)
    peak_x = (idx % w).to(scores.dtype)
    xs = torch.arange(w, dtype=scores.dtype, device=scores.device)
    ys = torch.arange(h, dtype=scores.dtype, device=scores.device)
    # The 2D Gaussian is separable: exp(-(dx^2 + dy^2) / 2s^2) = gx * gy.
    gx = torch.exp(-((xs - peak_x.unsqueeze(-1)) ** 2) / (2 * sigma**2))  # [B, N, w]
    gy = torch.exp(-((ys - peak_y.unsqueeze(-1)) ** 2) / (2 * sigma**2))  # [B, N, h]
    weighted = scores * gy.unsqueeze(-1) * gx.unsqueeze(-2)
    prob = torch.softmax(weighted.flatten(2) / beta, dim=-1).view(b, n, h, w)
    x = (prob.sum(dim=-2) * xs).sum(-1)
    y = (prob.sum(dim=-1) * ys).sum(-1)
    return torch.stack([x, y], dim=-1)
