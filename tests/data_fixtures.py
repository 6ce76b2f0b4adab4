"""Builders of small datasets in the official on-disk layouts (for tests and the benchmark).

Formats are copied from the real files (CSV headers and row shapes, ``.mat`` keys, SPair JSON
fields); images are generated with Pillow at the annotated sizes. Nothing here reads
``/work/shared`` at test time.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch
from PIL import Image

NAN = float("nan")


def close(a, b, tol: float = 1e-4) -> bool:
    """Element-wise equality of two point / box / threshold values within ``tol`` pixels."""
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol)


def make_image(path: Path, width: int, height: int, seed: int = 0, mode: str = "RGB", quality: int = 90) -> Path:
    """Write a smooth, textured image of ``width x height`` (format from the suffix)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [xx / max(width - 1, 1) * 255, yy / max(height - 1, 1) * 255, np.full_like(xx, (seed * 37) % 256)], -1
    )
    img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    im = Image.fromarray(img, "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {"quality": quality} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    im.save(path, **kw)
    return path


# --------------------------------------------------------------------------- PF-Pascal
PFP_DIR = "PF-dataset-PASCAL"
#: stem -> (W, H, class name, kps (NaN rows = invisible), bbox x1,y1,x2,y2)
PFP_IMAGES: dict[str, tuple[int, int, str, list[list[float]], list[float]]] = {
    "2008_000001": (500, 333, "aeroplane", [[100, 50], [200, 100], [NAN, NAN], [499, 332]], [10, 20, 480, 300]),
    "2008_000002": (400, 300, "aeroplane", [[50, 60], [NAN, NAN], [150, 160], [300, 200]], [5, 6, 390, 290]),
    "2009_000003": (500, 375, "cat", [[10, 20], [30, 40], [50, 60]], [0, 0, 499, 374]),
    "2009_000004": (375, 500, "cat", [[100, 200], [110, 210], [NAN, NAN]], [20, 30, 300, 400]),
}
PFP_TRN = [
    ("2008_000001", "2008_000002", 1, 0),
    ("2008_000002", "2008_000001", 1, 1),
    ("2009_000003", "2009_000004", 8, 0),
]
PFP_VAL = [("2009_000003", "2009_000004", 8, 0)]
#: test rows: (src, trg, class, XA, YA, XB, YB) as the ';'-joined strings of the real file
PFP_TEST = [
    ("2008_000001", "2008_000002", 1, "100;200;300", "50;100;150", "50;150;250", "60;160;260"),
    ("2009_000003", "2009_000004", 8, "10.5;20", "30;40.25", "100;110", "200;210"),
]


def pfp_image_path(stem: str) -> str:
    return f"{PFP_DIR}/JPEGImages/{stem}.jpg"


def write_pfpascal(
    root: Path,
    images: dict[str, tuple[int, int, str, list[list[float]], list[float]]] = PFP_IMAGES,
    trn: Sequence[tuple] = PFP_TRN,
    val: Sequence[tuple] = PFP_VAL,
    test: Sequence[tuple] = PFP_TEST,
    train_name: str = "trn_pairs.csv",
) -> Path:
    """PF-Pascal layout under ``root``: JPEGs, ``Annotations/<class>/<stem>.mat``, 3 pair lists."""
    for i, (stem, (w, h, cls, kps, bbox)) in enumerate(images.items()):
        make_image(root / pfp_image_path(stem), w, h, seed=i)
        mat = root / PFP_DIR / "Annotations" / cls / f"{stem}.mat"
        mat.parent.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(str(mat), {"kps": np.array(kps, dtype=np.float64), "bbox": np.array([bbox], dtype=np.float64)})
    head = "source_image,target_image,class,flip\n"
    for name, rows in ((train_name, trn), ("val_pairs.csv", val)):
        body = "".join(f"{pfp_image_path(s)},{pfp_image_path(t)},{c},{f}\n" for s, t, c, f in rows)
        (root / name).write_text(head + body)
    body = "".join(f"{pfp_image_path(r[0])},{pfp_image_path(r[1])},{r[2]},{','.join(r[3:])}\n" for r in test)
    (root / "test_pairs.csv").write_text("source_image,target_image,class,XA,YA,XB,YB\n" + body)
    return root


# --------------------------------------------------------------------------- PF-Willow
#: relative path -> (W, H)
PFW_IMAGES = {
    "PF-dataset/car(G)/Cars_006a.png": (300, 200),
    "PF-dataset/car(G)/Cars_007b.png": (250, 400),
    "PF-dataset/duck(S)/Duck_001a.png": (320, 240),
    "PF-dataset/duck(S)/Duck_002b.png": (320, 240),
}


def pfw_row_kps(seed: int, w: int, h: int) -> np.ndarray:
    """10 deterministic in-image keypoints ``[10, 2]`` (integers)."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(5, w - 5, 10), rng.integers(5, h - 5, 10)], 1).astype(np.float64)


def pfw_default_pairs() -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    paths = list(PFW_IMAGES)
    out = []
    for k, (a, b) in enumerate([(paths[0], paths[1]), (paths[2], paths[3])]):
        out.append((a, b, pfw_row_kps(10 + k, *PFW_IMAGES[a]), pfw_row_kps(20 + k, *PFW_IMAGES[b])))
    return out


def write_pfwillow(
    root: Path, pairs: Sequence[tuple[str, str, Any, Any]] | None = None, in_subdir: bool = False
) -> Path:
    """PF-Willow layout: PNG images and ``test_pairs_pf.csv`` (header, then 42 columns a row)."""
    for i, (rel, (w, h)) in enumerate(PFW_IMAGES.items()):
        make_image(root / rel, w, h, seed=100 + i)
    pairs = pfw_default_pairs() if pairs is None else pairs
    header = ["imageA", "imageB"] + [f"{c}{i}" for c in ("XA", "YA", "XB", "YB") for i in range(1, 11)]
    lines = [",".join(header)]
    for a, b, ka, kb in pairs:
        if isinstance(ka, str):  # a raw, possibly malformed, tail of the row
            lines.append(f"{a},{b},{ka}")
            continue
        ka, kb = np.asarray(ka), np.asarray(kb)
        vals = list(ka[:, 0]) + list(ka[:, 1]) + list(kb[:, 0]) + list(kb[:, 1])
        lines.append(",".join([a, b] + [_num(v) for v in vals]))
    csv_path = root / ("PF-dataset/test_pairs_pf.csv" if in_subdir else "test_pairs_pf.csv")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_text("\n".join(lines) + "\n")
    return root


def _num(v: float) -> str:
    return "NaN" if np.isnan(v) else (str(int(v)) if float(v).is_integer() else repr(float(v)))


# --------------------------------------------------------------------------- SPair-71k
def spair_pair(
    index: int,
    category: str,
    src: tuple[str, int, int],
    trg: tuple[str, int, int],
    src_kps: list,
    trg_kps: list,
    trg_bbox: list,
    src_bbox: list | None = None,
) -> dict[str, Any]:
    """A SPair-71k pair annotation (all fields of the real JSON). ``src``/``trg`` = (stem, W, H)."""
    filename = f"{index:06d}-{src[0]}-{trg[0]}:{category}"
    return {
        "pair_id": index,
        "filename": filename,
        "src_imname": f"{src[0]}.jpg",
        "trg_imname": f"{trg[0]}.jpg",
        "src_imsize": [src[1], src[2], 3],
        "trg_imsize": [trg[1], trg[2], 3],
        "src_bndbox": src_bbox or [0, 0, src[1] - 1, src[2] - 1],
        "trg_bndbox": trg_bbox,
        "category": category,
        "src_pose": "Left",
        "trg_pose": "Left",
        "src_kps": src_kps,
        "trg_kps": trg_kps,
        "kps_ids": [str(i) for i in range(len(src_kps))],
        "mirror": 0,
        "viewpoint_variation": 0,
        "scale_variation": 0,
        "truncation": 0,
        "occlusion": 0,
    }


SPAIR_DEFAULT = {
    "test": [
        spair_pair(1, "aeroplane", ("2008_002719", 500, 333), ("2008_004100", 500, 332),
                   [[212, 153], [300, 130], [330, 127]], [[39, 145], [364, 171], [416, 173]], [36, 92, 500, 200]),
        spair_pair(8500, "motorbike", ("2009_000611", 500, 375), ("2008_005423", 500, 333),
                   [[347, 86], [382, 259], [104, 190], [54, 196]], [[192, 206], [244, 252], [407, 235], [409, 225]],
                   [187, 163, 447, 299]),
    ],
    "trn": [
        spair_pair(2, "aeroplane", ("2008_004100", 500, 332), ("2008_002719", 500, 333),
                   [[39, 145], [364, 171]], [[212, 153], [300, 130]], [210, 34, 475, 250]),
    ],
    "val": [
        spair_pair(3, "motorbike", ("2008_005423", 500, 333), ("2009_000611", 500, 375),
                   [[192, 206]], [[347, 86]], [19, 1, 468, 342]),
    ],
}  # fmt: skip


def write_spair(root: Path, splits: dict[str, list[dict]] | None = None, write_images: bool = True) -> Path:
    """SPair-71k layout: ``JPEGImages/<cat>/<name>``, ``Layout/large/<split>.txt``,
    ``PairAnnotation/<split>/<line>.json``. Missing images are generated at the declared sizes."""
    splits = SPAIR_DEFAULT if splits is None else splits
    (root / "Layout" / "large").mkdir(parents=True, exist_ok=True)
    for split, pairs in splits.items():
        ann_dir = root / "PairAnnotation" / split
        ann_dir.mkdir(parents=True, exist_ok=True)
        lines = []
        for p in pairs:
            lines.append(p["filename"])
            (ann_dir / f"{p['filename']}.json").write_text(json.dumps(p))
            if write_images:
                for side in ("src", "trg"):
                    img = root / "JPEGImages" / p["category"] / p[f"{side}_imname"]
                    if not img.exists():
                        w, h = p[f"{side}_imsize"][:2]
                        make_image(img, w, h, seed=zlib.crc32(p[f"{side}_imname"].encode()) % 1000)
        (root / "Layout" / "large" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def make_spair_synthetic(
    root: Path,
    n_images: int = 64,
    n_pairs: int = 256,
    size: tuple[int, int] = (500, 375),
    split: str = "trn",
    seed: int = 0,
) -> Path:
    """A larger SPair-layout set with realistic image sizes (for the loader benchmark)."""
    rng = np.random.default_rng(seed)
    w, h = size
    cats = ["aeroplane", "cat", "dog", "motorbike"]
    names = [(cats[i % len(cats)], f"2010_{i:06d}") for i in range(n_images)]
    for i, (cat, stem) in enumerate(names):
        make_image(root / "JPEGImages" / cat / f"{stem}.jpg", w, h, seed=i)
    pairs = []
    for k in range(n_pairs):
        c = k % len(cats)
        same = [n for n in names if n[0] == cats[c]]
        a, b = rng.choice(len(same), 2, replace=False)
        n = int(rng.integers(3, 12))
        src_kps, trg_kps = (rng.integers(0, [w, h], (n, 2)).tolist() for _ in range(2))
        pairs.append(spair_pair(k + 1, cats[c], (same[a][1], w, h), (same[b][1], w, h), src_kps, trg_kps,
                                [20, 30, w - 40, h - 20]))  # fmt: skip
    return write_spair(root, {split: pairs}, write_images=False)
