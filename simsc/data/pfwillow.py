"""PF-Willow loader (test only; threshold: ``theta_kps`` over the valid target keypoints).

Layout read unchanged::

    <root>/PF-dataset/<category>/<image>.png      e.g. PF-dataset/car(G)/Cars_006a.png
    <root>/test_pairs_pf.csv   (or <root>/PF-dataset/test_pairs_pf.csv; override: csv_path)

``test_pairs_pf.csv``: a header line, then rows ``imageA, imageB, XA1..XA10, YA1..YA10,
XB1..XB10, YB1..YB10`` (42 columns, original pixels); columns are read by position, as the
header names vary between copies. Image paths are relative to ``root``; the category is the
image's folder name (``car(G)``).

PF-Willow has no object box: ``trg_bbox`` is the bounding box of the *valid* target
keypoints, so ``thresholds["bbox"] == thresholds["kps"]`` for this dataset.

Errors (:class:`DatasetFormatError` naming file and row): missing CSV or image, a row without
42 columns, an image path that leaves the root (absolute or ``..``), a non-numeric coordinate, an
empty list. Reported skips: NaN coordinates and keypoints outside their image are marked
invalid; pairs left with no valid keypoint or with ``theta_kps = 0`` are dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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

N_KPS = 10
N_COLUMNS = 2 + 4 * N_KPS
CSV_NAMES = ("test_pairs_pf.csv", "PF-dataset/test_pairs_pf.csv")


class PFWillowDataset(PairDataset):
    """PF-Willow test pairs (see the module docstring)."""

    name = "pfwillow"
    threshold_kind = "kps"
    title = "PF-Willow"
    splits = ("test",)

    def __init__(
        self,
        root: str | Path,
        split: str = "test",
        resolution: Resolution | str = D.RESOLUTION,
        cache_dir: str | Path | None = None,
        csv_path: str | Path | None = None,
    ) -> None:
        super().__init__(root, split, resolution, cache_dir)
        self.pairs_file = Path(csv_path) if csv_path is not None else self._find_csv()
        self._sizes: dict[str, tuple[int, int]] = {}
        self._load_pairs(self.pairs_file)

    def _find_csv(self) -> Path:
        return first_file(self.root, CSV_NAMES, "PF-Willow pair list")

    def _dependencies(self) -> list[str]:
        return [str(self.pairs_file), *(str(self.root / p) for p in self._sizes)]

    def _parse(self) -> list[PairAnnotation]:
        path = self.pairs_file
        rows = read_csv_rows(path, "PF-Willow pair list")
        pairs: list[PairAnnotation] = []
        for line, row in enumerate(rows, start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if line == 1 and not _is_data_row(row):
                continue  # the header
            where = f"{path}, row {line}"
            if len(row) != N_COLUMNS:
                raise DatasetFormatError(
                    f"{where}: expected {N_COLUMNS} columns (imageA, imageB, 10 XA, 10 YA, 10 XB, 10 YB), "
                    f"got {len(row)}"
                )
            vals = np.array(
                [parse_float(v.strip(), where, f"column {j + 3} (coordinate)") for j, v in enumerate(row[2:])]
            ).reshape(4, N_KPS)
            src_kps = np.stack([vals[0], vals[1]], axis=1)
            trg_kps = np.stack([vals[2], vals[3]], axis=1)
            valid = self._finite_keypoints(src_kps, trg_kps, path, line)
            src = inside_root(row[0].strip(), where, "imageA")
            trg = inside_root(row[1].strip(), where, "imageB")
            pairs.append(
                PairAnnotation(
                    pair_id=f"{len(pairs):04d}-{Path(src).stem}-{Path(trg).stem}",
                    category=Path(trg).parent.name or Path(src).parent.name,
                    src_path=src,
                    trg_path=trg,
                    src_kps=src_kps,
                    trg_kps=trg_kps,
                    valid=valid,
                    trg_bbox=None,  # -> box of the valid target keypoints
                    source=str(path),
                    row=line,
                    src_size=self._size(src, where),
                    trg_size=self._size(trg, where),
                )
            )
        if not pairs:
            raise DatasetFormatError(f"{path}: PF-Willow pair list has no pair row")
        return pairs

    def _size(self, relpath: str, where: str) -> tuple[int, int]:
        return listed_image_size(self._sizes, self.root, relpath, where)


def _is_data_row(row: list[str]) -> bool:
    try:
        [float(v) for v in row[2:]]
    except ValueError:
        return False
    return len(row) > 2
