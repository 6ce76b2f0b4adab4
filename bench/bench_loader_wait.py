"""Loader vs device: the share of training time spent waiting for data.

Runs real training (:class:`~simsc.engine.trainer.Trainer`, its DataLoader, ``--steps`` optimiser
steps) on an SPair-layout set of ~500x375 JPEGs (tests/data_fixtures.py) read through the
decoded-image cache, once per ``workers x pin_memory`` setting, and reports steps/s and the
trainer's own ``data_wait_fraction`` (summary.json: time blocked on the loader / (that +
step time); validation and checkpoints excluded). The settings run one after the other, each
as many ``--reps`` times (interleaved), medians reported. The default ``data.workers`` /
pinned memory should be the cheapest setting whose wait fraction is small (< 5 %).

    python -m bench.bench_loader_wait --device cuda [--backbone resnet101] [--workers 0,2,4,8]
    python -m bench.bench_loader_wait --device cpu --backbone resnet18 --resolution 64 --workers 0,1 --steps 4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench._common import RESULTS, machine, table, write_json
from simsc.data.cache import build_cache
from simsc.data.spair import SPairDataset
from simsc.engine import Trainer


def run_once(ds, args, workers: int, pin: bool, out_dir: Path) -> dict:
    cfg = {
        "model": {"backbone": args.backbone, "pretrained": False, "finetune": "last_block", "temperature": "mlp"},
        "data": {"batch_size": args.batch, "resolution": args.resolution, "workers": workers},
        "train": {
            "device": args.device,
            "out_dir": str(out_dir),
            "progress": "off",
            "max_steps": args.steps,
            "epochs": 1000,
            "val_max_pairs": 1,
            "deterministic": False,
        },
    }
    tr = Trainer(cfg, train_dataset=ds, val_dataset=ds)
    tr.pin_memory = pin
    t0 = time.perf_counter()
    summary = tr.fit(overwrite=True)
    return {
        "wall_s": time.perf_counter() - t0,
        "data_wait_fraction": summary["data_wait_fraction"],
        "data_wait_s": summary["data_wait_s"],
        "steps_per_s": summary["steps_per_s"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backbone", default="resnet101")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", default="0,2,4,8")
    ap.add_argument("--pin", default="auto", help="auto (both on CUDA, off on CPU), on, off")
    ap.add_argument(
        "--steps",
        type=int,
        default=60,
        help="optimiser steps a run (more than one epoch: workers restart at epoch ends)",
    )
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--n-pairs", type=int, default=128)
    ap.add_argument("--n-images", type=int, default=48)
    ap.add_argument("--out", type=Path, default=RESULTS / "loader_wait.json")
    args = ap.parse_args(argv)
    from tests.data_fixtures import make_spair_synthetic

    cuda = torch.device(args.device).type == "cuda"
    pins = {"auto": [False, True] if cuda else [False], "on": [True], "off": [False]}[args.pin]
    settings = [(int(w), p) for w in args.workers.split(",") for p in pins]
    runs: dict[tuple[int, bool], list[dict]] = {s: [] for s in settings}
    with tempfile.TemporaryDirectory(prefix="bench_wait_") as tmp:
        root = make_spair_synthetic(Path(tmp) / "spair", n_images=args.n_images, n_pairs=args.n_pairs)
        ds = SPairDataset(root, "trn", str(args.resolution), cache_dir=Path(tmp) / "cache")
        build_cache(ds, show_progress=False)
        for r in range(args.reps):
            order = settings[r % len(settings) :] + settings[: r % len(settings)]
            for w, p in order:
                runs[(w, p)].append(run_once(ds, args, w, p, Path(tmp) / f"run-{w}-{p}"))
    rows, out = [], []
    for (w, p), rs in runs.items():
        frac = statistics.median(x["data_wait_fraction"] for x in rs)
        sps = statistics.median(x["steps_per_s"] for x in rs)
        rows.append([w, "on" if p else "off", f"{100 * frac:.1f}%", f"{sps:.2f}"])
        out.append({"workers": w, "pin_memory": p, "data_wait_fraction": frac, "steps_per_s": sps, "runs": rs})
    print(
        f"{args.backbone} {args.resolution}x{args.resolution} batch {args.batch} on {args.device}: "
        f"{args.steps} steps a run, {args.reps} run(s) a setting, {len(ds)} cached pairs"
    )
    print(table(["workers", "pin_memory", "waiting for data", "steps/s"], rows))
    write_json(args.out, {"rows": out, "args": {k: str(v) for k, v in vars(args).items()}, "machine": machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
