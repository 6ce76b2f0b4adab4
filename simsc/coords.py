"""The one coordinate convention used everywhere in simsc.

Points are ``(x, y)`` in pixels, 0-based, with integer values at pixel *centres*
(pixel ``(i, j)`` covers ``[j - 0.5, j + 0.5) x [i - 0.5, i + 0.5)``). A feature map
of stride ``s`` has cell ``(k, l)`` covering image pixels ``[l*s, (l+1)*s)`` in x, so
its centre sits at ``x = (l + 0.5) * s - 0.5``. This is the ``align_corners=False``
convention of :func:`torch.nn.functional.grid_sample` and ``interpolate``, which is
why resizing, feature sampling and the feature -> image mapping all agree.

Backbones pad their input at the bottom/right to a multiple of the stride, so the
stride is always an exact integer and the mapping stays affine even for odd
original sizes (e.g. 500 x 375).
"""

from __future__ import annotations

from typing import Sequence

import torch

Size = Sequence[int] | torch.Tensor  # (H, W)


def image_to_feature(xy: torch.Tensor, stride: float) -> torch.Tensor:
    """Map image pixel coordinates to feature-cell coordinates (``u = (x + 0.5) / s - 0.5``)."""
    return (xy + 0.5) / stride - 0.5


def feature_to_image(uv: torch.Tensor, stride: float) -> torch.Tensor:
    """Map feature-cell coordinates back to image pixels (``x = (u + 0.5) * s - 0.5``)."""
    return (uv + 0.5) * stride - 0.5


def rescale_points(xy: torch.Tensor, from_size: Size, to_size: Size) -> torch.Tensor:
    """Move points from an image of ``from_size`` (H, W) to the same image resized to ``to_size``.

    Works on ``[..., 2]`` tensors of ``(x, y)``; the scale is applied per axis about pixel
    edges, consistent with :func:`image_to_feature`.
    """
    fh, fw = (float(v) for v in from_size)
    th, tw = (float(v) for v in to_size)
    scale = xy.new_tensor([tw / fw, th / fh])
    return (xy + 0.5) * scale - 0.5


def rescale_box(box: torch.Tensor, from_size: Size, to_size: Size) -> torch.Tensor:
    """Rescale ``[..., 4]`` boxes ``(x1, y1, x2, y2)`` as two corner points (see :func:`rescale_points`)."""
    pts = box.reshape(*box.shape[:-1], 2, 2)
    return rescale_points(pts, from_size, to_size).reshape(box.shape)


def normalize_for_grid_sample(xy: torch.Tensor, size: Size) -> torch.Tensor:
    """Map image pixel coordinates to ``[-1, 1]`` for ``grid_sample(align_corners=False)``.

    Because the normalised coordinate only depends on the fraction of the image, the same
    grid samples a stride-``s`` feature map of that image at :func:`image_to_feature`.
    """
    h, w = (float(v) for v in size)
    scale = xy.new_tensor([2.0 / w, 2.0 / h])
    return (xy + 0.5) * scale - 1.0


def cell_grid(h: int, w: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer cell coordinates ``(xs [w], ys [h])`` of an ``h x w`` map."""
    return (
        torch.arange(w, device=device, dtype=dtype),
        torch.arange(h, device=device, dtype=dtype),
    )
