"""Cost of the matching heads: training-step time and peak memory next to SimSC without a head.

    nice -n 10 .venv/bin/python -m bench.bench_heads --backbone resnet101 --size 256 --batch 8 --reps 2

One full training step (forward, loss, backward, Adam) of ``SimSC(backbone, "mlp", head=...)``
at the ``paper`` head preset, ``finetune=last_block`` (the last block of the deepest level a
head reads: layer4 for SFNet and CATs), random weights and random pairs with ``--kps``
keypoints. Each head runs in a fresh subprocess so that its peak memory is its own. CPU:
peak RSS (``ru_maxrss``) during the steps minus the RSS after building the model and batch;
CUDA: ``max_memory_allocated`` minus the allocation before the first step. Step time: median
of ``--reps`` steps after one warm-up step. The subprocesses run one after the other on a
shared machine, so the ratios carry its load changes; the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from bench._common import REPO, machine, med, table, write_json

HEADS = ("none", "sfnet", "ncnet", "cats")


def _rss_now() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def run_head(head: str, backbone: str, size: int, batch: int, kps: int, reps: int, device: str, threads: int) -> dict:
    from bench._common import make_batch
    from simsc.config import load_config
    from simsc.engine import build_model, param_groups

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(
        {
            "model": {
                "backbone": backbone,
                "pretrained": False,
                "finetune": "last_block",
                "temperature": "mlp",
                "head": head,
                "head_preset": "paper",
            },
            "data": {"resolution": size, "batch_size": batch},
        }
    )
    dev = torch.device(device)
    model = build_model(cfg).to(dev).train()
    opt = torch.optim.Adam(param_groups(model, cfg))
    data = make_batch(batch, size, kps, device=dev)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = model.loss(data)["loss"]
        loss.backward()
        opt.step()
        return float(loss.detach())  # waits for the step

    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    base_rss = _rss_now()
    times = []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        step()
        if i:  # the first step is the warm-up (allocator, Adam state)
            times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
        how = "cuda max_memory_allocated delta"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss
        how = "peak RSS minus RSS after setup"
    head_params = sum(p.numel() for p in model.head.parameters()) if model.head is not None else 0
    return {
        "head": head,
        "step_s": med(times),
        "times_s": times,
        "peak_bytes": int(peak),
        "memory": how,
        "head_params": head_params,
        "trainable_params": sum(p.numel() for g in opt.param_groups for p in g["params"]),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="resnet101")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--kps", type=int, default=20)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--heads", default=",".join(HEADS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        res = run_head(args.child, args.backbone, args.size, args.batch, args.kps, args.reps, args.device, args.threads)
        print("RESULT " + json.dumps(res))
        return 0

    rows = []
    for head in [h for h in args.heads.split(",") if h]:
        cmd = [
            sys.executable,
            "-m",
            "bench.bench_heads",
            "--child",
            head,
            "--backbone",
            args.backbone,
            "--size",
            str(args.size),
            "--batch",
            str(args.batch),
            "--kps",
            str(args.kps),
            "--reps",
            str(args.reps),
            "--device",
            args.device,
            "--threads",
            str(args.threads),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(f"{head}: the benchmark subprocess failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(line[len("RESULT ") :]))
        print(f"{head}: {rows[-1]['step_s']:.2f} s/step, peak {rows[-1]['peak_bytes'] / 2**20:.0f} MiB", flush=True)
    ref = next((r for r in rows if r["head"] == "none"), rows[0])
    print(
        table(
            ["head", "step (s)", "x none", "peak memory (MiB)", "x none", "head params"],
            [
                [
                    r["head"],
                    f"{r['step_s']:.2f}",
                    f"{r['step_s'] / ref['step_s']:.2f}",
                    f"{r['peak_bytes'] / 2**20:.0f}",
                    f"{r['peak_bytes'] / max(ref['peak_bytes'], 1):.2f}",
                    f"{r['head_params']:,}",
                ]
                for r in rows
            ],
        )
    )
    result = {"setup": {k: v for k, v in vars(args).items() if k != "child"}, "rows": rows}
    if args.json:
        write_json(args.json, result)
    else:
        result["machine"] = machine()
        print(json.dumps(result["machine"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
