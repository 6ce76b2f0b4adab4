"""Where the non-backbone time of a SimSC train step goes: torch.profiler over a few steps.

Prints the top operators by self time (CPU; and CUDA when on a GPU) and the number of
host-device synchronisations (``aten::item`` / ``aten::is_nonzero`` / ``aten::_local_scalar_dense``)
a step makes. Writes the table to ``--out``.

    .venv/bin/python -m bench.profile_step [--backbone resnet101] [--device cpu] [--steps 3] [--checks]

The step is the trainer's: ``model.loss(batch, check=False)`` (the batch is checked on the CPU
before it moves); ``--checks`` profiles the loss with its value checks (the step before the sync-free step).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench._common import RESULTS, make_batch, sync
from simsc.model import SimSC


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet101")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--kps", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--checks", action="store_true", help="the loss with its value checks (host reads)")
    ap.add_argument("--out", type=Path, default=RESULTS / "profile_step.txt")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = SimSC(args.backbone, "mlp", pretrained=False, finetune="last_block").to(args.device).train()
    data = make_batch(args.batch, args.size, args.kps, args.device)

    def step():
        model.zero_grad(set_to_none=True)
        model.loss(data, check=args.checks)["loss"].backward()

    step()
    sync(args.device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        for _ in range(args.steps):
            step()
        sync(args.device)
    ka = prof.key_averages()
    syncs = (
        sum(
            e.count
            for e in ka
            if e.key in ("aten::item", "aten::is_nonzero", "aten::_local_scalar_dense")
            and e.key == "aten::_local_scalar_dense"
        )
        / args.steps
    )
    n_ops = sum(e.count for e in ka if e.key.startswith("aten::")) / args.steps
    sort = "self_cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
    text = (
        f"{args.backbone} {args.size}x{args.size} batch {args.batch} device {args.device}"
        f"{' (value checks on)' if args.checks else ''}: "
        f"{syncs:.0f} host-device syncs (aten::_local_scalar_dense) and {n_ops:.0f} aten ops a step\n"
        + ka.table(sort_by=sort, row_limit=30, max_name_column_width=40)
    )
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
