"""Data vs compute: loader pairs/s (preprocessing cache, workers) vs the pairs/s the train step consumes.

Reuses ``bench_loader.time_epochs`` (cached SPair-layout set of ~500x375 JPEGs, resized to the
training resolution) and ``bench_train_step.bench_one`` (forward, loss, backward, Adam step on
random tensors), alternating loader and step measurements for ``--reps`` rounds in one process
and taking medians. The loader keeps up when its pairs/s is at least the step's; the target is
a 2x margin. (The two run one after the other here, not concurrently: on a 2-core machine the
workers would steal the step's cores when overlapped.)

    .venv/bin/python -m bench.bench_data_vs_step [--backbones resnet18,resnet101] [--resolution 256]
        [--workers 2] [--reps 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench._common import RESULTS, machine, table, write_json
from bench.bench_loader import time_epochs
from bench.bench_train_step import bench_one
from simsc.data.cache import build_cache
from simsc.data.spair import SPairDataset


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="resnet18,resnet101")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n-pairs", type=int, default=256)
    ap.add_argument("--n-images", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="timed train steps a round")
    ap.add_argument("--reps", type=int, default=2, help="rounds (loader epoch + steps each)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=RESULTS / "data_vs_step.json")
    args = ap.parse_args(argv)
    from tests.data_fixtures import make_spair_synthetic

    backbones = args.backbones.split(",")
    loader_pps: list[float] = []
    step_pps: dict[str, list[float]] = {b: [] for b in backbones}
    with tempfile.TemporaryDirectory(prefix="bench_dvs_") as tmp:
        root = make_spair_synthetic(Path(tmp) / "spair", n_images=args.n_images, n_pairs=args.n_pairs)
        ds = SPairDataset(root, "trn", str(args.resolution), cache_dir=Path(tmp) / "cache")
        t0 = time.perf_counter()
        build_cache(ds, show_progress=False)
        build_s = time.perf_counter() - t0
        for _ in range(args.reps):
            loader_pps.append(time_epochs(ds, args.batch, args.workers, 1)["pairs_per_s"])
            for b in backbones:
                r = bench_one(
                    b, args.resolution, args.batch, "last_block", "mlp", args.steps, 1, 16, torch.device(args.device)
                )
                step_pps[b].append(r["pairs_per_s"])
    lp = statistics.median(loader_pps)
    rows = [
        {
            "backbone": b,
            "step_pairs_per_s": statistics.median(v),
            "step_runs": v,
            "loader_pairs_per_s": lp,
            "margin": lp / statistics.median(v),
        }
        for b, v in step_pps.items()
    ]
    print(
        f"resolution {args.resolution}, batch {args.batch}, loader: cache, {args.workers} workers "
        f"(runs {loader_pps}); step: last_block, Adam, device {args.device}"
    )
    print(
        table(
            ["backbone", "loader pairs/s", "train step pairs/s", "loader / step"],
            [[r["backbone"], f"{lp:.1f}", f"{r['step_pairs_per_s']:.2f}", f"{r['margin']:.1f}x"] for r in rows],
        )
    )
    write_json(
        args.out,
        {
            "rows": rows,
            "loader_runs": loader_pps,
            "cache_build_s": build_s,
            "workers": args.workers,
            "resolution": args.resolution,
            "batch": args.batch,
            "machine": machine(),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
