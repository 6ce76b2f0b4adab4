"""Shared helpers of the bench/ scripts: synthetic batches, interleaved A/B timing, machine info.

Every ratio the scripts print comes from *interleaved* repetitions in one process (A, B, A, B, ...)
and medians, so that load from other processes on a shared machine hits both sides alike.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def make_batch(
    batch: int, size: int | tuple[int, int], kps: int, device="cpu", seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random pair batch (the keys :meth:`simsc.model.SimSC.loss` reads); keypoints inside the images."""
    h, w = (size, size) if isinstance(size, int) else size
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([w - 1, h - 1], dtype=torch.float32)
    data = {
        "src_img": torch.rand(batch, 3, h, w, generator=g),
        "trg_img": torch.rand(batch, 3, h, w, generator=g),
        "src_kps": torch.rand(batch, kps, 2, generator=g) * scale,
        "trg_kps": torch.rand(batch, kps, 2, generator=g) * scale,
        "valid": torch.ones(batch, kps, dtype=torch.bool),
        "threshold": torch.full((batch,), float(max(h, w)) * 0.1),
    }
    return {k: v.to(device) for k, v in data.items()}


def interleaved(
    fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1, device="cpu"
) -> dict[str, list[float]]:
    """Time each callable ``reps`` times, alternating between them (order rotated every round)."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
            sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            sync(device)
            t0 = time.perf_counter()
            fns[n]()
            sync(device)
            times[n].append(time.perf_counter() - t0)
    return times


def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def machine() -> dict:
    info = {
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_json(path: Path | str, result: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    result.setdefault("machine", machine())
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
