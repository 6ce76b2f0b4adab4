"""One error contract for every command line of the project (``simsc``, ``pipeline.*``).

* exit 0: done;
* exit 1: the work ran but did not succeed: a diverged training run
  (:class:`DivergedError`), a data-parallel run whose rank died (:class:`RunFailedError`), or
  errored sweep trials;
* exit 2: a user error: a bad flag value, a missing / malformed / undecodable file, a disk
  that is read-only or full, a path that is a file where a folder is expected, a device
  that this host lacks. One line ``PROG: error: ...`` on stderr naming what and where;
* exit 3: an internal error (a bug): one line, the traceback with ``--debug``;
* exit 130: interrupted (Ctrl+C).

Tracebacks are printed only with ``--debug``. This module imports nothing heavy, so the
pipeline entry points reuse it without pulling in torch before they need it.
"""

from __future__ import annotations

import argparse
import errno
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

EXIT_OK = 0
EXIT_DIVERGED = 1
EXIT_USER_ERROR = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


class UserError(ValueError):
    """A mistake the user can fix (the message says what and where); exit status 2."""


class RunFailedError(RuntimeError):
    """The work ran and did not succeed (a rank of a data-parallel run died); exit status 1."""


class DivergedError(RunFailedError):
    """The work ran and failed on its own terms (a non-finite loss); exit status 1."""


def _oserror_text(exc: OSError) -> str:
    # str(OSError) reads "[Errno 30] Read-only file system: 'x'"; say it plainly and keep
    # both paths of a rename.
    reason = exc.strerror or str(exc) or type(exc).__name__
    paths = [p for p in (exc.filename, getattr(exc, "filename2", None)) if p is not None]
    hint = {
        errno.EROFS: "the file system is read-only; choose a writable folder",
        errno.ENOSPC: "the disk is full; free space or choose another folder",
        errno.EDQUOT: "the disk quota is exceeded; free space or choose another folder",
        errno.ENOTDIR: "a path component is a file, not a folder",
        errno.EISDIR: "expected a file, found a folder",
        errno.EEXIST: "it is in the way; move it or choose another path",
        errno.EACCES: "permission denied; check the owner and mode",
    }.get(exc.errno or -1)
    where = " -> ".join(str(p) for p in paths)
    text = f"{where}: {reason}" if where else reason
    return f"{text} ({hint})" if hint else text


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message, for a one-line reason; ``default`` (else the
    exception's type name) when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else (default or type(exc).__name__)


def describe_user_error(exc: BaseException, extra: tuple[type[BaseException], ...] = ()) -> str | None:
    """The one-line message of a user error, or ``None`` when ``exc`` is not one (a bug)."""
    if isinstance(exc, UnicodeDecodeError):
        # Reached only where a reader did not name its file; say what was wrong at least.
        return (
            f"a file is not valid UTF-8 text (byte {exc.start}: {exc.reason}); "
            "rerun with --debug to see which reader failed"
        )
    if isinstance(exc, OSError):
        return _oserror_text(exc)
    if isinstance(exc, (ValueError, UserError) + tuple(extra)):
        return _without_worker_traceback(exc, str(exc)) or type(exc).__name__
    if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch
        return f"out of memory: {first_line(exc, 'out of memory')} (use a smaller --resolution or --batch-size)"
    return None


def _without_worker_traceback(exc: BaseException, text: str) -> str:
    """A DataLoader worker's error reaches the main process as ``Caught X in DataLoader worker
    process N. Original Traceback ...`` with the worker's whole traceback: keep X's own message."""
    import re

    if "Original Traceback (most recent call last):" not in text:
        return text
    name = re.escape(type(exc).__name__)
    found = list(re.finditer(rf"^(?:[\w.]+\.)?{name}: ", text, flags=re.M))
    return text[found[-1].end() :].strip() if found else text


def one_line(text: object) -> str:
    """Messages carry advice on several lines; the contract is one line on stderr."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def run_main(
    prog: str,
    body: Callable[[], int | None],
    *,
    debug: bool = False,
    user_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Run a command's body under the contract above and return its exit status."""
    try:
        return int(body() or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RunFailedError as exc:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_DIVERGED
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the contract: nothing escapes as a traceback
        if debug:
            traceback.print_exc()
        message = describe_user_error(exc, user_errors)
        if message is not None:
            print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
            return EXIT_USER_ERROR
        print(
            f"{prog}: internal error: {type(exc).__name__}: {one_line(exc)} "
            "(a bug; rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` with the contract's one-line error (``PROG: error: ...``, exit 2)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


def add_debug_flag(parser: argparse.ArgumentParser, *, sub: bool = False) -> None:
    """``--debug``: print the traceback of an error. On subparsers it must not reset a
    ``--debug`` given before the subcommand, hence ``SUPPRESS``."""
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS if sub else False,
        help="print the traceback of an error (for bug reports)",
    )
