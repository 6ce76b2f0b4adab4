"""Preprocessing cache: decoded, resized images so that training epochs never decode JPEGs.

Layout (one folder per dataset name and resolution)::

    <cache_dir>/<dataset>/<resolution>/<key>.npy    uint8 H x W x 3 at the resolution
    <cache_dir>/<dataset>/<resolution>/<key>.json   {"source", "size", "source_sha256", "resolution",
                                                     "orig_size": [H, W], "shape", "sha256"}
    <cache_dir>/<dataset>/<resolution>/manifest.json  index written by :func:`build_cache`
    <cache_dir>/<dataset>/index/<split>.npz          the checked pairs (:mod:`simsc.data.index`)
    <cache_dir>/<dataset>/.source-digests.json       this machine's digest memo (not an output)

``key`` hashes (cache format version, source path relative to the dataset root, source file
size and SHA-256, resolution): editing or replacing a source file, or asking for another
resolution, gives a new key and so a fresh decode. Nothing in an entry or the manifest depends
on the machine or the time (no absolute path, no mtime), so the same sources give the same
cache bytes in every clone; the source digests are memoised by stat
(:class:`~simsc.data.index.SourceDigests`) so that a hit does not read the source. Entries are written atomically
(temporary file + :func:`os.replace`, ``.npy`` before ``.json``; an entry counts only once its
``.json`` exists), so concurrent DataLoader workers and interrupted runs are safe. The
``.json`` holds the SHA-256 of the pixels; an entry whose pixels do not match it (a flipped
byte, same size) or that is otherwise corrupt is treated as a miss and rewritten. For
``resolution="original"`` the decoded original image is cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from simsc.data import images
from simsc.data.annotations import DatasetFormatError, Resolution, parse_resolution, resolution_tag
from simsc.data.index import DIGESTS_FILE, SourceDigests
from simsc.io import atomic_write, atomic_write_json

# 2: entries carry the SHA-256 of their pixels; 3: keyed by source content, not mtime; no root
CACHE_VERSION = 3
MANIFEST = "manifest.json"
#: A temporary file older than this is a leftover of an interrupted write (removed by
#: build_cache); younger ones may be another process's write in progress.
STALE_TMP_S = 3600.0


def pixel_digest(arr: np.ndarray) -> str:
    """SHA-256 of an image array's bytes (C order)."""
    return hashlib.sha256(np.ascontiguousarray(arr).data.cast("B")).hexdigest()


class CachedImages:
    """Image source backed by the on-disk cache; decodes (and stores) on a miss.

    ``hits`` / ``misses`` count accesses in this process (each DataLoader worker has its own).
    """

    def __init__(
        self,
        cache_dir: str | Path,
        dataset_name: str,
        root: str | Path,
        resolution: Resolution | str,
        writable: bool = True,
    ) -> None:
        self.root = Path(root)
        #: False for a cache folder this process cannot write: hits are read, misses decoded
        #: and not stored.
        self.writable = writable
        self.resolution = parse_resolution(resolution)
        self.dir = Path(cache_dir) / dataset_name / resolution_tag(self.resolution)
        self.dataset_name = dataset_name
        self.digests = SourceDigests(self.dir.parent / DIGESTS_FILE)
        self.hits = 0
        self.misses = 0

    def _source(self, relpath: str) -> tuple[int, str]:
        """``(size, SHA-256)`` of the source file (memoised by stat: a hit does not read it)."""
        try:
            return self.digests.digest(self.root / relpath)
        except FileNotFoundError:
            raise DatasetFormatError(f"{self.root / relpath}: image file not found; expected an image file") from None

    def key(self, relpath: str, source: tuple[int, str] | None = None) -> str:
        """Cache key of the current content of ``relpath`` at this resolution."""
        size, sha = source or self._source(relpath)
        ident = f"v{CACHE_VERSION}|{Path(relpath).as_posix()}|{size}|{sha}|{self.resolution}"
        return hashlib.sha256(ident.encode()).hexdigest()[:32]

    def _read(self, key: str) -> tuple[np.ndarray, tuple[int, int]] | None:
        meta_path = self.dir / f"{key}.json"
        try:
            meta = json.loads(meta_path.read_text())
            arr = np.load(self.dir / f"{key}.npy", allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError, json.JSONDecodeError):
            return None  # corrupt entry: rebuilt by the caller
        if not isinstance(meta, dict):
            return None  # not an entry of ours (a list, a number): rebuilt by the caller
        try:
            orig = tuple(int(v) for v in meta.get("orig_size", ()))
        except (TypeError, ValueError):
            return None
        if arr.dtype != np.uint8 or arr.ndim != 3 or list(arr.shape) != meta.get("shape") or len(orig) != 2:
            return None
        if meta.get("sha256") != pixel_digest(arr):
            return None  # corrupted in place (same size): decoded again by the caller
        return arr, orig

    def get(self, relpath: str) -> tuple[np.ndarray, tuple[int, int]]:
        """``(uint8 image at the resolution, original (H, W))``, from the cache when possible."""
        source = self._source(relpath)
        key = self.key(relpath, source)
        hit = self._read(key)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        arr, orig = images.decode_resized(self.root / relpath, self.resolution)
        if self.writable:
            self._write(key, relpath, source, arr, orig)
        return arr, orig

    def _write(self, key: str, relpath: str, source: tuple[int, str], arr: np.ndarray, orig: tuple[int, int]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.dir / f"{key}.npy", lambda f: np.save(f, arr, allow_pickle=False))
        meta = {
            "source": Path(relpath).as_posix(),
            "size": source[0],
            "source_sha256": source[1],
            "resolution": self.resolution,
            "orig_size": list(orig),
            "shape": list(arr.shape),
            "sha256": pixel_digest(arr),
        }
        atomic_write_json(self.dir / f"{key}.json", meta)

    def entries(self) -> Iterable[tuple[str, dict]]:
        """``(key, meta)`` of every complete entry in this folder."""
        if not self.dir.is_dir():
            return
        for p in sorted(self.dir.glob("*.json")):
            if p.name == MANIFEST:
                continue
            try:
                meta = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(meta, dict):
                yield p.stem, meta


def build_cache(
    dataset: Any,
    show_progress: bool = True,
    num_workers: int | None = None,
    prune: bool = True,
) -> dict[str, Any]:
    """Fill the cache of ``dataset`` (which must have been built with ``cache_dir``).

    Decodes each image of the split once (threads; Pillow and torch release the GIL),
    removes superseded entries of the same source files (``prune``; entries of other splits
    sharing the folder are left alone), and writes ``manifest.json``. This is the
    "preprocess" stage. Returns ``{"dir", "images", "hits", "written", "pruned"}``.
    """
    from ..progress import track

    if getattr(dataset, "cache_dir", None) is None:
        raise ValueError("build_cache: the dataset was built without cache_dir; pass cache_dir=... to it")
    cache = dataset.images
    if not isinstance(cache, CachedImages):
        raise ValueError(f"build_cache: expected the dataset's image source to be CachedImages, got {type(cache)}")
    paths = dataset.image_paths()
    workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
    h0, m0 = cache.hits, cache.misses
    desc = f"cache {cache.dataset_name}/{resolution_tag(cache.resolution)}"
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        # The threads share one CachedImages; its counters are plain ints, so count from results.
        # a bar on a terminal, a plain line every 20 s in a log (no carriage returns)
        results = list(
            track(
                pool.map(lambda p: _fill_one(cache, p), paths),
                "auto" if show_progress else "off",
                desc,
                len(paths),
                unit="image",
            )
        )
    cache.digests.save()  # the next stage's hits then read no source file
    hits = sum(1 for _, hit in results if hit)
    cache.hits, cache.misses = h0 + hits, m0 + len(results) - hits
    current = {p: key for (key, _), p in zip(results, paths, strict=True)}
    pruned = 0
    if prune:
        for key, meta in list(cache.entries()):
            src = meta.get("source")
            if src in current and current[src] != key:
                for ext in (".npy", ".json"):
                    try:
                        (cache.dir / f"{key}{ext}").unlink()
                    except FileNotFoundError:
                        pass
                pruned += 1
        # Leftovers of interrupted writes; a young one may be another process's write in progress.
        now = time.time()
        for tmp in cache.dir.glob(".*.tmp"):
            try:
                if now - tmp.stat().st_mtime > STALE_TMP_S:
                    tmp.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
    _write_manifest(cache, current)
    return {"dir": str(cache.dir), "images": len(paths), "hits": hits, "written": len(paths) - hits, "pruned": pruned}


def _fill_one(cache: CachedImages, relpath: str) -> tuple[str, bool]:
    source = cache._source(relpath)
    key = cache.key(relpath, source)
    if cache._read(key) is not None:
        return key, True
    arr, orig = images.decode_resized(cache.root / relpath, cache.resolution)
    cache._write(key, relpath, source, arr, orig)
    return key, False


def _write_manifest(cache: CachedImages, current: dict[str, str]) -> None:
    path = cache.dir / MANIFEST
    cache.dir.mkdir(parents=True, exist_ok=True)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        manifest = {}
    if not isinstance(manifest, dict) or manifest.get("version") != CACHE_VERSION:
        manifest = {}  # another version, or not a manifest of ours: rebuilt from this run
    entries = manifest.get("entries", {})
    if not isinstance(entries, dict):
        entries = {}
    entries.update(current)
    # Keep only entries whose files still exist (pruning may have removed older keys).
    entries = {s: k for s, k in sorted(entries.items()) if (cache.dir / f"{k}.json").exists()}
    manifest = {
        "version": CACHE_VERSION,
        "dataset": cache.dataset_name,
        "resolution": cache.resolution,
        "entries": entries,
    }
    atomic_write_json(path, manifest, indent=1)
