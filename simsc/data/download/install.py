"""A data set's files -> its installed folder: fetch each, verify against the lock file,
extract / copy into a temporary folder, mark it complete and move it into place atomically."""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from simsc.io import atomic_write_json, current_umask

from ..sources import MIRROR_ENV, Dataset, SourceFile, get_dataset, resolve_url
from .archives import _extract_into, _make_tmp_dir, _member_dest, check_archive
from .common import (
    DEFAULT_BACKOFF,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    DOWNLOADS_DIR,
    LOCK_NAME,
    MARKER_NAME,
    ChecksumError,
    DownloadError,
    Log,
    _checksum_message,
    _stderr,
    read_lock,
    sha256_file,
)
from .http_fetch import fetch

#: The most a pair-list file (CSV) may be: the real ones are under 1 MB.
MAX_LIST_BYTES = 64 << 20


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
            f"{src.sha256}; remove the entry from the lock file if the known digest is right",
            path=None,
        )
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
                "move it away or delete it, then run again",
                path=final,
            )
        return False
    try:
        installed = json.loads(marker.read_text(encoding="utf-8")).get("files", {})
    except (json.JSONDecodeError, AttributeError, OSError) as exc:
        raise DownloadError(f"{marker} is unreadable ({exc}); delete {final} and run again", path=final) from None
    added = False
    for src in ds.files:
        got = installed.get(src.filename)
        if not isinstance(got, dict) or "sha256" not in got:
            raise DownloadError(
                f"{final} was installed without {src.filename} (an older file list); "
                f"delete {final} and run again to reinstall",
                path=final,
            )
        expected, source = _expected_digest(src, lock)
        if expected and got["sha256"] != expected:
            raise DownloadError(
                f"{final} was installed from a {src.filename} with SHA-256 {got['sha256']}, but {expected} is "
                f"{source}; delete {final} and run again to reinstall",
                path=final,
            )
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
                    raise ChecksumError(
                        _checksum_message(src.filename, None, expected, digest, source),
                        path=path,
                        expected=expected,
                        actual=digest,
                    )
                log(f"{src.filename}: using {path} (no download)")
                origin = url if src.filename not in lock else lock[src.filename].get("url", url)
            else:
                log(f"{src.filename}: downloading {url}")
                res = fetch(
                    url,
                    path,
                    expected_sha256=expected,
                    checksum_source=source,
                    retries=retries,
                    backoff=backoff,
                    timeout=timeout,
                    progress=progress,
                    hint=_manual_hint(ds, src, root),
                    log=log,
                    verify=check_archive if src.kind == "archive" else None,
                    # an archive is at most what it expands to; a pair list is a few MB
                    max_bytes=ds.max_bytes if src.kind == "archive" else MAX_LIST_BYTES,
                )
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
                    "(an unexpected archive layout); nothing was installed",
                    path=final,
                )
            files = {src.filename: dict(new_entries.get(src.filename) or lock[src.filename]) for src, _ in obtained}
            atomic_write_json(
                tmp / MARKER_NAME,
                {
                    "dataset": ds.name,
                    "installed": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                    "files": files,
                },
                indent=2,
                sort_keys=True,
            )
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
