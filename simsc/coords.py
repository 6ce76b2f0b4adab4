"""The one coordinate convention used everywhere in simsc.

Points are ``(x, y)`` in pixels, 0-based, with integer values at pixel *centres*
(pixel ``(i, j)`` covers ``[j - 0.5, j + 0.5) x [i - 0.5, i + 0.5)``).

A feature map of stride ``s`` places the centre of cell ``u`` at pixel
``x = origin + u * s``, where ``origin`` (the pixel of cell 0's centre) is a property of
the backbone (:attr:`simsc.backbones.Backbone.cell_origin`): the patch centre
``(s - 1) / 2`` for a ViT (patch ``u`` covers pixels ``[u*s, (u+1)*s)``), and the
receptive-field centre ``0`` for a ResNet layer3 cell, whose stride-2 convolutions and
pooling are centred (kernel ``k``, padding ``k // 2``). The two differ by 7.5 px at stride
16; the difference cancels when both images are at the same scale, but not when they are
not (original-size evaluation).

Resizing is about pixel edges (``x' = (x + 0.5) * W'/W - 0.5``, the ``align_corners=False``
rule of :func:`torch.nn.functional.interpolate`), so it never moves an image's content.
Backbones pad their input at the bottom/right to a multiple of the stride, so the mapping
stays affine even for odd original sizes (e.g. 500 x 375).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .choices import CELL_CENTRES as CELL_CENTRES

Size = Sequence[int] | torch.Tensor  # (H, W)


def keypoint_mask(points: torch.Tensor, valid: torch.Tensor | None, name: str) -> torch.Tensor:
    """The boolean validity mask ``[B, N]`` of keypoints ``points`` ``[B, N, 2]``: ``valid`` as
    booleans (all True when None); ``ValueError`` naming ``name`` when its shape is not ``[B, N]``."""
    if valid is None:
        return torch.ones(points.shape[:2], dtype=torch.bool, device=points.device)
    valid = valid.bool()
    if valid.shape != points.shape[:2]:
        raise ValueError(f"valid must have shape {tuple(points.shape[:2])} for {name}, got {tuple(valid.shape)}")
    return valid


def patch_centre_origin(stride: float) -> float:
    """Pixel of cell 0's centre when cell ``u`` covers pixels ``[u*s, (u+1)*s)``: ``(s - 1) / 2``."""
    return (stride - 1.0) / 2.0


def image_to_feature(xy: torch.Tensor, stride: float, origin: float | None = None) -> torch.Tensor:
    """Image pixels -> feature cells: ``u = (x - origin) / s``.

    ``origin`` is the pixel of cell 0's centre (see the module docstring); ``None`` takes
    the patch centre ``(s - 1) / 2``, i.e. ``u = (x + 0.5) / s - 0.5``.
    """
    origin = patch_centre_origin(stride) if origin is None else origin
    return (xy - origin) / stride


def feature_to_image(uv: torch.Tensor, stride: float, origin: float | None = None) -> torch.Tensor:
    """Feature cells -> image pixels: ``x = origin + u * s`` (the inverse of :func:`image_to_feature`)."""
    origin = patch_centre_origin(stride) if origin is None else origin
    return uv * stride + origin


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
    grid samples a stride-``s`` feature map of that image at :func:`image_to_feature` with
    the patch-centre origin (``origin=None``).
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
