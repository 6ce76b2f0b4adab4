"""``simsc download <dataset> --root DIR``: fetch, verify and install a data set.

What it does, and what it leaves on disk (``DIR`` is the data root):

* Every file of the data set (see :mod:`simsc.data.sources`) is streamed to
  ``DIR/.downloads/<filename>.part`` (progress bar, chunked writes), then renamed to
  ``DIR/.downloads/<filename>`` once complete and verified. An interrupted download
  resumes with ``Range: bytes=<size of .part>-`` (a 206 reply is appended, a 200 reply
  restarts from zero). A file is complete only when proven: the size the server states, a
  known digest, a range request past the end (servers that send no ``Content-Length``) or,
  for an archive, a full integrity read; otherwise nothing is installed or recorded.
  Connection errors, timeouts, 5xx/408/429 replies and a stream cut
  short of its ``Content-Length`` are retried with exponential backoff, each retry
  resuming from the current ``.part`` size; an attempt that received bytes does not
  count against the retry budget.
* SHA-256: ``DIR/simsc-download.lock.json`` maps ``filename -> {url, sha256, size}``.
  A digest known in ``sources.py`` or recorded in the lock file must match, or the file
  is deleted and a :class:`ChecksumError` names the file and both digests. Otherwise the
  digest is recorded (trust on first use) once the data set is installed.
* The data set folder ``DIR/<folder>`` is built in ``DIR/.tmp-extract-XXXX`` (archives
  extracted with member checks: no absolute paths, no ``..``, no links or devices, at most
  the data set's known size (``Dataset.max_bytes``) and the free disk space; pair lists
  copied), a completion marker ``.simsc-complete.json`` is written into it, and the
  folder is moved into place with one ``os.replace``: it either exists complete or not at
  all. The downloads are then deleted (``keep_archives=True`` keeps them).
* A second run finds the marker and does no network work.
* After a failure: no data set folder and no temporary folder. ``DIR/.downloads/`` keeps
  only what a rerun can use (completed downloads that passed their checks, ``.part``
  files of interrupted downloads); a file that failed its checksum or whose archive
  could not be extracted is deleted; an empty ``.downloads`` is removed. The lock file is
  only written once a data set installs (it also keeps the entries of earlier installs).
* Without network: a file placed by hand at ``DIR/.downloads/<filename>`` is used as is
  (verified against the lock file, or recorded in it).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from simsc.io import atomic_write_json, current_umask

from .sources import DATASET_SOURCES, MIRROR_ENV, Dataset, SourceFile, get_dataset, resolve_url

__all__ = [
    "ChecksumError",
    "DownloadError",
    "FetchResult",
    "LOCK_NAME",
    "UnsafeArchiveError",
    "add_parser",
    "check_archive",
    "download_dataset",
    "extract_archive",
    "fetch",
    "read_lock",
    "sha256_file",
]

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

    def __init__(self, message: str, *, url: str | None = None, path: Path | None = None,
                 expected: str = "", actual: str = ""):
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
        raise DownloadError(f"{path} is not valid JSON ({exc}); fix it or delete it "
                            "(deleting it forgets the recorded checksums)", path=path) from None
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


# ----------------------------------------------------------------------------- fetch


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

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=desc, disable=None if enabled else True, dynamic_ncols=True)  # None: only on a TTY


def _attempt(url: str, part: Path, *, timeout: float, progress: bool, desc: str, counter: list[int]) -> bool:
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
        received = 0
        with open(part, mode) as out, _progress_bar(total, initial, desc, progress) as bar:
            try:
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    counter[0] += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:
                raise _Transient(f"connection lost after {initial + received} bytes "
                                 f"({type(exc).__name__}: {exc})") from None
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
            sized = _attempt(url, part, timeout=timeout, progress=progress, desc=dest.name, counter=counter)
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
                f"the file by hand as {dest}.", url=url, path=dest)
        except _Transient as exc:
            if counter[0] == 0:  # no progress at all: this one counts
                failures += 1
            if failures > retries:
                if hint is None:
                    hint = (f"To place the file by hand, download {url} on a machine that can reach it "
                            f"and save it as {dest}.")
                raise DownloadError(
                    f"could not download {url}: {exc} (gave up after {attempts} attempt"
                    f"{'s' if attempts != 1 else ''}).\n{hint}", url=url, path=dest) from None
            delay = min(backoff * 2 ** max(failures - 1, 0), MAX_DELAY)
            log(f"{dest.name}: {exc}; retrying in {delay:.3g} s")
            if delay > 0:
                time.sleep(delay)
    digest, size = sha256_file(part)
    if expected_sha256 and digest != expected_sha256.lower():
        part.unlink(missing_ok=True)
        raise ChecksumError(_checksum_message(dest.name, url, expected_sha256.lower(), digest, checksum_source),
                            url=url, path=dest, expected=expected_sha256.lower(), actual=digest)
    os.replace(part, dest)
    return FetchResult(dest, digest, size, attempts)


# ----------------------------------------------------------------------------- extraction


_DRIVE = re.compile(r"^[A-Za-z]:")


def _member_dest(name: str, target: Path, archive: Path) -> Path | None:
    """Where member ``name`` goes under ``target``; refuses anything that would escape it."""
    def refuse(why: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"refusing to extract {archive.name}: member {name!r} {why}; "
                                  "nothing was extracted", path=archive)

    if "\x00" in name:
        raise refuse("has a NUL byte in its name")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or _DRIVE.match(norm):
        raise refuse("has an absolute path")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise refuse("has a '..' path component")
    if not parts:
        return None  # "./" itself
    dest = target.joinpath(*parts)
    real_target = os.path.realpath(target)
    if os.path.commonpath([real_target, os.path.realpath(dest)]) != real_target:
        raise refuse("resolves outside the target folder")
    return dest


def _archive_kind(archive: Path) -> str:
    name = archive.name.lower().removesuffix(".part")  # a download is checked before its rename
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")):
        return "tar"
    if zipfile.is_zipfile(archive):
        return "zip"
    return "tar"


def _write_member(src, dest: Path, executable: bool, budget: "_Budget") -> None:
    if dest.is_dir() and not dest.is_symlink():
        raise DownloadError(f"archive member {dest.name!r} clashes with a folder of the same name", path=dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        # Counted as written, not as declared: headers can lie about sizes.
        while chunk := src.read(CHUNK):
            budget.take(len(chunk))
            out.write(chunk)
    os.chmod(dest, (0o777 if executable else 0o666) & ~current_umask())


def _extract_zip(archive: Path, target: Path, budget: "_Budget") -> int:
    n = 0
    with zipfile.ZipFile(archive) as zf:
        declared = sum(info.file_size for info in zf.infolist())
        if declared > budget.left:
            raise DownloadError(
                f"refusing to extract {archive.name}: its members declare {declared} bytes, more than "
                f"{budget.left} ({budget.why}); nothing was extracted", path=archive)
        for info in zf.infolist():
            dest = _member_dest(info.filename, target, archive)
            mode = info.external_attr >> 16
            ftype = stat.S_IFMT(mode)
            if info.create_system == 3 and ftype and ftype not in (stat.S_IFREG, stat.S_IFDIR):
                kind = "a symlink" if ftype == stat.S_IFLNK else "a special file"
                raise UnsafeArchiveError(f"refusing to extract {archive.name}: member {info.filename!r} is "
                                         f"{kind}; nothing was extracted", path=archive)
            if dest is None:
                continue
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            with zf.open(info) as src:  # checks the CRC at the end
                _write_member(src, dest, bool(mode & 0o111), budget)
            n += 1
    return n


def _extract_tar(archive: Path, target: Path, budget: "_Budget") -> int:
    n = 0
    with tarfile.open(archive, "r:*") as tf:
        for member in tf:
            dest = _member_dest(member.name, target, archive)
            if member.issym() or member.islnk():
                raise UnsafeArchiveError(
                    f"refusing to extract {archive.name}: member {member.name!r} is a "
                    f"{'symlink' if member.issym() else 'hard link'} (to {member.linkname!r}); "
                    "nothing was extracted", path=archive)
            if not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(f"refusing to extract {archive.name}: member {member.name!r} is a "
                                         "device, FIFO or other special file; nothing was extracted", path=archive)
            if dest is None:
                continue
            if member.isdir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            src = tf.extractfile(member)
            assert src is not None
            with src:
                _write_member(src, dest, bool(member.mode & 0o111), budget)
            n += 1
    return n


def check_archive(archive: Path) -> None:
    """Read every member of a zip / tar[.gz] to its end (CRC and gzip trailer checked):
    :class:`DownloadError` when the archive is truncated or corrupt."""
    archive = Path(archive)
    try:
        if _archive_kind(archive) == "zip":
            with zipfile.ZipFile(archive) as zf:
                bad = zf.testzip()
            if bad is not None:
                raise DownloadError(f"{archive.name}: member {bad!r} fails its CRC check", path=archive)
            return
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                if member.isfile():
                    src = tf.extractfile(member)
                    if src is not None:
                        with src:
                            while src.read(CHUNK):
                                pass
    except DownloadError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DownloadError(f"{archive.name} is truncated or corrupt ({type(exc).__name__}: {exc}); "
                            "it was not installed", path=archive) from None


class _Budget:
    """Bytes an extraction may still write: the data set's known size and the free disk."""

    def __init__(self, archive: Path, target: Path, max_bytes: int | None) -> None:
        free = shutil.disk_usage(target).free
        # Keep a margin on the disk: a full disk breaks more than this download.
        limits = {"free disk space (less 64 MiB)": max(free - (64 << 20), 0)}
        if max_bytes is not None:
            limits["the data set's known size"] = int(max_bytes)
        self.why, self.left = min(limits.items(), key=lambda kv: kv[1])
        self.limit = self.left
        self.archive = archive

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise DownloadError(
                f"refusing to extract {self.archive.name}: it expands beyond {self.limit} bytes ({self.why}); "
                "an archive bomb or the wrong file; nothing was extracted", path=self.archive)


def _extract_into(archive: Path, target: Path, max_bytes: int | None = None) -> int:
    """Extract every member of ``archive`` under the existing folder ``target``; returns the file count."""
    archive = Path(archive)
    budget = _Budget(archive, target, max_bytes)
    try:
        if _archive_kind(archive) == "zip":
            return _extract_zip(archive, target, budget)
        return _extract_tar(archive, target, budget)
    except DownloadError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError, zlib.error,
            OSError) as exc:
        raise DownloadError(f"cannot extract {archive.name}: the archive is corrupt or truncated, or the "
                            f"disk refused it ({type(exc).__name__}: {exc}); nothing was extracted",
                            path=archive) from None


def _make_tmp_dir(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700; it becomes the final folder
    return tmp


def extract_archive(archive: str | os.PathLike[str], target_dir: str | os.PathLike[str], *,
                    tmp_parent: str | os.PathLike[str] | None = None, max_bytes: int | None = None) -> Path:
    """Extract ``archive`` (zip or tar[.gz]) so that its members appear under ``target_dir``.

    ``target_dir`` must not exist yet. Members are extracted into a temporary folder
    (``tmp_parent``, default the parent of ``target_dir``; same file system) which is then
    renamed to ``target_dir``; on any failure the temporary folder is removed and
    ``target_dir`` does not exist. Refuses (:class:`UnsafeArchiveError`, naming the member)
    absolute paths, ``..`` components, names resolving outside the folder, and links or
    devices, and archives that expand beyond ``max_bytes`` or the free disk space.
    """
    archive, target = Path(archive), Path(target_dir)
    if target.exists():
        raise DownloadError(f"{target} already exists; remove it first", path=target)
    tmp = _make_tmp_dir(Path(tmp_parent) if tmp_parent is not None else target.parent)
    try:
        _extract_into(archive, tmp, max_bytes)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# ----------------------------------------------------------------------------- data sets


def _manual_hint(ds: Dataset, src: SourceFile, root: Path) -> str:
    what = "extracted" if src.kind == "archive" else "copied"
    where = (root / ds.folder / src.dest) if src.dest else (root / ds.folder)
    return (
        f"To install it by hand: download {src.url} on a machine that can reach it (or point --mirror / "
        f"${MIRROR_ENV} at a server or file:// folder that holds {src.filename}), save it as\n"
        f"  {root / DOWNLOADS_DIR / src.filename}\n"
        f"and run `simsc download {ds.name} --root {root}` again: the file is used without network access, "
        f"its SHA-256 is checked against (or, the first time, recorded in) {root / LOCK_NAME}, "
        f"and it is {what} into {where}."
    )


def _expected_digest(src: SourceFile, lock: Mapping[str, dict]) -> tuple[str | None, str]:
    entry = lock.get(src.filename) or {}
    locked = entry.get("sha256")
    if src.sha256 and locked and src.sha256.lower() != str(locked).lower():
        raise DownloadError(
            f"{LOCK_NAME} records SHA-256 {locked} for {src.filename} but simsc/data/sources.py knows "
            f"{src.sha256}; remove the entry from the lock file if the known digest is right", path=None)
    if src.sha256:
        return src.sha256.lower(), "known digest from simsc/data/sources.py"
    if locked:
        return str(locked).lower(), f"recorded in {LOCK_NAME}"
    return None, ""


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _check_installed(ds: Dataset, final: Path, root: Path, lock: dict[str, dict]) -> bool:
    """True when ``final`` holds a complete install consistent with the lock file."""
    marker = final / MARKER_NAME
    if not marker.is_file():
        if final.exists():
            raise DownloadError(
                f"{final} exists but was not completed by `simsc download` (no {MARKER_NAME} inside); "
                "move it away or delete it, then run again", path=final)
        return False
    try:
        installed = json.loads(marker.read_text(encoding="utf-8")).get("files", {})
    except (json.JSONDecodeError, AttributeError, OSError) as exc:
        raise DownloadError(f"{marker} is unreadable ({exc}); delete {final} and run again", path=final) from None
    added = False
    for src in ds.files:
        got = installed.get(src.filename)
        if not isinstance(got, dict) or "sha256" not in got:
            raise DownloadError(f"{final} was installed without {src.filename} (an older file list); "
                                f"delete {final} and run again to reinstall", path=final)
        expected, source = _expected_digest(src, lock)
        if expected and got["sha256"] != expected:
            raise DownloadError(
                f"{final} was installed from a {src.filename} with SHA-256 {got['sha256']}, but {expected} is "
                f"{source}; delete {final} and run again to reinstall", path=final)
        if src.filename not in lock:  # e.g. the lock file was deleted: restore it from the marker
            lock[src.filename] = {k: got[k] for k in ("url", "sha256", "size") if k in got}
            added = True
    if added:
        atomic_write_json(root / LOCK_NAME, lock, indent=2, sort_keys=True)
    return True


def download_dataset(
    name: str,
    root: str | os.PathLike[str],
    *,
    mirror: str | None = None,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    keep_archives: bool = False,
    sources: Mapping[str, Dataset] | None = None,
    log: Log | None = None,
) -> Path:
    """Download, verify and install data set ``name`` under ``root``.

    Returns the folder its loader reads: ``root/<folder>/<loader_root>`` (see
    :mod:`simsc.data.sources`), e.g. ``root/pf-pascal`` or ``root/spair-71k/SPair-71k``.

    ``mirror``: base URL replacing the official ``scheme://host/path/`` of every file
    (default: ``$SIMSC_MIRROR``, else the official URLs). ``sources``: a table replacing
    :data:`simsc.data.sources.DATASET_SOURCES` (tests). ``keep_archives``: keep the downloads in
    ``root/.downloads`` after installing.
    """
    log = log or _stderr
    ds = get_dataset(name, sources)
    root = Path(root).expanduser().absolute()
    if mirror is None:
        mirror = os.environ.get(MIRROR_ENV) or None
    final = root / ds.folder
    lock = read_lock(root)
    if _check_installed(ds, final, root, lock):
        log(f"{ds.name}: everything is up to date in {final}")
        return final / ds.loader_root if ds.loader_root else final

    downloads = root / DOWNLOADS_DIR
    obtained: list[tuple[SourceFile, Path]] = []
    new_entries: dict[str, dict] = {}
    try:
        for src in ds.files:
            url = resolve_url(src, mirror)
            path = downloads / src.filename
            expected, source = _expected_digest(src, lock)
            if path.is_file():
                digest, size = sha256_file(path)
                if expected and digest != expected:
                    path.unlink()
                    raise ChecksumError(_checksum_message(src.filename, None, expected, digest, source),
                                        path=path, expected=expected, actual=digest)
                log(f"{src.filename}: using {path} (no download)")
                origin = url if src.filename not in lock else lock[src.filename].get("url", url)
            else:
                log(f"{src.filename}: downloading {url}")
                res = fetch(url, path, expected_sha256=expected, checksum_source=source, retries=retries,
                            backoff=backoff, timeout=timeout, progress=progress,
                            hint=_manual_hint(ds, src, root), log=log,
                            verify=check_archive if src.kind == "archive" else None)
                digest, size, origin = res.sha256, res.size, url
            if src.filename not in lock or src.sha256:
                new_entries[src.filename] = {"url": origin, "sha256": digest, "size": size}
            obtained.append((src, path))

        tmp = _make_tmp_dir(root)
        try:
            for src, path in obtained:
                dest = tmp / src.dest if src.dest else tmp
                if src.kind == "archive":
                    log(f"{src.filename}: extracting")
                    dest.mkdir(parents=True, exist_ok=True)
                    try:
                        _extract_into(path, dest, ds.max_bytes)
                    except DownloadError:
                        path.unlink(missing_ok=True)  # unusable: a rerun downloads it again
                        raise
                else:
                    _member_dest(src.dest, tmp, path)  # the table itself must not point outside
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, dest)
                    os.chmod(dest, 0o666 & ~current_umask())
            missing = [e for e in ds.expect if not (tmp / e).exists()]
            if missing:
                for src, path in obtained:
                    if src.kind == "archive":
                        path.unlink(missing_ok=True)
                raise DownloadError(
                    f"{ds.name}: after extraction, {', '.join(missing)} is missing under {final.name}/ "
                    "(an unexpected archive layout); nothing was installed", path=final)
            files = {src.filename: dict(new_entries.get(src.filename) or lock[src.filename]) for src, _ in obtained}
            atomic_write_json(tmp / MARKER_NAME, {
                "dataset": ds.name,
                "installed": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "files": files,
            }, indent=2, sort_keys=True)
            if new_entries:
                lock.update(new_entries)
                atomic_write_json(root / LOCK_NAME, lock, indent=2, sort_keys=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if not keep_archives:
            for _, path in obtained:
                path.unlink(missing_ok=True)
    finally:
        _remove_if_empty(downloads)
    log(f"{ds.name}: installed in {final}")
    return final / ds.loader_root if ds.loader_root else final


# ----------------------------------------------------------------------------- command line

_EPILOG = f"""\
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
            print(f"  {'':24s} {'':7s} -> {dest}{'/' if src.kind == 'archive' else ''}"
                  f"  sha256: {src.sha256 or 'trust on first use'}")


def _run(args: argparse.Namespace) -> int:
    from simsc.errors import run_main

    # A download that cannot be completed is something the user fixes (network, mirror,
    # a file placed by hand), so it exits 2 like every other user error.
    return run_main("simsc download", lambda: _download(args), debug=bool(getattr(args, "debug", False)),
                    user_errors=(DownloadError,))


def _download(args: argparse.Namespace) -> int:
    names = list(DATASET_SOURCES) if args.dataset == "all" else [args.dataset]
    mirror = args.mirror if args.mirror is not None else (os.environ.get(MIRROR_ENV) or None)
    if args.list:
        _list(names, Path(args.root).expanduser().absolute(), mirror)
        return 0
    if args.retries < 0 or args.backoff < 0 or args.timeout <= 0:
        raise ValueError("--retries and --backoff must be >= 0, --timeout > 0, got "
                         f"--retries {args.retries} --backoff {args.backoff} --timeout {args.timeout}")
    root = Path(args.root).expanduser()
    if root.exists() and not root.is_dir():
        raise ValueError(f"--root {root}: is a file; expected a folder (it is created if missing)")
    for name in names:
        path = download_dataset(name, args.root, mirror=mirror, retries=args.retries, backoff=args.backoff,
                                timeout=args.timeout, progress=not args.no_progress,
                                keep_archives=args.keep_archives)
        print(path)
    return 0


def add_parser(sub) -> None:
    """Register ``simsc download`` on the ``subparsers`` object of the main parser."""
    p = sub.add_parser(
        "download",
        help="download, verify (SHA-256) and install a data set",
        description="Download, verify and install PF-Pascal, PF-Willow or SPair-71k under --root.\n"
                    "Downloads resume after an interruption and are retried with backoff; every file\n"
                    "is checked against the SHA-256 in the lock file; archives are extracted safely\n"
                    "and atomically. Running it again once installed does nothing.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", choices=[*DATASET_SOURCES, "all"], help="data set to install")
    p.add_argument("--root", default="data", metavar="DIR", help="data root (default: %(default)s)")
    p.add_argument("--mirror", default=None, metavar="URL",
                   help=f"fetch every file as URL/<filename> instead of the official URL "
                        f"(default: ${MIRROR_ENV} when set)")
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES, metavar="N",
                   help="retries of a failed request that made no progress (default: %(default)s)")
    p.add_argument("--backoff", type=float, default=DEFAULT_BACKOFF, metavar="SECONDS",
                   help="first retry delay, doubled after each failure (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="socket timeout (default: %(default)s)")
    p.add_argument("--keep-archives", action="store_true",
                   help="keep the downloaded files in DIR/.downloads after installing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--list", action="store_true",
                   help="print each file's URL and destination, download nothing")
    p.set_defaults(func=_run)
