"""GPU fast path: train-step time and host syncs with/without
batched record reads, bf16 / fp16 autocast and torch.compile, through the real trainer step.

Variants (each its own :class:`~simsc.engine.trainer.Trainer`, same seed and batch):

- ``before``: the loss with its value checks (``check=True``) and the records read after every
  step: what a step did before the sync-free step;
- ``fast``: no checks on the device, records read every ``--log-every`` steps (the default);
- ``bf16``, ``fp16``: ``fast`` under ``train.amp``; ``compile``, ``compile+bf16``: with
  ``train.compile: true`` (inductor; compile time reported apart, not in the step time).

Step times come from interleaved rounds (A, B, C, ... rotated) of ``--steps`` steps, each
round ending with a read of the records and a device sync; medians over ``--reps`` rounds,
ratios against ``fast``. Syncs a step: on CUDA the warnings of
``torch.cuda.set_sync_debug_mode("warn")`` over one round (every synchronising CUDA call),
on the CPU the host reads inside the step (tests/sync_guard.py; Adam's host-side step
counters excluded) plus one per read of the records.

    python -m bench.bench_gpu_fastpath --device cuda [--backbone resnet101] [--size 256]
    python -m bench.bench_gpu_fastpath --device cpu --backbone resnet18 --size 64 --batch 2 --steps 2 --reps 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

from bench._common import RESULTS, machine, make_batch, med, sync, table, write_json
from simsc.engine import Trainer, TrainState
from simsc.engine.toy import ToyTranslationPairs
from simsc.progress import Progress

VARIANTS = {
    "before": {"log_every_steps": 1},
    "fast": {},
    "bf16": {"amp": "bf16"},
    "fp16": {"amp": "fp16"},
    "compile": {"compile": True},
    "compile+bf16": {"compile": True, "amp": "bf16"},
}


def build(variant: str, args, out_dir: Path) -> Trainer:
    train = {
        "device": args.device,
        "out_dir": str(out_dir / variant),
        "progress": "off",
        "log_every_steps": args.log_every,
        **VARIANTS[variant],
    }
    cfg = {
        "model": {"backbone": args.backbone, "pretrained": False, "finetune": "last_block", "temperature": "mlp"},
        "data": {"batch_size": args.batch, "resolution": args.size},
        "train": train,
    }
    toy = ToyTranslationPairs(args.batch, args.size, seed=0)
    tr = Trainer(cfg, train_dataset=toy, val_dataset=toy)
    tr._build()
    tr.state = TrainState()
    tr.folder.start_log(None)  # the step records go to the run folder's metrics.jsonl, as in training
    tr.progress = Progress("off", "bench", None)
    tr._last_flush = time.monotonic()
    if variant == "before":
        model = tr.model
        tr._loss_fn = lambda batch: model.loss(batch, check=True)
    return tr


def run_steps(tr: Trainer, batch: dict, n: int) -> None:
    for _ in range(n):
        tr._pending.append(tr._train_step(batch, 0))
        if len(tr._pending) >= tr.log_every:
            tr._flush()


def end_round(tr: Trainer, device: str) -> None:
    tr._flush()
    sync(device)


def count_syncs(tr: Trainer, batch: dict, n: int, device: str) -> float:
    """Synchronising calls a step, over ``n`` steps and the read that ends them."""
    if torch.device(device).type == "cuda":
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                run_steps(tr, batch, n)
                tr._flush()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchronizing" in str(w.message).lower() for w in caught) / n
    # On the CPU every tensor is a host tensor: count the reads inside the steps, plus one per
    # read of the pending records (the transfer that is a sync on a GPU).
    from tests.sync_guard import count_host_reads, optimizer_host_tensors

    total = 0
    for _ in range(n):
        with count_host_reads(allow=optimizer_host_tensors(tr.optimizer)) as reads:
            tr._pending.append(tr._train_step(batch, 0))
        total += sum(reads.values())
        if len(tr._pending) >= tr.log_every:
            tr._flush()
            total += 1
    total += bool(tr._pending)
    tr._flush()
    return total / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backbone", default="resnet101")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--kps", type=int, default=16)
    ap.add_argument("--steps", type=int, default=25, help="steps a timed round")
    ap.add_argument("--reps", type=int, default=5, help="timed rounds a variant")
    ap.add_argument("--log-every", type=int, default=25, help="train.log_every_steps of the fast variants")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu_fastpath.json")
    args = ap.parse_args(argv)
    names = args.variants.split(",")
    batch = make_batch(args.batch, args.size, args.kps, "cpu")
    if torch.device(args.device).type == "cuda":
        batch = {k: v.pin_memory() for k, v in batch.items()}  # as the trainer's loader gives them
    rows, result = [], {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="bench_fastpath_") as tmp:
        trainers, first = {}, {}
        for name in names:
            torch.manual_seed(0)
            tr = build(name, args, Path(tmp))
            t0 = time.perf_counter()
            run_steps(tr, batch, 2)  # warm-up; compiles the compiled variants
            end_round(tr, args.device)
            first[name] = time.perf_counter() - t0
            trainers[name] = tr
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.reps):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                tr = trainers[name]
                end_round(tr, args.device)
                t0 = time.perf_counter()
                run_steps(tr, batch, args.steps)
                end_round(tr, args.device)
                times[name].append((time.perf_counter() - t0) / args.steps)
        base = med(times["fast"]) if "fast" in times else None
        for name in names:
            syncs = count_syncs(trainers[name], batch, args.steps, args.device)
            step = med(times[name])
            result["variants"][name] = {
                "step_s": times[name],
                "median_step_s": step,
                "syncs_per_step": syncs,
                "warmup_s": first[name],
                "vs_fast": step / base if base else None,
            }
            rows.append(
                [
                    name,
                    f"{1000 * step:.1f}",
                    f"{step / base:.2f}" if base else "-",
                    f"{syncs:.2f}",
                    f"{first[name]:.1f}",
                ]
            )
            trainers[name].folder.close()
    print(
        f"{args.backbone} {args.size}x{args.size} batch {args.batch} kps {args.kps} on {args.device}, "
        f"{args.steps} steps x {args.reps} interleaved rounds"
    )
    print(table(["variant", "step ms", "vs fast", "syncs/step", "warm-up s (2 steps)"], rows))
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
