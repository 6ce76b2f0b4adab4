"""The embedded offline data set: image pairs built from the photographs inside scikit-image.

This is the pipeline's default data set, so a fresh clone can train and evaluate with no
network. Every photo below ships inside the scikit-image wheel (no ``pooch`` download) and is
its own *category*. Splits are by source photo (:data:`EMBEDDED_SPLITS`), so no test or val
photo is ever seen in training.

A pair is built from one photo:

* **source**: a random crop of the photo, resized (antialiased) to a random size between
  ``image_size[0]`` and ``image_size[1]`` (``W x H``; default 320 x 240 .. 480 x 360);
* **target**: the source warped by a random geometric map, on its own random-size canvas,
  then photometrically jittered (brightness, contrast, saturation, hue rotation, blur, noise).
  The map is a homography (perspective, rotation +-20 deg, scale 0.8-1.2 relative to the
  canvas, small aspect change, translation) followed by a smooth, invertible displacement
  field (a few Gaussian radial bumps, Lipschitz constant <= 0.4); see :class:`Warp`;
* **keypoints**: 8-20 integer pixel centres on the source, favouring textured places
  (Shi-Tomasi corner response plus a uniform floor), with a minimum spacing and away from the
  source border, mapped through the exact forward warp; those that do not land inside the
  target (with a small margin) are dropped. A pair with fewer than 6 surviving keypoints (or
  whose warped source covers under 40 % of the target) is resampled deterministically.

The image is warped by inverse mapping (``Warp.inverse`` at every target pixel centre, bilinear
sampling) and the keypoints by the forward map ``Warp.forward`` (which solves the inverse
map exactly by a contraction fixed point), so the ground truth is exact to ~1e-9 px before
the 3-decimal rounding of the JSON. All coordinates follow :mod:`simsc.coords`: ``(x, y)``,
0-based, integers at pixel centres. Boxes are ``[x1, y1, x2, y2]`` of pixel centres
(inclusive): the source box is the whole image ``[0, 0, W-1, H-1]``, the target box the
extent of the target pixels covered by the warped source.

The output uses the SPair-71k layout (``JPEGImages/<category>/``, ``PairAnnotation/<split>/``,
``Layout/large/<split>.txt``, plus ``ImageAnnotation/<category>/``), so the SPair loader
reads it unchanged, and a ``manifest.json``. Generation is deterministic: pair ``i`` of split
``s`` uses ``np.random.default_rng([seed, s, i])`` and is independent of every other pair,
JPEGs are written with a fixed quality and no metadata, JSON with sorted keys; on the same
software stack the same seed gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

GENERATOR_VERSION = "1"

#: Fixed assignment of photos to splits (SPair split names). Disjoint by construction.
EMBEDDED_SPLITS: dict[str, tuple[str, ...]] = {
    "trn": (
        "astronaut",
        "camera",
        "coins",
        "rocket",
        "hubble_deep_field",
        "immunohistochemistry",
        "retina",
        "grass",
        "gravel",
    ),
    "val": ("coffee", "moon"),
    "test": ("chelsea", "motorcycle"),
}

SPLIT_ORDER: tuple[str, ...] = ("trn", "val", "test")

#: Photos used, each a category (in split order). All load from files inside the
#: scikit-image package. ``cat`` is the same picture as ``chelsea`` and ``motorcycle_right``
#: the same scene as ``motorcycle_left``; each such group is used once.
EMBEDDED_PHOTOS: tuple[str, ...] = tuple(p for split in SPLIT_ORDER for p in EMBEDDED_SPLITS[split])
DEFAULT_IMAGE_SIZE: tuple[tuple[int, int], tuple[int, int]] = ((320, 240), (480, 360))

JPEG_QUALITY = 90
MIN_KPS = 6
KPS_RANGE = (8, 20)  # inclusive
MIN_COVERAGE = 0.4
MAX_ATTEMPTS = 200

# Warp parameters (see Warp / sample_warp).
ROTATION_DEG = 20.0
SCALE_RANGE = (0.8, 1.2)
ASPECT_LOG = 0.1
PERSPECTIVE = 0.12
TRANSLATION = 0.1
BUMP_PROB = 0.7
BUMP_COUNT = (2, 5)  # inclusive
BUMP_AMPLITUDE = 0.03  # x min(W_t, H_t)
BUMP_SIGMA = (0.12, 0.3)  # x min(W_t, H_t)
BUMP_LIPSCHITZ = 0.4

_GREY_TO_RGB = {"camera", "coins", "grass", "gravel", "moon"}


# --------------------------------------------------------------------------------------
# Photos
# --------------------------------------------------------------------------------------


@cache
def load_photo(name: str) -> np.ndarray:
    """Load one embedded photo as an ``H x W x 3`` uint8 array (read-only), no network."""
    from skimage import data as skdata

    if name not in EMBEDDED_PHOTOS:
        raise KeyError(f"unknown embedded photo {name!r}; known: {', '.join(EMBEDDED_PHOTOS)}")
    if name == "motorcycle":
        img = skdata.stereo_motorcycle()[0]
    else:
        img = getattr(skdata, name)()
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = np.ascontiguousarray(img[:, :, :3]).astype(np.uint8, copy=False)
    img.setflags(write=False)
    return img


# --------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------


def _apply_h(h: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply a 3x3 homography to ``[N, 2]`` points; also return the homogeneous ``w``."""
    x, y = xy[:, 0], xy[:, 1]
    u = h[0, 0] * x + h[0, 1] * y + h[0, 2]
    v = h[1, 0] * x + h[1, 1] * y + h[1, 2]
    w = h[2, 0] * x + h[2, 1] * y + h[2, 2]
    safe = np.where(np.abs(w) < 1e-12, 1e-12, w)
    return np.stack([u / safe, v / safe], axis=1), w


@dataclass
class Warp:
    """Source -> target map ``f = D^-1 o H`` with ``D(q) = q + d(q)``.

    ``H`` is a homography (source pixels -> target pixels) and ``d`` a smooth displacement
    field on the target, a sum of Gaussian bumps ``a_k exp(-|q - c_k|^2 / (2 s_k^2))`` whose
    Lipschitz constant is kept <= 0.4, so ``D`` is a diffeomorphism. The inverse map
    ``g = f^-1 = H^-1 o D`` is closed-form (used to warp images); the forward map solves
    ``q + d(q) = H p`` by the fixed point ``q <- H p - d(q)`` (used to warp points).
    """

    h: np.ndarray  # 3x3, source -> target (before the displacement)
    centers: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # [K, 2] (x, y)
    amplitudes: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # [K, 2]
    sigmas: np.ndarray = field(default_factory=lambda: np.zeros((0,)))  # [K]

    def __post_init__(self) -> None:
        self.h = np.asarray(self.h, dtype=np.float64)
        self.h_inv = np.linalg.inv(self.h)
        self.centers = np.asarray(self.centers, dtype=np.float64).reshape(-1, 2)
        self.amplitudes = np.asarray(self.amplitudes, dtype=np.float64).reshape(-1, 2)
        self.sigmas = np.asarray(self.sigmas, dtype=np.float64).reshape(-1)

    def displacement(self, q: np.ndarray) -> np.ndarray:
        """``d(q)`` for ``[N, 2]`` target points."""
        q = np.asarray(q, dtype=np.float64).reshape(-1, 2)
        out = np.zeros_like(q)
        for c, a, s in zip(self.centers, self.amplitudes, self.sigmas, strict=True):
            g = np.exp(-((q - c) ** 2).sum(axis=1) / (2.0 * s * s))
            out += g[:, None] * a
        return out

    def displacement_grid(self, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """``d`` at every pixel centre of a ``height x width`` image (separable, fast)."""
        xs = np.arange(width, dtype=np.float64)
        ys = np.arange(height, dtype=np.float64)
        dx = np.zeros((height, width))
        dy = np.zeros((height, width))
        for c, a, s in zip(self.centers, self.amplitudes, self.sigmas, strict=True):
            gx = np.exp(-((xs - c[0]) ** 2) / (2.0 * s * s))
            gy = np.exp(-((ys - c[1]) ** 2) / (2.0 * s * s))
            g = np.outer(gy, gx)
            dx += a[0] * g
            dy += a[1] * g
        return dx, dy

    def inverse(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Target -> source for ``[N, 2]`` points; also the homogeneous ``w`` (> 0 where valid)."""
        q = np.asarray(q, dtype=np.float64).reshape(-1, 2)
        return _apply_h(self.h_inv, q + self.displacement(q))

    def forward(self, p: np.ndarray, tol: float = 1e-10, max_iter: int = 200) -> np.ndarray:
        """Source -> target for ``[N, 2]`` points (exact up to ``tol`` pixels)."""
        p = np.asarray(p, dtype=np.float64).reshape(-1, 2)
        r, _ = _apply_h(self.h, p)
        q = r.copy()
        if len(self.sigmas) == 0:
            return q
        for _ in range(max_iter):
            q_new = r - self.displacement(q)
            done = np.abs(q_new - q).max(initial=0.0) < tol
            q = q_new
            if done:
                break
        return q

    def to_json(self) -> dict[str, Any]:
        return {
            "homography": [[_r(v, 9) for v in row] for row in self.h],
            "bumps": [
                {"center": [_r(c[0], 6), _r(c[1], 6)], "amplitude": [_r(a[0], 6), _r(a[1], 6)], "sigma": _r(s, 6)}
                for c, a, s in zip(self.centers, self.amplitudes, self.sigmas, strict=True)
            ],
        }


def _r(v: float, nd: int) -> float:
    return round(float(v), nd) + 0.0  # + 0.0 turns -0.0 into 0.0


def sample_warp(rng: np.random.Generator, src_size: tuple[int, int], trg_size: tuple[int, int]) -> Warp:
    """Draw a random :class:`Warp` from a ``src_size`` (W, H) image to a ``trg_size`` canvas."""
    ws, hs = src_size
    wt, ht = trg_size
    cs = np.array([(ws - 1) / 2.0, (hs - 1) / 2.0])
    ct = np.array([(wt - 1) / 2.0, (ht - 1) / 2.0])
    r = max(ws, hs) / 2.0
    # Source pixels -> normalised coords in [-1, 1] (about the image centre).
    n = np.array([[1 / r, 0, -cs[0] / r], [0, 1 / r, -cs[1] / r], [0, 0, 1.0]])
    px, py = rng.uniform(-PERSPECTIVE, PERSPECTIVE, size=2)
    persp = np.array([[1.0, 0, 0], [0, 1.0, 0], [px, py, 1.0]])
    back = np.diag([r, r, 1.0])
    base = np.sqrt((wt * ht) / (ws * hs))
    s = base * rng.uniform(*SCALE_RANGE)
    asp = np.exp(rng.uniform(-ASPECT_LOG, ASPECT_LOG))
    scale = np.diag([s * np.sqrt(asp), s / np.sqrt(asp), 1.0])
    th = np.deg2rad(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1.0]])
    t = ct + rng.uniform(-TRANSLATION, TRANSLATION, size=2) * np.array([wt, ht])
    trans = np.array([[1.0, 0, t[0]], [0, 1.0, t[1]], [0, 0, 1.0]])
    h = trans @ rot @ scale @ back @ persp @ n
    h = h / h[2, 2]

    if rng.uniform() < BUMP_PROB:
        k = int(rng.integers(BUMP_COUNT[0], BUMP_COUNT[1] + 1))
        m = float(min(wt, ht))
        centers = rng.uniform(0, 1, size=(k, 2)) * np.array([wt - 1, ht - 1])
        sigmas = rng.uniform(*BUMP_SIGMA, size=k) * m
        mags = rng.uniform(0, BUMP_AMPLITUDE, size=k) * m
        ang = rng.uniform(0, 2 * np.pi, size=k)
        amps = np.stack([mags * np.cos(ang), mags * np.sin(ang)], axis=1)
        # |grad of a bump| <= |a| / s * exp(-1/2); keep the sum under BUMP_LIPSCHITZ.
        lip = float((mags / sigmas).sum() * np.exp(-0.5))
        if lip > BUMP_LIPSCHITZ:
            amps *= BUMP_LIPSCHITZ / lip
        return Warp(h, centers, amps, sigmas)
    return Warp(h)


def _source_coords(warp: Warp, src_size: tuple[int, int], trg_size: tuple[int, int]):
    """Preimages ``(sx, sy)`` of all target pixel centres and the in-source mask."""
    ws, hs = src_size
    wt, ht = trg_size
    dx, dy = warp.displacement_grid(wt, ht)
    xs = np.arange(wt, dtype=np.float64)[None, :] + dx
    ys = np.arange(ht, dtype=np.float64)[:, None] + dy
    hi = warp.h_inv
    u = hi[0, 0] * xs + hi[0, 1] * ys + hi[0, 2]
    v = hi[1, 0] * xs + hi[1, 1] * ys + hi[1, 2]
    w = hi[2, 0] * xs + hi[2, 1] * ys + hi[2, 2]
    ok_w = w > 1e-9  # the other side of the vanishing line is never inside the source
    w_safe = np.where(ok_w, w, 1.0)
    sx = np.where(ok_w, u / w_safe, -1e6)
    sy = np.where(ok_w, v / w_safe, -1e6)
    mask = ok_w & (sx >= -0.5) & (sx <= ws - 0.5) & (sy >= -0.5) & (sy <= hs - 0.5)
    return sx, sy, mask


def _warp_planar(
    planes: np.ndarray, warp: Warp, trg_size: tuple[int, int], fill: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`warp_image` on a float32 ``C x H x W`` array; returns ``C x H_t x W_t``."""
    c, hs, ws = planes.shape
    wt, ht = trg_size
    sx, sy, mask = _source_coords(warp, (ws, hs), trg_size)
    # Bilinear sampling. Coordinates are clamped into the pixel-centre range (edge pixels
    # extend half a pixel, like mode='nearest'); what is outside the source is masked.
    sx = np.clip(sx, 0.0, ws - 1.0)
    sy = np.clip(sy, 0.0, hs - 1.0)
    x0 = np.minimum(np.floor(sx).astype(np.intp), max(ws - 2, 0))
    y0 = np.minimum(np.floor(sy).astype(np.intp), max(hs - 2, 0))
    fx = (sx - x0).astype(np.float32)
    fy = (sy - y0).astype(np.float32)
    ox = 1 if ws > 1 else 0
    oy = ws if hs > 1 else 0
    i00 = y0 * ws + x0
    w00 = (1 - fx) * (1 - fy)
    w01 = fx * (1 - fy)
    w10 = (1 - fx) * fy
    w11 = fx * fy
    out = np.empty((c, ht, wt), dtype=np.float32)
    for k in range(c):
        f = planes[k].ravel()
        val = f[i00] * w00 + f[i00 + ox] * w01 + f[i00 + oy] * w10 + f[i00 + oy + ox] * w11
        out[k] = np.where(mask, val, np.float32(fill[k]))
    return out, mask


def warp_image(
    img: np.ndarray, warp: Warp, trg_size: tuple[int, int], fill: Sequence[float] | float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Warp an ``H x W x C`` (or ``H x W``) image onto a ``trg_size`` (W, H) canvas.

    Inverse mapping: each target pixel centre ``q`` samples the source at ``warp.inverse(q)``
    (bilinear, pixel-centre convention of :mod:`simsc.coords`). Returns the float32 image and
    the boolean mask of target pixels whose preimage lies inside the source image
    (pixel-edge extent ``[-0.5, W-0.5] x [-0.5, H-0.5]``); the rest is ``fill``.
    """
    src = np.asarray(img, dtype=np.float32)
    squeeze = src.ndim == 2
    planes = src[None] if squeeze else np.ascontiguousarray(src.transpose(2, 0, 1))
    fill_arr = np.broadcast_to(np.asarray(fill, dtype=np.float32), (planes.shape[0],))
    out, mask = _warp_planar(planes, warp, trg_size, fill_arr)
    return (out[0] if squeeze else out.transpose(1, 2, 0)), mask


# --------------------------------------------------------------------------------------
# Photometry and keypoints
# --------------------------------------------------------------------------------------

_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float64)
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


def photometric_jitter(planes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Jitter a float32 ``3 x H x W`` image in [0, 1]; returns ``H x W x 3`` uint8.

    Brightness +-0.12, contrast x[0.75, 1.25], saturation x[0.7, 1.3], hue rotation
    +-0.25 rad (YIQ chroma plane), Gaussian blur (sigma 0.3-1.2, 40 % of images), Gaussian
    noise (sigma up to 0.025).
    """
    brightness = rng.uniform(-0.12, 0.12)
    contrast = rng.uniform(0.75, 1.25)
    saturation = rng.uniform(0.7, 1.3)
    hue = rng.uniform(-0.25, 0.25)
    blur = rng.uniform(0.3, 1.2) if rng.uniform() < 0.4 else 0.0
    noise = rng.uniform(0.0, 0.025)
    # The colour ops are linear: fold them into one 3x3 matrix + offset,
    # y = contrast * (colour @ x - colour @ mean) + colour @ mean + brightness.
    ch, sh = np.cos(hue), np.sin(hue)
    m = np.diag([1.0, saturation, saturation]) @ np.array([[1, 0, 0], [0, ch, -sh], [0, sh, ch]])
    colour = _YIQ2RGB @ m @ _RGB2YIQ
    c, h, w = planes.shape
    mean = planes.reshape(c, -1).mean(axis=1, dtype=np.float64)
    a = (contrast * colour).astype(np.float32)
    b = ((1.0 - contrast) * (colour @ mean) + brightness).astype(np.float32)
    # Per-channel multiply-adds rather than a BLAS matmul: no thread pool, same bytes anywhere.
    out = np.empty_like(planes)
    for k in range(c):
        out[k] = a[k, 0] * planes[0] + a[k, 1] * planes[1] + a[k, 2] * planes[2] + b[k]
    if blur > 0:
        out = ndimage.gaussian_filter(out, sigma=(0, blur, blur), mode="nearest")
    out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(noise)
    out = np.clip(np.rint(out * np.float32(255.0)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def _texture_weights(gray: np.ndarray, margin: int) -> np.ndarray:
    from skimage.feature import corner_shi_tomasi

    resp = corner_shi_tomasi(gray, sigma=1.5)
    resp = np.maximum(resp, 0)
    mx = resp.max()
    wgt = np.sqrt(resp / mx) if mx > 0 else np.zeros_like(resp)
    wgt = wgt + 0.05
    wgt[:margin, :] = 0
    wgt[-margin:, :] = 0
    wgt[:, :margin] = 0
    wgt[:, -margin:] = 0
    return wgt


def sample_keypoints(
    rng: np.random.Generator, weights: np.ndarray, n: int, min_dist: float, n_candidates: int = 400
) -> np.ndarray:
    """Up to ``n`` integer ``(x, y)`` pixel centres drawn ~ ``weights`` with a minimum spacing.

    Weighted sampling without replacement by the Gumbel-top-k trick, then greedy thinning.
    """
    flat = weights.reshape(-1)
    nz = np.flatnonzero(flat > 0)
    if len(nz) == 0:
        return np.zeros((0, 2))
    keys = np.log(flat[nz]) - np.log(-np.log(rng.uniform(1e-300, 1.0, size=len(nz))))
    k = min(n_candidates, len(nz))
    top = np.argpartition(-keys, k - 1)[:k]
    top = top[np.argsort(-keys[top], kind="stable")]
    idx = nz[top]
    w = weights.shape[1]
    cand = np.stack([idx % w, idx // w], axis=1).astype(np.float64)
    chosen: list[np.ndarray] = []
    for p in cand:
        if chosen and (np.hypot(*(np.asarray(chosen) - p).T) < min_dist).any():
            continue
        chosen.append(p)
        if len(chosen) >= n:
            break
    return np.asarray(chosen).reshape(-1, 2)


# --------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------


@dataclass
class Pair:
    photo: str
    crop: tuple[float, float, float, float]  # box in photo pixel edges (x0, y0, x1, y1)
    src: np.ndarray  # uint8 H x W x 3
    trg: np.ndarray  # uint8 H x W x 3
    warp: Warp
    src_kps: np.ndarray  # [N, 2] integer pixel centres
    trg_kps: np.ndarray  # [N, 2] float
    trg_bbox: tuple[int, int, int, int]
    attempts: int


def _sample_size(rng: np.random.Generator, image_size) -> tuple[int, int]:
    (w0, h0), (w1, h1) = image_size
    return int(rng.integers(w0, w1 + 1)), int(rng.integers(h0, h1 + 1))


def _normalise_image_size(image_size) -> tuple[tuple[int, int], tuple[int, int]]:
    arr = np.asarray(image_size, dtype=np.int64)
    if arr.shape == (2,):
        arr = np.stack([arr, arr])
    if arr.shape != (2, 2) or (arr < 32).any() or (arr[0] > arr[1]).any():
        raise ValueError(
            f"image_size must be (W, H) or ((min_W, min_H), (max_W, max_H)) with sizes >= 32, got {image_size!r}"
        )
    return (int(arr[0, 0]), int(arr[0, 1])), (int(arr[1, 0]), int(arr[1, 1]))


def make_pair(photo: str, rng: np.random.Generator, image_size=DEFAULT_IMAGE_SIZE) -> Pair:
    """Build one pair from ``photo`` with the random stream ``rng`` (see the module docstring)."""
    image_size = _normalise_image_size(image_size)
    full = load_photo(photo)
    hp, wp = full.shape[:2]

    # Source: random crop with the output's aspect ratio, resized (antialiased).
    ws, hs = _sample_size(rng, image_size)
    aspect = ws / hs
    cw, ch = (hp * aspect, float(hp)) if wp / hp > aspect else (float(wp), wp / aspect)
    frac = rng.uniform(0.55, 1.0)
    cw, ch = cw * frac, ch * frac
    x0 = rng.uniform(0, wp - cw)
    y0 = rng.uniform(0, hp - ch)
    crop = (float(x0), float(y0), float(x0 + cw), float(y0 + ch))
    src = np.asarray(
        Image.fromarray(full).resize((ws, hs), resample=Image.Resampling.BICUBIC, box=crop), dtype=np.uint8
    )
    src_f = np.ascontiguousarray(src.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)
    gray = 0.299 * src_f[0] + 0.587 * src_f[1] + 0.114 * src_f[2]
    m = min(ws, hs)
    margin = max(8, int(round(0.04 * m)))
    min_dist = max(10.0, 0.06 * m)
    weights = _texture_weights(gray, margin)
    fill = src_f.reshape(3, -1).mean(axis=1)

    for attempt in range(1, MAX_ATTEMPTS + 1):
        wt, ht = _sample_size(rng, image_size)
        warp = sample_warp(rng, (ws, hs), (wt, ht))
        n_kps = int(rng.integers(KPS_RANGE[0], KPS_RANGE[1] + 1))
        cand = sample_keypoints(rng, weights, 3 * n_kps, min_dist)
        if len(cand) < MIN_KPS:
            continue
        q = warp.forward(cand)
        tm = 2.0
        inside = (q[:, 0] >= tm) & (q[:, 0] <= wt - 1 - tm) & (q[:, 1] >= tm) & (q[:, 1] <= ht - 1 - tm)
        keep = np.flatnonzero(inside)[:n_kps]
        if len(keep) < MIN_KPS:
            continue
        warped, mask = _warp_planar(src_f, warp, (wt, ht), fill)
        if mask.mean() < MIN_COVERAGE:
            continue
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        bbox = (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))
        trg = photometric_jitter(warped, rng)
        return Pair(photo, crop, src, trg, warp, cand[keep], q[keep], bbox, attempt)
    raise RuntimeError(f"could not sample a valid pair from {photo!r} in {MAX_ATTEMPTS} attempts")


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def _jpeg_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img, mode="RGB").save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)
    return buf.getvalue()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True) + "\n").encode("utf-8")


def _pair_record(split: str, split_index: int, index: int, seed: int, image_size) -> dict[str, Any]:
    """Generate pair ``index`` (0-based) of ``split``; returns names, bytes and annotations."""
    photos = EMBEDDED_SPLITS[split]
    photo = photos[index % len(photos)]
    rng = np.random.default_rng([seed, split_index, index])
    pair = make_pair(photo, rng, image_size)
    pair_id = index + 1
    src_stem = f"{photo}_{split}_{pair_id:06d}_src"
    trg_stem = f"{photo}_{split}_{pair_id:06d}_trg"
    line = f"{pair_id:06d}-{src_stem}-{trg_stem}:{photo}"
    hs, ws = pair.src.shape[:2]
    ht, wt = pair.trg.shape[:2]
    src_kps = [[int(x), int(y)] for x, y in pair.src_kps]
    trg_kps = [[_r(x, 3), _r(y, 3)] for x, y in pair.trg_kps]
    kps_ids = [str(i) for i in range(len(src_kps))]
    src_box = [0, 0, ws - 1, hs - 1]
    trg_box = list(pair.trg_bbox)
    ann = {
        "pair_id": pair_id,
        "filename": line,
        "src_imname": src_stem + ".jpg",
        "trg_imname": trg_stem + ".jpg",
        "src_imsize": [ws, hs, 3],
        "trg_imsize": [wt, ht, 3],
        "src_bndbox": src_box,
        "trg_bndbox": trg_box,
        "category": photo,
        "src_pose": "Unspecified",
        "trg_pose": "Unspecified",
        "src_kps": src_kps,
        "trg_kps": trg_kps,
        "kps_ids": kps_ids,
        "mirror": 0,
        "viewpoint_variation": 0,
        "scale_variation": 0,
        "truncation": 0,
        "occlusion": 0,
        "embedded": {
            "generator_version": GENERATOR_VERSION,
            "coordinates": "simsc.coords: (x, y), 0-based, integers at pixel centres",
            "photo": photo,
            "photo_crop": [_r(v, 6) for v in pair.crop],
            "warp": pair.warp.to_json(),
            "attempts": pair.attempts,
        },
    }

    def img_ann(stem: str, size: tuple[int, int], box: list[int], kps: list) -> dict[str, Any]:
        return {
            "filename": stem + ".jpg",
            "src_database": "scikit-image",
            "src_annotation": "simsc embedded",
            "src_image": f"skimage.data.{photo}",
            "image_width": size[0],
            "image_height": size[1],
            "image_depth": 3,
            "category": photo,
            "pose": "Unspecified",
            "truncated": 0,
            "occluded": 0,
            "difficult": 0,
            "bndbox": box,
            "kps": {k: p for k, p in zip(kps_ids, kps, strict=True)},
            "azimuth_id": 0,
        }

    return {
        "split": split,
        "line": line,
        "photo": photo,
        "files": {
            f"JPEGImages/{photo}/{src_stem}.jpg": _jpeg_bytes(pair.src),
            f"JPEGImages/{photo}/{trg_stem}.jpg": _jpeg_bytes(pair.trg),
            f"PairAnnotation/{split}/{line}.json": _json_bytes(ann),
            f"ImageAnnotation/{photo}/{src_stem}.json": _json_bytes(img_ann(src_stem, (ws, hs), src_box, src_kps)),
            f"ImageAnnotation/{photo}/{trg_stem}.json": _json_bytes(img_ann(trg_stem, (wt, ht), trg_box, trg_kps)),
        },
    }


def _manifest(seed: int, counts: dict[str, int], image_size) -> dict[str, Any]:
    from importlib.metadata import version  # skimage's lazy module hides __version__ from type checkers

    return {
        "generator": "simsc.data.embedded",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "counts": dict(counts),
        "image_size": [list(image_size[0]), list(image_size[1])],
        "photos": list(EMBEDDED_PHOTOS),
        "splits": {k: list(v) for k, v in EMBEDDED_SPLITS.items()},
        "layout": "SPair-71k",
        "coordinates": "simsc.coords: (x, y), 0-based, integers at pixel centres; boxes [x1, y1, x2, y2] inclusive",
        "jpeg_quality": JPEG_QUALITY,
        "skimage_version": version("scikit-image"),
    }


_IDENTITY_KEYS = ("generator", "generator_version", "seed", "counts", "image_size", "splits")


def _read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _matches(existing: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    return existing is not None and all(existing.get(k) == wanted[k] for k in _IDENTITY_KEYS)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def build_embedded_dataset(
    root: str | os.PathLike,
    *,
    seed: int = 0,
    n_train: int = 500,
    n_val: int = 100,
    n_test: int = 100,
    image_size=DEFAULT_IMAGE_SIZE,
    progress: bool = True,
) -> Path:
    """Generate the embedded data set in SPair-71k layout under ``root``; returns ``root``.

    Idempotent: when ``root/manifest.json`` already records the same generator version, seed,
    counts, image sizes and split assignment, nothing is written. Atomic: everything is
    generated in a temporary folder next to ``root`` and moved into place with
    :func:`os.replace`; an existing ``root`` made by this generator with other parameters is
    replaced, anything else that is not empty is refused (``FileExistsError``).

    ``image_size`` is ``((min_W, min_H), (max_W, max_H))`` or a fixed ``(W, H)``.
    """
    from tqdm.auto import tqdm

    root = Path(root).absolute()
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    counts = {"trn": int(n_train), "val": int(n_val), "test": int(n_test)}
    if any(v < 0 for v in counts.values()):
        raise ValueError(f"pair counts must be >= 0, got {counts}")
    image_size = _normalise_image_size(image_size)
    manifest = _manifest(seed, counts, image_size)
    existing = _read_manifest(root)
    if _matches(existing, manifest):
        return root
    _refuse_foreign(root, existing)  # up front: not after minutes of generating

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the data set is not
        jobs = [(split, si, i) for si, split in enumerate(SPLIT_ORDER) for i in range(counts[split])]
        lines: dict[str, list[str]] = {s: [""] * counts[s] for s in SPLIT_ORDER}
        bar = tqdm(total=len(jobs), desc="embedded data set", unit="pair", disable=not progress)
        try:
            for split, si, i in jobs:
                rec = _pair_record(split, si, i, seed, image_size)
                for rel, data in rec["files"].items():
                    _write(tmp / rel, data)
                lines[split][i] = rec["line"]
                bar.update(1)
        finally:
            bar.close()
        for split in SPLIT_ORDER:
            (tmp / "PairAnnotation" / split).mkdir(parents=True, exist_ok=True)
            text = "".join(line + "\n" for line in lines[split])
            _write(tmp / "Layout" / "large" / f"{split}.txt", text.encode("utf-8"))
        _write(tmp / "manifest.json", (json.dumps(manifest, sort_keys=True, indent=2) + "\n").encode("utf-8"))
        _install(tmp, root, manifest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _refuse_foreign(root: Path, existing: dict[str, Any] | None) -> None:
    """``FileExistsError`` naming ``root`` unless it is absent, an empty folder or a set made here."""
    if not root.exists() and not root.is_symlink():
        return
    if not root.is_dir():
        raise FileExistsError(
            f"{root} exists and is a file, not a folder; expected a folder for the embedded "
            "data set (move the file or choose another root)"
        )
    if not any(root.iterdir()):
        return
    if existing is None or existing.get("generator") != "simsc.data.embedded":
        raise FileExistsError(
            f"{root} exists and is not an embedded data set made by simsc; refusing to "
            "replace it (choose another root or empty the folder)"
        )


def _install(tmp: Path, root: Path, manifest: dict[str, Any]) -> None:
    """Move ``tmp`` to ``root`` atomically (see :func:`build_embedded_dataset`)."""
    old: Path | None = None
    if root.exists():
        existing = _read_manifest(root)
        if _matches(existing, manifest):
            return  # someone else finished the same build first
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        elif existing is not None and existing.get("generator") == "simsc.data.embedded":
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            old.rmdir()
            os.replace(root, old)
        else:
            raise FileExistsError(
                f"{root} exists and is not an embedded data set made by simsc; refusing to replace it"
            )
    try:
        os.replace(tmp, root)
    except OSError:
        if _matches(_read_manifest(root), manifest):
            return  # a concurrent build of the same set won the race
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def dataset_digest(root: str | os.PathLike) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative posix path -> hex digest)."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m simsc.data.embedded ROOT``; errors as :mod:`simsc.errors` says (user error: 2)."""
    from simsc.errors import ArgumentParser, add_debug_flag, run_main

    ap = ArgumentParser(
        prog="python -m simsc.data.embedded", description="Build the embedded offline data set (SPair-71k layout)."
    )
    add_debug_flag(ap)
    ap.add_argument("root")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=500)
    ap.add_argument("--n-val", type=int, default=100)
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    def body() -> int:
        t0 = time.perf_counter()
        root = build_embedded_dataset(
            args.root,
            seed=args.seed,
            n_train=args.n_train,
            n_val=args.n_val,
            n_test=args.n_test,
            progress=not args.no_progress,
        )
        print(f"{root} ready in {time.perf_counter() - t0:.1f} s")
        return 0

    return run_main("simsc.data.embedded", body, debug=args.debug)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
