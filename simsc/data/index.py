"""Pair tables: the checked annotations of a split as flat numpy columns, and their index file.

Parsing an official split (12,234 SPair-71k JSON files for ``test``, 53,340 for ``trn``) costs
seconds; every training run, evaluation and Ray trial used to pay it again. A
:class:`PairTable` holds a split as a few arrays (keypoints of all pairs concatenated, with
``offsets``; strings joined), and :func:`save_index` / :func:`load_index` store it as one
``.npz`` that loads in a fraction of a second::

    <cache_dir>/<dataset>/index/<split>.npz

written atomically (temporary file + rename) by the first loader that parses the split (the
``preprocess`` stage) and read by every later one. The file holds:

* ``meta``: JSON with the format version (:data:`INDEX_VERSION`), the loader, split, root,
  threshold kind and out-of-image tolerance: anything that changes how the files are read;
* ``deps``, ``dep_sizes`` and ``dep_sha256``: every file the parse read (pair list, annotation
  files, images whose header or existence was checked), as a path relative to the dataset root,
  with its size and the SHA-256 of its bytes;
* ``key``: SHA-256 of the three above and of the stored columns. A load recomputes it from
  the files as they are now and from the columns it read; a different key (an edited, added or
  removed file, another format version or option, or an edit of the index itself) means
  *stale*: the split is parsed again and the index rewritten, never silently reused.

A file that is not a readable index (truncated, not a zip, a column missing) raises
:class:`~simsc.data.annotations.DatasetFormatError` naming it.

The index holds nothing of the machine that wrote it (no absolute path, no mtime, zip entries
dated 1980-01-01), so the same sources give the same bytes in any clone at any time: the
``preprocess`` stage's output hash in ``dvc.lock`` does not depend on where or when it ran.
Hashing every source on every load would cost seconds on SPair-71k, so :class:`SourceDigests`
remembers each file's digest in a machine-local file (:data:`DIGESTS_FILE`, ignored by DVC)
together with its size, mtime, ctime and inode; a file whose stat differs is read again.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from collections.abc import Sequence as SequenceABC
from pathlib import Path
from typing import Any

import numpy as np

from simsc.data.annotations import DatasetFormatError, Issue, PairAnnotation, outside_image
from simsc.io import atomic_write, atomic_write_json

#: Bumped whenever the file layout or the parse semantics change: older files are stale.
#: 2: the key covers the stored columns too (an edited column is stale, not data).
#: 3: dependencies by path relative to the root and content digest (not mtime); fixed zip dates.
INDEX_VERSION = 3

#: Name of the machine-local digest memo beside a dataset's cache folders
#: (``<cache_dir>/<dataset>/.source-digests.json``); .dvcignore keeps it out of the output hash.
DIGESTS_FILE = ".source-digests.json"
#: Date of every member of an index file: the current time would make each write differ.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)

_STRINGS = ("pair_id", "category", "src_path", "trg_path", "source")
_ARRAYS = ("row", "flip", "src_size", "trg_size", "trg_bbox", "offsets", "src_kps", "trg_kps", "valid")
_SEP = "\x00"  # never inside a path (inside_root refuses it) nor in a JSON-derived name we store


def _join(strings: Sequence[str], column: str) -> np.ndarray:
    text = _SEP.join(strings)
    if text.count(_SEP) != max(len(strings) - 1, 0):
        raise ValueError(f"pair index: a value of {column!r} contains a NUL character")
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def _split(blob: np.ndarray, n: int) -> list[str]:
    if n == 0:
        return []
    out = blob.tobytes().decode("utf-8").split(_SEP)
    if len(out) != n:
        raise ValueError(f"expected {n} strings, found {len(out)}")
    return out


class PairTable(SequenceABC):
    """The pairs of a split as columns; ``table[i]`` is a :class:`PairAnnotation` (built on
    access, its arrays read-only views). ``None`` fields are stored as ``row = -1``,
    ``size = (-1, -1)``, ``trg_bbox = NaN``."""

    def __init__(self, strings: dict[str, list[str]], arrays: dict[str, np.ndarray]) -> None:
        self.strings = strings
        self.arrays = arrays
        for a in arrays.values():
            a.setflags(write=False)
        self._n = len(arrays["offsets"]) - 1

    @classmethod
    def from_pairs(cls, pairs: Sequence[PairAnnotation]) -> PairTable:
        """Columns of a list of annotations (the loaders' parse output)."""
        n = np.array([len(p.valid) for p in pairs], dtype=np.int64)
        offsets = np.zeros(len(pairs) + 1, dtype=np.int64)
        np.cumsum(n, out=offsets[1:])

        def cat(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
            parts = [np.asarray(getattr(p, name), dtype=dtype).reshape(-1, *shape) for p in pairs]
            return np.concatenate(parts) if parts else np.zeros((0, *shape), dtype)

        def size(s: tuple[int, int] | None) -> tuple[int, int]:
            return (-1, -1) if s is None else (int(s[0]), int(s[1]))

        nan4 = np.full(4, np.nan)
        arrays = {
            "row": np.array([-1 if p.row is None else p.row for p in pairs], dtype=np.int64),
            "flip": np.array([bool(p.flip) for p in pairs], dtype=bool),
            "src_size": np.array([size(p.src_size) for p in pairs], dtype=np.int64).reshape(-1, 2),
            "trg_size": np.array([size(p.trg_size) for p in pairs], dtype=np.int64).reshape(-1, 2),
            "trg_bbox": np.array([nan4 if p.trg_bbox is None else p.trg_bbox for p in pairs], dtype=np.float64).reshape(
                -1, 4
            ),
            "offsets": offsets,
            "src_kps": cat("src_kps", (2,), np.float64),
            "trg_kps": cat("trg_kps", (2,), np.float64),
            "valid": cat("valid", (), bool),
        }
        strings = {name: [getattr(p, name) for p in pairs] for name in _STRINGS}
        return cls(strings, arrays)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int) -> PairAnnotation:  # type: ignore[override]
        if isinstance(index, slice):
            raise TypeError("PairTable does not slice; use take()")
        i = range(self._n)[index]  # negative indices, IndexError
        a, s = self.arrays, self.strings
        lo, hi = int(a["offsets"][i]), int(a["offsets"][i + 1])
        bbox = a["trg_bbox"][i]
        ss, ts = a["src_size"][i], a["trg_size"][i]
        return PairAnnotation(
            pair_id=s["pair_id"][i],
            category=s["category"][i],
            src_path=s["src_path"][i],
            trg_path=s["trg_path"][i],
            src_kps=a["src_kps"][lo:hi],
            trg_kps=a["trg_kps"][lo:hi],
            valid=a["valid"][lo:hi],
            trg_bbox=None if np.isnan(bbox).any() else bbox,
            source=s["source"][i],
            row=None if a["row"][i] < 0 else int(a["row"][i]),
            flip=bool(a["flip"][i]),
            src_size=None if ss[0] < 0 else (int(ss[0]), int(ss[1])),
            trg_size=None if ts[0] < 0 else (int(ts[0]), int(ts[1])),
        )

    def __iter__(self) -> Iterator[PairAnnotation]:
        return (self[i] for i in range(self._n))

    def pair_of_keypoint(self) -> np.ndarray:
        """int64 ``[K]``: the pair each flat keypoint row belongs to."""
        return np.repeat(np.arange(self._n), np.diff(self.arrays["offsets"]))

    def take(self, keep: np.ndarray, valid: np.ndarray | None = None) -> PairTable:
        """The pairs where ``keep`` (bool ``[P]``) holds, with ``valid`` (bool ``[K]``) replacing
        the validity flags if given."""
        a = self.arrays
        valid = a["valid"] if valid is None else valid
        if keep.all():
            return PairTable(self.strings, {**a, "valid": valid})
        kp_keep = keep[self.pair_of_keypoint()]
        n = np.diff(a["offsets"])[keep]
        offsets = np.zeros(len(n) + 1, dtype=np.int64)
        np.cumsum(n, out=offsets[1:])
        arrays = {k: a[k][keep] for k in ("row", "flip", "src_size", "trg_size", "trg_bbox")}
        arrays.update(
            offsets=offsets, src_kps=a["src_kps"][kp_keep], trg_kps=a["trg_kps"][kp_keep], valid=valid[kp_keep]
        )
        idx = np.flatnonzero(keep).tolist()
        strings = {k: [v[i] for i in idx] for k, v in self.strings.items()}
        return PairTable(strings, arrays)

    def image_paths(self) -> list[str]:
        """Unique image paths in first-use order (source, target, next pair ...)."""
        return list(
            dict.fromkeys(
                p for pair in zip(self.strings["src_path"], self.strings["trg_path"], strict=True) for p in pair
            )
        )


def finalize_pairs(table: PairTable, threshold_kind: str) -> tuple[PairTable, list[Issue], list[Issue]]:
    """Mask keypoints outside their image, drop pairs that cannot be scored; vectorised over
    all keypoints of the split. Returns ``(kept pairs, skipped, invalid keypoints)``, the
    issues in pair order (source side before target side)."""
    a, s = table.arrays, table.strings
    offsets = a["offsets"]
    owner = table.pair_of_keypoint()
    valid = a["valid"].copy()
    found: list[tuple[int, int, int, str]] = []
    for side_no, (side, kps, sizes, paths) in enumerate(
        (("source", a["src_kps"], a["src_size"], s["src_path"]), ("target", a["trg_kps"], a["trg_size"], s["trg_path"]))
    ):
        h, w = sizes[owner, 0], sizes[owner, 1]  # per keypoint: the rule broadcasts
        bad = outside_image(kps, (h, w)) & (h >= 0) & valid  # h < 0: no declared size to check
        for k in np.flatnonzero(bad).tolist():
            i = int(owner[k])
            msg = (
                f"{side} keypoint {k - int(offsets[i])} {kps[k].tolist()} is outside the "
                f"{int(w[k])}x{int(h[k])} image {paths[i]}; marked invalid"
            )
            found.append((i, side_no, k, msg))
        valid &= ~bad
    found.sort()
    row = a["row"]

    def issue(i: int, message: str) -> Issue:
        return Issue(s["source"][i], None if row[i] < 0 else int(row[i]), message)

    invalid = [issue(i, msg) for i, _, _, msg in found]
    keep = np.bincount(owner, weights=valid, minlength=len(table)) > 0
    skips = [(i, f"pair {s['pair_id'][i]} has no valid keypoint; skipped") for i in np.flatnonzero(~keep).tolist()]
    if threshold_kind == "kps":
        trg = a["trg_kps"]
        for i in np.flatnonzero(keep).tolist():
            v = trg[offsets[i] : offsets[i + 1]][valid[offsets[i] : offsets[i + 1]]]
            if float(np.ptp(v, axis=0).max()) <= 0:
                keep[i] = False
                skips.append(
                    (
                        i,
                        f"pair {s['pair_id'][i]}: valid target keypoints span 0 pixels, so "
                        "theta_kps = 0 and PCK is undefined; skipped",
                    )
                )
        skips.sort(key=lambda t: t[0])  # pair order, as the per-pair loop this replaces reported them
    skipped = [issue(i, msg) for i, msg in skips]
    return table.take(keep, valid), skipped, invalid


# -- the index file ------------------------------------------------------------------------------


class SourceDigests:
    """``(size, SHA-256)`` of source files, remembered across processes in a memo file.

    The memo maps a file's absolute path to its ``(size, mtime_ns, ctime_ns, inode)`` and
    digest. Those stat values are only a hint: when they still match, the stored digest is
    reused, otherwise the file is read and hashed again (an edit changes the ctime even when the
    mtime is restored). The memo is this machine's state and never part of any output; a
    missing, unreadable or foreign memo costs one hashing pass, nothing else. Concurrent
    writers (DataLoader workers, parallel stages) each replace it atomically: the last one
    wins and what the others learnt is just hashed again later.
    """

    def __init__(self, store: str | os.PathLike | None) -> None:
        self.store = None if store is None else Path(store)
        self._memo: dict[str, list] | None = None
        self._new: dict[str, list] = {}

    def __getstate__(self) -> dict[str, Any]:
        # a DataLoader worker reloads the memo itself rather than receiving a copy of it
        return {"store": self.store, "_memo": None, "_new": {}}

    def _load(self) -> dict[str, list]:
        memo: dict[str, list] = {}
        if self.store is not None:
            try:
                got = json.loads(self.store.read_text())
            except (OSError, ValueError):
                got = None
            if isinstance(got, dict) and got.get("version") == INDEX_VERSION and isinstance(got.get("files"), dict):
                memo = got["files"]
        return memo

    def digest(self, path: str | os.PathLike) -> tuple[int, str]:
        """``(size, sha256 hex)`` of the file's bytes now; OSError when it cannot be read."""
        if self._memo is None:
            self._memo = self._load()
        st = os.stat(path)
        where = os.path.abspath(path)
        hint = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        known = self._memo.get(where)
        if isinstance(known, list) and len(known) == 5 and known[:4] == hint and isinstance(known[4], str):
            return st.st_size, known[4]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        sha = h.hexdigest()
        self._memo[where] = self._new[where] = [*hint, sha]
        return st.st_size, sha

    def save(self) -> None:
        """Merge what this process hashed into the memo file (best effort: it only saves time)."""
        if self.store is None or not self._new:
            return
        merged = {**self._load(), **self._new}
        try:
            atomic_write_json(self.store, {"version": INDEX_VERSION, "files": merged})
        except OSError:
            return
        self._new = {}


def file_digests(paths: Iterable[str | os.PathLike], digests: SourceDigests) -> tuple[np.ndarray, np.ndarray] | None:
    """int64 ``[F]`` sizes and uint8 ``[F, 32]`` SHA-256 digests of ``paths``; None when a
    file is missing or unreadable."""
    sizes, shas = [], []
    try:
        for p in paths:
            size, sha = digests.digest(p)
            sizes.append(size)
            shas.append(bytes.fromhex(sha))
    except OSError:
        return None
    return np.array(sizes, dtype=np.int64), np.frombuffer(b"".join(shas), dtype=np.uint8).reshape(-1, 32)


def index_key(meta: dict[str, Any], deps: Sequence[str], sizes: np.ndarray, shas: np.ndarray, content: str = "") -> str:
    """SHA-256 over the options, the dependency list (relative paths), the dependencies' sizes
    and digests and the digest of the stored columns (:func:`content_digest`)."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    h.update(_SEP.join(deps).encode("utf-8", "surrogatepass"))
    h.update(np.ascontiguousarray(sizes, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(shas, dtype=np.uint8).tobytes())
    h.update(content.encode())
    return h.hexdigest()


def content_digest(columns: dict[str, np.ndarray]) -> str:
    """SHA-256 of the data columns (names, dtypes, shapes, bytes): the key then covers what the
    loaders read, so an edited keypoint or path column makes the index stale, not ground truth."""
    h = hashlib.sha256()
    for name in sorted(columns):
        a = np.ascontiguousarray(columns[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _write_npz(f: Any, cols: dict[str, np.ndarray]) -> None:
    """``np.savez`` with a fixed member date and order, so equal columns give equal bytes."""
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name in sorted(cols):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(cols[name]), allow_pickle=False)


def save_index(
    path: str | Path,
    table: PairTable,
    skipped: Sequence[Issue],
    invalid: Sequence[Issue],
    meta: dict[str, Any],
    deps: Sequence[str],
    dep_digests: tuple[np.ndarray, np.ndarray],
) -> str:
    """Write the index atomically; returns its key. ``deps`` are relative to the dataset
    root, ``dep_digests`` their sizes and SHA-256 (:func:`file_digests`)."""
    meta = {**meta, "version": INDEX_VERSION}
    sizes, shas = dep_digests
    cols: dict[str, np.ndarray] = {f"a_{k}": np.asarray(v) for k, v in table.arrays.items()}
    cols.update({f"s_{k}": _join(v, k) for k, v in table.strings.items()})
    for name, issues in (("skipped", skipped), ("invalid", invalid)):
        cols[f"i_{name}_source"] = _join([i.source for i in issues], name)
        cols[f"i_{name}_message"] = _join([i.message for i in issues], name)
        cols[f"i_{name}_row"] = np.array([-1 if i.row is None else i.row for i in issues], dtype=np.int64)
    key = index_key(meta, deps, sizes, shas, content_digest(cols))
    cols["deps"] = _join(list(deps), "deps")
    cols["dep_sizes"] = np.asarray(sizes, dtype=np.int64).reshape(-1)
    cols["dep_sha256"] = np.asarray(shas, dtype=np.uint8).reshape(-1, 32)
    cols["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    cols["key"] = np.frombuffer(key.encode(), dtype=np.uint8)
    atomic_write(path, lambda f: _write_npz(f, cols))
    return key


def _corrupt(path: Path, why: Any) -> DatasetFormatError:
    return DatasetFormatError(
        f"{path}: not a readable pair index ({why}); delete it (the loader rebuilds it from the "
        "annotations) or rerun the preprocess stage"
    )


def load_index(
    path: str | Path, meta: dict[str, Any], root: str | Path, digests: SourceDigests
) -> tuple[PairTable, list[Issue], list[Issue], str] | None:
    """``(table, skipped, invalid, key)`` from a fresh index at ``path`` of the dataset at
    ``root``; None when there is none or it is stale (another version / option, or a
    dependency changed or vanished); :class:`DatasetFormatError` naming the file when it is
    corrupt."""
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise _corrupt(path, e) from e
    try:
        with z:
            stored_meta = json.loads(z["meta"].tobytes())
            if stored_meta.get("version") != INDEX_VERSION or stored_meta != {**meta, "version": INDEX_VERSION}:
                return None
            n_deps = len(z["dep_sizes"])
            deps = _split(z["deps"], n_deps)
            now = file_digests((Path(root, d) for d in deps), digests)
            digests.save()
            key = z["key"].tobytes().decode()
            if now is None:
                return None
            required = [f"a_{k}" for k in _ARRAYS] + [f"s_{k}" for k in _STRINGS]
            missing = [c for c in required if c not in z.files]
            if missing:
                raise KeyError(missing[0])
            data = {name: z[name] for name in z.files if name[:2] in ("a_", "s_", "i_")}
            if index_key(stored_meta, deps, *now, content_digest(data)) != key:
                return None  # a source changed, or the index itself was edited: parse again
            arrays = {k: z[f"a_{k}"] for k in _ARRAYS}
            n = len(arrays["offsets"]) - 1
            strings = {k: _split(z[f"s_{k}"], n) for k in _STRINGS}
            issues = {}
            for name in ("skipped", "invalid"):
                rows = z[f"i_{name}_row"]
                src = _split(z[f"i_{name}_source"], len(rows))
                msg = _split(z[f"i_{name}_message"], len(rows))
                issues[name] = [
                    Issue(a, None if r < 0 else int(r), m) for a, r, m in zip(src, rows.tolist(), msg, strict=True)
                ]
    except KeyError as e:
        raise _corrupt(path, f"missing column {e}") from e
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise _corrupt(path, e) from e
    k = int(arrays["offsets"][-1]) if n >= 0 else -1
    if (
        n < 0
        or len(arrays["src_kps"]) != k
        or len(arrays["trg_kps"]) != k
        or len(arrays["valid"]) != k
        or any(len(arrays[c]) != n for c in ("row", "flip", "src_size", "trg_size", "trg_bbox"))
    ):
        raise _corrupt(path, "column lengths disagree")
    return PairTable(strings, arrays), issues["skipped"], issues["invalid"], key
