"""Cost of the content digests: checkpoint save/load and cache-entry reads.

    .venv/bin/python -m bench.bench_digest [resnet18 resnet101]

For each backbone: a ``last.pt``-like payload (model + Adam state), the time of
``content_digest`` alone, of ``load_checkpoint`` (which verifies it) and of a bare
``torch.load``; then the digest of one cached image at 160 px and at 500 x 375 against
``np.load`` of the same entry. Medians of 5 runs.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from simsc.data.cache import pixel_digest
from simsc.engine.checkpoint import CHECKPOINT_FORMAT, atomic_save, content_digest, load_checkpoint
from simsc.model import SimSC


def median_s(fn, n: int = 5) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(backbones: list[str]) -> None:
    tmp = Path(tempfile.mkdtemp())
    for name in backbones:
        model = SimSC(name, "mlp", pretrained=False, finetune="all")
        opt = torch.optim.Adam(model.parameters())
        # The payload needs Adam state (exp_avg, exp_avg_sq): take one zero-gradient step.
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "kind": "best",
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "config": {},
        }
        path = tmp / f"{name}.pt"
        atomic_save(payload, path)
        mib = path.stat().st_size / 2**20
        t_digest = median_s(lambda payload=payload: content_digest(payload))
        t_load = median_s(lambda path=path: torch.load(path, map_location="cpu", weights_only=True))
        t_verified = median_s(lambda path=path: load_checkpoint(path))
        print(
            f"{name}: checkpoint {mib:.0f} MiB; digest {t_digest * 1e3:.0f} ms "
            f"({mib / t_digest:.0f} MiB/s); torch.load {t_load * 1e3:.0f} ms, load_checkpoint (verified) "
            f"{t_verified * 1e3:.0f} ms: +{(t_verified / t_load - 1) * 100:.0f}%"
        )
    for h, w in ((160, 160), (375, 500)):
        arr = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
        np.save(tmp / "x.npy", arr)
        t_d = median_s(lambda arr=arr: pixel_digest(arr), 50)
        t_l = median_s(lambda: np.load(tmp / "x.npy"), 50)
        print(f"cache entry {w}x{h}: digest {t_d * 1e6:.0f} us, np.load {t_l * 1e6:.0f} us: +{t_d / t_l * 100:.0f}%")


if __name__ == "__main__":
    main(sys.argv[1:] or ["resnet18", "resnet101"])
