"""``simsc download <dataset> --root DIR``: the command line of :mod:`simsc.data.download`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..data.download.common import (
    DEFAULT_BACKOFF,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    LOCK_NAME,
    MARKER_NAME,
    DownloadError,
)
from ..data.sources import DATASET_SOURCES, MIRROR_ENV, resolve_url

EPILOG = f"""\
files under DIR:
  <folder>/                  the data set, created atomically (pf-pascal, pf-willow, spair-71k)
  <folder>/{MARKER_NAME}  completion marker: a second run does no network work
  {LOCK_NAME}   {{filename: {{url, sha256, size}}}}; recorded on first download
                             (trust on first use), every later download is verified against it
  .downloads/                in-progress (.part, resumable) and hand-placed downloads

offline: save a file at DIR/.downloads/<filename> and rerun, or serve the files from a
folder and pass --mirror http://host:port/ (or file:///path/) or set ${MIRROR_ENV}.
"""


def _list(names: list[str], root: Path, mirror: str | None) -> None:
    for name in names:
        ds = DATASET_SOURCES[name]
        print(f"{name}: {ds.description}")
        for src in ds.files:
            dest = root / ds.folder / src.dest if src.dest else root / ds.folder
            print(f"  {src.filename:24s} {src.kind:7s} {resolve_url(src, mirror)}")
            print(
                f"  {'':24s} {'':7s} -> {dest}{'/' if src.kind == 'archive' else ''}"
                f"  sha256: {src.sha256 or 'trust on first use'}"
            )


def run(args: argparse.Namespace) -> int:
    from ..errors import run_main

    # A download that cannot be completed is something the user fixes (network, mirror,
    # a file placed by hand), so it exits 2 like every other user error.
    return run_main(
        "simsc download",
        lambda: _download(args),
        debug=bool(getattr(args, "debug", False)),
        user_errors=(DownloadError,),
    )


def _download(args: argparse.Namespace) -> int:
    from ..data.download.install import download_dataset

    names = list(DATASET_SOURCES) if args.dataset == "all" else [args.dataset]
    mirror = args.mirror if args.mirror is not None else (os.environ.get(MIRROR_ENV) or None)
    if args.list:
        _list(names, Path(args.root).expanduser().absolute(), mirror)
        return 0
    if args.retries < 0 or args.backoff < 0 or args.timeout <= 0:
        raise ValueError(
            "--retries and --backoff must be >= 0, --timeout > 0, got "
            f"--retries {args.retries} --backoff {args.backoff} --timeout {args.timeout}"
        )
    root = Path(args.root).expanduser()
    if root.exists() and not root.is_dir():
        raise ValueError(f"--root {root}: is a file; expected a folder (it is created if missing)")
    for name in names:
        path = download_dataset(
            name,
            args.root,
            mirror=mirror,
            retries=args.retries,
            backoff=args.backoff,
            timeout=args.timeout,
            progress=not args.no_progress,
            keep_archives=args.keep_archives,
        )
        print(path)
    return 0


HELP = "download, verify (SHA-256) and install a data set"
DESCRIPTION = (
    "Download, verify and install PF-Pascal, PF-Willow or SPair-71k under --root.\n"
    "Downloads resume after an interruption and are retried with backoff; every file\n"
    "is checked against the SHA-256 in the lock file; archives are extracted safely\n"
    "and atomically. Running it again once installed does nothing."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``simsc download``."""
    p.add_argument("dataset", choices=[*DATASET_SOURCES, "all"], help="data set to install")
    p.add_argument("--root", default="data", metavar="DIR", help="data root (default: %(default)s)")
    p.add_argument(
        "--mirror",
        default=None,
        metavar="URL",
        help=f"fetch every file as URL/<filename> instead of the official URL (default: ${MIRROR_ENV} when set)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        metavar="N",
        help="retries of a failed request that made no progress (default: %(default)s)",
    )
    p.add_argument(
        "--backoff",
        type=float,
        default=DEFAULT_BACKOFF,
        metavar="SECONDS",
        help="first retry delay, doubled after each failure (default: %(default)s)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="socket timeout (default: %(default)s)",
    )
    p.add_argument(
        "--keep-archives", action="store_true", help="keep the downloaded files in DIR/.downloads after installing"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--list", action="store_true", help="print each file's URL and destination, download nothing")
