"""Loader throughput: pairs/s of a DataLoader reading the preprocessing cache vs decoding JPEGs.

Builds a synthetic SPair-71k-layout set (realistic ~500x375 JPEGs) unless ``--root`` points at
one, then in one run measures, at the same resolution, batch size and worker count:

* ``decode``: every access decodes and resizes the JPEGs (no cache);
* ``cache build``: :func:`simsc.data.cache.build_cache` (the "preprocess" stage);
* ``cached``: every access reads the cached, resized uint8 arrays.

Each mode runs one warm-up epoch (persistent workers, warm OS page cache), then ``--epochs``
timed epochs. Prints a table and writes JSON to ``--out``.

    .venv/bin/python -m bench.bench_loader [--root SPAIR_ROOT] [--workers 2] [--out bench/results/loader.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from simsc.data.cache import build_cache
from simsc.data.records import collate_pairs
from simsc.data.spair import SPairDataset

REPO = Path(__file__).resolve().parents[1]


def time_epochs(ds: SPairDataset, batch_size: int, workers: int, epochs: int) -> dict[str, float]:
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_pairs,
        persistent_workers=workers > 0,
    )
    for _ in loader:  # warm-up epoch: worker start-up, page cache, (transparent) cache fill
        pass
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        n = 0
        for batch in loader:
            n += batch["src_img"].shape[0]
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {
        "pairs": n,
        "epoch_s": [round(t, 4) for t in times],
        "best_epoch_s": round(best, 4),
        "pairs_per_s": round(n / best, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, help="an existing SPair-71k-layout root (default: build a synthetic one)")
    p.add_argument("--split", default="trn")
    p.add_argument("--resolution", default="256")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per mode (after one warm-up)")
    p.add_argument("--n-images", type=int, default=64, help="synthetic set: distinct images")
    p.add_argument("--n-pairs", type=int, default=512, help="synthetic set: pairs")
    p.add_argument("--image-size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    p.add_argument("--cache-dir", type=Path, help="default: a temporary folder (removed afterwards)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "loader.json")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        root = args.root
        if root is None:
            from tests.data_fixtures import make_spair_synthetic

            root = make_spair_synthetic(
                Path(tmp) / "spair", n_images=args.n_images, n_pairs=args.n_pairs,
                size=tuple(args.image_size), split=args.split,
            )  # fmt: skip
        cache_dir = args.cache_dir or Path(tmp) / "cache"

        decode_ds = SPairDataset(root, args.split, args.resolution)
        decode = time_epochs(decode_ds, args.batch_size, args.workers, args.epochs)

        cached_ds = SPairDataset(root, args.split, args.resolution, cache_dir=cache_dir)
        t0 = time.perf_counter()
        report = build_cache(cached_ds, show_progress=False)
        build_s = time.perf_counter() - t0
        cached = time_epochs(cached_ds, args.batch_size, args.workers, args.epochs)

    result = {
        "dataset": {
            "root": str(args.root) if args.root else "synthetic SPair-71k layout",
            "split": args.split,
            "pairs": len(decode_ds),
            "images": len(decode_ds.image_paths()),
            "image_size_WxH": list(args.image_size) if args.root is None else None,
            "resolution": decode_ds.resolution,
        },
        "loader": {"batch_size": args.batch_size, "workers": args.workers, "timed_epochs": args.epochs},
        "decode": decode,
        "cache_build": {"seconds": round(build_s, 3), "images": report["images"], "written": report["written"]},
        "cached": cached,
        "speedup": round(cached["pairs_per_s"] / decode["pairs_per_s"], 2),
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    rows = [
        ("decode JPEG each time", f"{decode['pairs_per_s']:.1f}", f"{decode['best_epoch_s']:.3f}"),
        ("cached (npy)", f"{cached['pairs_per_s']:.1f}", f"{cached['best_epoch_s']:.3f}"),
    ]
    print(f"{result['dataset']['pairs']} pairs / {result['dataset']['images']} images, resolution "
          f"{decode_ds.resolution}, batch {args.batch_size}, workers {args.workers}")  # fmt: skip
    print(f"{'mode':<24}{'pairs/s':>10}{'epoch s':>10}")
    for r in rows:
        print(f"{r[0]:<24}{r[1]:>10}{r[2]:>10}")
    print(f"cache build: {build_s:.3f} s for {report['images']} images; speedup x{result['speedup']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
