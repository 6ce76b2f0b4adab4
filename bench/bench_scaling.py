"""Train-step time as the keypoint count and the image resolution grow.

SimSC step = ``model.loss`` + backward (no optimiser step), ``finetune='last_block'``, batch of
pairs of random images. Keypoints 8 -> 64 -> 256 at a fixed size, interleaved in one process so
the growth ratio is robust to load from other processes; then resolutions 256 -> 384 -> 512 at
a fixed keypoint count (also interleaved). Medians.

    .venv/bin/python -m bench.bench_scaling [--backbone resnet50] [--batch 8] [--reps 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench._common import RESULTS, interleaved, machine, make_batch, med, table, write_json
from simsc.model import SimSC


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--kps", default="8,64,256")
    ap.add_argument("--size", type=int, default=256, help="image size of the keypoint sweep")
    ap.add_argument("--sizes", default="256,384,512")
    ap.add_argument("--sizes-kps", type=int, default=16, help="keypoints of the resolution sweep")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=RESULTS / "scaling.json")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = SimSC(args.backbone, "mlp", pretrained=False, finetune="last_block").to(args.device).train()

    def step_fn(data):
        def f():
            model.zero_grad(set_to_none=True)
            model.loss(data)["loss"].backward()

        return f

    kps = [int(k) for k in args.kps.split(",")]
    t = interleaved(
        {k: step_fn(make_batch(args.batch, args.size, k, args.device)) for k in kps}, args.reps, 1, args.device
    )
    kp_rows = [{"kps": k, "size": args.size, "median_s": med(t[k]), "times_s": t[k]} for k in kps]
    for r in kp_rows:
        r["vs_first"] = r["median_s"] / kp_rows[0]["median_s"]
    sizes = [int(s) for s in args.sizes.split(",")]
    t = interleaved(
        {s: step_fn(make_batch(args.batch, s, args.sizes_kps, args.device)) for s in sizes}, args.reps, 1, args.device
    )
    size_rows = [{"kps": args.sizes_kps, "size": s, "median_s": med(t[s]), "times_s": t[s]} for s in sizes]
    for r in size_rows:
        r["vs_first"] = r["median_s"] / size_rows[0]["median_s"]
        r["pixels_vs_first"] = (r["size"] / size_rows[0]["size"]) ** 2
    print(f"{args.backbone}, batch {args.batch} pairs, finetune last_block, device {args.device}")
    print(
        table(
            ["keypoints", "size", "s/step", "vs first"],
            [[r["kps"], r["size"], f"{r['median_s']:.3f}", f"{r['vs_first']:.3f}x"] for r in kp_rows],
        )
    )
    print(
        table(
            ["size", "keypoints", "s/step", "vs first", "pixels vs first"],
            [
                [r["size"], r["kps"], f"{r['median_s']:.3f}", f"{r['vs_first']:.2f}x", f"{r['pixels_vs_first']:.2f}x"]
                for r in size_rows
            ],
        )
    )
    write_json(
        args.out,
        {
            "backbone": args.backbone,
            "batch": args.batch,
            "device": args.device,
            "keypoints": kp_rows,
            "resolution": size_rows,
            "machine": machine(),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
