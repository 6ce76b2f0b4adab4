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

import gc
import json
import json.scanner
import math
import os
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from simsc import defaults as D
from simsc.data.index import PairTable
from simsc.data.records import (
    DatasetFormatError,
    Issue,
    PairAnnotation,
    PairDataset,
    Resolution,
    inside_root,
    read_text_lines,
)


class SPairDataset(PairDataset):
    """SPair-71k pairs; ``name`` sets the registry / cache name (``"embedded"`` for the
    generated set, which uses the same layout)."""

    name = "spair"
    threshold_kind = "bbox"
    title = "SPair-71k"
    splits = ("trn", "val", "test")
    split_aliases = {"train": "trn", "training": "trn", "validation": "val"}

    def __init__(
        self,
        root: str | Path,
        split: str = "trn",
        resolution: Resolution | str = D.RESOLUTION,
        cache_dir: str | Path | None = None,
        name: str | None = None,
    ) -> None:
        if name is not None:
            self.name = name
        super().__init__(root, split, resolution, cache_dir)
        self.pairs_file = self.root / "Layout" / "large" / f"{self.split}.txt"
        self._json_files: list[str] = []
        self._image_files: list[str] = []
        self._load_pairs(self.pairs_file)

    def _dependencies(self) -> list[str]:
        return [str(self.pairs_file), *self._json_files, *self._image_files]

    def _parse(self) -> PairTable | list[PairAnnotation]:
        # The fast pass keeps ~10 lists per pair alive until the end: with the cyclic garbage
        # collector on, its full passes over them took half the time. Nothing here makes cycles.
        enabled = gc.isenabled()
        gc.disable()
        try:
            table = self._parse_fast()
        finally:
            if enabled:
                gc.enable()
        return table if table is not None else self._parse_exact()

    def _parse_fast(self) -> PairTable | None:
        """The whole split in one pass when every file is as the official ones are (all fields
        present and well-formed, no null keypoint): per file only a read, ``json.loads`` and a
        few list appends; the checks then run once over all pairs (set comprehensions over
        all numbers, numpy over all keypoints). None at the first sign of anything else, and
        :meth:`_parse_exact` goes through the split pair by pair, raising or reporting exactly
        what it always did (the first bad file in listing order)."""
        try:
            lines = self.pairs_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return None
        ann_dir = str(self.root / "PairAnnotation" / self.split)
        entries = [e for e in (line.strip() for line in lines) if e]
        if not entries or any("/" in e or "\\" in e or e in (".", "..") or "\x00" in e for e in entries):
            return None  # path-like entries: the exact path checks and spells them
        files = [f"{ann_dir}/{e}.json" for e in entries]
        # Per file only what the index keeps is taken out (strings, and numbers appended to flat
        # lists) and the parsed dict dropped at once: its memory is reused by the next file,
        # which keeps this loop in cache (holding every parsed file made it ~2x slower).
        cats: list[Any] = []
        srcs: list[Any] = []
        trgs: list[Any] = []
        counts: list[int] = []
        wh: list[Any] = []  # W, H of source and target, per pair
        box: list[Any] = []
        src_flat: list[Any] = []
        trg_flat: list[Any] = []
        try:
            for jfile in files:
                fd = os.open(jfile, os.O_RDONLY)
                try:
                    raw = os.read(fd, 1 << 16)
                    while len(raw) % (1 << 16) == 0 and raw:  # a file larger than one read
                        more = os.read(fd, 1 << 16)
                        if not more:
                            break
                        raw += more
                finally:
                    os.close(fd)
                text = raw.decode("utf-8")
                # json.loads minus its Python layers: the C scanner, then "nothing but
                # whitespace after the value" (leading whitespace: the exact path takes it).
                data, end = _scan_json(text, 0)
                if end != len(text) and text[end:].strip():
                    return None
                sk, tk = data["src_kps"], data["trg_kps"]
                ss, ts, bb = data["src_imsize"], data["trg_imsize"], data["trg_bndbox"]
                n = len(sk)
                if (
                    type(sk) is not list
                    or type(tk) is not list
                    or len(tk) != n
                    or type(bb) is not list
                    or len(bb) != 4
                    or type(ss) is not list
                    or type(ts) is not list
                    or len(ss) < 2
                    or len(ts) < 2
                ):
                    return None
                # every keypoint a pair (a null has no len(): TypeError, exact path)
                if n and set(map(len, sk)) | set(map(len, tk)) != {2}:
                    return None
                src_flat += chain.from_iterable(sk)
                trg_flat += chain.from_iterable(tk)
                wh += (ss[0], ss[1], ts[0], ts[1])
                box += bb
                cats.append(data["category"])
                srcs.append(data["src_imname"])
                trgs.append(data["trg_imname"])
                counts.append(n)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, StopIteration):
            return None  # json.JSONDecodeError is a ValueError; the scanner raises StopIteration
        # Types, over the whole split at once, with C-level map/set (bool is not int here:
        # type(), not isinstance()); a dict or string "keypoint" fails here too.
        if set(map(type, cats)) | set(map(type, srcs)) | set(map(type, trgs)) != {str}:
            return None
        for name, what in ((cats, "category"), (srcs, "src_imname"), (trgs, "trg_imname")):
            for value in set(name):
                try:
                    inside_root(value, "", what)
                except DatasetFormatError:
                    return None
        if set(map(type, wh)) != {int} or not set(map(type, box)) <= _NUMBER_TYPES:
            return None
        if not set(map(type, src_flat)) | set(map(type, trg_flat)) <= _NUMBER_TYPES:
            return None
        size_wh = np.array(wh, dtype=np.int64).reshape(-1, 2)
        bbox = np.array(box, dtype=np.float64).reshape(-1, 4)
        src = np.array(src_flat, dtype=np.float64).reshape(-1, 2)
        trg = np.array(trg_flat, dtype=np.float64).reshape(-1, 2)
        # Values, vectorised.
        if (size_wh <= 0).any() or not (np.isfinite(bbox).all() and np.isfinite(src).all() and np.isfinite(trg).all()):
            return None
        if not ((bbox[:, 2] > bbox[:, 0]) & (bbox[:, 3] > bbox[:, 1])).all():
            return None
        trg_w, trg_h = size_wh[1::2, 0], size_wh[1::2, 1]
        if not _boxes_inside(bbox, trg_w, trg_h).all():
            return None  # the exact path names the file
        root = str(self.root)
        src_paths = [f"JPEGImages/{c}/{n}" for c, n in zip(cats, srcs, strict=True)]
        trg_paths = [f"JPEGImages/{c}/{n}" for c, n in zip(cats, trgs, strict=True)]
        images = [f"{root}/{p}" for p in dict.fromkeys(chain.from_iterable(zip(src_paths, trg_paths, strict=True)))]
        if not all(map(os.path.isfile, images)):
            return None
        self._json_files, self._image_files = files, images
        offsets = np.zeros(len(entries) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        hw = size_wh[:, ::-1].reshape(-1, 2, 2)  # [P, (src, trg), (H, W)]
        arrays = {
            "row": np.full(len(entries), -1, dtype=np.int64),
            "flip": np.zeros(len(entries), dtype=bool),
            "src_size": np.ascontiguousarray(hw[:, 0]),
            "trg_size": np.ascontiguousarray(hw[:, 1]),
            "trg_bbox": bbox,
            "offsets": offsets,
            "src_kps": src,
            "trg_kps": trg,
            "valid": np.ones(len(src), dtype=bool),
        }
        strings = {"pair_id": entries, "category": cats, "src_path": src_paths, "trg_path": trg_paths, "source": files}
        return PairTable(strings, arrays)

    def _parse_exact(self) -> list[PairAnnotation]:
        lines = read_text_lines(self.pairs_file)
        pairs: list[PairAnnotation] = []
        seen_images: dict[Path, None] = {}
        self._json_files = []
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
            self._json_files.append(str(jpath))
            ann = self._parse_pair(data, jpath, entry)
            for rel in (ann.src_path, ann.trg_path):
                p = self.root / rel
                if p not in seen_images:
                    if not p.is_file():
                        raise DatasetFormatError(f"{jpath}: image {p} not found")
                    seen_images[p] = None
            pairs.append(ann)
        if not pairs:
            raise DatasetFormatError(f"{self.pairs_file}: split {self.split!r} lists no pair")
        self._image_files = [str(p) for p in seen_images]
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
            raise DatasetFormatError(
                f"{jpath}: field 'trg_bndbox' {bbox.tolist()}; expected [x1, y1, x2, y2] "
                "with x1 < x2 and y1 < y2 (a box of non-zero size)"
            )
        h, w = trg_size
        if not _boxes_inside(bbox.reshape(1, 4), np.array([w]), np.array([h]))[0]:
            # theta_bbox = max(box w, box h) is the PCK threshold: a box beyond the image
            # inflates it (a 2e6-px box accepts every prediction).
            raise DatasetFormatError(
                f"{jpath}: field 'trg_bndbox' {bbox.tolist()} lies outside the target image "
                f"({w} x {h} px, trg_imsize); expected 0 <= x1 < x2 <= {w} and 0 <= y1 < y2 <= {h} "
                f"(up to {BOX_SLACK_PX:g} px outside)"
            )
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


_NUMBER_TYPES = {int, float}
# (text, index) -> (value, end); typeshed declares the C scanner's context as a scanner, not a decoder
_scan_json = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


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


#: How far a box may reach outside its image: SPair's boxes end at W / H (1-based corners).
BOX_SLACK_PX = 1.0


def _boxes_inside(bbox: np.ndarray, w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Per row of ``[x1, y1, x2, y2]`` boxes: inside the ``w x h`` image, up to
    :data:`BOX_SLACK_PX`."""
    lo = -BOX_SLACK_PX
    return (bbox[:, 0] >= lo) & (bbox[:, 1] >= lo) & (bbox[:, 2] <= w + BOX_SLACK_PX) & (bbox[:, 3] <= h + BOX_SLACK_PX)


def _imsize(data: dict, key: str, jpath: Path) -> tuple[int, int]:
    value = _field(data, key, jpath, list)
    ok = len(value) >= 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and float(v).is_integer() for v in value[:2]
    )
    if not ok:
        raise DatasetFormatError(f"{jpath}: field {key!r} is {value!r}; expected [W, H, C] with positive integers")
    return int(value[1]), int(value[0])
