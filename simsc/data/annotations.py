"""Torch-free building blocks of the loaders: the error type, resolutions, the parsed pair
annotation and the checks of paths and numbers read from annotation files.

The lowest module of :mod:`simsc.data` (only numpy below it): :mod:`~simsc.data.records`,
:mod:`~simsc.data.images`, :mod:`~simsc.data.cache`, :mod:`~simsc.data.index` and the loaders
import it, so the package's imports point one way (``tests/test_import_graph.py``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

Resolution = int | Literal["original"]
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


def keypoint_box(kps: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Bounding box ``(x1, y1, x2, y2)`` of the valid keypoints."""
    v = kps[valid]
    return np.array([v[:, 0].min(), v[:, 1].min(), v[:, 0].max(), v[:, 1].max()], dtype=np.float64)


def outside_image(kps: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bool ``[N]``: keypoint lies outside the image (see :data:`OUT_OF_IMAGE_TOLERANCE`)."""
    h, w = size_hw
    lo = -0.5 - OUT_OF_IMAGE_TOLERANCE
    with np.errstate(invalid="ignore"):
        return (
            (kps[:, 0] < lo)
            | (kps[:, 1] < lo)
            | (kps[:, 0] > w - 0.5 + OUT_OF_IMAGE_TOLERANCE)
            | (kps[:, 1] > h - 0.5 + OUT_OF_IMAGE_TOLERANCE)
        )


def read_text_lines(path: Path) -> list[str]:
    """Read a text listing with an error that names the file."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetFormatError(f"{path}: cannot read text file ({e})") from e


def read_csv_rows(path: Path, what: str) -> list[list[str]]:
    """Read a CSV listing (``what``, e.g. "PF-Willow pair list") with an error that names the file."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.reader(f))
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetFormatError(f"{path}: cannot read CSV ({e})") from e


def first_file(folder: Path, names: tuple[str, ...], what: str) -> Path:
    """The first of ``folder / name`` that is a file, else an error naming ``what`` and every place looked at."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise DatasetFormatError(f"{what} not found: expected {' or '.join(str(folder / n) for n in names)}")


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
