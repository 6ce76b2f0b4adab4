"""``simsc`` subcommands (train, evaluate, match): thin argparse wrappers over the library.

Each module declares its parser (``HELP``, ``DESCRIPTION``, ``EPILOG``, ``add_arguments``)
and ``run(args)`` for :mod:`simsc.cli`. Errors follow :mod:`simsc.errors`: user
errors (bad config or flag, missing / malformed file, read-only or full disk, missing
device) are printed as one line ``simsc <command>: error: ...`` and exit with status 2; a
diverged training run exits with 1; tracebacks only with ``--debug``.
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable

from .. import defaults as D
from ..errors import EXIT_DIVERGED, EXIT_USER_ERROR, run_main  # noqa: F401 - re-exported


def user_errors(command: str) -> Callable:
    """Decorator for a subcommand's ``func``: the error contract of :mod:`simsc.errors`
    also when the function is called directly (tests), not through :func:`simsc.cli.main`."""

    def wrap(func: Callable[[argparse.Namespace], int | None]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(func)
        def run(args: argparse.Namespace) -> int:
            return run_main(f"simsc {command}", lambda: func(args), debug=bool(getattr(args, "debug", False)))

        return run

    return wrap


def positive_int(text: str) -> int:
    """argparse ``type=`` for an integer >= 1 (argparse prefixes the error with the flag)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def add_overrides_flag(p: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``: dotted config overrides whose
    values are YAML, applied after the config files (:func:`simsc.config.compose`)."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_model_source(p: argparse.ArgumentParser) -> None:
    """One of ``--checkpoint C``, ``--model URI`` (a registered model) or ``--backbone NAME
    [--pretrained [P]]`` (no fine-tuning, fixed:1), and the ``--seed``/``--device`` they use."""
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint", metavar="PATH", help="a simsc checkpoint (runs/<name>/checkpoints/best.pt)")
    g.add_argument(
        "--model",
        metavar="URI",
        help="a registered model (models:/<name>/<version>, models:/<name>@champion, "
        "runs:/<id>/model): its checkpoint is downloaded by the resolver of the URI's "
        "scheme (MLflow's comes with the pipeline extra)",
    )
    g.add_argument(
        "--backbone",
        metavar="NAME",
        help="evaluate a backbone with no fine-tuning (temperature fixed:1, beta_eval 0.02 by default)",
    )
    p.add_argument(
        "--pretrained",
        nargs="?",
        const="true",
        default=None,
        metavar="P",
        help="with --backbone: 'true' (timm's default weights, the default when the flag is given "
        "alone), a timm tag or a local checkpoint path; without the flag the backbone is "
        "randomly initialised (seeded by --seed)",
    )
    p.add_argument(
        "--seed", type=int, default=D.SEED, help=f"seed of a randomly initialised --backbone (default: {D.SEED})"
    )
    p.add_argument("--device", default=D.DEVICE, help=f"auto (CUDA if available), cpu, cuda[:N] (default: {D.DEVICE})")


def fetch_registered(uri: str) -> str:
    """Download the checkpoint of a registered model through the resolver its URI scheme
    names (:mod:`simsc.model_uri`: the pipeline package provides MLflow's)."""
    from ..model_uri import NoResolverError, resolve

    try:
        return str(resolve(uri))
    except NoResolverError as exc:
        raise ValueError(f"--model {uri}: {exc}") from None
    except FileNotFoundError:
        raise
    except ValueError as exc:
        if str(exc).startswith(uri):  # the resolver's own message, naming the URI already
            raise ValueError(f"--model {exc}") from None
        raise ValueError(f"--model {uri}: cannot fetch the model: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the registry's errors: unknown model, server down
        raise ValueError(f"--model {uri}: cannot fetch the model: {type(exc).__name__}: {exc}") from None


def local_file(path: str | None) -> str | None:
    """``path`` when it names an existing file (a ``--pretrained`` that is a checkpoint, not a
    timm tag or true/false), else ``None``."""
    return path if path and os.path.isfile(path) else None


def model_files(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """The local files :func:`add_model_source`'s flags read, as ``(flag, path)`` for
    :func:`simsc.io.refuse_overwriting_inputs` (an output must not replace them)."""
    return [("--checkpoint", args.checkpoint), ("--pretrained", local_file(args.pretrained))]


def load_model_from_args(args: argparse.Namespace):
    """``(model, config or None)`` from :func:`add_model_source`'s flags (a ``--model`` URI is
    fetched first: its checkpoint then loads like ``--checkpoint``)."""
    import torch

    from ..engine.checkpoint import load_model
    from ..engine.runtime import resolve_device
    from ..model import SimSC

    if getattr(args, "model", None):
        args.checkpoint = fetch_registered(args.model)
    device = resolve_device(args.device, "--device")
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
