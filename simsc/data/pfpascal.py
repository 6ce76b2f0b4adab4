"""PF-Pascal loader (threshold: ``theta_img = max(H_B, W_B)`` at the returned resolution).

Layout read unchanged (``root`` is the folder the zip was extracted into)::

    <root>/PF-dataset-PASCAL/JPEGImages/<image>.jpg
    <root>/PF-dataset-PASCAL/Annotations/<class>/<image stem>.mat   keys kps (N x 2, NaN rows =
                                                                    invisible) and bbox (x1,y1,x2,y2)
    <root>/trn_pairs.csv (or train_pairs.csv), val_pairs.csv, test_pairs.csv

The pair lists are looked up in ``root`` itself (override with ``pairs_dir``); image paths in
them (``PF-dataset-PASCAL/JPEGImages/...``) are relative to ``root``. ``class`` is a 1-based
index into :data:`PASCAL_CLASSES`.

* trn / val: keypoints come from the source and target ``.mat`` files (index-aligned; a
  keypoint is valid when it is non-NaN in both). ``flip = 1`` flips both images, their
  keypoints and the target box horizontally (``x -> W - 1 - x``).
* test: keypoints come from the CSV columns ``XA, YA, XB, YB`` (``;``-separated, original
  pixels); the target box from the target's ``.mat``.

Errors (:class:`DatasetFormatError`, naming file and row): missing list / image / ``.mat``,
wrong column count, an image path that leaves the root (absolute or ``..``), unknown class,
non-numeric coordinate, unequal ``XA/YA/XB/YB`` lengths, ``.mat`` without ``kps`` / ``bbox``
(or a box of zero size) or with a different keypoint count between source and target, an
empty split. Reported skips: NaN in a test-CSV coordinate and keypoints outside
their image are marked invalid; pairs left without a valid keypoint are dropped (see
:class:`~simsc.data.records.PairDataset`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from simsc import defaults as D
from simsc.data.annotations import first_file, read_csv_rows
from simsc.data.images import listed_image_size
from simsc.data.records import (
    DatasetFormatError,
    PairAnnotation,
    PairDataset,
    Resolution,
    inside_root,
    parse_float,
)

PASCAL_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

PAIR_FILES: dict[str, tuple[str, ...]] = {
    "trn": ("trn_pairs.csv", "train_pairs.csv"),
    "val": ("val_pairs.csv",),
    "test": ("test_pairs.csv",),
}
IMAGE_DIR = "PF-dataset-PASCAL"


class PFPascalDataset(PairDataset):
    """PF-Pascal pairs (see the module docstring for layout, flips and bad-input handling)."""

    name = "pfpascal"
    threshold_kind = "img"
    title = "PF-Pascal"
    splits = tuple(sorted(PAIR_FILES))
    split_aliases = {"train": "trn", "training": "trn", "validation": "val", "eval": "test"}

    def __init__(
        self,
        root: str | Path,
        split: str = "trn",
        resolution: Resolution | str = D.RESOLUTION,
        cache_dir: str | Path | None = None,
        pairs_dir: str | Path | None = None,
    ) -> None:
        super().__init__(root, split, resolution, cache_dir)
        self.pairs_dir = Path(pairs_dir) if pairs_dir is not None else self.root
        self.pairs_file = self._find_list()
        self._mats: dict[Path, tuple[np.ndarray, np.ndarray]] = {}
        self._sizes: dict[str, tuple[int, int]] = {}
        self._load_pairs(self.pairs_file)
        self._mats.clear()  # only needed while parsing; keeps the pickled dataset small for workers

    def _find_list(self) -> Path:
        return first_file(self.pairs_dir, PAIR_FILES[self.split], f"PF-Pascal {self.split} pair list")

    def _dependencies(self) -> list[str]:
        # the .mat files and the images whose headers gave the sizes
        return [str(self.pairs_file), *map(str, self._mats), *(str(self.root / p) for p in self._sizes)]

    def _parse(self) -> list[PairAnnotation]:
        path = self.pairs_file
        required = ["source_image", "target_image", "class"]
        if self.split == "test":
            required += ["XA", "YA", "XB", "YB"]
        rows = read_csv_rows(path, "PF-Pascal pair list")
        if not rows:
            raise DatasetFormatError(f"{path}: empty file; expected a header {','.join(required)} and pair rows")
        header = [h.strip() for h in rows[0]]
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetFormatError(f"{path}, row 1: header {header} lacks column(s) {missing}; expected {required}")
        col = {h: i for i, h in enumerate(header)}
        pairs: list[PairAnnotation] = []
        for line, row in enumerate(rows[1:], start=2):
            if not row or all(not c.strip() for c in row):
                continue  # blank line (e.g. trailing newline)
            where = f"{path}, row {line}"
            if len(row) != len(header):
                raise DatasetFormatError(
                    f"{where}: expected {len(header)} columns ({','.join(header)}), got {len(row)}"
                )
            pairs.append(self._parse_row(row, col, where, line, len(pairs)))
        if not pairs:
            raise DatasetFormatError(f"{path}: split {self.split!r} lists no pair")
        return pairs

    def _parse_row(self, row: list[str], col: dict[str, int], where: str, line: int, index: int) -> PairAnnotation:
        src = inside_root(row[col["source_image"]].strip(), where, "source_image")
        trg = inside_root(row[col["target_image"]].strip(), where, "target_image")
        cls_text = row[col["class"]].strip()
        if not cls_text.isdigit() or not 1 <= int(cls_text) <= len(PASCAL_CLASSES):
            raise DatasetFormatError(f"{where}: class must be an integer 1..{len(PASCAL_CLASSES)}, got {cls_text!r}")
        category = PASCAL_CLASSES[int(cls_text) - 1]
        flip = False
        if "flip" in col:
            flip_text = row[col["flip"]].strip()
            if flip_text not in ("0", "1"):
                raise DatasetFormatError(f"{where}: flip must be 0 or 1, got {flip_text!r}")
            flip = flip_text == "1"
        src_size = self._size(src, where)
        trg_size = self._size(trg, where)
        trg_kps_mat, trg_bbox = self._mat(category, trg, where)
        if self.split == "test":
            coords = {}
            for c in ("XA", "YA", "XB", "YB"):
                text = row[col[c]].strip()
                coords[c] = np.array([parse_float(v, where, f"{c} value {v!r}") for v in text.split(";")])
            lens = {c: len(v) for c, v in coords.items()}
            if len(set(lens.values())) != 1:
                raise DatasetFormatError(f"{where}: XA, YA, XB, YB must list the same number of values, got {lens}")
            src_kps = np.stack([coords["XA"], coords["YA"]], axis=1)
            trg_kps = np.stack([coords["XB"], coords["YB"]], axis=1)
            valid = self._finite_keypoints(src_kps, trg_kps, self.pairs_file, line)
        else:
            src_kps, _ = self._mat(category, src, where)
            trg_kps = trg_kps_mat
            if src_kps.shape != trg_kps.shape:
                raise DatasetFormatError(
                    f"{where}: source {self._mat_path(category, src)} has {len(src_kps)} keypoints but target "
                    f"{self._mat_path(category, trg)} has {len(trg_kps)}; expected index-aligned keypoints"
                )
            valid = ~(np.isnan(src_kps).any(1) | np.isnan(trg_kps).any(1))
        return PairAnnotation(
            pair_id=f"{index:04d}-{Path(src).stem}-{Path(trg).stem}",
            category=category,
            src_path=src,
            trg_path=trg,
            src_kps=src_kps.astype(np.float64),
            trg_kps=trg_kps.astype(np.float64),
            valid=valid,
            trg_bbox=trg_bbox,
            source=str(self.pairs_file),
            row=line,
            flip=flip,
            src_size=src_size,
            trg_size=trg_size,
        )

    def _size(self, relpath: str, where: str) -> tuple[int, int]:
        return listed_image_size(self._sizes, self.root, relpath, where)

    def _mat_path(self, category: str, image: str) -> Path:
        return self.root / IMAGE_DIR / "Annotations" / category / f"{Path(image).stem}.mat"

    def _mat(self, category: str, image: str, where: str) -> tuple[np.ndarray, np.ndarray]:
        """``(kps [N, 2] with NaN rows, bbox [4])`` of an image's annotation file."""
        path = self._mat_path(category, image)
        if path in self._mats:
            return self._mats[path]
        if not path.is_file():
            raise DatasetFormatError(f"{where}: annotation file {path} not found")
        try:
            mat = scipy.io.loadmat(str(path))
        except Exception as e:  # scipy raises several unrelated types for bad files
            raise DatasetFormatError(f"{path}: cannot read MATLAB annotation file ({e})") from e
        for key in ("kps", "bbox"):
            if key not in mat:
                raise DatasetFormatError(
                    f"{path}: field {key!r} missing; expected keys 'kps' (N x 2) and 'bbox' (1 x 4)"
                )
        try:
            kps = np.asarray(mat["kps"], dtype=np.float64)
            bbox = np.asarray(mat["bbox"], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise DatasetFormatError(f"{path}: 'kps' / 'bbox' are not numeric arrays ({e})") from e
        if kps.ndim != 2 or kps.shape[1] != 2:
            raise DatasetFormatError(f"{path}: field 'kps' has shape {kps.shape}; expected N x 2 (x, y)")
        if bbox.shape != (4,) or not np.isfinite(bbox).all() or not (bbox[2] > bbox[0] and bbox[3] > bbox[1]):
            raise DatasetFormatError(
                f"{path}: field 'bbox' is {bbox.tolist()}; expected finite (x1, y1, x2, y2) "
                "with x1 < x2 and y1 < y2 (a box of non-zero size)"
            )
        self._mats[path] = (kps, bbox)
        return kps, bbox
