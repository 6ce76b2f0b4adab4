"""A training run's folder: its lock, the fresh-folder rule, the metrics log and the summary.

Layout (``train.out_dir``)::

    config.yaml            the resolved config of the run
    metrics.jsonl          one JSON record a line (:mod:`simsc.engine.records`)
    checkpoints/last.pt    full training state (see :mod:`simsc.engine.checkpoint`)
    checkpoints/best.pt    model + config of the best validation PCK
    summary.json           written when the run finishes

Only rank 0 of a data-parallel run holds a :class:`RunFolder`; the others write nothing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import IO, Any

from ..config import Config, dump_config
from ..io import atomic_write_json
from .checkpoint import CheckpointError


class RunFolderError(CheckpointError):
    """The run folder holds outputs that starting a run would destroy."""


class RunFolderBusyError(RunFolderError):
    """Another process trains in the same run folder (it holds :data:`RUN_LOCK`)."""


#: Lock file in the run folder; ``fcntl.flock`` on it is held for the whole run and released
#: by the kernel when the process ends, however it ends (no stale locks after SIGKILL).
RUN_LOCK = ".simsc-run.lock"

#: The files a run writes, relative to its folder (the layout above): the fresh-folder rule,
#: the stale-temporaries sweep and ``simsc train``'s refusal to overwrite its inputs read this.
RUN_OUTPUTS = {
    "last": "checkpoints/last.pt",
    "best": "checkpoints/best.pt",
    "metrics": "metrics.jsonl",
    "summary": "summary.json",
    "config": "config.yaml",
}


#: Descriptors of the run locks this process holds (see :func:`_drop_inherited_locks`).
_HELD_LOCK_FDS: set[int] = set()


def _drop_inherited_locks() -> None:
    """In a forked child (DataLoader workers): point the inherited lock descriptors at
    /dev/null. A flock belongs to the open file, which a fork shares: without this, workers
    orphaned by a killed run would keep its folder locked until they notice and exit."""
    if not _HELD_LOCK_FDS:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in _HELD_LOCK_FDS:
            os.dup2(null, fd)
    finally:
        os.close(null)
    _HELD_LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


class RunLock:
    """An exclusive, non-blocking lock on a run folder; the file names its holder. Held by
    this process only: forked children (loader workers) do not keep it."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / RUN_LOCK
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        import fcntl
        import socket

        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Open for the whole run (the lock lives as long as the handle), hence no `with`.
        # Not "w": the holder's line must survive a refusal.
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by another process; other errors (no locks on this FS) propagate
            fh.seek(0)
            holder = fh.read().strip() or "an unknown process"
            fh.close()
            raise RunFolderBusyError(
                f"{self.path.parent} is in use by another training run ({holder}; lock file {self.path}); "
                "wait for it to finish or choose another output folder"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on host {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
        fh.flush()
        self._fh = fh
        _HELD_LOCK_FDS.add(fh.fileno())

    def release(self) -> None:
        if self._fh is not None:
            import fcntl

            _HELD_LOCK_FDS.discard(self._fh.fileno())
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


class RunFolder:
    """The files of one run; :meth:`open` locks the folder and checks it, :meth:`close`
    releases it. The metrics log is append-only and truncated to a checkpoint's offset on
    resume, so a resumed run never holds the records of steps it redoes."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)
        self.last_path = self.out_dir / RUN_OUTPUTS["last"]
        self.best_path = self.out_dir / RUN_OUTPUTS["best"]
        self.metrics_path = self.out_dir / RUN_OUTPUTS["metrics"]
        self.summary_path = self.out_dir / RUN_OUTPUTS["summary"]
        self.config_path = self.out_dir / RUN_OUTPUTS["config"]
        self.ckpt_dir = self.last_path.parent
        self._lock = RunLock(self.out_dir)
        self._log: IO[str] | None = None

    def resumable(self, resume: bool) -> bool:
        """Whether a fit with ``resume`` continues this folder's run (it has ``last.pt``)."""
        return resume and self.last_path.exists()

    def open(self, resume: bool, overwrite: bool) -> None:
        """Lock the folder (:class:`RunFolderBusyError` when another process trains here) and,
        unless the run resumes, refuse outputs of an earlier run (:class:`RunFolderError`)
        without ``overwrite``; then remove temporaries a killed run left behind."""
        self._lock.acquire()
        # Before the model and data are built: a refused folder costs nothing.
        if not self.resumable(resume):
            self._check_fresh(overwrite)
        self._remove_stale_temporaries()

    def close(self) -> None:
        """Close the metrics log and release the lock."""
        if self._log is not None:
            self._log.close()
            self._log = None
        self._lock.release()

    def outputs(self) -> list[Path]:
        """The paths of :data:`RUN_OUTPUTS` in this folder."""
        return [self.out_dir / name for name in RUN_OUTPUTS.values()]

    def _check_fresh(self, overwrite: bool) -> None:
        """Refuse to start over a folder with outputs of an earlier run unless ``overwrite``."""
        existing = [p for p in self.outputs() if p.exists()]
        if not existing or overwrite:
            return
        names = ", ".join(str(p.relative_to(self.out_dir)) for p in existing)
        if self.last_path.exists():
            raise RunFolderError(
                f"{self.out_dir} already holds a run ({self.last_path}); resume it (--resume / resume=True), "
                "replace it (--overwrite / overwrite=True) or choose another output folder"
            )
        raise RunFolderError(
            f"{self.out_dir} holds outputs of an earlier run ({names}) but no {self.last_path.name} to resume "
            "from; pass --overwrite (overwrite=True) to replace them, or choose another output folder"
        )

    def clear_earlier_outputs(self) -> None:
        """``overwrite``: the earlier run's checkpoints and summary go only once this run has
        its model and data (a mistyped data root must not cost the old best.pt)."""
        for p in (self.last_path, self.best_path, self.summary_path):
            p.unlink(missing_ok=True)

    def _remove_stale_temporaries(self) -> None:
        """Temporary files of an earlier run that was killed mid-write (``.last.pt.*.tmp``):
        nobody else writes here while this process holds the folder's lock."""
        for path in self.outputs():
            for tmp in path.parent.glob(f".{path.name}.*.tmp") if path.parent.is_dir() else ():
                tmp.unlink(missing_ok=True)

    def start_log(self, offset: int | None) -> None:
        """Open ``metrics.jsonl``: new (``offset`` None), or kept up to a checkpoint's offset
        (the records an interrupted run wrote after its checkpoint are dropped)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if offset is None:
            self._log = open(self.metrics_path, "w", encoding="utf-8")
            return
        if self.metrics_path.exists() and self.metrics_path.stat().st_size > offset:
            with open(self.metrics_path, "r+b") as f:
                f.truncate(offset)
        self._log = open(self.metrics_path, "a", encoding="utf-8")

    def log(self, record: dict[str, Any]) -> None:
        """Append one record to ``metrics.jsonl`` (flushed: a kill loses no written step)."""
        fh = self._log
        if fh is None:  # a bug, not a user error: records are written only during fit
            raise RuntimeError("RunFolder.log: metrics.jsonl is not open (only fit writes records)")
        fh.write(json.dumps(record) + "\n")
        fh.flush()

    def log_offset(self) -> int:
        """The byte offset after the last record: a checkpoint stores it for resume."""
        if self._log is None:  # a bug: checkpoints are written only during fit
            raise RuntimeError("RunFolder.log_offset: metrics.jsonl is not open (only fit writes checkpoints)")
        return self._log.tell()

    def write_config(self, cfg: Config) -> None:
        """``config.yaml``: the resolved configuration of the run."""
        dump_config(cfg, self.config_path)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """``summary.json``, atomically."""
        atomic_write_json(self.summary_path, summary, indent=2)
