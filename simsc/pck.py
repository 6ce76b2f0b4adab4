"""PCK (percentage of correct keypoints) and the three base thresholds of the field.

``PCK(alpha) = share of valid keypoints with ||x_pred - x_gt|| <= alpha * theta``.
Padded / invisible keypoints (``valid == False``) are never counted, neither in the
numerator, the denominator, nor in ``theta_kps``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import torch

from .coords import keypoint_mask
from .defaults import ALPHAS as DEFAULT_ALPHAS


def theta_img(height: float | torch.Tensor, width: float | torch.Tensor) -> torch.Tensor:
    """PF-Pascal threshold: ``max(H_B, W_B)`` of the target image at the evaluated resolution."""
    return torch.maximum(torch.as_tensor(height, dtype=torch.float32), torch.as_tensor(width, dtype=torch.float32))


def theta_kps(kps: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """PF-Willow threshold: max extent of the *valid* target keypoints, ``[..., N, 2] -> [...]``.

    Padding is excluded before taking min/max (padding with -1 and including it inflates
    theta, a known bug of several peers).
    """
    _check_points(kps, "kps")
    if valid is None:
        valid = torch.ones(kps.shape[:-1], dtype=torch.bool, device=kps.device)
    valid = valid.bool()
    if not bool(valid.any(dim=-1).all()):
        raise ValueError("theta_kps: every pair needs at least one valid keypoint")
    big = torch.finfo(kps.dtype).max
    m = valid.unsqueeze(-1)
    hi = torch.where(m, kps, kps.new_full((), -big)).amax(dim=-2)
    lo = torch.where(m, kps, kps.new_full((), big)).amin(dim=-2)
    return (hi - lo).amax(dim=-1)


def theta_bbox(bbox: torch.Tensor) -> torch.Tensor:
    """SPair-71k threshold: ``max(w, h)`` of the target box ``(x1, y1, x2, y2)``, ``[..., 4] -> [...]``."""
    if bbox.shape[-1] != 4:
        raise ValueError(f"theta_bbox: bbox must have shape [..., 4] (x1, y1, x2, y2), got {tuple(bbox.shape)}")
    return torch.maximum(bbox[..., 2] - bbox[..., 0], bbox[..., 3] - bbox[..., 1])


def _check_points(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[-1] != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a tensor of shape [..., N, 2] (x, y), got {shape}")


def correct_keypoints(
    pred: torch.Tensor, gt: torch.Tensor, threshold: torch.Tensor | float, alpha: float
) -> torch.Tensor:
    """Boolean ``[B, N]``: is each prediction within ``alpha * threshold`` of its ground truth."""
    thr = torch.as_tensor(threshold, dtype=pred.dtype, device=pred.device)
    if thr.dim() == 0:
        thr = thr.expand(pred.shape[0])
    dist = torch.linalg.vector_norm(pred - gt, dim=-1)
    return dist <= alpha * thr.unsqueeze(-1)


def pck_per_image(
    pred: torch.Tensor,
    gt: torch.Tensor,
    threshold: torch.Tensor | float,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    valid: torch.Tensor | None = None,
) -> dict[float, torch.Tensor]:
    """Per-pair PCK ``[B]`` for each alpha (valid keypoints only)."""
    hits, n = _hits(pred, gt, threshold, alphas, valid)
    return {a: h.float() / n for a, h in hits.items()}


def pck(
    pred: torch.Tensor,
    gt: torch.Tensor,
    threshold: torch.Tensor | float,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    valid: torch.Tensor | None = None,
    average: str = "image",
) -> dict[float, float]:
    """PCK for each alpha, as a fraction in ``[0, 1]``.

    Args:
        pred, gt: ``[B, N, 2]`` (or ``[N, 2]``) predicted / ground-truth target points.
        threshold: base threshold theta per pair ``[B]`` (or a scalar), same units as points.
        alphas: the alphas to report.
        valid: ``[B, N]`` mask; padded or invisible keypoints are ignored.
        average: ``"image"`` (PCK per pair, then mean over pairs: the convention of the
            paper's tables) or ``"keypoint"`` (all valid keypoints pooled).
    """
    hits, n = _hits(pred, gt, threshold, alphas, valid)
    if average == "image":
        return {a: float((h.float() / n).mean()) for a, h in hits.items()}
    if average == "keypoint":
        return {a: float(h.sum().float() / n.sum()) for a, h in hits.items()}
    raise ValueError(f"pck: average must be 'image' or 'keypoint', got {average!r}")


def _hits(
    pred: torch.Tensor,
    gt: torch.Tensor,
    threshold: torch.Tensor | float,
    alphas: Iterable[float],
    valid: torch.Tensor | None,
) -> tuple[dict[float, torch.Tensor], torch.Tensor]:
    """The checked inputs' correct valid keypoints per pair ``{alpha: [B]}`` and valid
    keypoints per pair ``[B]`` (counts; every pair has one, :func:`_prepare` checks)."""
    pred, gt, valid, thr = _prepare(pred, gt, threshold, valid)
    return {a: (correct_keypoints(pred, gt, thr, a) & valid).sum(-1) for a in alphas}, valid.sum(-1)


def _prepare(pred, gt, threshold, valid):
    _check_points(pred, "pred")
    _check_points(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must have the same shape")
    if pred.dim() == 2:
        pred, gt = pred.unsqueeze(0), gt.unsqueeze(0)
        valid = None if valid is None else valid.unsqueeze(0)
    if pred.dim() != 3:
        raise ValueError(f"pred must be [B, N, 2] or [N, 2], got {tuple(pred.shape)}")
    valid = keypoint_mask(pred, valid, "pred")
    if not bool(valid.any(dim=-1).all()):
        raise ValueError("pck: a pair has no valid keypoint; drop it before scoring")
    if torch.isnan(gt[valid]).any() or torch.isnan(pred[valid]).any():
        raise ValueError("pck: NaN in a valid keypoint of pred or gt")
    thr = torch.as_tensor(threshold, dtype=pred.dtype, device=pred.device)
    if thr.dim() == 0:
        thr = thr.expand(pred.shape[0])
    if thr.shape != (pred.shape[0],):
        raise ValueError(f"threshold must be a scalar or shape [{pred.shape[0]}], got {tuple(thr.shape)}")
    if not bool((thr > 0).all()):
        raise ValueError(f"pck: thresholds must be > 0, got {thr.tolist()}")
    return pred, gt, valid, thr


class PCKAccumulator:
    """Collects per-pair results over an evaluation and reports every averaging scheme.

    ``report()`` gives ``{"per_image": {alpha: pck}, "per_keypoint": {...},
    "per_category": {cat: {alpha: pck}}, "n_pairs": int, "n_keypoints": int}`` with PCK in %.
    """

    def __init__(self, alphas: Sequence[float] = DEFAULT_ALPHAS) -> None:
        self.alphas = tuple(alphas)
        self._pairs: list[tuple[str, dict[float, int], int]] = []

    def update(
        self,
        pred: torch.Tensor,
        gt: torch.Tensor,
        threshold: torch.Tensor | float,
        valid: torch.Tensor | None = None,
        categories: Iterable[str] | None = None,
    ) -> None:
        counts, valid_n = _hits(pred, gt, threshold, self.alphas, valid)
        n = valid_n.tolist()
        cats = list(categories) if categories is not None else ["all"] * len(n)
        if len(cats) != len(n):
            raise ValueError(f"got {len(cats)} categories for {len(n)} pairs")
        hits = {a: h.tolist() for a, h in counts.items()}
        for b, cat in enumerate(cats):
            self._pairs.append((cat, {a: hits[a][b] for a in self.alphas}, n[b]))

    @property
    def pairs(self) -> list[tuple[str, dict[float, int], int]]:
        """The per-pair results so far: ``(category, {alpha: hits}, n_valid)``, in order."""
        return list(self._pairs)

    def extend(self, pairs: Iterable[tuple[str, dict[float, int], int]]) -> None:
        """Append per-pair results (e.g. another process's :attr:`pairs`): reports from summed
        counts, never a mean of means."""
        self._pairs.extend((str(c), {float(a): int(h[a]) for a in self.alphas}, int(n)) for c, h, n in pairs)

    def report(self) -> dict:
        if not self._pairs:
            raise ValueError("PCKAccumulator.report: no pairs were scored")

        def summarise(pairs):
            per_image = {a: 100.0 * sum(h[a] / n for _, h, n in pairs) / len(pairs) for a in self.alphas}
            total = sum(n for _, _, n in pairs)
            per_kp = {a: 100.0 * sum(h[a] for _, h, _ in pairs) / total for a in self.alphas}
            return per_image, per_kp, total

        per_image, per_kp, total = summarise(self._pairs)
        by_cat: dict[str, list] = defaultdict(list)
        for p in self._pairs:
            by_cat[p[0]].append(p)
        return {
            "per_image": per_image,
            "per_keypoint": per_kp,
            "per_category": {c: summarise(ps)[0] for c, ps in sorted(by_cat.items())},
            "n_pairs": len(self._pairs),
            "n_keypoints": total,
        }
