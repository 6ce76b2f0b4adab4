"""``simsc match``: draw predicted correspondences between two images (paper Fig. 1)."""

from __future__ import annotations

import argparse
import json
import math

from .. import defaults as D
from ..io import refuse_overwriting_inputs
from . import add_model_source, load_model_from_args, model_files, positive_int, user_errors


def _point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        x = y = math.nan
    if not (math.isfinite(x) and math.isfinite(y)):
        raise argparse.ArgumentTypeError(f"expected x,y as two finite numbers (source pixels), got {text!r}")
    return x, y


HELP = "draw predicted correspondences between two images"
DESCRIPTION = (
    "Predict where points of IMG_A land in IMG_B and draw both images side by side "
    "with a coloured line per correspondence (PNG)."
)
EPILOG = (
    "example:\n  simsc match cat1.jpg cat2.jpg --checkpoint runs/default/checkpoints/best.pt "
    "--points 120,80 200,150 --out match.png\n"
    "  simsc match cat1.jpg cat2.jpg --model models:/simsc-default@champion --out match.png"
    "\n\nWithout --points a GRID x GRID grid of interior "
    "source points is used. Points are x,y in source-image pixels (0-based, pixel centres)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``simsc match``."""
    p.add_argument("img_a", metavar="IMG_A", help="source image")
    p.add_argument("img_b", metavar="IMG_B", help="target image")
    add_model_source(p)
    p.add_argument("--points", nargs="+", type=_point, metavar="X,Y", help="query points on IMG_A")
    p.add_argument("--grid", type=positive_int, default=5, help="grid size when no --points are given (default: 5)")
    p.add_argument(
        "--resolution",
        default=None,
        help="model input size: pixels or original (default: a checkpoint's training resolution, "
        f"its eval.resolution if it sets one; {D.RESOLUTION} for --backbone)",
    )
    p.add_argument("--beta-eval", type=float, default=None, help="soft-argmax temperature (default: the model's)")
    p.add_argument(
        "--height",
        type=positive_int,
        default=None,
        help="scale both images to this height in the picture (pixels, >= 1)",
    )
    p.add_argument("--out", required=True, metavar="PNG", help="output picture")


@user_errors("match")
def run(args: argparse.Namespace) -> int:
    from ..data.records import parse_resolution
    from ..evaluate import checkpoint_resolution
    from ..visualize import save_match_picture

    if args.resolution is not None:
        try:
            parse_resolution(args.resolution)
        except ValueError:
            raise ValueError(
                f"--resolution: expected a positive integer or 'original', got {args.resolution!r}"
            ) from None
    if args.beta_eval is not None and not args.beta_eval > 0:
        raise ValueError(f"--beta-eval must be > 0, got {args.beta_eval}")
    # Before any work: the picture written over one of its images or the checkpoint would replace it.
    refuse_overwriting_inputs(
        [
            ("IMG_A", args.img_a),
            ("IMG_B", args.img_b),
            *model_files(args),
        ],
        [("--out", args.out)],
    )
    model, cfg = load_model_from_args(args)
    if args.resolution is None:
        args.resolution = str(checkpoint_resolution(cfg)) if cfg is not None else str(D.RESOLUTION)
    res = save_match_picture(
        model,
        args.img_a,
        args.img_b,
        args.out,
        points=args.points,
        resolution=args.resolution,
        beta_eval=args.beta_eval,
        grid=args.grid,
        height=args.height,
    )
    for (xa, ya), (xb, yb) in zip(res["points_a"], res["points_b"], strict=True):
        print(json.dumps({"a": [round(xa, 2), round(ya, 2)], "b": [round(xb, 2), round(yb, 2)]}))
    print(f"wrote {args.out} ({res['size'][0]} x {res['size'][1]})")
    return 0
