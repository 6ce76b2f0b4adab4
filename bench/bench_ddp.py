"""Data-parallel step cost: one rank with the whole batch vs N ranks with a share each.

A training step as the trainer takes it (``model.loss`` + backward + Adam) on a global batch of
``--batch`` pairs, in one group of N processes (gloo on CPU, NCCL on GPUs;
:func:`simsc.engine.distributed.launch_local`), three steps interleaved each repetition: rank 0
alone with the whole batch (the others wait in a barrier), all ranks with ``batch / N`` each in
DDP, and the same under ``no_sync()`` (no gradient all-reduce), so ``1 - no_sync / synced`` is the
communication share of the step. On CPU the lone rank uses all ``--threads``, each of N ranks
``threads / N``: the same cores either way. Medians.

    .venv/bin/python -m bench.bench_ddp [--backbone resnet18] [--size 128] [--batch 8] [--devices 2]
    python3 -m bench.bench_ddp --device cuda --backbone resnet101 --size 256   # needs >= 2 GPUs
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from bench._common import RESULTS, interleaved, machine, make_batch, med, sync, table, write_json
from simsc.model import SimSC


def _model(args: argparse.Namespace, device: torch.device) -> tuple[SimSC, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = SimSC(args.backbone, "mlp", pretrained=False, finetune=args.finetune).to(device).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    return model, opt


def _rank(args: argparse.Namespace, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from simsc.engine.distributed import local_rank

    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", local_rank()) if args.device == "cuda" else torch.device("cpu")
    model, opt = _model(args, device)
    single, single_opt = _model(args, device)  # rank 0's one-process baseline, the whole batch

    class Loss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, batch):
            return self.model.loss(batch)["loss"]

    ddp = DistributedDataParallel(Loss(), device_ids=[device.index] if device.type == "cuda" else None)
    data = make_batch(args.batch // world, args.size, args.kps, device, seed=rank)
    whole = make_batch(args.batch, args.size, args.kps, device)
    threads = max(1, args.threads // world)

    def one_rank():
        # Rank 0 alone with every thread; the other ranks wait in the barrier (no CPU).
        if rank == 0:
            torch.set_num_threads(args.threads)
            single_opt.zero_grad(set_to_none=True)
            single.loss(whole)["loss"].backward()
            single_opt.step()
            sync(device)
        dist.barrier()

    def synced():
        torch.set_num_threads(threads)
        opt.zero_grad(set_to_none=True)
        ddp(data).backward()
        opt.step()

    def unsynced():
        torch.set_num_threads(threads)
        opt.zero_grad(set_to_none=True)
        with ddp.no_sync():
            ddp(data).backward()
        opt.step()

    # Interleaved in one process group: machine load hits the three alike.
    times = interleaved({"one_rank": one_rank, "synced": synced, "no_sync": unsynced}, args.reps, device=device)
    if rank == 0:
        Path(out).write_text(json.dumps(times))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--finetune", default="last_block")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8, help="global batch (pairs)")
    ap.add_argument("--kps", type=int, default=16)
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads in all")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--out", type=Path, default=RESULTS / "ddp.json")
    args = ap.parse_args(argv)
    if args.device == "cuda" and torch.cuda.device_count() < args.devices:
        have = torch.cuda.device_count()
        print(f"bench_ddp: skipped: {args.devices} ranks need {args.devices} GPUs, this host has {have}")
        return 0
    from simsc.engine.distributed import backend_for, launch_local

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "times.json")
        launch_local(_rank, (args, path), args.devices, backend_for(args.device))
        many = json.loads(Path(path).read_text())
    one = many["one_rank"]
    t1, tn, tns = med(one), med(many["synced"]), med(many["no_sync"])
    rows = [
        [f"1 rank x {args.batch} pairs", f"{t1 * 1e3:.0f}", "1.00", "-"],
        [
            f"{args.devices} ranks x {args.batch // args.devices} pairs",
            f"{tn * 1e3:.0f}",
            f"{tn / t1:.2f}",
            f"{max(0.0, 1 - tns / tn):.0%}",
        ],
        [f"{args.devices} ranks, no_sync (no all-reduce)", f"{tns * 1e3:.0f}", f"{tns / t1:.2f}", "-"],
    ]
    print(
        f"{args.backbone} {args.finetune} {args.size} px, global batch {args.batch}, {args.device}, "
        f"{args.threads} thread(s) in all"
    )
    print(table(["step", "ms (median)", "vs 1 rank", "communication share"], rows))
    write_json(
        args.out,
        {
            "machine": machine(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "one_rank_s": one,
            "ranks_synced_s": many["synced"],
            "ranks_no_sync_s": many["no_sync"],
            "ratio_ranks_vs_one": tn / t1,
            "communication_share": max(0.0, 1 - tns / tn),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
