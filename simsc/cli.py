"""The ``simsc`` command line: thin wrappers over the library, one subcommand a job."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

# Each subcommand module exposes ``add_parser(subparsers) -> None`` and sets
# ``func`` on its parser; the list is the single place where commands are registered.
_COMMANDS: list[str] = [
    "simsc.data.download",
    "simsc.commands.train",
    "simsc.commands.evaluate",
    "simsc.commands.match",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simsc",
        description="SimSC semantic correspondence: data, training, evaluation and matching.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    import importlib

    for mod_name in _COMMANDS:
        importlib.import_module(mod_name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int | None] = args.func
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
