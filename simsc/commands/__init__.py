"""``simsc`` subcommands (train, evaluate, match): thin argparse wrappers over the library.

Each module exposes ``add_parser(subparsers)``. User errors (bad config, missing file,
unreadable checkpoint, malformed data) are printed as ``simsc <command>: error: ...``
without a traceback and exit with status 2; a diverged training run exits with 1.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 1


def user_errors(command: str) -> Callable:
    """Decorator for a subcommand's ``func``: turn user errors into a message and exit 2."""

    def wrap(func: Callable[[argparse.Namespace], int | None]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(func)
        def run(args: argparse.Namespace) -> int:
            from ..engine.trainer import TrainingDivergedError

            try:
                return int(func(args) or 0)
            except TrainingDivergedError as exc:
                print(f"simsc {command}: error: {exc}", file=sys.stderr)
                return EXIT_DIVERGED
            except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
                print(f"simsc {command}: error: {exc}", file=sys.stderr)
                return EXIT_USER_ERROR

        return run

    return wrap


def add_model_source(p: argparse.ArgumentParser, required: bool = True):
    """``--checkpoint C`` or ``--backbone NAME [--pretrained [P]]`` (no fine-tuning, fixed:1).
    Returns the mutually exclusive group (a command may add another source to it)."""
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--checkpoint", metavar="PATH", help="a simsc checkpoint (runs/<name>/checkpoints/best.pt)")
    g.add_argument("--backbone", metavar="NAME",
                   help="evaluate a backbone with no fine-tuning (temperature fixed:1, beta_eval 0.02 by default)")
    p.add_argument("--pretrained", nargs="?", const="true", default=None, metavar="P",
                   help="with --backbone: 'true' (timm's default weights, the default when the flag is given "
                        "alone), a timm tag or a local checkpoint path; without the flag the backbone is "
                        "randomly initialised (seeded by --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of a randomly initialised --backbone (default: 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda[:N] (default: auto)")
    return g


def load_model_from_args(args: argparse.Namespace):
    """``(model, config or None)`` from :func:`add_model_source`'s flags."""
    import torch

    from ..engine.checkpoint import load_model
    from ..engine.trainer import resolve_device
    from ..model import SimSC

    device = resolve_device(args.device)
    if args.checkpoint:
        if args.pretrained is not None:
            raise ValueError("--pretrained only applies to --backbone")
        model, cfg, _ = load_model(args.checkpoint)
        return model.to(device).eval(), cfg
    pretrained = args.pretrained
    if pretrained is None or str(pretrained).lower() in ("false", "no", "none"):
        pretrained = False
    elif str(pretrained).lower() in ("true", "yes"):
        pretrained = True
    torch.manual_seed(args.seed)
    model = SimSC(args.backbone, "fixed:1", pretrained=pretrained, finetune="none")
    return model.to(device).eval(), None
