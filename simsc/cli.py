"""The ``simsc`` command line: thin wrappers over the library, one subcommand a job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .errors import ArgumentParser, add_debug_flag, run_main

# Each subcommand module (named as its command) declares HELP, DESCRIPTION and EPILOG,
# ``add_arguments(parser)`` and ``run(args) -> exit status``; the list is the single place
# where commands are registered.
_COMMANDS: list[str] = [
    "simsc.commands.download",
    "simsc.commands.train",
    "simsc.commands.evaluate",
    "simsc.commands.match",
]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="simsc",
        description="SimSC semantic correspondence: data, training, evaluation and matching.",
        epilog="exit status: 0 done, 1 training diverged, 2 user error (one line naming the file or flag), "
        "3 internal error; --debug prints tracebacks",
    )
    add_debug_flag(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    import importlib

    for mod_name in _COMMANDS:
        command = importlib.import_module(mod_name)
        p = sub.add_parser(
            mod_name.rsplit(".", 1)[1],
            help=command.HELP,
            description=command.DESCRIPTION,
            epilog=command.EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,  # epilogs are example lines
        )
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    for choice in sub.choices.values():
        add_debug_flag(choice, sub=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``simsc``; returns the exit status of :mod:`simsc.errors`' contract."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int | None] = args.func
    return run_main(f"simsc {args.command}", lambda: func(args), debug=bool(getattr(args, "debug", False)))


if __name__ == "__main__":
    sys.exit(main())
