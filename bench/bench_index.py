"""Pair-index build and load at the real sizes: SPair-71k (trn 53,340 / val 5,384 / test 12,234
pairs, 18 categories) and PF-Pascal (20 classes, CSV lists), today's parser vs this one.

Generates, in a temporary folder, the official layouts with the official file formats (one
SPair-71k JSON per pair with every field of the real files, ``Layout/large/<split>.txt``;
PF-Pascal ``.mat`` annotations and the NCNet CSV lists) and tiny images, then measures in one
run, interleaved (A, B, A, B ...) so that the load of a shared machine hits both alike:

* ``baseline``: the loader of ``--baseline-rev`` (default: the commit before the pair index),
  extracted with ``git archive`` and run in its own process, building the split from the files;
* ``cold``: this loader building the split from the files (no index);
* ``cold+write``: the same plus writing the index (what the preprocess stage does);
* ``load``: a later run: the constructor finds a fresh index and loads it.

Each measurement is one fresh process (``python -c``), timing the dataset constructor only (the
import time is reported apart), in wall-clock and CPU (process) time: on a machine shared with
other work the CPU ratio is the steadier one. Prints a table of medians and the ratios; writes JSON.

    .venv/bin/python -m bench.bench_index [--reps 3] [--splits test,trn] [--out bench/results/index.json]

The per-category pair counts are an even spread of the real split totals (the real spread is
uneven; only the totals matter for the cost). The PF-Pascal list sizes (trn 2,940 / val 308 /
test 299) are those of the NCNet lists as this project's loader reads them.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

SPAIR_CATEGORIES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "train",
    "tvmonitor",
)
SPAIR_PAIRS = {"trn": 53_340, "val": 5_384, "test": 12_234}
SPAIR_IMAGES_PER_CATEGORY = 100  # 1,800 images in SPair-71k
PASCAL_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
PFPASCAL_PAIRS = {"trn": 2_940, "val": 308, "test": 299}
PFPASCAL_IMAGES = 1_351


def tiny_jpeg(w: int = 8, h: int = 8) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 80, 40)).save(buf, "JPEG", quality=50)
    return buf.getvalue()


def write_spair(root: Path, rng: np.random.Generator) -> Path:
    """The SPair-71k layout at the real counts: JSONs with every field of the official files."""
    jpeg = tiny_jpeg()
    images: dict[str, list[tuple[str, int, int]]] = {}
    for c in SPAIR_CATEGORIES:
        d = root / "JPEGImages" / c
        d.mkdir(parents=True)
        images[c] = []
        for k in range(SPAIR_IMAGES_PER_CATEGORY):
            name = f"20{8 + k % 4:02d}_{SPAIR_CATEGORIES.index(c) * 1000 + k:06d}.jpg"
            (d / name).write_bytes(jpeg)
            w, h = (500, int(rng.integers(281, 500))) if k % 3 else (int(rng.integers(281, 500)), 500)
            images[c].append((name, w, h))
    (root / "Layout" / "large").mkdir(parents=True)
    number = 0
    for split, total in SPAIR_PAIRS.items():
        adir = root / "PairAnnotation" / split
        adir.mkdir(parents=True)
        lines = []
        for n in range(total):
            number += 1
            c = SPAIR_CATEGORIES[n % len(SPAIR_CATEGORIES)]
            (sn, sw, sh), (tn, tw, th) = (images[c][i] for i in rng.choice(SPAIR_IMAGES_PER_CATEGORY, 2, replace=False))
            nk = int(rng.integers(3, 21))
            kid = sorted(rng.choice(30, nk, replace=False).tolist())
            sk = np.stack([rng.integers(0, sw, nk), rng.integers(0, sh, nk)], 1).tolist()
            tk = np.stack([rng.integers(0, tw, nk), rng.integers(0, th, nk)], 1).tolist()
            sb = [
                int(rng.integers(0, sw // 3)),
                int(rng.integers(0, sh // 3)),
                int(rng.integers(sw // 2, sw)),
                int(rng.integers(sh // 2, sh)),
            ]
            tb = [
                int(rng.integers(0, tw // 3)),
                int(rng.integers(0, th // 3)),
                int(rng.integers(tw // 2, tw)),
                int(rng.integers(th // 2, th)),
            ]
            line = f"{number:06d}-{sn[:-4]}-{tn[:-4]}:{c}"
            pair = {
                "pair_id": number,
                "filename": line,
                "src_imname": sn,
                "trg_imname": tn,
                "src_imsize": [sw, sh, 3],
                "trg_imsize": [tw, th, 3],
                "src_bndbox": sb,
                "trg_bndbox": tb,
                "category": c,
                "src_pose": "Left",
                "trg_pose": "Right",
                "src_kps": sk,
                "trg_kps": tk,
                "kps_ids": [str(i) for i in kid],
                "mirror": 0,
                "viewpoint_variation": int(rng.integers(0, 3)),
                "scale_variation": int(rng.integers(0, 3)),
                "truncation": int(rng.integers(0, 4)),
                "occlusion": int(rng.integers(0, 4)),
            }
            (adir / f"{line}.json").write_text(json.dumps(pair))
            lines.append(line)
        (root / "Layout" / "large" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def write_pfpascal(root: Path, rng: np.random.Generator) -> Path:
    """PF-Pascal: ``PF-dataset-PASCAL/{JPEGImages,Annotations/<class>}`` and the CSV lists."""
    import scipy.io

    w, h = 40, 30  # tiny images: the loader reads their headers for the sizes
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, "JPEG", quality=50)
    jpeg = buf.getvalue()
    base = root / "PF-dataset-PASCAL"
    (base / "JPEGImages").mkdir(parents=True)
    per_class: dict[int, list[tuple[str, int]]] = {}
    for i in range(PFPASCAL_IMAGES):
        cls = i % len(PASCAL_CLASSES)
        stem = f"20{8 + i % 4:02d}_{i:06d}"
        (base / "JPEGImages" / f"{stem}.jpg").write_bytes(jpeg)
        nk = 6 + cls % 9  # keypoints per class, index-aligned within a class
        kps = np.stack([rng.uniform(0, w - 1, nk), rng.uniform(0, h - 1, nk)], 1)
        kps[rng.random(nk) < 0.2] = np.nan  # invisible
        ann = base / "Annotations" / PASCAL_CLASSES[cls]
        ann.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(str(ann / f"{stem}.mat"), {"kps": kps, "bbox": np.array([[1.0, 2.0, w - 3.0, h - 2.0]])})
        per_class.setdefault(cls, []).append((stem, nk))
    for split, total in PFPASCAL_PAIRS.items():
        rows = [
            "source_image,target_image,class,flip" if split != "test" else "source_image,target_image,class,XA,YA,XB,YB"
        ]
        for n in range(total):
            cls = n % len(PASCAL_CLASSES)
            (a, nk), (b, _) = (per_class[cls][i] for i in rng.choice(len(per_class[cls]), 2, replace=False))
            pa, pb = f"PF-dataset-PASCAL/JPEGImages/{a}.jpg", f"PF-dataset-PASCAL/JPEGImages/{b}.jpg"
            if split != "test":
                rows.append(f"{pa},{pb},{cls + 1},{n % 2}")
            else:
                cols = [";".join(f"{v:.6f}" for v in rng.uniform(0, lim - 1, nk)) for lim in (w, h, w, h)]
                rows.append(f"{pa},{pb},{cls + 1}," + ",".join(cols))
        name = "train_pairs.csv" if split == "trn" else f"{split}_pairs.csv"
        (root / name).write_text("\n".join(rows) + "\n")
    return root


# One measurement: a fresh process builds one split and prints the constructor's wall time.
_CHILD = """
import sys, time, warnings
warnings.simplefilter("ignore")
t0 = time.perf_counter()
import simsc
from simsc.data.registry import build_dataset
t1 = time.perf_counter()
assert simsc.__file__.startswith(sys.argv[5]), (simsc.__file__, sys.argv[5])  # the tree we meant to time
kw = {} if sys.argv[4] == "-" else {"cache_dir": sys.argv[4]}
c1 = time.process_time()
ds = build_dataset(sys.argv[1], sys.argv[2], sys.argv[3], 256, **kw)
t2, c2 = time.perf_counter(), time.process_time()
print(t2 - t1, t1 - t0, len(ds), getattr(ds, "index_state", "-"), c2 - c1)
"""


def child(
    pythonpath: Path, name: str, root: Path, split: str, cache: Path | None
) -> tuple[float, float, int, str, float]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": "1"}
    # cwd: the data folder, not the repository (``python -c`` puts the cwd first on sys.path)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, name, str(root), split, str(cache) if cache else "-", str(pythonpath)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=root.parent,
    ).stdout.split()
    return float(out[0]), float(out[1]), int(out[2]), out[3], float(out[4])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--splits", default="test,trn", help="SPair-71k splits to time (PF-Pascal: all three)")
    ap.add_argument("--baseline-rev", default="6b0d6e3", help="git revision of today's loader")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--tmp", default=None, help="parent folder of the generated trees (default: the system's)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "index.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_index_", dir=args.tmp))
    try:
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        spair = write_spair(tmp / "SPair-71k", rng)
        pfp = write_pfpascal(tmp / "pf-pascal", rng)
        print(f"generated the trees in {time.perf_counter() - t0:.1f} s under {tmp}", file=sys.stderr)
        baseline = None
        if not args.no_baseline:
            baseline = tmp / "baseline"
            baseline.mkdir()
            arc = subprocess.run(
                ["git", "-C", str(REPO), "archive", args.baseline_rev, "simsc"], check=True, capture_output=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(baseline)], input=arc, check=True)
        jobs = [("spair", spair, s) for s in args.splits.split(",")] + [("pfpascal", pfp, s) for s in PFPASCAL_PAIRS]
        rows, result = [], {"reps": args.reps, "baseline_rev": args.baseline_rev, "jobs": []}
        for name, root, split in jobs:
            times: dict[str, list[float]] = {"baseline": [], "cold": [], "cold+write": [], "load": []}
            cpu: dict[str, list[float]] = {m: [] for m in times}
            imports, states, n_pairs = [], set(), set()
            for r in range(args.reps):
                cache = tmp / "cache" / f"{name}-{split}-{r}"
                order = ["baseline", "cold", "cold+write", "load"]
                order = order[r % 2 :] + order[: r % 2]  # interleave; "load" always after its "cold+write"
                if order.index("load") < order.index("cold+write"):
                    order.remove("load")
                    order.append("load")
                for mode in order:
                    if mode == "baseline" and baseline is None:
                        continue
                    path = baseline if mode == "baseline" else REPO
                    t, imp, n, state, c = child(
                        path, name, root, split, None if mode in ("baseline", "cold") else cache
                    )
                    times[mode].append(t)
                    cpu[mode].append(c)
                    imports.append(imp)
                    n_pairs.add(n)
                    states.add(f"{mode}:{state}")
                shutil.rmtree(cache, ignore_errors=True)
            med = {m: statistics.median(v) for m, v in times.items() if v}
            med_cpu = {m: statistics.median(v) for m, v in cpu.items() if v}
            job = {
                "dataset": name,
                "split": split,
                "pairs": sorted(n_pairs),
                "median_s": med,
                "times_s": times,
                "median_cpu_s": med_cpu,
                "cpu_s": cpu,
                "states": sorted(states),
                "import_s_median": statistics.median(imports),
            }
            if "baseline" in med:
                job["cold_speedup"] = med["baseline"] / med["cold"]
                job["load_speedup"] = med["baseline"] / med["load"]
                job["cold_speedup_cpu"] = med_cpu["baseline"] / med_cpu["cold"]
            result["jobs"].append(job)
            rows.append(
                [
                    name,
                    split,
                    "/".join(map(str, sorted(n_pairs))),
                    *(f"{med.get(m, float('nan')):.3f}" for m in ("baseline", "cold", "cold+write", "load")),
                    f"{job.get('cold_speedup', float('nan')):.2f}x",
                    f"{job.get('load_speedup', float('nan')):.1f}x",
                    f"{med_cpu.get('baseline', float('nan')):.3f}/{med_cpu['cold']:.3f}",
                    f"{job.get('cold_speedup_cpu', float('nan')):.2f}x",
                ]
            )
            print(rows[-1], file=sys.stderr)
        from bench._common import table, write_json  # torch only here, after the timed children

        print(
            table(
                [
                    "dataset",
                    "split",
                    "pairs",
                    "baseline s",
                    "cold s",
                    "cold+write s",
                    "load s",
                    "cold speedup",
                    "load speedup",
                    "CPU s baseline/cold",
                    "cold speedup (CPU)",
                ],
                rows,
            )
        )
        print(
            "wall-clock medians of the constructor in a fresh process (import apart: median "
            f"{statistics.median(j['import_s_median'] for j in result['jobs']):.2f} s); CPU: its process time"
        )
        write_json(args.out, result)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
