"""Fast-path options on vs off: channels_last, bf16 autocast, torch.compile, loader workers.

One process, interleaved repetitions, medians; every variant gets its own copy of the same
model (same weights) and the same inputs.

* train step (``model.loss`` + backward, ``finetune='last_block'``): fp32 (baseline),
  ``channels_last``, bf16 autocast (``torch.autocast(device, dtype=torch.bfloat16)`` around the
  forward and loss; backward outside), both; ``--compile`` adds ``torch.compile(model.backbone)``
  (slow to compile on CPU: off by default);
* evaluator forward (``score_maps`` + kernel soft-argmax under ``no_grad``): the same variants;
* loader (cached SPair-layout set): workers 0 vs 2, ``persistent_workers`` on/off, ``pin_memory``
  (only meaningful with CUDA), whole epochs including worker start-up.

    .venv/bin/python -m bench.bench_options [--backbone resnet50] [--size 256] [--batch 8] [--reps 3] [--compile]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bench._common import RESULTS, interleaved, machine, make_batch, med, table, write_json
from simsc.evaluate import localise, score_maps
from simsc.model import SimSC


def variants(model: SimSC, device: str, compile_: bool) -> dict[str, tuple[SimSC, bool, bool]]:
    out = {"fp32": (model, False, False)}
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    out["channels_last"] = (cl, True, False)
    out["bf16 autocast"] = (copy.deepcopy(model), False, True)
    out["channels_last+bf16"] = (copy.deepcopy(cl), True, True)
    if compile_:
        m = copy.deepcopy(model)
        m.backbone = torch.compile(m.backbone)
        out["compile"] = (m, False, False)
    return out


def autocast(device: str, on: bool):
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if on else contextlib.nullcontext()


def bench_model(args) -> tuple[list[dict], list[dict]]:
    torch.manual_seed(0)
    base = SimSC(args.backbone, "mlp", pretrained=False, finetune="last_block").to(args.device)
    data = make_batch(args.batch, args.size, args.kps, args.device)
    vs = variants(base, args.device, args.compile)

    def inputs(cl):
        if not cl:
            return data
        return {k: (v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v) for k, v in data.items()}

    def train_fn(m, cl, bf):
        d = inputs(cl)

        def f():
            m.train()
            m.zero_grad(set_to_none=True)
            with autocast(args.device, bf):
                loss = m.loss(d)["loss"]
            loss.backward()
            return float(loss.detach())

        return f

    def eval_fn(m, cl, bf):
        d = inputs(cl)

        def f():
            m.eval()
            with torch.no_grad(), autocast(args.device, bf):
                out = score_maps(m, d)
                return localise(m, out["scores"].float(), 1.0)

        return f

    train_t = interleaved({n: train_fn(*v) for n, v in vs.items()}, args.reps, 1, args.device)
    eval_t = interleaved({n: eval_fn(*v) for n, v in vs.items()}, args.reps, 1, args.device)
    # Accuracy of the variants: loss and predictions vs fp32.
    ref_loss = train_fn(*vs["fp32"])()
    ref_pred = eval_fn(*vs["fp32"])()
    rows_t, rows_e = [], []
    for n, v in vs.items():
        loss = train_fn(*v)()
        pred = eval_fn(*v)()
        rows_t.append(
            {
                "variant": n,
                "median_s": med(train_t[n]),
                "times_s": train_t[n],
                "speedup": med(train_t["fp32"]) / med(train_t[n]),
                "loss": loss,
                "loss_fp32": ref_loss,
            }
        )
        rows_e.append(
            {
                "variant": n,
                "median_s": med(eval_t[n]),
                "times_s": eval_t[n],
                "speedup": med(eval_t["fp32"]) / med(eval_t[n]),
                "max_pred_diff_px": float((pred.float() - ref_pred.float()).abs().max()),
            }
        )
    return rows_t, rows_e


def bench_loader_options(args) -> list[dict]:
    from simsc.data.cache import build_cache
    from simsc.data.records import collate_pairs
    from simsc.data.spair import SPairDataset
    from tests.data_fixtures import make_spair_synthetic

    configs = {
        "workers=0": dict(num_workers=0),
        "workers=2": dict(num_workers=2),
        "workers=2 persistent": dict(num_workers=2, persistent_workers=True),
        "workers=2 pin_memory": dict(num_workers=2, pin_memory=torch.cuda.is_available()),
    }
    times: dict[str, list[float]] = {k: [] for k in configs}
    with tempfile.TemporaryDirectory(prefix="bench_opts_") as tmp:
        root = make_spair_synthetic(Path(tmp) / "spair", n_images=32, n_pairs=args.loader_pairs)
        ds = SPairDataset(root, "trn", str(args.size), cache_dir=Path(tmp) / "cache")
        build_cache(ds, show_progress=False)
        loaders = {
            k: DataLoader(ds, batch_size=args.batch, collate_fn=collate_pairs, **kw) for k, kw in configs.items()
        }
        for ld in loaders.values():  # warm the page cache once
            for _ in ld:
                pass
            break
        for _ in range(args.reps):
            for k, ld in loaders.items():
                t0 = time.perf_counter()
                for _ in range(2):  # two epochs: persistent workers start once, others twice
                    for _ in ld:
                        pass
                times[k].append(time.perf_counter() - t0)
    n = 2 * len(ds)
    base = statistics.median(times["workers=0"])
    return [
        {"variant": k, "pairs_per_s": n / statistics.median(v), "times_s": v, "speedup": base / statistics.median(v)}
        for k, v in times.items()
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--kps", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also torch.compile the backbone (slow on CPU)")
    ap.add_argument("--no-loader", action="store_true")
    ap.add_argument("--loader-pairs", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=RESULTS / "options.json")
    args = ap.parse_args(argv)
    rows_t, rows_e = bench_model(args)
    print(f"{args.backbone}, {args.size}x{args.size}, batch {args.batch} pairs, device {args.device}")
    print("train step (loss + backward):")
    print(
        table(
            ["variant", "s/step", "speedup", "loss", "loss fp32"],
            [
                [
                    r["variant"],
                    f"{r['median_s']:.3f}",
                    f"{r['speedup']:.2f}x",
                    f"{r['loss']:.4f}",
                    f"{r['loss_fp32']:.4f}",
                ]
                for r in rows_t
            ],
        )
    )
    print("evaluator forward (score maps + soft-argmax):")
    print(
        table(
            ["variant", "s/batch", "speedup", "max |pred - fp32| px"],
            [
                [r["variant"], f"{r['median_s']:.3f}", f"{r['speedup']:.2f}x", f"{r['max_pred_diff_px']:.2f}"]
                for r in rows_e
            ],
        )
    )
    rows_l = [] if args.no_loader else bench_loader_options(args)
    if rows_l:
        print("loader (cache, 2 epochs incl. worker start-up):")
        print(
            table(
                ["variant", "pairs/s", "speedup"],
                [[r["variant"], f"{r['pairs_per_s']:.1f}", f"{r['speedup']:.2f}x"] for r in rows_l],
            )
        )
    write_json(
        args.out,
        {
            "backbone": args.backbone,
            "size": args.size,
            "batch": args.batch,
            "device": args.device,
            "train_step": rows_t,
            "evaluator": rows_e,
            "loader": rows_l,
            "machine": machine(),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
