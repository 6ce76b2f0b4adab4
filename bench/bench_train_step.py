"""Throughput of the SimSC training step (forward, loss, backward, Adam step), data loading excluded.

    .venv/bin/python -m bench.bench_train_step --backbone resnet18 --sizes 160,256 --batches 8 --steps 20

Prints a table and a JSON document (also written to --json when given). Images are random
``[B, 3, S, S]`` tensors with ``--kps`` random keypoints a pair; the optimiser and parameter
groups are the trainer's (:func:`simsc.engine.param_groups`).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from simsc.config import load_config
from simsc.engine import build_model, param_groups
from simsc.engine.runtime import resolve_device


def bench_one(
    backbone: str,
    size: int,
    batch: int,
    finetune: str,
    temperature: str,
    steps: int,
    warmup: int,
    kps: int,
    device: torch.device,
    seed: int = 0,
) -> dict:
    torch.manual_seed(seed)
    cfg = load_config(
        {"model": {"backbone": backbone, "pretrained": False, "finetune": finetune, "temperature": temperature}}
    )
    model = build_model(cfg).to(device).train()
    opt = torch.optim.Adam(param_groups(model, cfg))
    g = torch.Generator().manual_seed(seed)
    data = {
        "src_img": torch.rand(batch, 3, size, size, generator=g),
        "trg_img": torch.rand(batch, 3, size, size, generator=g),
        "src_kps": torch.rand(batch, kps, 2, generator=g) * (size - 1),
        "trg_kps": torch.rand(batch, kps, 2, generator=g) * (size - 1),
        "valid": torch.ones(batch, kps, dtype=torch.bool),
    }
    data = {k: v.to(device) for k, v in data.items()}

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model.loss(data)["loss"]
        loss.backward()
        opt.step()
        return loss

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        float(step().detach())  # waits for the step
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    total = sum(times)
    return {
        "backbone": backbone,
        "size": size,
        "batch": batch,
        "finetune": finetune,
        "temperature": temperature,
        "steps": steps,
        "steps_per_s": steps / total,
        "median_s_per_step": median,
        "pairs_per_s": steps * batch / total,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="resnet18", help="comma-separated backbone names")
    ap.add_argument("--sizes", default="160", help="comma-separated square image sizes")
    ap.add_argument("--batches", default="8", help="comma-separated batch sizes (pairs)")
    ap.add_argument("--finetune", default="all", choices=["all", "last_block"])
    ap.add_argument("--temperature", default="mlp")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--kps", type=int, default=16, help="keypoints a pair")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = []
    for backbone in args.backbone.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            for batch in (int(b) for b in args.batches.split(",")):
                rows.append(
                    bench_one(
                        backbone,
                        size,
                        batch,
                        args.finetune,
                        args.temperature,
                        args.steps,
                        args.warmup,
                        args.kps,
                        device,
                    )
                )
    print(f"{'backbone':<12} {'size':>5} {'batch':>5} {'finetune':<10} {'steps/s':>8} {'s/step':>8} {'pairs/s':>8}")
    for r in rows:
        print(
            f"{r['backbone']:<12} {r['size']:>5} {r['batch']:>5} {r['finetune']:<10} {r['steps_per_s']:>8.2f} "
            f"{r['median_s_per_step']:>8.3f} {r['pairs_per_s']:>8.1f}"
        )
    out = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "rows": rows,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
