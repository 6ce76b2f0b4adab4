"""Training-step memory of SimSC-DINOv2-B/14 at the field's resolutions, measured on the CPU at one pair.

    nice -n 10 .venv/bin/python -m bench.bench_dinov2_memory --sizes 518,840 --finetune last_block,all

One step (forward, loss, backward; no optimiser) of ``SimSC(dinov2_vitb14, "mlp", finetune=...)``
with random weights on one pair of ``size`` x ``size`` images and ``--kps`` keypoints, each case
in a fresh subprocess: peak RSS during the step minus the RSS after building the model and
the batch, i.e. activations, gradients and temporaries (not the weights, not Adam's state).
Activation memory grows linearly with the batch; the attention matrices (``heads x T^2`` per
block and image, ``T`` tokens) dominate at 840 px where the CPU (and GPU without fused
attention) keeps them for backward.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from bench._common import REPO, write_json


def _rss_now() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def run_case(backbone: str, size: int, finetune: str, kps: int, threads: int) -> dict:
    from bench._common import make_batch
    from simsc import SimSC

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = SimSC(backbone, "mlp", finetune=finetune).train()
    data = make_batch(1, size, kps)
    base = _rss_now()
    t0 = time.perf_counter()
    model.loss(data)["loss"].backward()
    step_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    cells = -(-size // model.stride)
    return {
        "backbone": backbone,
        "size": size,
        "finetune": finetune,
        "cells": cells,
        "tokens": cells * cells + model.backbone.model.num_prefix_tokens,
        "peak_bytes_per_pair": int(peak),
        "step_s": step_s,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "params": sum(p.numel() for p in model.parameters()),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="dinov2_vitb14")
    ap.add_argument("--sizes", default="518,840")
    ap.add_argument("--finetune", default="last_block,all")
    ap.add_argument("--kps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        size, finetune = args.child.split(":")
        print("RESULT " + json.dumps(run_case(args.backbone, int(size), finetune, args.kps, args.threads)))
        return 0
    rows = []
    for size in [int(s) for s in args.sizes.split(",") if s]:
        for finetune in [f for f in args.finetune.split(",") if f]:
            cmd = [sys.executable, "-m", "bench.bench_dinov2_memory", "--backbone", args.backbone]
            cmd += ["--kps", str(args.kps), "--threads", str(args.threads), "--child", f"{size}:{finetune}"]
            out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
            row = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
            rows.append(row)
            print(
                f"{args.backbone} {size} px ({row['cells']}^2 cells, {row['tokens']} tokens) {finetune}: "
                f"{row['peak_bytes_per_pair'] / 2**20:.0f} MiB a pair, {row['step_s']:.1f} s",
                flush=True,
            )
    if args.json:
        write_json(args.json, {"rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
