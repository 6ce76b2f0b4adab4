"""Where each registered backbone's feature cells sit in the image: declared vs measured.

For every backbone of ``simsc.backbones.BACKBONES`` (random weights), measures the receptive-
field centre of cells near the middle of a square and a non-square input
(:func:`simsc.backbones.measure_cell_origin`: the centroid of the squared input gradient of a
cell, minus its grid position ``u * s``) and prints it next to the declared ``cell_origin``
and the old patch-centre mapping. Writes ``experiments/results/cell_centres.md``.

    .venv/bin/python -m experiments.cell_centres
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from simsc.backbones import BACKBONES, build_backbone, measure_cell_origin
from simsc.coords import patch_centre_origin
from simsc.io import atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]


def sizes_for(name: str) -> tuple[tuple[int, int], ...]:
    """The sizes the test uses: ViT-B runs smaller inputs (same geometry, less time)."""
    return ((128, 128), (96, 160)) if BACKBONES[name].kwargs else ((256, 256), (192, 320))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument("--reps", type=int, default=16)
    ap.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "cell_centres.md")
    args = ap.parse_args(argv)
    rows = []
    for name in args.backbones.split(","):
        torch.manual_seed(0)
        bb = build_backbone(name, pretrained=False, finetune="none")
        for size in sizes_for(name):
            t = time.time()
            mx, my = measure_cell_origin(bb, size=size, reps=args.reps, seed=0)
            err = max(abs(mx - bb.cell_origin), abs(my - bb.cell_origin))
            rows.append(
                f"| {name} | {bb.stride} | {size[1]} x {size[0]} | {bb.cell_origin:.1f} | {mx:.2f} | {my:.2f} "
                f"| {err:.2f} | {patch_centre_origin(bb.stride):.1f} | {time.time() - t:.1f} |"
            )
            print(rows[-1], flush=True)
    args_text = "".join(" " + a for a in (argv if argv is not None else sys.argv[1:]))
    text = (
        "\n".join(
            [
                "Cell 0's centre in input pixels (cell u at origin + u * stride): declared per backbone vs measured "
                f"(centroid of the squared input gradient of {args.reps} cells near the middle, "
                "random weights, seed 0).",
                "",
                f"Command: `python -m experiments.cell_centres{args_text}`",
                "",
                "| backbone | stride | input W x H | declared | measured x | measured y | max abs error (px) "
                "| old mapping (patch centre) | s |",
                "|---|---|---|---|---|---|---|---|---|",
                *rows,
            ]
        )
        + "\n"
    )
    atomic_write_bytes(args.out, text.encode("utf-8"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
