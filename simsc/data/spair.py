"""SPair-71k loader (threshold: ``theta_bbox = max(w, h)`` of the target box), also used for
the generated "embedded" set written in the same layout.

Layout read unchanged (``root`` = the extracted ``SPair-71k`` folder)::

    <root>/Layout/large/<split>.txt              lines like 000001-2008_002719-2008_004100:aeroplane
    <root>/PairAnnotation/<split>/<line>.json
    <root>/JPEGImages/<category>/<imname>

Fields read from each pair JSON (all others are ignored): ``src_imname``, ``trg_imname``,
``src_imsize`` / ``trg_imsize`` (``[W, H, C]``), ``trg_bndbox`` (``[x1, y1, x2, y2]``),
``src_kps`` / ``trg_kps`` (index-aligned ``[[x, y], ...]``), ``category``. ``pair_id`` is the
layout line. Declared image sizes are checked against the decoded images.

Errors (:class:`DatasetFormatError` naming the file and field): missing layout / JSON /
image, invalid JSON, a missing or malformed field, ``src_kps`` and ``trg_kps`` of different
lengths, a box without positive width and height, an image path (``src_imname``,
``trg_imname``, ``category``, layout line) that leaves the root, an empty split. Reported skips: ``null``
keypoints and keypoints outside their image are marked invalid; pairs left without a valid
keypoint are dropped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from simsc.data.records import (
    DatasetFormatError,
    Issue,
    PairAnnotation,
    PairDataset,
    Resolution,
    inside_root,
    read_text_lines,
)

SPLITS = ("trn", "val", "test")
_ALIASES = {"train": "trn", "training": "trn", "validation": "val"}


class SPairDataset(PairDataset):
    """SPair-71k pairs; ``name`` sets the registry / cache name (``"embedded"`` for the
    generated set, which uses the same layout)."""

    name = "spair"
    threshold_kind = "bbox"

    def __init__(
        self,
        root: str | Path,
        split: str = "trn",
        resolution: Resolution | str = 256,
        cache_dir: str | Path | None = None,
        name: str | None = None,
    ) -> None:
        split = _ALIASES.get(split, split)
        if split not in SPLITS:
            raise ValueError(f"SPair-71k split must be one of {list(SPLITS)}, got {split!r}")
        if name is not None:
            self.name = name
        super().__init__(root, split, resolution, cache_dir)
        self.pairs_file = self.root / "Layout" / "large" / f"{split}.txt"
        self._finalize(self._parse(), self.pairs_file)

    def _parse(self) -> list[PairAnnotation]:
        lines = read_text_lines(self.pairs_file)
        pairs: list[PairAnnotation] = []
        seen_images: set[Path] = set()
        for lineno, line in enumerate(lines, start=1):
            entry = line.strip()
            if not entry:
                continue
            inside_root(entry, f"{self.pairs_file}, row {lineno}", "pair name")
            jpath = self.root / "PairAnnotation" / self.split / f"{entry}.json"
            try:
                data = json.loads(jpath.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise DatasetFormatError(
                    f"{self.pairs_file}, row {lineno}: pair annotation {jpath} not found"
                ) from None
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DatasetFormatError(f"{jpath}: invalid JSON ({e}); expected a SPair-71k pair annotation") from e
            ann = self._parse_pair(data, jpath, entry)
            for rel in (ann.src_path, ann.trg_path):
                p = self.root / rel
                if p not in seen_images:
                    if not p.is_file():
                        raise DatasetFormatError(f"{jpath}: image {p} not found")
                    seen_images.add(p)
            pairs.append(ann)
        if not pairs:
            raise DatasetFormatError(f"{self.pairs_file}: split {self.split!r} lists no pair")
        return pairs

    def _parse_pair(self, data: Any, jpath: Path, entry: str) -> PairAnnotation:
        if not isinstance(data, dict):
            raise DatasetFormatError(f"{jpath}: expected a JSON object, got {type(data).__name__}")
        category = inside_root(_field(data, "category", jpath, str), str(jpath), "category")
        src_name = inside_root(_field(data, "src_imname", jpath, str), str(jpath), "src_imname")
        trg_name = inside_root(_field(data, "trg_imname", jpath, str), str(jpath), "trg_imname")
        src_size = _imsize(data, "src_imsize", jpath)
        trg_size = _imsize(data, "trg_imsize", jpath)
        bbox = _numbers(_field(data, "trg_bndbox", jpath, list), 4, jpath, "trg_bndbox", allow_null=False)
        if not (bbox[2] > bbox[0] and bbox[3] > bbox[1]):
            # A zero-size box gives theta_bbox = 0 (or a box with no area), so PCK would be undefined.
            raise DatasetFormatError(f"{jpath}: field 'trg_bndbox' {bbox.tolist()}; expected [x1, y1, x2, y2] "
                                     "with x1 < x2 and y1 < y2 (a box of non-zero size)")
        src_kps = self._kps(data, "src_kps", jpath)
        trg_kps = self._kps(data, "trg_kps", jpath)
        if len(src_kps) != len(trg_kps):
            raise DatasetFormatError(
                f"{jpath}: fields 'src_kps' ({len(src_kps)}) and 'trg_kps' ({len(trg_kps)}) must have the same length"
            )
        nan = np.isnan(src_kps).any(1) | np.isnan(trg_kps).any(1) if len(src_kps) else np.zeros(0, bool)
        for i in np.flatnonzero(nan):
            self.invalid_keypoints.append(Issue(str(jpath), None, f"keypoint {i} is null; marked invalid"))
        return PairAnnotation(
            pair_id=entry,
            category=category,
            src_path=f"JPEGImages/{category}/{src_name}",
            trg_path=f"JPEGImages/{category}/{trg_name}",
            src_kps=src_kps.reshape(-1, 2),
            trg_kps=trg_kps.reshape(-1, 2),
            valid=~nan,
            trg_bbox=bbox,
            source=str(jpath),
            src_size=src_size,
            trg_size=trg_size,
        )

    @staticmethod
    def _kps(data: dict, key: str, jpath: Path) -> np.ndarray:
        value = _field(data, key, jpath, list)
        out = np.full((len(value), 2), np.nan)
        for i, kp in enumerate(value):
            if kp is None:
                continue  # SPair marks an invisible keypoint with null
            out[i] = _numbers(kp, 2, jpath, f"{key}[{i}]", allow_null=True)
        return out


def _field(data: dict, key: str, jpath: Path, kind: type) -> Any:
    if key not in data:
        raise DatasetFormatError(f"{jpath}: field {key!r} missing; expected a SPair-71k pair annotation")
    value = data[key]
    if not isinstance(value, kind):
        raise DatasetFormatError(f"{jpath}: field {key!r} must be a {kind.__name__}, got {value!r}")
    return value


def _numbers(value: Any, n: int, jpath: Path, what: str, allow_null: bool) -> np.ndarray:
    ok = isinstance(value, (list, tuple)) and len(value) == n
    out = []
    for v in value if ok else ():
        if v is None and allow_null:
            out.append(math.nan)
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
        else:
            ok = False
    if not ok:
        raise DatasetFormatError(f"{jpath}: field {what!r} is {value!r}; expected a list of {n} finite numbers")
    return np.array(out, dtype=np.float64)


def _imsize(data: dict, key: str, jpath: Path) -> tuple[int, int]:
    value = _field(data, key, jpath, list)
    ok = len(value) >= 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and float(v).is_integer() for v in value[:2]
    )
    if not ok:
        raise DatasetFormatError(f"{jpath}: field {key!r} is {value!r}; expected [W, H, C] with positive integers")
    return int(value[1]), int(value[0])
