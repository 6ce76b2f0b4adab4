"""Ray overhead of the sweep runner: N identical short trials under ``pipeline.sweep`` vs the same
trainings run back to back in one process.

Both sides train the same engine config (a small embedded data set, random-init ResNet-18) with
one torch thread per training, no MLflow (tracking off on both sides, so only Ray is measured).
The sweep side runs on a local Ray instance started in this process (``ray.init(num_cpus=C)``);
its time is ``Tuner.fit`` (trial scheduling, worker processes importing torch, per-epoch
``tune.report`` with checkpoint copies), reported with and without the one-off ``ray.init``.

Ratios:
- ``concurrency 1``: sweep / back-to-back with one trial at a time: the pure overhead;
- ``concurrency C``: the same trials ``C`` at a time (what a sweep buys on C cores).

    .venv/bin/python -m bench.bench_ray_overhead [--trials 4] [--epochs 2] [--pairs 16] [--size 96] [--cpus 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from bench._common import RESULTS, machine, table, write_json


def spec_file(folder: Path, data_root: Path, args, concurrency: int, name: str) -> Path:
    spec = {
        "name": name,
        "base": [],
        "set": {
            "model.backbone": "resnet18",
            "model.pretrained": False,
            "model.finetune": "all",
            "model.temperature": "mlp",
            "data.dataset": "embedded",
            "data.root": str(data_root),
            "data.resolution": args.size,
            "data.batch_size": 4,
            "eval.resolution": args.size,
            "train.epochs": args.epochs,
            "train.lr_backbone": 1e-4,
            "train.device": "cpu",
            "train.num_threads": 1,
            "train.val_max_pairs": 4,
        },
        "search": {},
        "num_samples": args.trials,
        "scheduler": {"type": "fifo"},
        "resources": {"cpu": 1},
        "max_concurrent_trials": concurrency,
        "tracking": {"enabled": False},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def back_to_back(spec, folder: Path, tag: str) -> float:
    from pipeline.sweep_spec import compose
    from simsc.config import load_config
    from simsc.engine.trainer import Trainer

    t0 = time.perf_counter()
    for i in range(spec.num_samples):
        engine = compose(spec.engine_base(), {})
        engine["train"].update(out_dir=str(folder / f"{tag}{i}"), progress=False)
        Trainer(load_config(engine)).fit()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--pairs", type=int, default=16, help="training pairs of the embedded set")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--cpus", type=int, default=min(2, os.cpu_count() or 1))
    args = p.parse_args()

    import ray
    import torch

    from pipeline.sweep import run_sweep
    from pipeline.sweep_spec import load_sweep_spec
    from simsc.data.embedded import build_embedded_dataset

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        data = build_embedded_dataset(
            tmp / "data", n_train=args.pairs, n_val=4, n_test=4, progress=False, image_size=((96, 72), (128, 96))
        )
        specs = {
            c: load_sweep_spec(spec_file(tmp, data, args, c, f"bench_c{c}"), root=tmp) for c in sorted({1, args.cpus})
        }
        back_to_back(specs[1], tmp, "warmup")  # imports, file cache
        seq = back_to_back(specs[1], tmp, "seq")
        t0 = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, configure_logging=False, log_to_driver=False)
        init_s = time.perf_counter() - t0
        rows, result = (
            [],
            {"machine": machine(), "args": vars(args), "back_to_back_s": seq, "ray_init_s": init_s, "runs": {}},
        )
        for c, spec in specs.items():
            out = run_sweep(spec, out_dir=tmp / f"out{c}", storage=str(tmp / "ray_results"), tracking=False)
            wall = out["wall_s"]
            assert len(out["rows"]) == args.trials and all(r["status"] == "completed" for r in out["rows"])
            per_trial = (wall - seq) / args.trials if c == 1 else None
            result["runs"][str(c)] = {
                "sweep_s": wall,
                "ratio": wall / seq,
                "ratio_with_init": (wall + init_s) / seq,
                "overhead_per_trial_s": per_trial,
            }
            rows.append(
                [
                    c,
                    f"{seq:.1f}",
                    f"{wall:.1f}",
                    f"{wall / seq:.2f}",
                    f"{(wall + init_s) / seq:.2f}",
                    f"{per_trial:.2f}" if per_trial is not None else "-",
                ]
            )
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"{args.trials} identical trials: resnet18, {args.pairs} pairs, {args.size} px, {args.epochs} epochs, "
        f"1 thread each; ray.init {init_s:.1f} s"
    )
    print(
        table(
            [
                "concurrency",
                "back to back (s)",
                "sweep (s)",
                "sweep / back to back",
                "incl. ray.init",
                "overhead per trial (s)",
            ],
            rows,
        )
    )
    write_json(RESULTS / "ray_overhead.json", result)


if __name__ == "__main__":
    main()
