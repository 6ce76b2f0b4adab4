"""What the parts of the downloader share: constants, errors, SHA-256 of files, the lock file."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

LOCK_NAME = "simsc-download.lock.json"
DOWNLOADS_DIR = ".downloads"
MARKER_NAME = ".simsc-complete.json"
TMP_PREFIX = ".tmp-extract-"

DEFAULT_RETRIES = 5
DEFAULT_BACKOFF = 1.0  # seconds; the n-th consecutive failure waits backoff * 2**(n-1)
DEFAULT_TIMEOUT = 60.0  # seconds without data before a connection counts as failed
MAX_DELAY = 60.0
CHUNK = 1 << 20
USER_AGENT = "simsc-download/0.1 (python-urllib)"

Log = Callable[[str], None]


class DownloadError(RuntimeError):
    """A data set could not be fetched, verified or installed. The message says what to do."""

    def __init__(self, message: str, *, url: str | None = None, path: Path | None = None):
        super().__init__(message)
        self.url = url
        self.path = path


class ChecksumError(DownloadError):
    """A file's SHA-256 differs from the known or recorded one (the file has been deleted)."""

    def __init__(
        self, message: str, *, url: str | None = None, path: Path | None = None, expected: str = "", actual: str = ""
    ):
        super().__init__(message, url=url, path=path)
        self.expected = expected
        self.actual = actual


class UnsafeArchiveError(DownloadError):
    """An archive member would land outside its folder, or is a link or a device."""


class _Transient(Exception):
    """One attempt failed in a way worth retrying."""


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- hashing, lock


def sha256_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """``(hex digest, size in bytes)`` of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def read_lock(root: str | os.PathLike[str]) -> dict[str, dict]:
    """The lock file of ``root`` as ``{filename: {url, sha256, size}}`` (empty when absent)."""
    path = Path(root) / LOCK_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DownloadError(
            f"{path} is not valid JSON ({exc}); fix it or delete it (deleting it forgets the recorded checksums)",
            path=path,
        ) from None
    if not isinstance(data, dict):
        raise DownloadError(f"{path}: expected a JSON object {{filename: {{url, sha256, size}}}}", path=path)
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def _checksum_message(name: str, url: str | None, expected: str, actual: str, source: str) -> str:
    where = f" (from {url})" if url else ""
    return (
        f"SHA-256 mismatch for {name}{where}: expected {expected} ({source}), got {actual}. "
        "The file has been deleted and nothing was extracted. If the upstream file legitimately "
        "changed, remove its entry from the lock file and run again."
    )
