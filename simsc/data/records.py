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

import os
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from simsc import defaults as D
from simsc.coords import rescale_box, rescale_points
from simsc.data.annotations import (  # noqa: F401 - re-exported: the names' historical home
    OUT_OF_IMAGE_TOLERANCE,
    THRESHOLD_KINDS,
    DatasetFormatError,
    Issue,
    PairAnnotation,
    Resolution,
    ThresholdKind,
    inside_root,
    keypoint_box,
    outside_image,
    parse_float,
    parse_resolution,
    read_text_lines,
    resolution_tag,
)
from simsc.data.cache import CachedImages
from simsc.data.images import DirectImages
from simsc.data.index import (
    DIGESTS_FILE,
    PairTable,
    SourceDigests,
    file_digests,
    finalize_pairs,
    load_index,
    save_index,
)
from simsc.io import unwritable
from simsc.pck import theta_bbox, theta_img, theta_kps


def flip_points(kps: np.ndarray, width: int) -> np.ndarray:
    """Horizontal flip under the pixel-centre convention: ``x -> W - 1 - x``."""
    out = kps.copy()
    out[:, 0] = width - 1 - out[:, 0]
    return out


def flip_box(box: np.ndarray, width: int) -> np.ndarray:
    """Flip ``(x1, y1, x2, y2)``: the corners swap so that ``x1 <= x2`` still holds."""
    x1, y1, x2, y2 = box
    return np.array([width - 1 - x2, y1, width - 1 - x1, y2], dtype=box.dtype)


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
    b = torch.from_numpy(np.array(bbox, dtype=np.float64)).float()  # a copy: table arrays are read-only
    if src_size != tuple(src_orig):
        s = rescale_points(s, src_orig, src_size)
    if trg_size != tuple(trg_orig):
        t = rescale_points(t, trg_orig, trg_size)
        b = rescale_box(b, trg_orig, trg_size)
    s = torch.where(vmask[:, None], s, torch.zeros(()))
    t = torch.where(vmask[:, None], t, torch.zeros(()))
    thresholds = compute_thresholds(t, vmask, b, trg_size)
    if not float(thresholds[threshold_kind]) > 0:
        # The loaders refuse zero-size boxes in the files' float64; a box narrower than
        # float32 resolves (x2 - x1 ~ 1e-6 at x = 50) still becomes zero-size here.
        basis = {"bbox": f"target box {np.asarray(bbox).tolist()}", "kps": "span of the valid target keypoints"}
        raise DatasetFormatError(
            f"{ann.source}: pair {ann.pair_id}: the {basis.get(threshold_kind, 'target image size')} is "
            f"zero-size at float32 precision, so theta_{threshold_kind} = 0 and PCK is undefined; expected "
            "a box / keypoint span of non-zero size (e.g. at least 0.01 px wide)"
        )
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

    ``pairs`` is a :class:`~simsc.data.index.PairTable` (a sequence of :class:`PairAnnotation`).
    With ``cache_dir`` set, the checked pairs are kept in the pair index
    ``<cache_dir>/<name>/index/<split>.npz`` (:mod:`simsc.data.index`): a later construction
    loads it instead of parsing when none of the files it was built from changed (else it is
    rebuilt). ``index_state`` says what happened: ``"off"`` (no ``cache_dir``), ``"loaded"``,
    ``"built"`` (no index yet) or ``"rebuilt"`` (the index was stale).

    Subclasses implement ``_parse()`` (the annotations, in listing order) and
    ``_dependencies()`` (every file that parse read) and call :meth:`_load_pairs`; they name
    their ``splits`` (and the ``split_aliases`` also accepted), which the constructor checks.
    """

    name: str = "pairs"
    threshold_kind: str = "img"
    #: the data set as errors name it, its splits (empty: any) and other names for them
    title: str = "pairs"
    splits: tuple[str, ...] = ()
    split_aliases: Mapping[str, str] = {}

    def __init__(
        self,
        root: str | Path,
        split: str,
        resolution: Resolution | str = D.RESOLUTION,
        cache_dir: str | Path | None = None,
    ) -> None:
        split = self.split_aliases.get(split, split)
        if self.splits and split not in self.splits:
            if len(self.splits) == 1:
                raise ValueError(f"{self.title} only has a {self.splits[0]!r} split, got {split!r}")
            raise ValueError(f"{self.title} split must be one of {list(self.splits)}, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.resolution: Resolution = parse_resolution(resolution)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.pairs: PairTable = PairTable.from_pairs([])
        self.index_path: Path | None = None
        self.index_state = "off"
        self.index_key: str | None = None
        self.skipped: list[Issue] = []
        self.invalid_keypoints: list[Issue] = []
        self._images: ImageSource | None = None
        self._cache_write_error: str | None = None  # "" once the cache folder proved writable
        if not self.root.is_dir():
            raise DatasetFormatError(f"{self.root}: dataset root folder not found")

    # -- images ----------------------------------------------------------------------------
    @property
    def images(self) -> ImageSource:
        """The image source: :class:`~simsc.data.cache.CachedImages` when ``cache_dir`` is
        set, else :class:`~simsc.data.images.DirectImages` (decodes every time)."""
        if self._images is None:
            if self.cache_dir is not None:
                writable = self._cache_writable()
                self._images = CachedImages(self.cache_dir, self.name, self.root, self.resolution, writable)
            else:
                self._images = DirectImages(self.root, self.resolution)
        return self._images

    def _cache_writable(self) -> bool:
        """Whether this data set's cache folder can be written; decided once, with one warning
        when it cannot (a read-only cache is read, and what it lacks is decoded uncached)."""
        if self._cache_write_error is None and self.cache_dir is not None:
            reason = unwritable(self.cache_dir / self.name)
            self._cache_write_error = reason or ""
            if reason:
                warnings.warn(
                    f"{self.cache_dir / self.name}: cache folder not writable ({reason}); reading the entries "
                    "it holds, decoding the other images without caching them",
                    stacklevel=4,
                )
        return not self._cache_write_error

    def image_paths(self) -> list[str]:
        """Unique image paths (relative to the root) used by this split, in first-use order."""
        return self.pairs.image_paths()

    # -- annotations -----------------------------------------------------------------------
    def _parse(self) -> PairTable | list[PairAnnotation]:
        raise NotImplementedError

    def _dependencies(self) -> list[str]:
        raise NotImplementedError

    def _finite_keypoints(self, src_kps: np.ndarray, trg_kps: np.ndarray, listing: Path, line: int) -> np.ndarray:
        """The valid mask ``[N]`` of a listed pair: False where either image's keypoint has a NaN
        coordinate, each such keypoint reported in ``invalid_keypoints`` (``listing``, ``line``)."""
        nan = np.isnan(src_kps).any(1) | np.isnan(trg_kps).any(1)
        for i in np.flatnonzero(nan):
            self.invalid_keypoints.append(
                Issue(str(listing), line, f"keypoint {i} has a NaN coordinate; marked invalid")
            )
        return ~nan

    def _index_meta(self) -> dict[str, Any]:
        """What, besides the files, decides the parse result (the index is stale if it differs)."""
        return {
            "loader": type(self).__name__,
            "name": self.name,
            "split": self.split,
            "root": str(self.root),
            "threshold_kind": self.threshold_kind,
            "out_of_image_tolerance": OUT_OF_IMAGE_TOLERANCE,
        }

    def _load_pairs(self, listing: Path) -> None:
        """Fill ``pairs`` / ``skipped`` / ``invalid_keypoints``: from the pair index when it is
        fresh, else by parsing (``_parse``), masking out-of-image keypoints and dropping the
        pairs that cannot be scored (then the index is written, if there is a ``cache_dir``)."""
        meta = self._index_meta()
        if self.cache_dir is not None:
            self.index_path = self.cache_dir / self.name / "index" / f"{self.split}.npz"
            existed = self.index_path.exists()
            digests = SourceDigests(self.cache_dir / self.name / DIGESTS_FILE)
            got = load_index(self.index_path, meta, self.root, digests)
            if got is not None:
                self.pairs, self.skipped, self.invalid_keypoints, self.index_key = got
                self.index_state = "loaded"
                self._report(listing)
                return
            self.index_state = "rebuilt" if existed else "built"
        pairs = self._parse()
        deps = self._dependencies()
        table = pairs if isinstance(pairs, PairTable) else PairTable.from_pairs(pairs)
        table, skipped, invalid = finalize_pairs(table, self.threshold_kind)
        self.skipped = skipped
        self.invalid_keypoints = self.invalid_keypoints + invalid
        if not len(table):
            self._report(listing)
            raise DatasetFormatError(f"{listing}: split {self.split!r} has no usable pair")
        self.pairs = table
        if self.index_path is not None and self._cache_writable():
            try:
                got_digests = file_digests(deps, digests)
                digests.save()
                if got_digests is None:
                    raise OSError(f"a file of the split vanished while it was read: {deps[:3]}...")
                # relative to the root: the index must not depend on where the data lies
                rel = [Path(os.path.relpath(d, self.root)).as_posix() for d in deps]
                self.index_key = save_index(
                    self.index_path, table, self.skipped, self.invalid_keypoints, meta, rel, got_digests
                )
            except (OSError, ValueError) as e:
                # The index only saves time: a run with a read-only cache still works.
                warnings.warn(
                    f"{self.index_path}: pair index not written ({e}); the annotations will be parsed again next time",
                    stacklevel=3,
                )
        self._report(listing)

    def _report(self, listing: Path) -> None:
        if self.skipped or self.invalid_keypoints:
            reasons = Counter(_reason(i.message) for i in self.invalid_keypoints + self.skipped)
            warnings.warn(
                f"{self.name} {self.split} ({listing}): {len(self.skipped)} pair(s) skipped, "
                f"{len(self.invalid_keypoints)} keypoint(s) marked invalid ({dict(reasons)}); "
                "details in dataset.skipped / dataset.invalid_keypoints",
                stacklevel=4,
            )

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
