"""Resumable HTTP(S) / ``file://`` fetch of one file with retries and backoff (see the package
docstring for what counts as complete)."""

from __future__ import annotations

import http.client
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .common import (
    CHUNK,
    DEFAULT_BACKOFF,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    MAX_DELAY,
    USER_AGENT,
    ChecksumError,
    DownloadError,
    Log,
    _checksum_message,
    _stderr,
    _Transient,
    sha256_file,
)


@dataclass(frozen=True)
class FetchResult:
    path: Path
    sha256: str
    size: int
    attempts: int


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes START-END/TOTAL`` or ``bytes */TOTAL`` -> ``(START, TOTAL)`` (None when unknown)."""
    if not value:
        return None, None
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value)
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _progress_bar(total: int | None, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        disable=None if enabled else True,
        dynamic_ncols=True,
    )  # None: only on a TTY


def _check_size(url: str, part: Path, size: int, max_bytes: int | None, stated: bool) -> None:
    """Refuse a file larger than ``max_bytes`` (what the data set can hold) or than the free
    disk, before it is read (``stated``: the server's size) or as soon as it grows past them."""
    what = f"states {size} bytes" if stated else f"has sent {size} bytes"
    if max_bytes is not None and size > max_bytes:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"could not download {url}: the server {what}, more than the {max_bytes} bytes this file "
            "can be (a wrong mirror, or a reply that never ends); nothing was installed",
            url=url,
            path=part,
        )
    if stated:
        import shutil

        free = shutil.disk_usage(part.parent).free + (part.stat().st_size if part.exists() else 0)
        if size > free:
            raise DownloadError(
                f"could not download {url}: it is {size} bytes and {part.parent} has {free} bytes free "
                "(the disk is too small); free space or choose another --root",
                url=url,
                path=part,
            )


def _attempt(
    url: str,
    part: Path,
    *,
    timeout: float,
    progress: bool,
    desc: str,
    counter: list[int],
    max_bytes: int | None = None,
) -> bool:
    """One request: append to / rewrite ``part``. Raises _Transient or DownloadError.

    Returns whether the server stated the file's total size (``Content-Length``,
    ``Content-Range``) and ``part`` has exactly that size now. Without a stated size a
    connection closed half-way looks like a complete file."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        code, reason, content_range = exc.code, exc.reason, exc.headers.get("Content-Range")
        exc.close()
        if code == 416 and offset:
            _, total = _parse_content_range(content_range)
            if total == offset:  # the .part was already complete, and the server says so
                return True
            part.unlink(missing_ok=True)
            counter[0] += 1  # a state change, not a failure: restart from zero
            raise _Transient(f"the server refused to resume at byte {offset} (HTTP 416); restarting") from None
        if code >= 500 or code in (408, 429):
            raise _Transient(f"HTTP {code} {reason}") from None
        raise DownloadError(f"could not download {url}: HTTP {code} {reason}", url=url) from None
    except urllib.error.URLError as exc:
        raise _Transient(f"{exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from None
    except ValueError as exc:  # malformed URL, unknown scheme
        raise DownloadError(f"could not download {url}: {exc}", url=url) from None

    with resp:
        status = getattr(resp, "status", None) or 200  # file:// replies have no status
        encoding = (resp.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding != "identity":
            # Asked for identity: compressed bytes are not the file (they would be installed,
            # and their digest recorded as the file's).
            raise DownloadError(
                f"could not download {url}: the server sent it with Content-Encoding: {encoding} although "
                "the file itself was asked for (Accept-Encoding: identity); nothing was installed. Use "
                "another --mirror.",
                url=url,
            )
        length = _int_or_none(resp.headers.get("Content-Length"))
        if status == 206:
            start, total = _parse_content_range(resp.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                counter[0] += 1
                raise _Transient(f"the server resumed at byte {start}, not {offset}; restarting")
            if total is None and length is not None:
                total = offset + length
            mode, initial = "ab", offset
        else:  # 200: the server ignored the Range header (or none was sent): start over
            mode, initial, total = "wb", 0, length
        if total is not None:
            _check_size(url, part, total, max_bytes, stated=True)
        received = 0
        with open(part, mode) as out, _progress_bar(total, initial, desc, progress) as bar:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Transient(
                        f"connection lost after {initial + received} bytes ({type(exc).__name__}: {exc})"
                    ) from None
                if not chunk:
                    break
                if max_bytes is not None and initial + received + len(chunk) > max_bytes:
                    out.close()
                    _check_size(url, part, initial + received + len(chunk), max_bytes, stated=False)
                try:
                    out.write(chunk)
                except OSError as exc:
                    # The disk, not the network: no retry; the partial file goes.
                    out.close()
                    part.unlink(missing_ok=True)
                    raise OSError(exc.errno, exc.strerror, str(part)) from None
                received += len(chunk)
                counter[0] += len(chunk)
                bar.update(len(chunk))
    have = initial + received
    if total is not None and have < total:
        raise _Transient(f"connection closed after {have} of {total} bytes")
    if total is not None and have > total:
        part.unlink(missing_ok=True)
        raise _Transient(f"received {have} bytes, more than the announced {total}; restarting")
    return total is not None


def fetch(
    url: str,
    dest: str | os.PathLike[str],
    *,
    expected_sha256: str | None = None,
    checksum_source: str = "expected",
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    hint: str | None = None,
    log: Log | None = None,
    verify: Callable[[Path], None] | None = None,
    max_bytes: int | None = None,
) -> FetchResult:
    """Download ``url`` to ``dest`` through ``dest + ".part"`` (resumable), with retries.

    ``dest`` appears only once the download is complete and, when ``expected_sha256`` is
    given, verified. Raises :class:`ChecksumError` (the bad download is deleted) or
    :class:`DownloadError` (network failure after ``retries`` retries; the ``.part`` stays
    so that a later call resumes; the message includes ``hint``).

    Completeness must be proven, not assumed: by the size the server states, by
    ``expected_sha256``, or, when the server sends no size, by asking for the bytes past the
    end (``Range``: a 416 reply states the size, a 206 reply delivers the missing rest) and
    else by ``verify(part)`` (an archive integrity check that raises :class:`DownloadError`).
    A file whose completeness cannot be proven is not installed (:class:`DownloadError`).

    ``max_bytes``: the most this file can be; a larger stated size, or a reply that grows past
    it, is refused (so is a stated size beyond the free disk). A failed write (a full disk)
    raises its ``OSError`` naming the ``.part``, which is removed.
    """
    log = log or _stderr
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures = attempts = probes = 0
    while True:
        attempts += 1
        counter = [0]
        try:
            sized = _attempt(
                url, part, timeout=timeout, progress=progress, desc=dest.name, counter=counter, max_bytes=max_bytes
            )
            if sized or expected_sha256:
                break
            if probes == 0 and part.exists():
                # No stated size: a connection closed half-way reads like the end of the file.
                probes += 1
                log(f"{dest.name}: the server sent no size; asking it for the bytes past {part.stat().st_size}")
                continue
            if verify is not None:
                try:
                    verify(part)
                except DownloadError:
                    part.unlink(missing_ok=True)
                    raise
                break
            raise DownloadError(
                f"could not download {url}: the server sent no Content-Length and does not answer range "
                f"requests, so a complete {dest.name} cannot be told from a truncated one (no known SHA-256 "
                f"either); nothing was installed. Use a server or --mirror that sends Content-Length, or place "
                f"the file by hand as {dest}.",
                url=url,
                path=dest,
            )
        except _Transient as exc:
            if counter[0] == 0:  # no progress at all: this one counts
                failures += 1
            if failures > retries:
                if hint is None:
                    hint = (
                        f"To place the file by hand, download {url} on a machine that can reach it "
                        f"and save it as {dest}."
                    )
                raise DownloadError(
                    f"could not download {url}: {exc} (gave up after {attempts} attempt"
                    f"{'s' if attempts != 1 else ''}).\n{hint}",
                    url=url,
                    path=dest,
                ) from None
            delay = min(backoff * 2 ** max(failures - 1, 0), MAX_DELAY)
            log(f"{dest.name}: {exc}; retrying in {delay:.3g} s")
            if delay > 0:
                time.sleep(delay)
    digest, size = sha256_file(part)
    if expected_sha256 and digest != expected_sha256.lower():
        part.unlink(missing_ok=True)
        raise ChecksumError(
            _checksum_message(dest.name, url, expected_sha256.lower(), digest, checksum_source),
            url=url,
            path=dest,
            expected=expected_sha256.lower(),
            actual=digest,
        )
    os.replace(part, dest)
    return FetchResult(dest, digest, size, attempts)
