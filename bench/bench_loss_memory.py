"""Peak memory of the loss: query score maps (what SimSC trains with) vs the full 4D correlation.

Both variants start from the same random, L2-normalised feature maps ``feat_a, feat_b``
``[B, C, h, w]`` (leaf tensors with ``requires_grad``) and the same Gaussian targets, and run
forward + backward of the cross-entropy:

* ``query``: :func:`simsc.matching.query_score_maps` -> ``[B, N, h_B, w_B]`` (SimSC);
* ``full4d``: :func:`simsc.matching.full_correlation` ``[B, h_A w_A, h_B w_B]``, then the query
  rows gathered with the same bilinear weights (border clamp) -> the same scores -> CE.

Each variant runs in a fresh subprocess. CPU: peak RSS (``ru_maxrss``) during the loss minus the
RSS after the setup (features built in place, targets, one small warm-up pass of the same code
so that lazily loaded kernels are not counted; glibc told to mmap blocks >= 128 KiB so that RSS
follows the live tensors). CUDA: ``torch.cuda.max_memory_allocated`` minus the
allocation after setup. Both losses are checked to agree.

    .venv/bin/python -m bench.bench_loss_memory [--batch 8] [--kps 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench._common import REPO, RESULTS, machine, table, write_json
from simsc.loss import cross_entropy, gaussian_target
from simsc.matching import full_correlation, query_score_maps

# (label, image H, image W, stride, channels): ResNet layer3 (stride 16, C=1024), ViT-B/8 (stride 8, C=768)
CASES = [
    ("256", 256, 256, 16, 1024),
    ("256", 256, 256, 8, 768),
    ("original 500x375", 375, 500, 16, 1024),
    ("original 500x375", 375, 500, 8, 768),
]


def full4d_scores(feat_a: torch.Tensor, feat_b: torch.Tensor, uv_a: torch.Tensor) -> torch.Tensor:
    """Rows of the full correlation at sub-cell ``uv_a``, bilinearly interpolated (border clamp)."""
    b, _, h, w = feat_a.shape
    corr = full_correlation(feat_a, feat_b)  # [B, hA*wA, hB*wB]
    x = uv_a[..., 0].clamp(0, w - 1)
    y = uv_a[..., 1].clamp(0, h - 1)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    out = 0
    for yy, xx, wt in (
        (y0, x0, (1 - fx) * (1 - fy)),
        (y0, x1, fx * (1 - fy)),
        (y1, x0, (1 - fx) * fy),
        (y1, x1, fx * fy),
    ):
        idx = (yy * w + xx).unsqueeze(-1).expand(-1, -1, corr.shape[-1])
        out = out + corr.gather(1, idx) * wt.unsqueeze(-1)
    return out.view(b, -1, *feat_b.shape[-2:])


def _feature_map(batch, c, h, w, g, device):
    """A random L2-normalised map built in place (no full-size temporaries: the setup peak is its end state)."""
    f = torch.empty(batch, c, h, w).normal_(generator=g)
    f.div_(f.norm(dim=1, keepdim=True).clamp_min(1e-6))
    return f.to(device).requires_grad_(True)


def _rss_now() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def _inputs(batch, c, h, w, kps, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    fa = _feature_map(batch, c, h, w, g, device)
    fb = _feature_map(batch, c, h, w, g, device)
    scale = torch.tensor([w - 1, h - 1], dtype=torch.float32)
    uv_a = (torch.rand(batch, kps, 2, generator=g) * scale).to(device)
    uv_b = (torch.rand(batch, kps, 2, generator=g) * scale).to(device)
    target = gaussian_target(uv_b, (h, w))
    valid = torch.ones(batch, kps, dtype=torch.bool, device=device)
    return fa, fb, uv_a, target, valid


def _loss(variant, fa, fb, uv_a, target, valid):
    scores = query_score_maps(fa, fb, uv_a) if variant == "query" else full4d_scores(fa, fb, uv_a)
    loss = cross_entropy(scores, target, valid)
    loss.backward()
    return float(loss.detach())


def child(variant: str, batch: int, c: int, h: int, w: int, kps: int, device: str) -> dict:
    """One measurement (run in a fresh process)."""
    torch.manual_seed(0)
    small = _inputs(1, c, 4, 4, 2, device, seed=1)
    _loss(variant, *small)  # warm-up: loads the kernels' code pages
    del small
    fa, fb, uv_a, target, valid = _inputs(batch, c, h, w, kps, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    # Current (not peak) RSS after the setup; big blocks are mmapped and unmapped on free
    # (MALLOC_MMAP_THRESHOLD_, set by the parent), so RSS follows the live tensors.
    base_rss = _rss_now()
    setup_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    t0 = time.perf_counter()
    loss = _loss(variant, fa, fb, uv_a, target, valid)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        how = "cuda max_memory_allocated delta"
    else:
        max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if max_rss <= setup_peak:
            raise RuntimeError("the loss did not raise the peak RSS above the setup's: measurement invalid")
        peak = max_rss - base_rss
        how = "peak RSS (ru_maxrss) minus RSS after setup"
    grad_bytes = sum(t.grad.numel() * t.grad.element_size() for t in (fa, fb))
    return {
        "variant": variant,
        "peak_bytes": int(peak),
        "how": how,
        "loss": loss,
        "seconds": time.perf_counter() - t0,
        "feature_bytes": 2 * fa.numel() * fa.element_size(),
        "feature_grad_bytes": grad_bytes,
        "loss_own_bytes": max(int(peak) - grad_bytes, 0),
    }


def run_child(variant, batch, c, h, w, kps, device) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "bench.bench_loss_memory",
        "--child",
        variant,
        str(batch),
        str(c),
        str(h),
        str(w),
        str(kps),
        device,
    ]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def mib(x: float) -> str:
    return f"{x / 2**20:.1f}"


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        v, b, c, h, w, k, dev = sys.argv[2:9]
        print(json.dumps(child(v, int(b), int(c), int(h), int(w), int(k), dev)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8, help="pairs")
    ap.add_argument("--kps", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=RESULTS / "loss_memory.json")
    args = ap.parse_args(argv)
    rows = []
    for label, ih, iw, stride, c in CASES:
        h, w = math.ceil(ih / stride), math.ceil(iw / stride)
        q = run_child("query", args.batch, c, h, w, args.kps, args.device)
        f = run_child("full4d", args.batch, c, h, w, args.kps, args.device)
        if not math.isclose(q["loss"], f["loss"], rel_tol=1e-3):
            raise SystemExit(f"losses differ: query {q['loss']} vs full4d {f['loss']}")
        rows.append(
            {
                "resolution": label,
                "stride": stride,
                "channels": c,
                "feat_hw": [h, w],
                "batch_pairs": args.batch,
                "kps": args.kps,
                "query": q,
                "full4d": f,
                "query_scores_bytes": args.batch * args.kps * h * w * 4,
                "corr_bytes": args.batch * (h * w) ** 2 * 4,
                "ratio_incl_feature_grads": f["peak_bytes"] / max(q["peak_bytes"], 1),
                "ratio": f["loss_own_bytes"] / max(q["loss_own_bytes"], 1),
            }
        )
    print(
        f"peak memory of loss forward+backward above the features ({rows[0]['query']['how']}), "
        f"batch {args.batch} pairs, {args.kps} keypoints, device {args.device}"
    )
    print(
        table(
            [
                "resolution",
                "stride",
                "C",
                "h x w",
                "feat grads MiB",
                "query peak",
                "full-4D peak",
                "ratio",
                "query own",
                "full-4D own",
                "own ratio",
                "4D corr tensor MiB",
            ],
            [
                [
                    r["resolution"],
                    r["stride"],
                    r["channels"],
                    f"{r['feat_hw'][0]}x{r['feat_hw'][1]}",
                    mib(r["query"]["feature_grad_bytes"]),
                    mib(r["query"]["peak_bytes"]),
                    mib(r["full4d"]["peak_bytes"]),
                    f"{r['ratio_incl_feature_grads']:.1f}x",
                    mib(r["query"]["loss_own_bytes"]),
                    mib(r["full4d"]["loss_own_bytes"]),
                    f"{r['ratio']:.1f}x",
                    mib(r["corr_bytes"]),
                ]
                for r in rows
            ],
        )
    )
    print(
        "peak: RSS/allocation delta of forward+backward (includes the two feature-gradient tensors every loss "
        "produces); own: peak minus those gradients (MiB)"
    )
    write_json(args.out, {"rows": rows, "machine": machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
