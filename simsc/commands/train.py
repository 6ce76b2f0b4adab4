"""``simsc train``: train a model from a YAML config."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import add_overrides_flag, user_errors

if TYPE_CHECKING:
    from ..config import Config

EPILOG = """\
examples:
  simsc train --config params.yaml                   # the default run (its engine sections)
  simsc train --config params.yaml --set train.max_steps=100 --set model.temperature=single \\
      --out runs/single
  simsc train --config params.yaml --config configs/overlays/toy.yaml --out runs/toy
  simsc train --config params.yaml --out runs/default --resume   # continue after a crash
  simsc train --config params.yaml --set train.devices=2 --out runs/ddp   # data parallel, 2 processes

Configs compose in order over the schema's defaults (simsc/defaults.py, simsc/config.py); a
file's defaults: list is read before it; --set comes last. Sections other than model, data,
train and eval (params.yaml's pipeline sections) are ignored, with a note.

The run folder (--out, or train.out_dir) receives config.yaml, metrics.jsonl (one JSON record per
step and per validation), checkpoints/last.pt (every epoch, and every train.checkpoint_every_steps
steps), checkpoints/best.pt (best validation PCK) and summary.json. The folder is locked while a
run trains in it (.simsc-run.lock names the holder); a folder with outputs of an earlier run is
refused unless --resume continues it or --overwrite replaces it. Exit status: 0 done,
1 training diverged (non-finite loss; the last good checkpoint is kept), 2 user error (one line
naming the file, key or flag), 3 internal error; --debug prints tracebacks.
"""


HELP = "train a SimSC model from a YAML config"
DESCRIPTION = "Train a SimSC model (backbone + temperature module) as a YAML config describes."


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``simsc train``."""
    p.add_argument(
        "--config",
        metavar="YAML",
        action="append",
        default=[],
        help="config file (sections model, data, train, eval), e.g. params.yaml; repeatable: "
        "later files override earlier ones; without it the schema's defaults are used",
    )
    add_overrides_flag(p, "override a config value, e.g. --set train.lr_backbone=1e-3 (repeatable; values are YAML)")
    p.add_argument("--out", metavar="DIR", help="run folder (overrides train.out_dir)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from DIR/checkpoints/last.pt if it exists (exactly where it stopped)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the outputs of an earlier run in DIR (without it such a folder is refused "
        "unless --resume can continue it)",
    )
    p.add_argument(
        "--quiet",
        "--no-progress",
        dest="quiet",
        action="store_true",
        help="no progress output (sets train.progress=off; the default, auto, draws a bar on a terminal "
        "and prints a plain line every train.progress_every_s seconds otherwise)",
    )


def train_config(files: Sequence[str], overrides: Sequence[str], out: str | None = None) -> tuple[Config, list[str]]:
    """The run's configuration as ``simsc train`` composes it (:func:`simsc.config.compose`) and
    the top-level sections of ``files`` it leaves to the pipeline."""
    from ..config import compose, read_configs

    data, ignored = read_configs(files)
    # --out is a path as typed: not a --set value, which YAML would read (1e3 -> 1000.0, 010 -> 8).
    return compose(base=data, overrides=overrides, out_dir=out), ignored


@user_errors("train")
def run(args: argparse.Namespace) -> int:
    from ..engine.runtime import resolve_device
    from ..engine.trainer import train

    overrides = list(args.overrides)
    if args.quiet:
        overrides.append("train.progress=off")
    cfg, ignored = train_config(args.config, overrides, args.out)
    if ignored:
        print(
            f"simsc train: ignoring sections {', '.join(ignored)} of {', '.join(args.config)} "
            "(not engine config: model, data, train, eval)",
            file=sys.stderr,
        )
    _refuse_overwriting_inputs(args, cfg)
    resolve_device(cfg.train.device, "train.device")  # up front: before any model or data is built
    print(f"simsc train: run folder {cfg.train.out_dir}", file=sys.stderr)
    summary = train(cfg, resume=args.resume, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0


def _refuse_overwriting_inputs(args: argparse.Namespace, cfg) -> None:
    """A fresh run writes its outputs over whatever is there: refuse, before any work, a
    ``--config`` or a ``model.pretrained`` checkpoint that is one of them (e.g. ``--config
    runs/a/config.yaml --out runs/a --overwrite``). A resumed run continues the same run, so
    its own ``config.yaml`` is a fine input."""
    from pathlib import Path

    from ..engine.run_folder import RUN_OUTPUTS
    from ..io import refuse_overwriting_inputs
    from . import local_file

    out_dir = Path(cfg.train.out_dir)
    if args.resume and (out_dir / "checkpoints" / "last.pt").is_file():
        return
    pretrained = cfg.model.pretrained if isinstance(cfg.model.pretrained, str) else None
    inputs = [("--config", path) for path in args.config] + [("model.pretrained", local_file(pretrained))]
    refuse_overwriting_inputs(inputs, [("the run folder's", out_dir / name) for name in RUN_OUTPUTS.values()])
