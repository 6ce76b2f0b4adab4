"""Up-front memory estimates for sizes a user chooses (an input resolution, a grid of query
points, the loss's kernel): a size that cannot fit is refused before any allocation, with
the flag or config key, the estimated need and the limit, instead of an allocator failure
deep inside torch reported as a bug.

The estimates are lower bounds of the dominant buffers, calibrated on CPU; they refuse only
what cannot run, never a size that would fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from . import defaults as D

#: Peak memory of a pair's inference per pixel of the larger input, by backbone: measured on
#: CPU under ``no_grad`` (peak RSS growth of ``SimSC.predict`` on two square random images:
#: resnet18 318, resnet50 and resnet101 501 bytes a pixel at 1000-2000 px), with a small margin. Basic-block
#: ResNets share resnet18's figure; every other backbone gets the bottleneck figure. ViTs are
#: not modelled (their attention grows with the square of the token count).
BYTES_PER_PIXEL = {"resnet18": 330, "resnet34": 330}
DEFAULT_BYTES_PER_PIXEL = 520
#: A query point's score map and its soft-argmax: a few float32 values per feature cell of B.
QUERY_BYTES_PER_CELL = 16
#: The literal Eq. 3 loss (``ce_interpolation: prob``): per keypoint and ground-truth point,
#: four bilinear corners with an int64 index and three float32 values each.
LOSS_BYTES_PER_POINT = 4 * (8 + 3 * 4)


def inference_bytes(backbone: str, sizes: Sequence[tuple[int, int]]) -> int:
    """Estimated peak memory (bytes) of predicting one pair of images of ``sizes`` ``(H, W)``."""
    return max(h * w for h, w in sizes) * BYTES_PER_PIXEL.get(backbone, DEFAULT_BYTES_PER_PIXEL)


def query_bytes(n_points: int, size_b: tuple[int, int], stride: int) -> int:
    """Estimated memory of ``n_points`` query points' score maps over image B of ``size_b``."""
    cells = math.ceil(size_b[0] / stride) * math.ceil(size_b[1] / stride)
    return n_points * cells * QUERY_BYTES_PER_CELL


def available_memory(device: torch.device) -> int | None:
    """Free memory of ``device`` in bytes (``MemAvailable`` on CPU), ``None`` when unknown."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:  # noqa: BLE001 - no estimate is better than a failure here
            return None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_memory(need: int, device: torch.device, what: str, fix: str) -> None:
    """Raise ``ValueError`` (exit 2) when ``need`` bytes exceed the free memory of ``device``:
    ``"<what> needs about N GiB but <device> has M GiB free; <fix>"``. ``what`` names the flag
    or key and its value."""
    free = available_memory(device)
    if free is not None and need > free:
        raise ValueError(f"{what} needs about {gib(need)} of memory but {device} has {gib(free)} free; {fix}")


def check_training_memory(cfg, device: torch.device) -> None:
    """Refuse a training config whose one batch cannot fit: ``data.resolution`` (the images
    through the backbone) and ``model.ns`` (the literal Eq. 3 loss holds ``ns x ns`` points a
    keypoint), each with at least one keypoint a pair."""
    b, m = cfg.data.batch_size, cfg.model
    res = cfg.data.resolution
    images = b * inference_bytes(m.backbone, [(res, res)]) if isinstance(res, int) else 0
    loss = b * m.ns * m.ns * LOSS_BYTES_PER_POINT if m.ce_interpolation == "prob" else 0
    if loss > images:
        what = f"model.ns={m.ns} ({m.ns} x {m.ns} loss points a keypoint, batch of {b})"
        fix = f"use a smaller odd model.ns (default {D.NS})"
    else:
        what = f"data.resolution={res} (batch of {b})"
        fix = "use a smaller data.resolution or data.batch_size"
    check_memory(images + loss, device, what, fix)
