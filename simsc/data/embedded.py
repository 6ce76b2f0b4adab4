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

That is the ``"mild"`` setting (:data:`MILD`), the default. ``difficulty="hard"``
(:data:`HARD`) draws from the same recipe with other parameters (:class:`Difficulty`):
rotation +-75 deg, scale 0.5-2 (log-uniform), strong perspective and larger bumps (still
Lipschitz < 1); a strong appearance change (hue rotation up to +-pi, strong contrast and
brightness, heavier blur and noise, and by chance greyscale, posterisation and colour
inversion); the area outside the warped source filled with a crop of another photo of the
same split (clutter); and 1-4 occluders (rectangles, ellipses, blobs) filled with another
same-split photo's texture or noise. Keypoints under an occluder (within 1 pixel) are dropped,
as SPair annotates visible keypoints only. Mild sets are byte-identical to those made before
the setting existed (their manifest has no ``difficulty`` key, read as mild).

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
from dataclasses import asdict, dataclass, field, replace
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
MAX_ATTEMPTS = 200


# --------------------------------------------------------------------------------------
# Difficulty: one parameter set per setting
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WarpParams:
    """Ranges of :func:`sample_warp` (all drawn uniformly unless said otherwise)."""

    rotation_deg: float  # rotation in +-rotation_deg
    scale: tuple[float, float]  # relative scale (target / source, after area normalisation)
    scale_log_uniform: bool  # draw the scale log-uniformly (True) or uniformly (False)
    aspect_log: float  # log aspect change in +-aspect_log
    perspective: float  # projective row (px, py) in +-perspective (normalised source coords)
    translation: float  # centre offset in +-translation x the canvas size
    bump_prob: float  # probability of a displacement field
    bump_count: tuple[int, int]  # inclusive
    bump_amplitude: float  # max |a_k| / min(W_t, H_t)
    bump_sigma: tuple[float, float]  # s_k / min(W_t, H_t)
    bump_lipschitz: float  # bound on the field's Lipschitz constant, < 1 (see Warp)

    def __post_init__(self) -> None:
        if not 0.0 < self.bump_lipschitz < 1.0:
            raise ValueError(f"bump_lipschitz must be in (0, 1) for an invertible warp, got {self.bump_lipschitz}")
        if not 0.0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be 0 < min <= max, got {self.scale}")


@dataclass(frozen=True)
class PhotometricParams:
    """Ranges of :func:`sample_photometric`. An operation with probability 0 draws no random
    number, so adding one leaves the draws of a setting without it unchanged."""

    brightness: float  # offset in +-brightness
    contrast: tuple[float, float]  # factor about the image mean
    saturation: tuple[float, float]  # factor of the YIQ chroma
    hue: float  # rotation of the YIQ chroma plane in +-hue (radians)
    blur_prob: float
    blur_sigma: tuple[float, float]  # pixels
    noise: float  # Gaussian noise sigma in [0, noise]
    greyscale_prob: float = 0.0
    posterise_prob: float = 0.0
    posterise_levels: tuple[int, int] = (2, 4)  # inclusive
    invert_prob: float = 0.0


@dataclass(frozen=True)
class OcclusionParams:
    """Occluders pasted on the target (:func:`sample_occluders`); ``count`` (0, 0): none."""

    count: tuple[int, int] = (0, 0)  # inclusive
    radius: tuple[float, float] = (0.06, 0.18)  # half-extents rx, ry / min(W_t, H_t)
    noise_prob: float = 0.0  # share of occluders filled with synthetic noise, not a photo's texture
    margin: int = 1  # a keypoint within this many pixels (Chebyshev) of an occluder pixel is dropped


@dataclass(frozen=True)
class Difficulty:
    """One setting of the generator: warp, appearance change, occlusion and clutter."""

    name: str
    warp: WarpParams
    photometric: PhotometricParams
    occlusion: OcclusionParams
    clutter: bool  # outside the warped source: another same-split photo (True) or the source's mean colour
    min_coverage: float  # least share of the target covered by the warped source
    candidates: int  # keypoint candidates drawn per wanted keypoint

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


#: Today's (and the original) data set: moderate warps, mild jitter, no occlusion.
MILD = Difficulty(
    name="mild",
    warp=WarpParams(
        rotation_deg=20.0,
        scale=(0.8, 1.2),
        scale_log_uniform=False,
        aspect_log=0.1,
        perspective=0.12,
        translation=0.1,
        bump_prob=0.7,
        bump_count=(2, 5),
        bump_amplitude=0.03,
        bump_sigma=(0.12, 0.3),
        bump_lipschitz=0.4,
    ),
    photometric=PhotometricParams(
        brightness=0.12,
        contrast=(0.75, 1.25),
        saturation=(0.7, 1.3),
        hue=0.25,
        blur_prob=0.4,
        blur_sigma=(0.3, 1.2),
        noise=0.025,
    ),
    occlusion=OcclusionParams(),
    clutter=False,
    min_coverage=0.4,
    candidates=3,
)

#: Large geometric and appearance change, occluders and a cluttered background.
HARD = Difficulty(
    name="hard",
    warp=WarpParams(
        rotation_deg=75.0,
        scale=(0.5, 2.0),
        scale_log_uniform=True,
        aspect_log=0.2,
        perspective=0.3,
        translation=0.2,
        bump_prob=0.9,
        bump_count=(2, 6),
        bump_amplitude=0.08,
        bump_sigma=(0.08, 0.25),
        bump_lipschitz=0.6,
    ),
    photometric=PhotometricParams(
        brightness=0.25,
        contrast=(0.5, 1.6),
        saturation=(0.3, 1.6),
        hue=float(np.pi),
        blur_prob=0.5,
        blur_sigma=(0.5, 2.0),
        noise=0.06,
        greyscale_prob=0.4,
        posterise_prob=0.4,
        posterise_levels=(3, 5),
        invert_prob=0.4,
    ),
    occlusion=OcclusionParams(count=(1, 4), radius=(0.06, 0.18), noise_prob=0.3, margin=1),
    clutter=True,
    min_coverage=0.15,
    candidates=6,
)

DIFFICULTIES: dict[str, Difficulty] = {d.name: d for d in (MILD, HARD)}


def get_difficulty(difficulty: str | Difficulty) -> Difficulty:
    """The :class:`Difficulty` named ``difficulty`` (or ``difficulty`` itself)."""
    if isinstance(difficulty, Difficulty):
        return difficulty
    try:
        return DIFFICULTIES[difficulty]
    except (KeyError, TypeError):
        raise ValueError(f"unknown difficulty {difficulty!r}; known: {', '.join(DIFFICULTIES)}") from None


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
    Lipschitz constant is kept below 1 (0.4 mild, 0.6 hard), so ``D`` is a diffeomorphism. The inverse map
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


def sample_warp(
    rng: np.random.Generator, src_size: tuple[int, int], trg_size: tuple[int, int], params: WarpParams = MILD.warp
) -> Warp:
    """Draw a random :class:`Warp` from a ``src_size`` (W, H) image to a ``trg_size`` canvas.

    The homography maps the source centre to the canvas centre (plus a translation), with a
    relative scale ``s`` (1: the warped source has the canvas's area), a rotation, an aspect
    change and a perspective row; ``params`` gives the ranges.
    """
    ws, hs = src_size
    wt, ht = trg_size
    cs = np.array([(ws - 1) / 2.0, (hs - 1) / 2.0])
    ct = np.array([(wt - 1) / 2.0, (ht - 1) / 2.0])
    r = max(ws, hs) / 2.0
    # Source pixels -> normalised coords in [-1, 1] (about the image centre).
    n = np.array([[1 / r, 0, -cs[0] / r], [0, 1 / r, -cs[1] / r], [0, 0, 1.0]])
    px, py = rng.uniform(-params.perspective, params.perspective, size=2)
    persp = np.array([[1.0, 0, 0], [0, 1.0, 0], [px, py, 1.0]])
    back = np.diag([r, r, 1.0])
    base = np.sqrt((wt * ht) / (ws * hs))
    lo, hi = params.scale
    s = base * (float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if params.scale_log_uniform else rng.uniform(lo, hi))
    asp = np.exp(rng.uniform(-params.aspect_log, params.aspect_log))
    scale = np.diag([s * np.sqrt(asp), s / np.sqrt(asp), 1.0])
    th = np.deg2rad(rng.uniform(-params.rotation_deg, params.rotation_deg))
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1.0]])
    t = ct + rng.uniform(-params.translation, params.translation, size=2) * np.array([wt, ht])
    trans = np.array([[1.0, 0, t[0]], [0, 1.0, t[1]], [0, 0, 1.0]])
    h = trans @ rot @ scale @ back @ persp @ n
    h = h / h[2, 2]

    if rng.uniform() < params.bump_prob:
        k = int(rng.integers(params.bump_count[0], params.bump_count[1] + 1))
        m = float(min(wt, ht))
        centers = rng.uniform(0, 1, size=(k, 2)) * np.array([wt - 1, ht - 1])
        sigmas = rng.uniform(*params.bump_sigma, size=k) * m
        mags = rng.uniform(0, params.bump_amplitude, size=k) * m
        ang = rng.uniform(0, 2 * np.pi, size=k)
        amps = np.stack([mags * np.cos(ang), mags * np.sin(ang)], axis=1)
        # |grad of a bump| <= |a| / s * exp(-1/2); keep the sum under bump_lipschitz (< 1).
        lip = float((mags / sigmas).sum() * np.exp(-0.5))
        if lip > params.bump_lipschitz:
            amps *= params.bump_lipschitz / lip
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


@dataclass(frozen=True)
class PhotometricDraw:
    """One draw of :func:`sample_photometric`: what :func:`apply_photometric` does."""

    brightness: float
    contrast: float
    saturation: float
    hue: float
    blur: float  # Gaussian sigma in pixels, 0: none
    noise: float  # Gaussian noise sigma
    greyscale: bool = False
    posterise: int = 0  # number of levels, 0: none
    invert: bool = False


def _chance(rng: np.random.Generator, p: float) -> bool:
    """``True`` with probability ``p``; draws nothing when ``p`` is 0."""
    return p > 0 and bool(rng.uniform() < p)


def sample_photometric(rng: np.random.Generator, params: PhotometricParams = MILD.photometric) -> PhotometricDraw:
    """Draw the appearance change of one target (see :class:`PhotometricParams`)."""
    brightness = rng.uniform(-params.brightness, params.brightness)
    contrast = rng.uniform(*params.contrast)
    saturation = rng.uniform(*params.saturation)
    hue = rng.uniform(-params.hue, params.hue)
    blur = rng.uniform(*params.blur_sigma) if rng.uniform() < params.blur_prob else 0.0
    noise = rng.uniform(0.0, params.noise)
    greyscale = _chance(rng, params.greyscale_prob)
    lo, hi = params.posterise_levels
    posterise = int(rng.integers(lo, hi + 1)) if _chance(rng, params.posterise_prob) else 0
    invert = _chance(rng, params.invert_prob)
    return PhotometricDraw(
        float(brightness), float(contrast), float(saturation), float(hue), float(blur), float(noise),
        greyscale, posterise, invert,
    )  # fmt: skip


def colour_transform(planes: np.ndarray, brightness: float, contrast: float, saturation: float, hue: float):
    """Brightness offset, contrast about the mean, saturation and hue rotation (YIQ chroma) of
    a float32 ``3 x H x W`` image, folded into one 3x3 matrix + offset."""
    # y = contrast * (colour @ x - colour @ mean) + colour @ mean + brightness.
    ch, sh = np.cos(hue), np.sin(hue)
    m = np.diag([1.0, saturation, saturation]) @ np.array([[1, 0, 0], [0, ch, -sh], [0, sh, ch]])
    colour = _YIQ2RGB @ m @ _RGB2YIQ
    c = planes.shape[0]
    mean = planes.reshape(c, -1).mean(axis=1, dtype=np.float64)
    a = (contrast * colour).astype(np.float32)
    b = ((1.0 - contrast) * (colour @ mean) + brightness).astype(np.float32)
    # Per-channel multiply-adds rather than a BLAS matmul: no thread pool, same bytes anywhere.
    out = np.empty_like(planes)
    for k in range(c):
        out[k] = a[k, 0] * planes[0] + a[k, 1] * planes[1] + a[k, 2] * planes[2] + b[k]
    return out


#: Luma weights (ITU-R BT.601) of :func:`to_greyscale`.
LUMA = (0.299, 0.587, 0.114)


def to_greyscale(planes: np.ndarray) -> np.ndarray:
    """Luma ``0.299 R + 0.587 G + 0.114 B`` of a ``3 x H x W`` image, in all three channels."""
    w = np.asarray(LUMA, dtype=np.float32)
    y = w[0] * planes[0] + w[1] * planes[1] + w[2] * planes[2]
    return np.stack([y, y, y])


def posterise(planes: np.ndarray, levels: int) -> np.ndarray:
    """Quantise values in [0, 1] to ``levels`` equally spaced levels ``k / (levels - 1)``."""
    if levels < 2:
        raise ValueError(f"posterise needs at least 2 levels, got {levels}")
    k = np.minimum(np.floor(np.clip(planes, 0.0, 1.0) * np.float32(levels)), np.float32(levels - 1))
    return (k / np.float32(levels - 1)).astype(np.float32)


def invert(planes: np.ndarray) -> np.ndarray:
    """Colour inversion ``1 - x`` (``255 - x`` in 8 bits)."""
    return np.float32(1.0) - planes


def apply_photometric(planes: np.ndarray, draw: PhotometricDraw, rng: np.random.Generator) -> np.ndarray:
    """Apply ``draw`` to a float32 ``3 x H x W`` image in [0, 1]; returns ``H x W x 3`` uint8.

    Order: colour transform, greyscale, blur, posterisation, inversion, noise (drawn from
    ``rng``), 8-bit rounding.
    """
    out = colour_transform(planes, draw.brightness, draw.contrast, draw.saturation, draw.hue)
    if draw.greyscale:
        out = to_greyscale(out)
    if draw.blur > 0:
        out = ndimage.gaussian_filter(out, sigma=(0, draw.blur, draw.blur), mode="nearest")
    if draw.posterise:
        out = posterise(out, draw.posterise)
    if draw.invert:
        out = invert(np.clip(out, 0.0, 1.0))
    out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(draw.noise)
    out = np.clip(np.rint(out * np.float32(255.0)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def photometric_jitter(
    planes: np.ndarray, rng: np.random.Generator, params: PhotometricParams = MILD.photometric
) -> np.ndarray:
    """Jitter a float32 ``3 x H x W`` image in [0, 1]; returns ``H x W x 3`` uint8.

    Mild: brightness +-0.12, contrast x[0.75, 1.25], saturation x[0.7, 1.3], hue rotation
    +-0.25 rad (YIQ chroma plane), Gaussian blur (sigma 0.3-1.2, 40 % of images), Gaussian
    noise (sigma up to 0.025). Other ranges and operations: ``params``.
    """
    return apply_photometric(planes, sample_photometric(rng, params), rng)


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
    chosen = np.empty((max(min(n, len(cand)), 0), 2))
    k = 0
    for p in cand:
        if k >= n:
            break
        if k and (np.hypot(*(chosen[:k] - p).T) < min_dist).any():
            continue
        chosen[k] = p
        k += 1
    return chosen[:k].copy()


# --------------------------------------------------------------------------------------
# Occlusion and clutter (hard)
# --------------------------------------------------------------------------------------


def texture_photos(photo: str) -> tuple[str, ...]:
    """The photos whose texture may fill the occluders and background of ``photo``'s pairs:
    the other photos of its split, so no photo of another split ever shows up in a pair."""
    for split in SPLIT_ORDER:
        if photo in EMBEDDED_SPLITS[split]:
            return tuple(p for p in EMBEDDED_SPLITS[split] if p != photo)
    raise KeyError(f"unknown embedded photo {photo!r}")


@cache
def _photo_image(name: str) -> Image.Image:
    return Image.fromarray(load_photo(name))


def _random_crop(
    rng: np.random.Generator, photo_size: tuple[int, int], aspect: float, frac: float
) -> tuple[float, float, float, float]:
    """A box (pixel edges) of aspect ``aspect`` (W / H), ``frac`` x the largest such box in a
    ``photo_size`` (W, H) photo, at a uniform position."""
    wp, hp = photo_size
    cw, ch = (hp * aspect, float(hp)) if wp / hp > aspect else (float(wp), wp / aspect)
    cw, ch = cw * frac, ch * frac
    x0 = rng.uniform(0, wp - cw)
    y0 = rng.uniform(0, hp - ch)
    return (float(x0), float(y0), float(x0 + cw), float(y0 + ch))


def photo_texture(photo: str, crop: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """The ``crop`` of ``photo`` resized to ``size`` (W, H): float32 ``3 x H x W`` in [0, 1]."""
    img = _photo_image(photo).resize(size, resample=Image.Resampling.BILINEAR, box=crop)
    return np.ascontiguousarray(np.asarray(img, dtype=np.float32).transpose(2, 0, 1)) / np.float32(255.0)


@dataclass(frozen=True)
class Clutter:
    """The target's background outside the warped source: a crop of another same-split photo."""

    photo: str
    crop: tuple[float, float, float, float]

    def render(self, size: tuple[int, int]) -> np.ndarray:
        return photo_texture(self.photo, self.crop, size)

    def to_json(self) -> dict[str, Any]:
        return {"photo": self.photo, "crop": [_r(v, 6) for v in self.crop]}


def sample_clutter(rng: np.random.Generator, photos: Sequence[str], trg_size: tuple[int, int]) -> Clutter:
    """A random crop (40-100 % of the largest box) of one of ``photos`` with the canvas's aspect."""
    photo = photos[int(rng.integers(len(photos)))]
    hp, wp = load_photo(photo).shape[:2]
    frac = rng.uniform(0.4, 1.0)
    return Clutter(photo, _random_crop(rng, (wp, hp), trg_size[0] / trg_size[1], frac))


OCCLUDER_SHAPES: tuple[str, ...] = ("rectangle", "ellipse", "blob")
BLOB_HARMONICS = 3  # cos(k phi + phase), k = 2 .. 1 + BLOB_HARMONICS
BLOB_AMPLITUDE = 0.35  # sum of the harmonics' amplitudes (relative radius), at most


@dataclass(frozen=True)
class Occluder:
    """A shape pasted on the target: a rotated rectangle or ellipse, or a blob (an ellipse
    whose radius is modulated by a few harmonics), filled with a photo's texture or noise."""

    shape: str
    center: tuple[float, float]  # (x, y) target pixels
    radii: tuple[float, float]  # half-extents along the shape's own axes
    angle: float  # radians
    harmonics: tuple[tuple[float, float], ...] = ()  # blob: (amplitude, phase) for k = 2, 3, ...
    texture: str | None = None  # photo filling it; None: synthetic noise
    crop: tuple[float, float, float, float] | None = None  # the texture's box in that photo
    noise_seed: int = 0  # the noise fill's random stream

    def extent(self) -> float:
        """Radius of a disc about ``center`` that holds the shape."""
        rx, ry = self.radii
        if self.shape == "rectangle":
            return float(np.hypot(rx, ry))
        return max(rx, ry) * (1.0 + sum(abs(a) for a, _ in self.harmonics))

    def box(self) -> tuple[int, int, int]:
        """``(x0, y0, side)``: the square of pixels that holds the shape (may leave the canvas)."""
        r = self.extent()
        x0, y0 = int(np.floor(self.center[0] - r)), int(np.floor(self.center[1] - r))
        return x0, y0, int(np.ceil(2 * r)) + 2

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether the points ``(x, y)`` lie inside the shape (boundary included)."""
        ca, sa = np.cos(self.angle), np.sin(self.angle)
        dx, dy = np.asarray(x, np.float64) - self.center[0], np.asarray(y, np.float64) - self.center[1]
        u = (ca * dx + sa * dy) / self.radii[0]
        v = (-sa * dx + ca * dy) / self.radii[1]
        if self.shape == "rectangle":
            return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
        bound = np.ones_like(u)
        if self.harmonics:
            phi = np.arctan2(v, u)
            for k, (amp, phase) in enumerate(self.harmonics, start=2):
                bound = bound + amp * np.cos(k * phi + phase)
        return np.hypot(u, v) <= bound

    def fill(self, side: int) -> np.ndarray:
        """The filling over the ``side x side`` square of :meth:`box`: float32 ``3 x side x side``."""
        if self.texture is not None and self.crop is not None:
            return photo_texture(self.texture, self.crop, (side, side))
        rng = np.random.default_rng(self.noise_seed)
        base = rng.uniform(0.1, 0.9, size=(3, 1, 1)).astype(np.float32)
        sigma = rng.uniform(1.0, 4.0)
        noise = ndimage.gaussian_filter(rng.standard_normal((3, side, side), dtype=np.float32), (0, sigma, sigma))
        noise /= noise.reshape(3, -1).std(axis=1).reshape(3, 1, 1) + np.float32(1e-6)
        return np.clip(base + np.float32(0.2) * noise, 0.0, 1.0).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "shape": self.shape,
            "center": [_r(v, 6) for v in self.center],
            "radii": [_r(v, 6) for v in self.radii],
            "angle": _r(self.angle, 6),
        }
        if self.harmonics:
            out["harmonics"] = [[_r(a, 6), _r(p, 6)] for a, p in self.harmonics]
        if self.texture is not None and self.crop is not None:
            out["texture"] = {"photo": self.texture, "crop": [_r(v, 6) for v in self.crop]}
        else:
            out["texture"] = {"noise_seed": self.noise_seed}
        return out


def sample_occluders(
    rng: np.random.Generator,
    params: OcclusionParams,
    trg_size: tuple[int, int],
    bbox: tuple[int, int, int, int],
    photos: Sequence[str],
) -> list[Occluder]:
    """Draw the occluders of one target: centres uniform in ``bbox`` (the warped source),
    filled with a crop of one of ``photos`` or (``noise_prob``) synthetic noise. Draws nothing
    when ``params.count`` is (0, 0)."""
    lo, hi = params.count
    if hi <= 0:
        return []
    m = float(min(trg_size))
    x1, y1, x2, y2 = bbox
    out = []
    for _ in range(int(rng.integers(lo, hi + 1))):
        shape = OCCLUDER_SHAPES[int(rng.integers(len(OCCLUDER_SHAPES)))]
        center = (float(rng.uniform(x1, x2)), float(rng.uniform(y1, y2)))
        rx, ry = (float(v) for v in rng.uniform(*params.radius, size=2) * m)
        angle = float(rng.uniform(0.0, np.pi))
        harmonics: tuple[tuple[float, float], ...] = ()
        if shape == "blob":
            amps = rng.uniform(0.0, BLOB_AMPLITUDE / BLOB_HARMONICS, size=BLOB_HARMONICS)
            phases = rng.uniform(0.0, 2 * np.pi, size=BLOB_HARMONICS)
            harmonics = tuple((float(a), float(p)) for a, p in zip(amps, phases, strict=True))
        occ = Occluder(shape, center, (rx, ry), angle, harmonics)
        if rng.uniform() < params.noise_prob:
            occ = replace(occ, noise_seed=int(rng.integers(2**31)))
        else:
            photo = photos[int(rng.integers(len(photos)))]
            hp, wp = load_photo(photo).shape[:2]
            frac = rng.uniform(0.15, 0.6)
            occ = replace(occ, texture=photo, crop=_random_crop(rng, (wp, hp), 1.0, frac))
        out.append(occ)
    return out


def _occluder_window(occ: Occluder, trg_size: tuple[int, int]) -> tuple[int, int, int, int, int, int, int]:
    """``(x0, y0, side, wx0, wy0, wx1, wy1)``: the occluder's square and its part on the canvas."""
    x0, y0, side = occ.box()
    wt, ht = trg_size
    return x0, y0, side, max(x0, 0), max(y0, 0), min(x0 + side, wt), min(y0 + side, ht)


def occluder_mask(occluders: Sequence[Occluder], trg_size: tuple[int, int]) -> np.ndarray:
    """Boolean ``H x W`` mask of the target pixels (centres) covered by any occluder."""
    wt, ht = trg_size
    mask = np.zeros((ht, wt), dtype=bool)
    for occ in occluders:
        _, _, _, wx0, wy0, wx1, wy1 = _occluder_window(occ, trg_size)
        if wx1 > wx0 and wy1 > wy0:
            ys, xs = np.mgrid[wy0:wy1, wx0:wx1]
            mask[wy0:wy1, wx0:wx1] |= occ.contains(xs, ys)
    return mask


def paste_occluders(planes: np.ndarray, occluders: Sequence[Occluder]) -> np.ndarray:
    """Paste ``occluders`` (in order, later on top) on a float32 ``3 x H x W`` image."""
    if not occluders:
        return planes
    out = planes.copy()
    trg_size = (planes.shape[2], planes.shape[1])
    for occ in occluders:
        x0, y0, side, wx0, wy0, wx1, wy1 = _occluder_window(occ, trg_size)
        if wx1 <= wx0 or wy1 <= wy0:
            continue
        ys, xs = np.mgrid[wy0:wy1, wx0:wx1]
        inside = occ.contains(xs, ys)
        fill = occ.fill(side)[:, wy0 - y0 : wy1 - y0, wx0 - x0 : wx1 - x0]
        out[:, wy0:wy1, wx0:wx1] = np.where(inside, fill, out[:, wy0:wy1, wx0:wx1])
    return out


def occluded_keypoints(q: np.ndarray, mask: np.ndarray, margin: int) -> np.ndarray:
    """Which ``[N, 2]`` target points are occluded: an occluder pixel of ``mask`` lies within
    ``margin`` pixels (Chebyshev) of the pixel nearest to the point (off the canvas: never)."""
    q = np.asarray(q, dtype=np.float64).reshape(-1, 2)
    ht, wt = mask.shape
    out = np.zeros(len(q), dtype=bool)
    if not mask.any():
        return out
    near = np.floor(q + 0.5)
    on = (near[:, 0] >= 0) & (near[:, 0] <= wt - 1) & (near[:, 1] >= 0) & (near[:, 1] <= ht - 1)
    for i in np.flatnonzero(on):
        x, y = int(near[i, 0]), int(near[i, 1])
        out[i] = bool(mask[max(y - margin, 0) : y + margin + 1, max(x - margin, 0) : x + margin + 1].any())
    return out


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
    difficulty: str = "mild"
    appearance: PhotometricDraw | None = None
    clutter: Clutter | None = None
    occluders: list[Occluder] = field(default_factory=list)
    n_occluded: int = 0  # candidate keypoints inside the target dropped because an occluder covers them

    def provenance(self) -> dict[str, Any]:
        """What the setting did beyond the warp, for the annotation's ``embedded`` record."""
        return {
            "difficulty": self.difficulty,
            "appearance": None
            if self.appearance is None
            else {k: _r(v, 6) if isinstance(v, float) else v for k, v in asdict(self.appearance).items()},
            "clutter": None if self.clutter is None else self.clutter.to_json(),
            "occluders": [o.to_json() for o in self.occluders],
            "occluded_keypoints": self.n_occluded,
        }


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


def make_pair(
    photo: str, rng: np.random.Generator, image_size=DEFAULT_IMAGE_SIZE, difficulty: str | Difficulty = "mild"
) -> Pair:
    """Build one pair from ``photo`` with the random stream ``rng`` (see the module docstring)."""
    d = get_difficulty(difficulty)
    image_size = _normalise_image_size(image_size)
    full = load_photo(photo)
    hp, wp = full.shape[:2]
    textures = texture_photos(photo)

    # Source: random crop with the output's aspect ratio, resized (antialiased).
    ws, hs = _sample_size(rng, image_size)
    frac = rng.uniform(0.55, 1.0)
    crop = _random_crop(rng, (wp, hp), ws / hs, frac)
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
        warp = sample_warp(rng, (ws, hs), (wt, ht), d.warp)
        n_kps = int(rng.integers(KPS_RANGE[0], KPS_RANGE[1] + 1))
        cand = sample_keypoints(rng, weights, d.candidates * n_kps, min_dist)
        if len(cand) < MIN_KPS:
            continue
        q = warp.forward(cand)
        tm = 2.0
        inside = (q[:, 0] >= tm) & (q[:, 0] <= wt - 1 - tm) & (q[:, 1] >= tm) & (q[:, 1] <= ht - 1 - tm)
        if np.count_nonzero(inside) < MIN_KPS:
            continue
        warped, mask = _warp_planar(src_f, warp, (wt, ht), fill)
        if mask.mean() < d.min_coverage:
            continue
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        bbox = (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))
        clutter = sample_clutter(rng, textures, (wt, ht)) if d.clutter else None
        occluders = sample_occluders(rng, d.occlusion, (wt, ht), bbox, textures)
        occluded = inside & occluded_keypoints(q, occluder_mask(occluders, (wt, ht)), d.occlusion.margin)
        keep = np.flatnonzero(inside & ~occluded)[:n_kps]
        if len(keep) < MIN_KPS:
            continue
        if clutter is not None:
            warped = np.where(mask, warped, clutter.render((wt, ht)))
        warped = paste_occluders(warped, occluders)
        appearance = sample_photometric(rng, d.photometric)
        trg = apply_photometric(warped, appearance, rng)
        return Pair(
            photo, crop, src, trg, warp, cand[keep], q[keep], bbox, attempt,
            d.name, appearance, clutter, occluders, int(np.count_nonzero(occluded)),
        )  # fmt: skip
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


def _pair_record(
    split: str, split_index: int, index: int, seed: int, image_size, difficulty: str | Difficulty = "mild"
) -> dict[str, Any]:
    """Generate pair ``index`` (0-based) of ``split``; returns names, bytes and annotations."""
    d = get_difficulty(difficulty)
    photos = EMBEDDED_SPLITS[split]
    photo = photos[index % len(photos)]
    rng = np.random.default_rng([seed, split_index, index])
    pair = make_pair(photo, rng, image_size, d)
    occluded = 1 if pair.occluders else 0
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
    ann: dict[str, Any] = {
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
        "occlusion": 2 * occluded,  # SPair: 0 none, 1 source, 2 target, 3 both
        "embedded": {
            "generator_version": GENERATOR_VERSION,
            "coordinates": "simsc.coords: (x, y), 0-based, integers at pixel centres",
            "photo": photo,
            "photo_crop": [_r(v, 6) for v in pair.crop],
            "warp": pair.warp.to_json(),
            "attempts": pair.attempts,
        },
    }
    if d != MILD:  # mild records stay byte-identical to those made before the setting
        ann["embedded"].update(pair.provenance())

    def img_ann(stem: str, size: tuple[int, int], box: list[int], kps: list, occluded: int = 0) -> dict[str, Any]:
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
            "occluded": occluded,
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
            f"ImageAnnotation/{photo}/{trg_stem}.json": _json_bytes(
                img_ann(trg_stem, (wt, ht), trg_box, trg_kps, occluded)
            ),
        },
    }


def _manifest(seed: int, counts: dict[str, int], image_size, difficulty: Difficulty = MILD) -> dict[str, Any]:
    from importlib.metadata import version  # skimage's lazy module hides __version__ from type checkers

    extra = {} if difficulty == MILD else {"difficulty": difficulty.name, "difficulty_params": difficulty.to_json()}
    return extra | {
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


_IDENTITY_KEYS = (
    "generator",
    "generator_version",
    "seed",
    "counts",
    "image_size",
    "splits",
    "difficulty",
    "difficulty_params",
)
#: Identity of a manifest without the key: mild manifests leave the difficulty out, so a mild
#: set is byte-identical to one built before the setting existed (and still matches it).
_IDENTITY_DEFAULTS: dict[str, Any] = {"difficulty": MILD.name, "difficulty_params": None}


def _read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _matches(existing: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    if existing is None:
        return False
    return all(
        existing.get(k, _IDENTITY_DEFAULTS.get(k)) == wanted.get(k, _IDENTITY_DEFAULTS.get(k)) for k in _IDENTITY_KEYS
    )


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
    difficulty: str | Difficulty = "mild",
    progress: bool = True,
) -> Path:
    """Generate the embedded data set in SPair-71k layout under ``root``; returns ``root``.

    Idempotent: when ``root/manifest.json`` already records the same generator version, seed,
    counts, image sizes, split assignment and difficulty, nothing is written. Atomic: everything is
    generated in a temporary folder next to ``root`` and moved into place with
    :func:`os.replace`; an existing ``root`` made by this generator with other parameters is
    replaced, anything else that is not empty is refused (``FileExistsError``).

    ``image_size`` is ``((min_W, min_H), (max_W, max_H))`` or a fixed ``(W, H)``.
    ``difficulty`` is ``"mild"`` (the default set) or ``"hard"`` (:data:`HARD`: large warps,
    strong appearance change, occluders and clutter), or a :class:`Difficulty`.
    """
    from ..progress import Progress

    root = Path(root).absolute()
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    counts = {"trn": int(n_train), "val": int(n_val), "test": int(n_test)}
    if any(v < 0 for v in counts.values()):
        raise ValueError(f"pair counts must be >= 0, got {counts}")
    image_size = _normalise_image_size(image_size)
    diff = get_difficulty(difficulty)
    manifest = _manifest(seed, counts, image_size, diff)
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
        # a bar on a terminal, a plain line every 20 s in a log (no carriage returns)
        bar = Progress("auto" if progress else "off", "embedded data set", len(jobs), unit="pair")
        try:
            for split, si, i in jobs:
                rec = _pair_record(split, si, i, seed, image_size, diff)
                for rel, data in rec["files"].items():
                    _write(tmp / rel, data)
                lines[split][i] = rec["line"]
                bar.advance()
            if bar._last_line_n != bar.n:
                bar.line()
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
    """``python -m simsc.data.embedded ROOT [--difficulty hard]``; errors as :mod:`simsc.errors` says
    (user error: 2)."""
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
    ap.add_argument("--difficulty", choices=tuple(DIFFICULTIES), default=MILD.name)
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
            difficulty=args.difficulty,
            progress=not args.no_progress,
        )
        print(f"{root} ready in {time.perf_counter() - t0:.1f} s")
        return 0

    return run_main("simsc.data.embedded", body, debug=args.debug)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
