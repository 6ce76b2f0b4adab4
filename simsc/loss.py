"""The training objective: Gaussian ground truth, cross-entropy, temperature regulariser.

``L = L_ce + gamma * R`` (paper Eq. 3, 6, 7), with ``R = L_reg(beta_A) + L_reg(beta_B)``
(``reg_over_images="sum"``, the default) or their mean (``"mean"``).

The ground truth of a query is ``ns x ns`` points ``p_ij = x_B + (i, j)`` around its
sub-cell target ``x_B``, weighted by the central taps ``w_ij`` of an ``nk x nk`` Gaussian
(std ``floor(nk / 2)``). Two readings of the sub-pixel cross-entropy (``ce_interpolation``):

- ``"prob"``, the paper's (Sec. 3.1, 3.3): ``-sum_ij w_ij log(bilinear(softmax(M), p_ij))``,
  the log of the bilinearly interpolated probability (:func:`cross_entropy_prob`);
- ``"logprob"``: ``-sum_ij w_ij bilinear(log softmax(M), p_ij)``, the interpolated
  log-probability, i.e. a cross-entropy against the weights splatted onto the grid
  (:func:`cross_entropy_logprob`).

They agree when the target is on a cell centre and differ in between, where ``logprob``
is larger and prefers a higher temperature.
"""

from __future__ import annotations

import math

import torch

from . import defaults as D
from .choices import REG_OVER_IMAGES as REG_OVER_IMAGES


def gaussian_kernel_1d(ns: int = D.NS, nk: int = D.NK, dtype=torch.float32, device=None) -> torch.Tensor:
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
    frac = coord.unsqueeze(-1) - base
    offset = cells - base  # cell index relative to floor(coord)
    prof = torch.zeros(*coord.shape, length, dtype=coord.dtype, device=coord.device)
    # sum_k w_k * t(cell - (base + k)) for the two bilinear neighbours k = 0, 1
    for k, wk in ((0, 1.0 - frac), (1, frac)):
        d = offset - k
        inside = d.abs() <= half
        idx = (d + half).clamp(0, taps.numel() - 1).long()
        prof = prof + torch.where(inside, taps[idx], prof.new_zeros(())) * wk
    return prof


def gaussian_target(uv_b: torch.Tensor, size: tuple[int, int], ns: int = D.NS, nk: int = D.NK) -> torch.Tensor:
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


def _loss_dtype(scores: torch.Tensor) -> torch.dtype:
    """The softmax and the loss run in float32 at least (float64 stays float64, e.g. for gradcheck)."""
    return torch.promote_types(scores.dtype, torch.float32)


def _mean_over_valid_queries(
    per_query: torch.Tensor, valid: torch.Tensor, who: str, check: bool = True
) -> torch.Tensor:
    """Average ``[B, N]`` per-query losses over each pair's valid queries, then over the pairs
    that have one (masked means: no data-dependent shapes, no host sync).

    ``check=True`` raises when no pair has a valid query, which reads a value on the host (a
    device sync on accelerators); with ``check=False`` such a batch gives a loss of 0.
    """
    valid = valid.bool()
    n = valid.sum(-1)
    has = n > 0
    if check and not bool(has.any()):
        raise ValueError(f"{who}: the batch has no valid keypoint")
    zero = per_query.new_zeros(())
    per_pair = torch.where(valid, per_query, zero).sum(-1) / n.clamp_min(1)
    return torch.where(has, per_pair, zero).sum() / has.sum().clamp_min(1)


def cross_entropy(scores: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Paper Eq. 3 against a distribution on the grid: ``-1/n sum_q sum_uv M_gt log softmax(M)``,
    per pair over its valid queries, then averaged over the pairs of the batch.
    ``scores``/``target`` are ``[B, N, h, w]``; ``check``: see :func:`_mean_over_valid_queries`."""
    if scores.shape != target.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and target {tuple(target.shape)} differ")
    dtype = _loss_dtype(scores)
    logp = torch.log_softmax(scores.flatten(2).to(dtype), dim=-1)
    per_query = -(target.flatten(2).to(dtype) * logp).sum(-1)  # [B, N]
    return _mean_over_valid_queries(per_query, valid, "cross_entropy", check)


def cross_entropy_logprob(
    scores: torch.Tensor, uv_b: torch.Tensor, valid: torch.Tensor, ns: int = D.NS, nk: int = D.NK, check: bool = True
) -> torch.Tensor:
    """``-sum_ij w_ij bilinear(log softmax(M), x_B + (i, j))``: the interpolated log-probability.

    Computed as :func:`cross_entropy` against :func:`gaussian_target` (the weights splatted
    bilinearly onto the grid, renormalised where the border clips them). Queries whose
    target lies entirely off the map are ignored.
    """
    h, w = scores.shape[-2:]
    target = gaussian_target(uv_b, (h, w), ns, nk)
    valid = valid.bool() & (target.flatten(2).sum(-1) > 0)
    return cross_entropy(scores, target, valid, check)


def gaussian_point_weights(ns: int = D.NS, nk: int = D.NK, dtype=torch.float32, device=None) -> torch.Tensor:
    """``[ns, ns]`` weights ``w_ij`` (row ``i`` = y offset) of the ground-truth points, summing to 1."""
    taps = gaussian_kernel_1d(ns, nk, dtype=dtype, device=device)
    return taps[:, None] * taps[None, :]


#: log-weight of a bilinear corner outside the map: exp(-1e4) is 0 in any float type, and
#: unlike -inf it keeps logsumexp and its gradient finite when every corner is outside.
_LOG_ZERO = -1e4


def _corner_log_weights(coord: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear corners of ``coord`` on ``0..length-1``: indices ``[..., 2]``, log-weights ``[..., 2]``
    (corners outside the map dropped and the in-map ones renormalised), and whether any corner is inside."""
    base = torch.floor(coord)
    frac = coord - base
    idx = torch.stack([base, base + 1], dim=-1)
    weight = torch.stack([1.0 - frac, frac], dim=-1)
    weight = torch.where((idx >= 0) & (idx <= length - 1), weight, weight.new_zeros(()))
    total = weight.sum(-1, keepdim=True)
    inside = total.squeeze(-1) > 0
    logw = torch.where(weight > 0, torch.log(weight / total.clamp_min(1e-12)), weight.new_full((), _LOG_ZERO))
    return idx.clamp(0, length - 1).long(), logw, inside


def cross_entropy_prob(
    scores: torch.Tensor, uv_b: torch.Tensor, valid: torch.Tensor, ns: int = D.NS, nk: int = D.NK, check: bool = True
) -> torch.Tensor:
    """Paper Eq. 3 read literally: ``-sum_ij w_ij log(bilinear(softmax(M), x_B + (i, j)))``.

    ``scores [B, N, h, w]``, sub-cell targets ``uv_b [B, N, 2]`` (x, y) in feature cells.
    The interpolated probability is formed in log space (``logsumexp`` of the corners'
    log-probabilities plus log-weights), so it stays finite when the probabilities underflow.

    Border rule: a point whose bilinear neighbourhood is partly outside the map reads its
    in-map corners with their weights renormalised (the border value, as query sampling
    does); a point with no corner on the map (a full cell or more outside) is dropped and
    the other points' weights renormalised, the way the splatted target of
    :func:`cross_entropy_logprob` drops mass that falls off the map, so that the two
    forms agree at every integer target, border included. Queries with no point left are
    ignored.
    """
    if scores.dim() != 4 or uv_b.shape != (*scores.shape[:2], 2):
        raise ValueError(
            f"scores must be [B, N, h, w] and uv_b [B, N, 2], got {tuple(scores.shape)}, {tuple(uv_b.shape)}"
        )
    b, n, h, w = scores.shape
    dtype = _loss_dtype(scores)
    logp = torch.log_softmax(scores.flatten(2).to(dtype), dim=-1)  # [B, N, h*w]
    uv = uv_b.to(dtype)
    offsets = torch.arange(ns, dtype=uv.dtype, device=uv.device) - ns // 2
    ix, lwx, in_x = _corner_log_weights(uv[..., 0, None] + offsets, w)  # [B, N, ns, 2]
    iy, lwy, in_y = _corner_log_weights(uv[..., 1, None] + offsets, h)
    # Points (i = y offset, j = x offset) x corners (cy, cx): [B, N, ns, ns, 2, 2].
    flat_idx = iy[..., :, None, :, None] * w + ix[..., None, :, None, :]
    log_corner_w = lwy[..., :, None, :, None] + lwx[..., None, :, None, :]
    corner_logp = logp.gather(-1, flat_idx.flatten(2)).view(b, n, ns, ns, 2, 2)
    log_prob_at_point = torch.logsumexp((corner_logp + log_corner_w).flatten(-2), dim=-1)  # [B, N, ns, ns]
    point_w = gaussian_point_weights(ns, nk, dtype=uv.dtype, device=uv.device)
    point_w = point_w * (in_y[..., :, None] & in_x[..., None, :])
    total = point_w.sum((-2, -1))
    point_w = point_w / total.clamp_min(1e-12)[..., None, None]
    per_query = -(point_w * log_prob_at_point).sum((-2, -1))  # [B, N]
    return _mean_over_valid_queries(per_query, valid.bool() & (total > 0), "cross_entropy_prob", check)


#: The two readings of the sub-pixel cross-entropy, by ``ce_interpolation`` name.
CE_INTERPOLATIONS = {"prob": cross_entropy_prob, "logprob": cross_entropy_logprob}


def temperature_regularizer(beta: torch.Tensor, beta_thres: float = D.BETA_THRES, check: bool = True) -> torch.Tensor:
    """Paper Eq. 6: ``max(0, -log(beta) + log(beta_thres))``, element-wise.

    ``check=True`` raises on ``beta <= 0`` (a host read); unchecked, such a beta gives an
    inf / NaN regulariser, which the trainer's divergence check reports.
    """
    if check and not bool((beta > 0).all()):
        raise ValueError(f"temperature_regularizer: beta must be > 0, got min {float(beta.min())}")
    return torch.clamp(math.log(beta_thres) - torch.log(beta), min=0.0)


def check_loss_forms(ce_interpolation: str, reg_over_images: str) -> None:
    """ValueError unless ``ce_interpolation`` is in :data:`CE_INTERPOLATIONS` and
    ``reg_over_images`` in :data:`REG_OVER_IMAGES`."""
    if ce_interpolation not in CE_INTERPOLATIONS:
        raise ValueError(f"ce_interpolation must be one of {sorted(CE_INTERPOLATIONS)}, got {ce_interpolation!r}")
    if reg_over_images not in REG_OVER_IMAGES:
        raise ValueError(f"reg_over_images must be one of {REG_OVER_IMAGES}, got {reg_over_images!r}")


def simsc_loss(
    scores: torch.Tensor,
    uv_b: torch.Tensor,
    valid: torch.Tensor,
    beta_a: torch.Tensor | None = None,
    beta_b: torch.Tensor | None = None,
    gamma: float = D.GAMMA,
    beta_thres: float = D.BETA_THRES,
    *,
    ns: int = D.NS,
    nk: int = D.NK,
    ce_interpolation: str = D.CE_INTERPOLATION,
    reg_over_images: str = D.REG_OVER_IMAGES,
    check: bool = True,
) -> dict[str, torch.Tensor]:
    """Paper Eq. 7: ``L_ce + gamma * R`` for score maps ``[B, N, h, w]`` and sub-cell targets ``uv_b``.

    ``ce_interpolation`` picks the cross-entropy (:data:`CE_INTERPOLATIONS`); ``R`` is
    ``mean L_reg(beta_A) + mean L_reg(beta_B)`` (``reg_over_images="sum"``) or half of it
    (``"mean"``: Eq. 7's single ``gamma * L_reg`` taken as the average over the pair's two
    images). Pass ``beta_a``/``beta_b`` only for learned temperatures (``L_reg`` regularises g).
    ``check=False`` skips the value checks that read tensors on the host (no valid keypoint,
    ``beta <= 0``): the training step's fast path, whose batch was checked on the CPU.
    """
    check_loss_forms(ce_interpolation, reg_over_images)
    ce = CE_INTERPOLATIONS[ce_interpolation](scores, uv_b, valid, ns, nk, check)
    reg = ce.new_zeros(())
    if beta_a is not None and beta_b is not None:
        reg = (
            temperature_regularizer(beta_a, beta_thres, check).mean()
            + temperature_regularizer(beta_b, beta_thres, check).mean()
        )
        if reg_over_images == "mean":
            reg = reg / 2
    return {"loss": ce + gamma * reg, "ce": ce, "reg": reg}
