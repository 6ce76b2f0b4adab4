"""Match pictures (paper Fig. 1): two images side by side, coloured lines between
corresponding points.

:func:`predict_matches` runs a model on two images at a chosen resolution and returns the
predicted target points in the *original* pixels of image B; :func:`draw_matches` draws any
set of correspondences. With no query points, :func:`grid_points` picks an ``n x n`` grid of
interior points of the source image.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import defaults as D
from .coords import rescale_points
from .data.images import load_image, resize_uint8, target_size
from .data.records import image_to_tensor, parse_resolution
from .io import atomic_write
from .memory import check_memory, inference_bytes, query_bytes
from .model import SimSC


def grid_points(height: int, width: int, n: int = 5) -> torch.Tensor:
    """``n * n`` interior points ``(x, y)`` of an image, evenly spaced, row by row."""
    if n < 1:
        raise ValueError(f"grid size must be >= 1, got {n}")
    xs = (torch.arange(1, n + 1, dtype=torch.float32) * width / (n + 1) - 0.5).round()
    ys = (torch.arange(1, n + 1, dtype=torch.float32) * height / (n + 1) - 0.5).round()
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.flatten(), gy.flatten()], dim=-1)


def match_colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct saturated colours (hues spread around the wheel)."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i / max(n, 1)) % 1.0, 0.9, 1.0)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def _as_uint8(img) -> np.ndarray:
    arr = _to_uint8(img)
    return arr if arr.flags.writeable and arr.flags.c_contiguous else np.ascontiguousarray(arr).copy()


def _to_uint8(img) -> np.ndarray:
    if isinstance(img, Image.Image):
        return np.array(img.convert("RGB"))
    if isinstance(img, torch.Tensor):  # [3, H, W] in [0, 1]
        return (img.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return arr


@torch.no_grad()
def predict_matches(
    model: SimSC,
    img_a,
    img_b,
    points: torch.Tensor | Sequence[Sequence[float]] | None = None,
    resolution: int | str = D.RESOLUTION,
    beta_eval: float | None = None,
    grid: int = 5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predict where ``points`` (source pixels ``[N, 2]``; default: a ``grid x grid`` grid)
    land in image B. Both images are resized to ``resolution`` (or kept at their size with
    ``"original"``); the returned ``(points_a, points_b)`` are in original pixels, the
    predictions clamped to image B. Inputs too large for the device's free memory are
    refused up front (:func:`check_inference_memory`)."""
    a, b = _as_uint8(img_a), _as_uint8(img_b)
    res = parse_resolution(resolution)
    size_a, size_b = a.shape[:2], b.shape[:2]
    ha, wa = size_a
    ra, rb = target_size(size_a, res), target_size(size_b, res)
    device = next(model.parameters()).device
    n_points = grid * grid if points is None else len(points)
    flag = f"--grid {grid}" if points is None else "--points"
    check_inference_memory(getattr(model.backbone, "name", ""), (ra, rb), device, n_points, model.stride, flag)
    if points is None:
        pts_a = grid_points(ha, wa, n=grid)
    else:
        pts_a = torch.as_tensor(points, dtype=torch.float32).reshape(-1, 2)
    if pts_a.numel() == 0:
        raise ValueError("no query points")
    outside = (pts_a[:, 0] < -0.5) | (pts_a[:, 0] > wa - 0.5) | (pts_a[:, 1] < -0.5) | (pts_a[:, 1] > ha - 0.5)
    if bool(outside.any()):
        bad = pts_a[outside][0].tolist()
        raise ValueError(f"query point {bad} lies outside the source image ({wa} x {ha} pixels)")
    ta = image_to_tensor(resize_uint8(a, ra) if ra != size_a else a)
    tb = image_to_tensor(resize_uint8(b, rb) if rb != size_b else b)
    q = rescale_points(pts_a, size_a, ra)
    pred = model.predict(ta[None].to(device), tb[None].to(device), q[None].to(device), beta_eval=beta_eval)[0].cpu()
    pred = rescale_points(pred, rb, size_b)
    # The backbone pads B to a multiple of its stride, so the soft-argmax can land in the
    # padding (a 1 x 1 image predicts the centre of a 16 x 16 cell); a match lies in the image.
    hb, wb = size_b
    pred[:, 0] = pred[:, 0].clamp(0, wb - 1)
    pred[:, 1] = pred[:, 1].clamp(0, hb - 1)
    return pts_a, pred


def check_inference_memory(
    backbone: str,
    sizes: Sequence[tuple[int, int]],
    device: torch.device,
    n_points: int = 0,
    stride: int = 16,
    points_flag: str = "--points",
) -> None:
    """Refuse, before any allocation, inputs whose estimated inference memory (the images
    through the backbone and ``n_points`` query points' score maps over image B, the second
    of ``sizes``) exceeds what ``device`` has free, naming the flag to change."""
    images = inference_bytes(backbone, sizes)
    queries = query_bytes(n_points, sizes[-1], stride)
    if queries > images:
        what = f"{points_flag}: {n_points:,} query points over a {sizes[-1][1]} x {sizes[-1][0]} pixel target"
        fix = "use a smaller --grid, fewer --points or a smaller --resolution"
    else:
        (h, w) = max(sizes, key=lambda hw: hw[0] * hw[1])
        what = f"an input of {w} x {h} pixels (--resolution)"
        fix = "use a smaller --resolution (e.g. --resolution 256)"
    check_memory(images + queries, device, what, fix)


def draw_matches(
    img_a,
    img_b,
    pts_a: torch.Tensor | np.ndarray,
    pts_b: torch.Tensor | np.ndarray,
    *,
    height: int | None = None,
    line_width: int = 2,
    radius: int = 4,
    colors: Sequence[tuple[int, int, int]] | None = None,
    gt_b: torch.Tensor | np.ndarray | None = None,
) -> Image.Image:
    """Images A and B side by side (top-aligned, A on the left), a coloured line from each
    point of A to its match in B and a dot at both ends.

    The canvas is ``(W_A + W_B) x max(H_A, H_B)``; with ``height`` both images are first
    scaled to that height (points scaled with them). The background is black. With ``gt_b``
    (the true match of each point in B) each true point is a white ring with a thin white
    line to its prediction, so a reader sees how far off a match is.
    """
    a, b = _as_uint8(img_a), _as_uint8(img_b)
    pa = torch.as_tensor(np.asarray(pts_a), dtype=torch.float32).reshape(-1, 2)
    pb = torch.as_tensor(np.asarray(pts_b), dtype=torch.float32).reshape(-1, 2)
    if pa.shape != pb.shape:
        raise ValueError(f"need as many points in A as in B, got {tuple(pa.shape)} and {tuple(pb.shape)}")
    gb = None if gt_b is None else torch.as_tensor(np.asarray(gt_b), dtype=torch.float32).reshape(-1, 2)
    if gb is not None and gb.shape != pb.shape:
        raise ValueError(f"need a true point per prediction, got {tuple(gb.shape)} and {tuple(pb.shape)}")
    if height is not None:
        sa = (height, max(1, round(a.shape[1] * height / a.shape[0])))
        sb = (height, max(1, round(b.shape[1] * height / b.shape[0])))
        pa, pb = rescale_points(pa, a.shape[:2], sa), rescale_points(pb, b.shape[:2], sb)
        if gb is not None:
            gb = rescale_points(gb, b.shape[:2], sb)
        a, b = resize_uint8(a, sa), resize_uint8(b, sb)
    ha, wa = a.shape[:2]
    hb, wb = b.shape[:2]
    canvas = Image.new("RGB", (wa + wb, max(ha, hb)), (0, 0, 0))
    canvas.paste(Image.fromarray(a), (0, 0))
    canvas.paste(Image.fromarray(b), (wa, 0))
    draw = ImageDraw.Draw(canvas)
    cols = list(colors) if colors is not None else match_colors(len(pa))
    if gb is not None:  # under the matches: the true points and how far each prediction is off
        white = (255, 255, 255)
        for (xp, yp), (xg, yg) in zip(pb.tolist(), gb.tolist(), strict=True):
            draw.line([(xp + wa, yp), (xg + wa, yg)], fill=white, width=1)
            r = radius + 2
            draw.ellipse([xg + wa - r, yg - r, xg + wa + r, yg + r], outline=white, width=2)
    for i, ((xa, ya), (xb, yb)) in enumerate(zip(pa.tolist(), pb.tolist(), strict=True)):
        c = cols[i % len(cols)]
        xb += wa
        draw.line([(xa, ya), (xb, yb)], fill=c, width=line_width)
        for x, y in ((xa, ya), (xb, yb)):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=c, outline=(255, 255, 255))
    return canvas


#: Colours of a prediction judged against its ground truth (:func:`draw_judged_matches`).
RIGHT, WRONG = (40, 200, 60), (230, 40, 40)


def draw_judged_matches(
    img_a,
    img_b,
    src: torch.Tensor | np.ndarray,
    pred: torch.Tensor | np.ndarray,
    gt: torch.Tensor | np.ndarray,
    threshold: float,
    alpha: float = 0.1,
    *,
    height: int | None = None,
) -> tuple[Image.Image, torch.Tensor]:
    """Matches coloured by whether each prediction lies within ``alpha * threshold`` of its
    ground truth (green :data:`RIGHT`, red :data:`WRONG`; the PCK criterion,
    :func:`simsc.pck.correct_keypoints`), true points drawn as white rings (``draw_matches``).
    Points are ``[N, 2]`` in the pixels of ``img_a`` / ``img_b``; returns the picture and the
    boolean ``[N]`` verdicts."""
    from .pck import correct_keypoints

    p = torch.as_tensor(np.asarray(pred), dtype=torch.float64).reshape(-1, 2)
    g = torch.as_tensor(np.asarray(gt), dtype=torch.float64).reshape(-1, 2)
    right = correct_keypoints(p[None], g[None], float(threshold), alpha)[0]
    colors = [RIGHT if ok else WRONG for ok in right.tolist()]
    pic = draw_matches(img_a, img_b, src, pred, height=height, colors=colors or None, gt_b=gt)
    return pic, right


def save_match_picture(
    model: SimSC,
    path_a: str | os.PathLike,
    path_b: str | os.PathLike,
    out: str | os.PathLike,
    points=None,
    resolution: int | str = D.RESOLUTION,
    beta_eval: float | None = None,
    grid: int = 5,
    height: int | None = None,
) -> dict:
    """Load two image files, predict matches and write the picture (PNG) to ``out``.
    Returns ``{"points_a", "points_b", "size"}`` (original pixels, canvas ``(W, H)``)."""
    a, b = load_image(path_a), load_image(path_b)
    pa, pb = predict_matches(model, a, b, points, resolution=resolution, beta_eval=beta_eval, grid=grid)
    pic = draw_matches(a, b, pa, pb, height=height)
    out = Path(out)
    if out.exists() and not out.is_file():
        raise ValueError(f"{out}: exists and is not a regular file; expected a path for the PNG picture")
    atomic_write(out, lambda f: pic.save(f, format="PNG"))
    return {"points_a": pa.tolist(), "points_b": pb.tolist(), "size": list(pic.size)}
