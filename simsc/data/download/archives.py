"""Archive extraction with member checks (no absolute paths, ``..``, links or devices) and a
size budget (the data set's known size and the free disk space)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import IO

from simsc.io import current_umask

from .common import CHUNK, TMP_PREFIX, DownloadError, UnsafeArchiveError

_DRIVE = re.compile(r"^[A-Za-z]:")


def _member_dest(name: str, target: Path, archive: Path) -> Path | None:
    """Where member ``name`` goes under ``target``; refuses anything that would escape it."""

    def refuse(why: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(
            f"refusing to extract {archive.name}: member {name!r} {why}; nothing was extracted", path=archive
        )

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


def _write_member(src, dest: Path, executable: bool, budget: _Budget) -> None:
    if dest.is_dir() and not dest.is_symlink():
        raise DownloadError(f"archive member {dest.name!r} clashes with a folder of the same name", path=dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        # Counted as written, not as declared: headers can lie about sizes.
        while chunk := src.read(CHUNK):
            budget.take(len(chunk))
            out.write(chunk)
    os.chmod(dest, (0o777 if executable else 0o666) & ~current_umask())


def _place_member(
    dest: Path | None, is_dir: bool, open_src: Callable[[], IO[bytes]], executable: bool, budget: _Budget
) -> int:
    """Put one checked archive member at ``dest`` (None: the target folder itself, skipped): a
    folder is made, a file is written from ``open_src()``. Returns the number of files written."""
    if dest is None:
        return 0
    if is_dir:
        dest.mkdir(parents=True, exist_ok=True)
        return 0
    with open_src() as src:
        _write_member(src, dest, executable, budget)
    return 1


def _tar_file(tf: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    src = tf.extractfile(member)
    assert src is not None  # a regular file: the caller checked
    return src


def _extract_zip(archive: Path, target: Path, budget: _Budget) -> int:
    n = 0
    with zipfile.ZipFile(archive) as zf:
        declared = sum(info.file_size for info in zf.infolist())
        if declared > budget.left:
            raise DownloadError(
                f"refusing to extract {archive.name}: its members declare {declared} bytes, more than "
                f"{budget.left} ({budget.why}); nothing was extracted",
                path=archive,
            )
        for info in zf.infolist():
            dest = _member_dest(info.filename, target, archive)
            mode = info.external_attr >> 16
            ftype = stat.S_IFMT(mode)
            if info.create_system == 3 and ftype and ftype not in (stat.S_IFREG, stat.S_IFDIR):
                kind = "a symlink" if ftype == stat.S_IFLNK else "a special file"
                raise UnsafeArchiveError(
                    f"refusing to extract {archive.name}: member {info.filename!r} is {kind}; nothing was extracted",
                    path=archive,
                )
            # zf.open checks the CRC at the end
            n += _place_member(dest, info.is_dir(), partial(zf.open, info), bool(mode & 0o111), budget)
    return n


def _extract_tar(archive: Path, target: Path, budget: _Budget) -> int:
    n = 0
    with tarfile.open(archive, "r:*") as tf:
        for member in tf:
            dest = _member_dest(member.name, target, archive)
            if member.issym() or member.islnk():
                raise UnsafeArchiveError(
                    f"refusing to extract {archive.name}: member {member.name!r} is a "
                    f"{'symlink' if member.issym() else 'hard link'} (to {member.linkname!r}); "
                    "nothing was extracted",
                    path=archive,
                )
            if not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(
                    f"refusing to extract {archive.name}: member {member.name!r} is a "
                    "device, FIFO or other special file; nothing was extracted",
                    path=archive,
                )
            n += _place_member(dest, member.isdir(), partial(_tar_file, tf, member), bool(member.mode & 0o111), budget)
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
        raise DownloadError(
            f"{archive.name} is truncated or corrupt ({type(exc).__name__}: {exc}); it was not installed", path=archive
        ) from None


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
                "an archive bomb or the wrong file; nothing was extracted",
                path=self.archive,
            )


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
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DownloadError(
            f"cannot extract {archive.name}: the archive is corrupt or truncated, or the "
            f"disk refused it ({type(exc).__name__}: {exc}); nothing was extracted",
            path=archive,
        ) from None


def _make_tmp_dir(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700; it becomes the final folder
    return tmp


def extract_archive(
    archive: str | os.PathLike[str],
    target_dir: str | os.PathLike[str],
    *,
    tmp_parent: str | os.PathLike[str] | None = None,
    max_bytes: int | None = None,
) -> Path:
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
