"""Pair records, the shared dataset base class and :func:`collate_pairs`.

Every loader returns one plain ``dict`` per pair (the contract the model and trainer rely on):

========================  =====================================================================
``pair_id``, ``category``  ``str``
``src_path``, ``trg_path`` ``str``, image paths relative to the dataset root (for debugging)
``src_img``, ``trg_img``   float32 ``[3, H, W]``, RGB in ``[0, 1]`` (not mean/std normalised)
``src_kps``, ``trg_kps``   float32 ``[N, 2]`` ``(x, y)`` in pixels of the *returned* image
``valid``                  bool ``[N]``; invalid rows have their keypoints set to 0 (never NaN)
``trg_bbox``               float32 ``[4]`` ``(x1, y1, x2, y2)`` in returned-image pixels
``src_orig_size`` ...      long ``[2]`` ``(H, W)``: ``src_orig_size``, ``trg_orig_size`` (as
                           stored) and ``src_size``, ``trg_size`` (as returned)
``thresholds``             ``{"img", "kps", "bbox"}`` -> float32 scalars at the returned size
``threshold``              float32 scalar: the protocol's theta; ``threshold_kind`` names it
========================  =====================================================================

Coordinates follow :mod:`simsc.coords` (0-based, integer = pixel centre). The official
annotations are used as stored (no 1-based -> 0-based shift), as every peer does.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from simsc.coords import rescale_box, rescale_points
from simsc.pck import theta_bbox, theta_img, theta_kps

Resolution = Union[int, Literal["original"]]
ThresholdKind = Literal["img", "kps", "bbox"]
THRESHOLD_KINDS: tuple[str, ...] = ("img", "kps", "bbox")

#: A keypoint farther than this many pixels outside the image's pixel area
#: ``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` is out of the image. The slack accepts the
#: annotations made with 1-based tools (a point at ``x = W`` is a real, visible point).
OUT_OF_IMAGE_TOLERANCE = 1.0


class DatasetFormatError(ValueError):
    """A dataset file is missing, malformed or unreadable; the message names the file
    (and row / field where it applies) and what was expected."""


@dataclass(frozen=True)
class Issue:
    """One reported (never silent) deviation that the loader handled by skipping or masking."""

    source: str  # the file that holds the annotation
    row: int | None  # 1-based line number in ``source`` (CSV / layout), if any
    message: str

    def __str__(self) -> str:
        where = self.source if self.row is None else f"{self.source}, row {self.row}"
        return f"{where}: {self.message}"


@dataclass
class PairAnnotation:
    """A pair as parsed from the annotation files, in original-image pixels."""

    pair_id: str
    category: str
    src_path: str  # relative to the dataset root
    trg_path: str
    src_kps: np.ndarray  # float64 [N, 2]; rows may be NaN where ``valid`` is False
    trg_kps: np.ndarray
    valid: np.ndarray  # bool [N]
    trg_bbox: np.ndarray | None  # float64 [4], None -> box of the valid target keypoints
    source: str  # annotation file, for messages
    row: int | None = None
    flip: bool = False  # flip both images horizontally (PF-Pascal training list)
    src_size: tuple[int, int] | None = None  # (H, W) declared by the annotation or header
    trg_size: tuple[int, int] | None = None


def parse_resolution(resolution: Any) -> Resolution:
    """Accept a positive int (or digit string, as from a CLI) or ``"original"``."""
    if isinstance(resolution, str):
        if resolution in ("original", "ori", "ori."):
            return "original"
        if resolution.isdigit():
            resolution = int(resolution)
    if isinstance(resolution, (int, np.integer)) and not isinstance(resolution, bool) and resolution > 0:
        return int(resolution)
    raise ValueError(f"resolution must be a positive int (square resize) or 'original', got {resolution!r}")


def resolution_tag(resolution: Resolution) -> str:
    """Folder-safe name of a resolution (``"256"`` or ``"original"``)."""
    return str(resolution)


def flip_points(kps: np.ndarray, width: int) -> np.ndarray:
    """Horizontal flip under the pixel-centre convention: ``x -> W - 1 - x``."""
    out = kps.copy()
    out[:, 0] = width - 1 - out[:, 0]
    return out


def flip_box(box: np.ndarray, width: int) -> np.ndarray:
    """Flip ``(x1, y1, x2, y2)``: the corners swap so that ``x1 <= x2`` still holds."""
    x1, y1, x2, y2 = box
    return np.array([width - 1 - x2, y1, width - 1 - x1, y2], dtype=box.dtype)


def keypoint_box(kps: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Bounding box ``(x1, y1, x2, y2)`` of the valid keypoints."""
    v = kps[valid]
    return np.array([v[:, 0].min(), v[:, 1].min(), v[:, 0].max(), v[:, 1].max()], dtype=np.float64)


def outside_image(kps: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bool ``[N]``: keypoint lies outside the image (see :data:`OUT_OF_IMAGE_TOLERANCE`)."""
    h, w = size_hw
    lo = -0.5 - OUT_OF_IMAGE_TOLERANCE
    with np.errstate(invalid="ignore"):
        return (kps[:, 0] < lo) | (kps[:, 1] < lo) | (kps[:, 0] > w - 0.5 + OUT_OF_IMAGE_TOLERANCE) | (
            kps[:, 1] > h - 0.5 + OUT_OF_IMAGE_TOLERANCE
        )


def compute_thresholds(
    trg_kps: torch.Tensor, valid: torch.Tensor, trg_bbox: torch.Tensor, trg_size: Sequence[int]
) -> dict[str, torch.Tensor]:
    """The three base thresholds of the field for one pair, at the size the points are given in."""
    return {
        "img": theta_img(trg_size[0], trg_size[1]).float(),
        "kps": theta_kps(trg_kps, valid).float(),
        "bbox": theta_bbox(trg_bbox).float(),
    }


def image_to_tensor(img: np.ndarray, flip: bool = False) -> torch.Tensor:
    """uint8 ``H x W x 3`` -> float32 ``[3, H, W]`` in ``[0, 1]``."""
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
    return t.flip(-1).contiguous() if flip else t


def build_record(
    ann: PairAnnotation,
    src_img: np.ndarray,
    trg_img: np.ndarray,
    src_orig: tuple[int, int],
    trg_orig: tuple[int, int],
    threshold_kind: str,
) -> dict[str, Any]:
    """Assemble the pair record from images already at the returned size (uint8 ``H x W x 3``)
    and the annotation in original pixels (flip applied here, then one rescale)."""
    src_kps, trg_kps, valid = ann.src_kps, ann.trg_kps, ann.valid
    bbox = ann.trg_bbox if ann.trg_bbox is not None else keypoint_box(trg_kps, valid)
    if ann.flip:
        src_kps, trg_kps = flip_points(src_kps, src_orig[1]), flip_points(trg_kps, trg_orig[1])
        bbox = flip_box(bbox, trg_orig[1])
    src_size = tuple(src_img.shape[:2])
    trg_size = tuple(trg_img.shape[:2])
    vmask = torch.from_numpy(valid.copy())
    # NaN rows are zeroed before any arithmetic so that they never leak into a record.
    s = torch.from_numpy(np.where(valid[:, None], src_kps, 0.0)).float()
    t = torch.from_numpy(np.where(valid[:, None], trg_kps, 0.0)).float()
    b = torch.from_numpy(np.asarray(bbox, dtype=np.float64)).float()
    if src_size != tuple(src_orig):
        s = rescale_points(s, src_orig, src_size)
    if trg_size != tuple(trg_orig):
        t = rescale_points(t, trg_orig, trg_size)
        b = rescale_box(b, trg_orig, trg_size)
    s = torch.where(vmask[:, None], s, torch.zeros(()))
    t = torch.where(vmask[:, None], t, torch.zeros(()))
    thresholds = compute_thresholds(t, vmask, b, trg_size)
    return {
        "pair_id": ann.pair_id,
        "category": ann.category,
        "src_path": ann.src_path,
        "trg_path": ann.trg_path,
        "src_img": image_to_tensor(src_img, ann.flip),
        "trg_img": image_to_tensor(trg_img, ann.flip),
        "src_kps": s,
        "trg_kps": t,
        "valid": vmask,
        "trg_bbox": b,
        "src_orig_size": torch.tensor(src_orig, dtype=torch.long),
        "trg_orig_size": torch.tensor(trg_orig, dtype=torch.long),
        "src_size": torch.tensor(src_size, dtype=torch.long),
        "trg_size": torch.tensor(trg_size, dtype=torch.long),
        "thresholds": thresholds,
        "threshold": thresholds[threshold_kind],
        "threshold_kind": threshold_kind,
    }


_PAD_KEYS = {"src_kps": 0.0, "trg_kps": 0.0, "valid": False}


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    # default_collate stacks straight into shared memory inside DataLoader workers, which
    # saves a copy of every image batch on its way to the main process.
    return default_collate(tensors)


def collate_pairs(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch pair records: images and sizes stacked, keypoints padded to the largest ``N``
    (padding: keypoints 0, ``valid`` False), ``thresholds`` a dict of ``[B]`` tensors,
    strings as lists."""
    if len(batch) == 0:
        raise ValueError("collate_pairs: empty batch")
    keys = list(batch[0].keys())
    for i, rec in enumerate(batch):
        if set(rec.keys()) != set(keys):
            raise ValueError(f"collate_pairs: record {i} has keys {sorted(rec)}, expected {sorted(keys)}")
    out: dict[str, Any] = {}
    n_max = max(int(rec["valid"].shape[0]) for rec in batch) if "valid" in keys else 0
    for k in keys:
        vals = [rec[k] for rec in batch]
        if k in _PAD_KEYS:
            padded = []
            for v in vals:
                pad = n_max - v.shape[0]
                if pad:
                    v = torch.cat([v, v.new_full((pad, *v.shape[1:]), _PAD_KEYS[k])])
                padded.append(v)
            out[k] = _stack(padded)
        elif k in ("src_img", "trg_img"):
            shapes = {tuple(v.shape) for v in vals}
            if len(shapes) > 1:
                raise ValueError(
                    f"collate_pairs: {k} sizes differ within the batch {sorted(shapes)}; images of "
                    "resolution='original' keep their own sizes, so use batch_size=1 for them"
                )
            out[k] = _stack(vals)
        elif isinstance(vals[0], dict):
            out[k] = {kk: _stack([v[kk] for v in vals]) for kk in vals[0]}
        elif isinstance(vals[0], torch.Tensor):
            out[k] = _stack(vals)
        else:
            out[k] = list(vals)
    return out


class ImageSource(Protocol):
    """Where a dataset gets its pixels: ``get(relpath) -> (uint8 H x W x 3 at the
    dataset's resolution, original (H, W))``."""

    def get(self, relpath: str) -> tuple[np.ndarray, tuple[int, int]]: ...


class PairDataset(Dataset):
    """Common base of the loaders: annotations are parsed and checked eagerly in
    ``__init__`` (so that format errors surface before training), images lazily.

    Attributes reported after construction (a :class:`UserWarning` states their counts):

    * ``skipped``: :class:`Issue` per pair dropped (e.g. no valid keypoint left);
    * ``invalid_keypoints``: :class:`Issue` per keypoint masked out (``valid = False``) because
      it was NaN in a CSV or outside its image. NaN rows of PF-Pascal ``.mat`` files mean
      "invisible" and are normal: they are not reported.
    """

    name: str = "pairs"
    threshold_kind: str = "img"

    def __init__(
        self,
        root: str | Path,
        split: str,
        resolution: Resolution | str = 256,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.resolution: Resolution = parse_resolution(resolution)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.pairs: list[PairAnnotation] = []
        self.skipped: list[Issue] = []
        self.invalid_keypoints: list[Issue] = []
        self._images: ImageSource | None = None
        if not self.root.is_dir():
            raise DatasetFormatError(f"{self.root}: dataset root folder not found")

    # -- images ----------------------------------------------------------------------------
    @property
    def images(self) -> ImageSource:
        """The image source: :class:`~simsc.data.cache.CachedImages` when ``cache_dir`` is
        set, else :class:`~simsc.data.images.DirectImages` (decodes every time)."""
        if self._images is None:
            # Imported here: images.py and cache.py import this module.
            from simsc.data.cache import CachedImages
            from simsc.data.images import DirectImages

            if self.cache_dir is not None:
                self._images = CachedImages(self.cache_dir, self.name, self.root, self.resolution)
            else:
                self._images = DirectImages(self.root, self.resolution)
        return self._images

    def image_paths(self) -> list[str]:
        """Unique image paths (relative to the root) used by this split, in first-use order."""
        return list(dict.fromkeys(p for a in self.pairs for p in (a.src_path, a.trg_path)))

    # -- annotations -----------------------------------------------------------------------
    def _finalize(self, pairs: list[PairAnnotation], listing: Path) -> None:
        """Mask out-of-image keypoints, drop pairs that cannot be scored, report, store."""
        kept: list[PairAnnotation] = []
        for a in pairs:
            for side, kps, size in (("source", a.src_kps, a.src_size), ("target", a.trg_kps, a.trg_size)):
                if size is None:
                    continue
                bad = outside_image(kps, size) & a.valid
                for i in np.flatnonzero(bad):
                    self.invalid_keypoints.append(
                        Issue(a.source, a.row, f"{side} keypoint {i} {kps[i].tolist()} is outside the "
                              f"{size[1]}x{size[0]} image {a.src_path if side == 'source' else a.trg_path}; marked invalid")
                    )
                a.valid = a.valid & ~bad
            if not a.valid.any():
                self.skipped.append(Issue(a.source, a.row, f"pair {a.pair_id} has no valid keypoint; skipped"))
                continue
            if self.threshold_kind == "kps" and float(np.ptp(a.trg_kps[a.valid], axis=0).max()) <= 0:
                self.skipped.append(
                    Issue(a.source, a.row, f"pair {a.pair_id}: valid target keypoints span 0 pixels, so "
                          "theta_kps = 0 and PCK is undefined; skipped")
                )
                continue
            kept.append(a)
        if self.skipped or self.invalid_keypoints:
            reasons = Counter(_reason(i.message) for i in self.invalid_keypoints + self.skipped)
            warnings.warn(
                f"{self.name} {self.split} ({listing}): {len(self.skipped)} pair(s) skipped, "
                f"{len(self.invalid_keypoints)} keypoint(s) marked invalid ({dict(reasons)}); "
                "details in dataset.skipped / dataset.invalid_keypoints",
                stacklevel=3,
            )
        if not kept:
            raise DatasetFormatError(f"{listing}: split {self.split!r} has no usable pair")
        self.pairs = kept

    # -- Dataset API -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ann = self.pairs[index]
        src_img, src_orig = self.images.get(ann.src_path)
        trg_img, trg_orig = self.images.get(ann.trg_path)
        for declared, actual, path in ((ann.src_size, src_orig, ann.src_path), (ann.trg_size, trg_orig, ann.trg_path)):
            if declared is not None and tuple(declared) != tuple(actual):
                raise DatasetFormatError(
                    f"{ann.source}: image {self.root / path} is {actual[1]}x{actual[0]} (WxH) but the "
                    f"annotation expects {declared[1]}x{declared[0]}"
                )
        return build_record(ann, src_img, trg_img, src_orig, trg_orig, self.threshold_kind)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, root={str(self.root)!r}, split={self.split!r}, "
            f"resolution={self.resolution!r}, pairs={len(self)}, threshold={self.threshold_kind!r})"
        )


def _reason(message: str) -> str:
    for key in ("outside", "NaN", "null", "no valid keypoint", "span 0"):
        if key in message:
            return key
    return "other"


def read_text_lines(path: Path) -> list[str]:
    """Read a text listing with an error that names the file."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetFormatError(f"{path}: cannot read text file ({e})") from e


def inside_root(relpath: str, where: str, field: str) -> str:
    """``relpath`` (read from an annotation) if it stays inside the data root, else
    :class:`DatasetFormatError` naming ``where`` (file, row) and ``field``.

    Absolute paths, drive letters and ``..`` components are refused: annotation text must
    not choose files outside the root. The check is lexical on purpose: a symlink inside
    the root was put there by whoever owns the root, not by the annotation.
    """
    text = str(relpath)
    norm = text.replace("\\", "/")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if "\x00" in text or norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or ".." in parts or not parts:
        raise DatasetFormatError(
            f"{where}: field {field!r} is {text!r}; expected a path relative to the data root that stays "
            "inside it (no absolute path, no '..')"
        )
    return text


def parse_float(value: str, where: str, what: str) -> float:
    """``float(value)`` with a message naming the file/row/field on failure (NaN allowed)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DatasetFormatError(f"{where}: {what} must be a number, got {value!r}") from None

