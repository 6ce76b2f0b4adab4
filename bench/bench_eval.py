"""Evaluator throughput: ``simsc.evaluate.evaluate`` (PCK) vs the backbone forward alone, same pairs.

Both sides iterate the same in-memory pairs through the evaluator's own loader
(:func:`simsc.evaluate.pair_loader`, no workers) and run under ``torch.no_grad`` in eval mode.
Baseline: ``backbone(cat([src, trg]))`` per batch. Ours: the full evaluator (features, temperature,
L2 norm, query score maps, kernel soft-argmax, PCK accumulation, report). Interleaved
repetitions, medians; slowdown = evaluator / backbone - 1.

    .venv/bin/python -m bench.bench_eval [--backbones resnet101] [--pairs 32] [--batch 8] [--size 256] [--reps 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import Dataset

from bench._common import RESULTS, interleaved, machine, med, table, write_json
from simsc.evaluate import evaluate, pair_loader
from simsc.model import SimSC


class RandomPairs(Dataset):
    """Random images and keypoints in the record layout of the real datasets."""

    def __init__(self, n: int, size: int, kps: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            k = int(torch.randint(8, kps + 1, (1,), generator=g))
            self.items.append(
                {
                    "src_img": torch.rand(3, size, size, generator=g),
                    "trg_img": torch.rand(3, size, size, generator=g),
                    "src_kps": torch.rand(k, 2, generator=g) * (size - 1),
                    "trg_kps": torch.rand(k, 2, generator=g) * (size - 1),
                    "valid": torch.ones(k, dtype=torch.bool),
                    "threshold": torch.tensor(0.1 * size),
                    "category": "cat",
                    "pair_id": str(i),
                }
            )
        self.resolution = size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def measure(backbone: str, pairs: int, batch: int, size: int, kps: int, reps: int, device: str) -> dict:
    torch.manual_seed(0)
    model = SimSC(backbone, "mlp", pretrained=False).to(device).eval()
    ds = RandomPairs(pairs, size, kps)

    def backbone_only():
        with torch.no_grad():
            for b in pair_loader(ds, batch):
                model.backbone(torch.cat([b["src_img"], b["trg_img"]]).to(device))

    def evaluator():
        evaluate(model, ds, batch_size=batch, device=device)

    t = interleaved({"evaluate": evaluator, "backbone": backbone_only}, reps, 1, device)
    a, b = med(t["evaluate"]), med(t["backbone"])
    return {
        "backbone": backbone,
        "pairs": pairs,
        "batch": batch,
        "size": size,
        "kps_max": kps,
        "device": device,
        "reps": reps,
        "evaluate_s": t["evaluate"],
        "backbone_s": t["backbone"],
        "evaluate_pairs_per_s": pairs / a,
        "backbone_pairs_per_s": pairs / b,
        "slowdown": a / b - 1.0,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="resnet101")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--kps", type=int, default=20, help="max keypoints a pair (8..kps)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=RESULTS / "eval.json")
    args = ap.parse_args(argv)
    rows = [
        measure(b, args.pairs, args.batch, args.size, args.kps, args.reps, args.device)
        for b in args.backbones.split(",")
    ]
    print(
        table(
            ["backbone", "size", "pairs", "batch", "evaluate pairs/s", "backbone pairs/s", "slowdown"],
            [
                [
                    r["backbone"],
                    r["size"],
                    r["pairs"],
                    r["batch"],
                    f"{r['evaluate_pairs_per_s']:.2f}",
                    f"{r['backbone_pairs_per_s']:.2f}",
                    f"{100 * r['slowdown']:+.1f}%",
                ]
                for r in rows
            ],
        )
    )
    write_json(args.out, {"rows": rows, "machine": machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
