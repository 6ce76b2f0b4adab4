"""The training loop: Adam on the SimSC loss, validation PCK, checkpoints, exact resume.

Run directory (``train.out_dir``)::

    config.yaml            the resolved config of the run
    metrics.jsonl          one JSON record a line: ``type: step`` after every optimiser step,
                           ``type: epoch`` after every validation, ``type: diverged`` on NaN
    checkpoints/last.pt    full training state (see :mod:`simsc.engine.checkpoint`), written
                           at every epoch end and every ``checkpoint_every_steps`` steps
    checkpoints/best.pt    model + config of the best validation PCK@``best_alpha`` (per image)
    summary.json           written when the run finishes

Exact resume: the data order of epoch ``e`` is ``torch.randperm`` from a generator seeded
with :func:`epoch_seed` (``seed``, ``e``); its state, the position in the epoch, the global
step, the optimiser state and the Python / NumPy / torch RNG states are checkpointed, and a
resumed run skips the batches already done (without loading them). On CPU with the same
thread count a killed-and-resumed run ends with bit-identical weights.

The model stays in ``train()`` mode throughout (the backbone keeps its BatchNorm layers in
eval mode by design, see :mod:`simsc.backbones`); validation runs under ``no_grad``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence, Sized
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config import Config, diff_configs, dump_config, load_config
from ..errors import DivergedError
from ..evaluate import alpha_key, evaluate
from ..io import atomic_write_json
from ..memory import check_training_memory
from ..model import SimSC, build_model, check_batch
from ..progress import Progress
from . import distributed as ddp
from .callbacks import CallbackList, CallbackProtocol
from .checkpoint import (
    BestSoFar,
    CheckpointError,
    TrainState,
    atomic_save,
    build_checkpoint,
    load_checkpoint,
    restore_rng_state,
)

#: Config keys that may change between a run and its resumption (the rest must match).
RESUMABLE_CHANGES = frozenset(
    {
        "train.epochs",
        "train.max_steps",
        "train.checkpoint_every_steps",
        "train.progress",
        "train.progress_every_s",
        "train.log_every_steps",
        "train.num_threads",
        "train.log_grad_stats",
        "train.val_max_pairs",
        "train.device",
        "train.devices",
        "train.out_dir",
        "data.workers",
        "data.cache_dir",
        "data.root",
        "eval.split",
        "eval.resolution",
        "eval.beta_eval",
        "eval.batch_size",
        "eval.alphas",
        "eval.beta_sweep",
    }
)


class TrainingDivergedError(DivergedError):
    """The loss (or a gradient / weight) became non-finite. No checkpoint of the bad state is
    written; ``last_checkpoint`` (if any) holds the last good state."""

    def __init__(
        self,
        step: int,
        epoch: int,
        loss: float,
        beta_a: Sequence[float],
        beta_b: Sequence[float],
        reason: str,
        last_checkpoint: Path | None,
    ) -> None:
        self.step, self.epoch, self.loss = step, epoch, loss
        self.beta_a, self.beta_b = list(beta_a), list(beta_b)
        self.reason, self.last_checkpoint = reason, last_checkpoint
        where = f"last good checkpoint: {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
        super().__init__(
            f"training diverged at step {step} (epoch {epoch}): {reason}; loss = {loss:.6g}, "
            f"beta_a = {_fmt_betas(self.beta_a)}, beta_b = {_fmt_betas(self.beta_b)}; {where}"
        )


def _fmt_betas(values: Sequence[float]) -> str:
    vals = [float(v) for v in values]
    if not vals:
        return "[]"
    shown = ", ".join(f"{v:.4g}" for v in vals[:8]) + (", ..." if len(vals) > 8 else "")
    finite = [v for v in vals if math.isfinite(v)]
    mean = f"{sum(finite) / len(finite):.4g}" if finite else "nan"
    return f"[{shown}] (mean {mean})"


class RunFolderError(CheckpointError):
    """The run folder holds outputs that starting a run would destroy."""


class RunFolderBusyError(RunFolderError):
    """Another process trains in the same run folder (it holds :data:`RUN_LOCK`)."""


#: Lock file in the run folder; ``fcntl.flock`` on it is held for the whole run and released
#: by the kernel when the process ends, however it ends (no stale locks after SIGKILL).
RUN_LOCK = ".simsc-run.lock"


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


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the data-order generator of one epoch."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2**63 - 1)


def resolve_device(name: str, what: str = "device") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda[:N]``, ``mps``: a device this
    host has, or ``ValueError`` naming ``what`` (the flag or config key) and what exists."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{what}: unknown device {name!r}; expected auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{what} {name}: CUDA is not available on this host (torch.cuda.is_available() is "
                "False); use cpu or auto"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"{what} {name}: this host has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"{what} {name}: MPS is not available on this host; use cpu or auto")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{what}: device type {dev.type!r} is not supported; expected auto, cpu, cuda[:N] or mps")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def param_groups(model: SimSC, cfg: Config) -> list[dict[str, Any]]:
    """Adam parameter groups: trainable backbone weights at ``lr_backbone``, temperature
    parameters at ``lr_temperature``; empty groups are left out."""
    groups = []
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    if backbone:
        groups.append({"name": "backbone", "params": backbone, "lr": cfg.resolved_lr_backbone()})
    temperature = [p for p in model.temperature.parameters() if p.requires_grad]
    if temperature:
        groups.append({"name": "temperature", "params": temperature, "lr": cfg.resolved_lr_temperature()})
    head = [p for p in model.head.parameters() if p.requires_grad] if model.head is not None else []
    if head:
        groups.append({"name": "head", "params": head, "lr": cfg.resolved_lr_head()})
    if not groups:
        raise ValueError(
            f"nothing to train: model.finetune={cfg.model.finetune!r} and temperature "
            f"{cfg.model.temperature!r} has no parameters"
        )
    return groups


def _grad_layers(model: SimSC) -> list[tuple[str, nn.Conv2d | nn.Linear]]:
    """Conv / linear layers of the last backbone block, named relative to the timm model."""
    names = {id(m): n for n, m in model.backbone.model.named_modules()}
    out: list[tuple[str, nn.Conv2d | nn.Linear]] = []
    for block in model.backbone.last_block():
        for m in block.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                out.append((names.get(id(m), type(m).__name__), m))
    return out


def _mean_std(x: torch.Tensor) -> tuple[float, float]:
    x = x.detach().double().flatten()
    return float(x.mean()), float(x.std(unbiased=False)) if x.numel() > 1 else 0.0


def _finite(x: float) -> float | None:
    """JSON has no NaN/inf: non-finite numbers become ``null``."""
    return x if math.isfinite(x) else None


class Trainer:
    """Train a :class:`~simsc.model.SimSC` model as a config describes.

    Args:
        config: a :class:`~simsc.config.Config`, a nested mapping or a YAML path.
        callbacks: objects with ``on_step / on_epoch / on_checkpoint / on_end``.
        train_dataset, val_dataset: pair datasets; built from ``config.data`` when omitted.
        model: a prebuilt model; built from ``config.model`` (after seeding) when omitted.
    """

    def __init__(
        self,
        config: Config | dict | str | os.PathLike,
        *,
        callbacks: Iterable[CallbackProtocol] = (),
        train_dataset: Dataset | None = None,
        val_dataset: Dataset | None = None,
        model: SimSC | None = None,
    ) -> None:
        self.cfg = load_config(config)
        self.rank, self.world = ddp.rank_world()
        # Rank 0 calls every callback; the other ranks only those that ask (``all_ranks``).
        self.callbacks = CallbackList(cb for cb in callbacks if self.rank == 0 or getattr(cb, "all_ranks", False))
        # What the caller gave; _build makes the rest and keeps it (a second fit reuses it).
        self._given_model, self._given_train, self._given_val = model, train_dataset, val_dataset
        self.out_dir = Path(self.cfg.train.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.last_path = self.ckpt_dir / "last.pt"
        self.best_path = self.ckpt_dir / "best.pt"
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self._metrics_fh: IO[str] | None = None
        self._resumed_from: int | None = None
        self._data_wait = 0.0
        self._step_time = 0.0

    # Set by _build at the start of fit (the given ones, else built from the config).
    model: SimSC
    #: where the run stands (set by fit; its checkpointed part: see TrainState)
    state: TrainState
    optimizer: torch.optim.Optimizer
    train_dataset: Dataset
    val_dataset: Dataset
    scaler: torch.amp.GradScaler | None
    grad_layers: list[tuple[str, nn.Conv2d | nn.Linear]]

    #: page-locked loader batches (asynchronous host-to-device copies); ``None``: on for CUDA.
    pin_memory: bool | None = None

    # -- public API ------------------------------------------------------------------------
    def fit(self, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
        """Train to the end (``epochs`` or ``max_steps``); ``resume=True`` continues from
        ``checkpoints/last.pt`` when it exists. Returns the summary.

        The run folder is locked for the whole run (:class:`RunFolderBusyError` when another
        process trains in it). A folder that holds outputs of an earlier run is refused
        (:class:`RunFolderError`) unless it can be resumed (``resume=True`` and ``last.pt``) or
        ``overwrite=True`` asks to replace them.
        """
        t = self.cfg.train
        old_threads = torch.get_num_threads()
        old_det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        lock = RunLock(self.out_dir)
        try:
            # Rank 0 owns the run folder: it locks it and checks it; every rank learns the result.
            refused: RunFolderError | None = None
            if self.rank == 0:
                try:
                    lock.acquire()
                    # Before the model and data are built: a refused folder costs nothing.
                    if not (resume and self.last_path.exists()):
                        self._check_fresh_folder(overwrite)
                except RunFolderError as exc:
                    refused = exc
            ddp.agree(refused)
            if self.rank == 0:
                self._remove_stale_temporaries()
            threads = t.num_threads
            if threads is None and self.world > 1 and t.device in ("cpu", "auto") and not torch.cuda.is_available():
                threads = ddp.threads_per_rank(int(os.environ.get("LOCAL_WORLD_SIZE", self.world)))
            if threads is not None:
                torch.set_num_threads(threads)
            if t.deterministic:
                torch.use_deterministic_algorithms(True, warn_only=True)
            return self._fit(resume, overwrite)
        finally:
            torch.set_num_threads(old_threads)
            torch.use_deterministic_algorithms(old_det[0], warn_only=old_det[1])
            if self._metrics_fh is not None:
                self._metrics_fh.close()
                self._metrics_fh = None
            lock.release()

    # -- setup -----------------------------------------------------------------------------
    def _build(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.train.seed)
        self.model = self._given_model = self._given_model if self._given_model is not None else build_model(cfg)
        self.device = ddp.rank_device(resolve_device(cfg.train.device, "train.device"))
        check_training_memory(cfg, self.device)  # before the model moves and any data is read
        self.model.to(self.device)
        if cfg.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        train_ds, val_ds = self._given_train, self._given_val
        if train_ds is None or val_ds is None:
            from ..data.registry import build_dataset

            d = cfg.data
            if train_ds is None:
                train_ds = build_dataset(d.dataset, d.root, d.train_split, d.resolution, cache_dir=d.cache_dir)
            if val_ds is None:
                val_ds = build_dataset(d.dataset, d.root, d.val_split, d.resolution, cache_dir=d.cache_dir)
        if not isinstance(train_ds, Sized):
            raise TypeError(f"the training dataset ({type(train_ds).__name__}) must have a length (__len__)")
        self.train_dataset = self._given_train = train_ds
        self.val_dataset = self._given_val = val_ds
        self._n_train = len(train_ds)
        if self._n_train == 0:
            raise ValueError("the training split has no pairs")
        self.optimizer = torch.optim.Adam(param_groups(self.model, cfg))
        self.grad_layers = _grad_layers(self.model) if cfg.train.log_grad_stats else []
        t = cfg.train
        self.amp_dtype = _AMP_DTYPES[str(t.amp)]  # the config check leaves one of these names
        # fp16 gradients underflow without loss scaling; bf16 has float32's exponent range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.amp == "fp16") if t.amp == "fp16" else None
        self._loss_fn = self._compiled_loss(t.compile)
        self._compile_checked = not t.compile
        self._ddp: nn.Module | None = None
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            if self.device.type == "cuda" and self.model.head is not None:
                # A head's BatchNorm (SFNet's) trains on batch statistics: synchronised, they
                # are the global batch's, as in one process. PyTorch has no SyncBatchNorm on
                # the CPU, where each rank normalises its own part (docs/training.md).
                self.model.head = nn.SyncBatchNorm.convert_sync_batchnorm(self.model.head)

            # DDP hooks the gradient all-reduce on a module's forward: the loss path is one.
            self._ddp = DistributedDataParallel(
                _LossModule(self.model, self._call_loss),
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                forward_sync_buffers=False,  # the only buffers are frozen BatchNorm statistics
            )
        self.log_every = t.log_every_steps or (1 if self.device.type == "cpu" else DEVICE_LOG_EVERY_STEPS)
        self._pending: list[tuple[dict[str, Any], dict[str, torch.Tensor]]] = []

    def _compiled_loss(self, option: bool | str):
        """``model.loss`` with the value checks off (the batch is checked on the CPU), compiled
        when ``train.compile`` asks for it."""
        model = self.model

        def loss(batch):
            return model.loss(batch, check=False)

        if not option:
            return loss
        backend = _compile_backend(option)
        try:
            return torch.compile(loss, backend=backend)
        except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to eager (a warning)
            if type(exc).__name__ == "InvalidBackend":  # a typo is the user's error, not a fallback
                raise ValueError(
                    f"train.compile: unknown torch.compile backend {backend!r}; use true (inductor), "
                    "false or a name from torch._dynamo.list_backends()"
                ) from None
            _compile_fallback(backend, exc)  # a missing compiler fails later, on the first call
            return loss

    def _load_resume_state(self) -> dict[str, Any]:
        """Load ``last.pt`` into the model, optimiser, scaler and global RNGs; returns the checkpoint."""
        ckpt = load_checkpoint(self.last_path)
        if ckpt.get("kind") != "last":
            raise CheckpointError(f"{self.last_path}: not a training checkpoint (kind={ckpt.get('kind')!r})")
        changed = [k for k in diff_configs(ckpt["config"], self.cfg.to_dict()) if k not in RESUMABLE_CHANGES]
        if changed:
            raise CheckpointError(
                f"cannot resume {self.last_path}: the config differs in {', '.join(changed)} "
                f"(only {', '.join(sorted(RESUMABLE_CHANGES))} may change); start a new run instead"
            )
        TrainState.from_dict(ckpt, self.last_path)  # every entry checked before anything is restored
        offset = ckpt["metrics_offset"]
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise CheckpointError(
                f"{self.last_path}: checkpoint entry 'metrics_offset' must be an integer >= 0, got {offset!r:.80}; "
                "the file was edited or written by other code, it cannot be resumed"
            )
        restores: list[tuple[str, Callable[[], Any]]] = [
            ("model", lambda: self.model.load_state_dict(ckpt["model"], strict=True)),
            ("optimizer", lambda: self.optimizer.load_state_dict(ckpt["optimizer"])),
            ("rng", lambda: restore_rng_state(ckpt["rng"])),
        ]
        if self.scaler is not None and ckpt.get("scaler") is not None:
            restores.append(("scaler", lambda: self.scaler.load_state_dict(ckpt["scaler"])))  # type: ignore[union-attr]
        for key, restore in restores:
            try:
                restore()
            except (RuntimeError, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise CheckpointError(
                    f"{self.last_path}: checkpoint entry {key!r} cannot be restored ({reason:.200}); the file was "
                    "edited or written by other code, it cannot be resumed"
                ) from None
        return ckpt

    def _open_metrics(self, offset: int | None) -> None:
        if self.rank != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if offset is None:
            self._metrics_fh = open(self.metrics_path, "w", encoding="utf-8")
            return
        # Drop the records written after the checkpoint (by the interrupted run).
        if self.metrics_path.exists() and self.metrics_path.stat().st_size > offset:
            with open(self.metrics_path, "r+b") as f:
                f.truncate(offset)
        self._metrics_fh = open(self.metrics_path, "a", encoding="utf-8")

    def _log(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        fh = self._metrics_fh
        if fh is None:  # a bug, not a user error: records are written only during fit
            raise RuntimeError("Trainer._log: metrics.jsonl is not open (only fit writes records)")
        fh.write(json.dumps(record) + "\n")
        fh.flush()

    # -- the loop --------------------------------------------------------------------------
    def _check_fresh_folder(self, overwrite: bool) -> None:
        """Refuse to start over a folder with outputs of an earlier run unless ``overwrite``."""
        existing = [p for p in self._outputs() if p.exists()]
        if not existing:
            return
        if not overwrite:
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

    def _clear_earlier_outputs(self) -> None:
        """``overwrite``: the earlier run's checkpoints and summary go only once this run has
        its model and data (a mistyped data root must not cost the old best.pt)."""
        for p in (self.last_path, self.best_path, self.out_dir / "summary.json"):
            p.unlink(missing_ok=True)

    def _remove_stale_temporaries(self) -> None:
        """Temporary files of an earlier run that was killed mid-write (``.last.pt.*.tmp``):
        nobody else writes here while this process holds the folder's lock."""
        for folder in (self.out_dir, self.ckpt_dir):
            for name in ("last.pt", "best.pt", "summary.json", "config.yaml"):
                for tmp in folder.glob(f".{name}.*.tmp") if folder.is_dir() else ():
                    tmp.unlink(missing_ok=True)

    def _outputs(self) -> list[Path]:
        return [
            self.last_path,
            self.best_path,
            self.metrics_path,
            self.out_dir / "summary.json",
            self.out_dir / "config.yaml",
        ]

    def _fit(self, resume: bool, overwrite: bool = False) -> dict[str, Any]:
        cfg, t = self.cfg, self.cfg.train
        fresh = not (resume and self.last_path.exists())
        self._build()
        if fresh and self.rank == 0:
            self._clear_earlier_outputs()
        model = self.model
        state = TrainState()
        if not fresh:
            ckpt = self._load_resume_state()
            state = TrainState.from_dict(ckpt, self.last_path)
            self._open_metrics(int(ckpt["metrics_offset"]))
            self._resumed_from = int(ckpt["step"])
        else:
            self._open_metrics(None)
        if self.rank == 0:
            dump_config(cfg, self.out_dir / "config.yaml")
        self.state = state

        n = self._n_train
        bs = cfg.data.batch_size
        n_batches = math.ceil(n / bs)
        worker_gen = torch.Generator()
        model.train()
        total = t.epochs * n_batches if t.max_steps is None else min(t.max_steps, t.epochs * n_batches)
        self.progress = Progress(
            t.progress if self.rank == 0 else "off",
            "train",
            total,
            initial=state.step,
            every_s=t.progress_every_s,
            lines_on_advance=False,
        )
        self._last_flush = time.monotonic()
        try:
            self._loop(n, bs, n_batches, worker_gen)
        finally:
            self.progress.close()
        summary = self._summary()
        if self.rank == 0:
            atomic_write_json(self.out_dir / "summary.json", summary, indent=2)
        self.callbacks.on_end(summary)
        return summary

    def _loop(self, n: int, bs: int, n_batches: int, worker_gen: torch.Generator) -> None:
        cfg, t, state = self.cfg, self.cfg.train, self.state

        def done() -> bool:
            return state.epoch >= t.epochs or (t.max_steps is not None and state.step >= t.max_steps)

        while not done():
            epoch = state.epoch
            start = state.batch_in_epoch
            g = torch.Generator()
            if start > 0 and state.sampler is not None:
                g.set_state(state.sampler)
            else:
                g.manual_seed(epoch_seed(t.seed, epoch))
                state.epoch_loss_sum, state.epoch_loss_count = 0.0, 0
            state.sampler = g.get_state()
            order = torch.randperm(n, generator=g)[start * bs :].tolist()
            worker_gen.manual_seed(epoch_seed(t.seed, epoch) + 1)
            # Every rank takes its part of each global batch (one rank: the whole batch).
            parts = ddp.local_batches(order, bs, self.rank, self.world)
            shares = iter([(n_local, n_global) for _, n_local, n_global in parts])
            loader = DataLoader(
                self.train_dataset,
                batch_sampler=[indices for indices, _, _ in parts],
                num_workers=cfg.data.workers,
                collate_fn=_collate,
                generator=worker_gen,
                pin_memory=self.device.type == "cuda" if self.pin_memory is None else self.pin_memory,
            )
            batch_i = start
            ready = time.perf_counter()
            for batch in loader:
                t0 = time.perf_counter()
                self._data_wait += t0 - ready  # the step waited this long for its batch
                check_batch(batch)  # on the CPU, before the batch moves: reading it costs no device sync
                self._pending.append(self._train_step(batch, epoch, next(shares)))
                dt = time.perf_counter() - t0
                state.train_time += dt
                self._step_time += dt
                batch_i += 1
                state.batch_in_epoch = batch_i
                self.progress.advance()
                # Reading the records is the step's only host sync: batched, every log_every
                # steps, and at least every progress_every_s seconds so that logs move.
                if len(self._pending) >= self.log_every or time.monotonic() - self._last_flush >= t.progress_every_s:
                    self._flush()
                stop = t.max_steps is not None and state.step >= t.max_steps
                if stop:
                    break
                if t.checkpoint_every_steps and state.step % t.checkpoint_every_steps == 0 and batch_i < n_batches:
                    self._save_last()
                ready = time.perf_counter()
            self._flush()
            partial = batch_i < n_batches
            self._end_epoch(epoch, partial)
            if not partial:
                state.epoch = epoch + 1
                state.batch_in_epoch = 0
                state.sampler = None
            state.finished = done()
            self._save_last()

    def _train_step(
        self, batch: dict[str, Any], epoch: int, share: tuple[int, int] | None = None
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """One optimiser step without a host sync (its batch was checked on the CPU by
        :func:`~simsc.model.check_batch`); the step's values stay on the device until
        :meth:`_flush` reads them. Returns the record's host fields and its device tensors.

        ``share``: ``(n_local, n_global)``, this rank's pairs of the global batch (several ranks).
        """
        n_local, n_global = share if share is not None else (len(batch["src_kps"]),) * 2
        ce_pairs = 0
        if self._ddp is not None and n_local:
            # The cross-entropy averages over pairs with a valid keypoint, the regulariser over
            # all pairs (read here, on the CPU, before the batch moves).
            valid = batch.get("valid")
            ce_pairs = int(valid.bool().any(-1).sum()) if valid is not None else n_local
        opt, state = self.optimizer, self.state
        batch = {
            k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()
        }
        if self.cfg.train.channels_last:
            batch = {
                k: (v.contiguous(memory_format=torch.channels_last) if k in ("src_img", "trg_img") else v)
                for k, v in batch.items()
            }
        step = state.step + 1
        opt.zero_grad(set_to_none=True)
        try:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                out = self._call_loss(batch) if self._ddp is None else self._ddp(batch)
        except ValueError as exc:
            # The loss runs unchecked (its beta > 0 and NaN checks are host reads), so a
            # ValueError here is a shape or config error: it propagates as one, unless the
            # weights went non-finite, when it is how a divergence shows.
            if not self._params_finite():
                self._flush()
                self._diverged(step, epoch, float("nan"), batch, f"the forward pass failed ({exc})")
            raise
        loss = out["loss"]
        if self._ddp is not None:
            out, loss = self._global_loss(out, ce_pairs, n_local, n_global)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(opt)  # the finiteness check and the logged gradients are unscaled
        else:
            loss.backward()
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        one = loss.new_ones((), dtype=torch.bool)
        # With fp16 loss scaling, inf gradients are routine: the scaler skips those steps.
        check_grads = grads and self.scaler is None
        grads_finite = torch.stack([torch.isfinite(gr).all() for gr in grads]).all() if check_grads else one
        tensors = {
            "loss": out["loss"].detach(),
            "ce": out["ce"].detach(),
            "reg": out["reg"].detach(),
            "beta_a": out["beta_a"],
            "beta_b": out["beta_b"],
            "beta_eff": out["beta_eff"],
            "loss_finite": torch.isfinite(loss.detach()),
            "grads_finite": grads_finite,
        }
        for name, m in self.grad_layers:
            if m.weight.grad is not None:
                tensors[f"grad:{name}"] = m.weight.grad.abs().mean()
        lrs = {g.get("name"): g["lr"] for g in opt.param_groups}
        record: dict[str, Any] = {
            "type": "step",
            "step": step,
            "epoch": epoch,
            "batch": state.batch_in_epoch,
            "lr_backbone": lrs.get("backbone"),
            "lr_temperature": lrs.get("temperature"),
        }
        if self.scaler is not None:
            self.scaler.step(opt)  # skips the update on inf/NaN gradients (a sync: fp16 only)
            self.scaler.update()
        else:
            # A non-finite step still updates the weights here; the flush that finds it raises
            # before any checkpoint or validation sees them (at most log_every steps later).
            opt.step()
        state.step = step
        return record, tensors

    def _global_loss(
        self, out: dict[str, torch.Tensor], ce_pairs: int, n_local: int, n_global: int
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Several ranks: the global batch's loss terms (what one rank with the whole batch
        logs) and this rank's loss to back-propagate, weighted by its share of each term's
        pairs so that DDP's gradient average is the gradient of the global loss."""
        ce, reg = out["ce"], out["reg"]
        # One all-reduce (no host sync): the terms' sums over the ranks' pairs and the counts.
        local = torch.stack([ce.detach() * ce_pairs, reg.detach() * n_local]).float()
        counts = torch.tensor([ce_pairs, n_local], dtype=local.dtype, device=local.device)
        sums = ddp.all_reduce_sum(torch.cat([local, counts]))
        ce_total, n_total = sums[2].clamp_min(1), sums[3].clamp_min(1)
        gamma = float(self.model.gamma)
        world = self.world
        backprop = ce * ddp.global_share(ce_pairs, ce_total, world) + gamma * reg * ddp.global_share(
            n_local, n_total, world
        )
        ce_g, reg_g = sums[0] / ce_total, sums[1] / n_total
        capacity = -(-self.cfg.data.batch_size // world)
        sizes = [b - a for a, b in (ddp.chunk_bounds(n_global, r, world) for r in range(world))]
        gathered = {
            k: ddp.all_gather_padded(out[k].detach()[:n_local].float(), capacity, sizes)
            for k in ("beta_a", "beta_b", "beta_eff")
        }
        return {"loss": ce_g + gamma * reg_g, "ce": ce_g, "reg": reg_g, **gathered}, backprop

    def _call_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self._compile_checked:
            return self._loss_fn(batch)
        # The first compiled call compiles; a host without a working compiler fails here.
        try:
            out = self._loss_fn(batch)
        except Exception as exc:
            if isinstance(exc, ValueError):
                raise
            _compile_fallback(_compile_backend(self.cfg.train.compile), exc)
            self._loss_fn = self._compiled_loss(False)
            out = self._loss_fn(batch)
        self._compile_checked = True
        return out

    def _flush(self) -> None:
        """Read the pending step records from the device in one transfer (the only host sync of
        training steps), then log them, call the callbacks, update the progress and raise
        :class:`TrainingDivergedError` at the first non-finite one."""
        pending, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        if not pending:
            return
        t0 = time.perf_counter()
        flat = [t.detach().reshape(-1) for _, ts in pending for t in ts.values()]
        dtype = flat[0].dtype
        for t in flat:
            dtype = torch.promote_types(dtype, t.dtype)
        host = torch.cat([t.to(dtype) for t in flat]).cpu()  # the sync
        dt = time.perf_counter() - t0
        self.state.train_time += dt
        self._step_time += dt
        values = iter(host.split([t.numel() for t in flat]))
        state = self.state
        for record, ts in pending:
            v = {k: next(values) for k in ts}
            loss = float(v["loss"])
            if not bool(v["loss_finite"]) or not bool(v["grads_finite"]):
                reason = "non-finite loss" if not bool(v["loss_finite"]) else "non-finite gradient"
                self._diverged(
                    record["step"],
                    record["epoch"],
                    loss,
                    None,
                    reason,
                    betas=(v["beta_a"].tolist(), v["beta_b"].tolist()),
                )
            record["loss"], record["ce"], record["reg"] = loss, float(v["ce"]), float(v["reg"])
            record["beta_a_mean"], record["beta_a_std"] = _mean_std(v["beta_a"])
            record["beta_b_mean"], record["beta_b_std"] = _mean_std(v["beta_b"])
            record["beta_eff_mean"] = _mean_std(v["beta_eff"])[0]
            grad = {k[5:]: float(x) for k, x in v.items() if k.startswith("grad:")}
            if grad:
                record["grad_abs_mean"] = grad
            order = (
                "type",
                "step",
                "epoch",
                "batch",
                "loss",
                "ce",
                "reg",
                "beta_a_mean",
                "beta_a_std",
                "beta_b_mean",
                "beta_b_std",
                "beta_eff_mean",
                "lr_backbone",
                "lr_temperature",
                "grad_abs_mean",
            )
            record = {k: record[k] for k in order if k in record}
            state.epoch_loss_sum += record["loss"]
            state.epoch_loss_count += 1
            self._log(record)
            self.callbacks.on_step(record)
        self.progress.set_values(epoch=record["epoch"], loss=record["loss"], beta_eff=record["beta_eff_mean"])
        self.progress.maybe_line()

    def _params_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    @torch.no_grad()
    def _diverged(self, step, epoch, loss, batch, reason, out=None, betas=None):
        beta_a = beta_b = []
        if betas is not None:
            beta_a, beta_b = betas
        elif out is not None:
            beta_a, beta_b = out["beta_a"].tolist(), out["beta_b"].tolist()
        elif batch:
            try:
                m = self.model
                beta_a = m.temperature(m.backbone(batch["src_img"])).tolist()
                beta_b = m.temperature(m.backbone(batch["trg_img"])).tolist()
            except Exception:  # noqa: BLE001 - the diagnosis must not mask the divergence
                pass
        last = self.last_path if self.last_path.exists() else None
        err = TrainingDivergedError(step, epoch, loss, beta_a, beta_b, reason, last)
        self._log(
            {
                "type": "diverged",
                "step": step,
                "epoch": epoch,
                "loss": _finite(loss),
                "reason": reason,
                "beta_a": [_finite(float(b)) for b in beta_a],
                "beta_b": [_finite(float(b)) for b in beta_b],
                "last_checkpoint": str(last) if last else None,
            }
        )
        self.callbacks.on_end(
            {
                "status": "diverged",
                "step": step,
                "epoch": epoch,
                "message": str(err),
                "last_checkpoint": str(last) if last else None,
            }
        )
        raise err

    def _end_epoch(self, epoch: int, partial: bool) -> None:
        cfg, t, state = self.cfg, self.cfg.train, self.state
        rep = evaluate(
            self.model,
            self.val_dataset,
            beta_eval=t.val_beta_eval,
            batch_size=cfg.data.batch_size,
            alphas=t.alphas,
            workers=cfg.data.workers,
            max_pairs=t.val_max_pairs,
            device=self.device,
            progress=self.progress.mode,
            progress_every_s=t.progress_every_s,
            shard=(self.rank, self.world),
        )
        self.model.train()
        key = alpha_key(t.best_alpha)
        metric = rep["per_image"][key]
        self.progress.line(f"epoch {epoch}{' (partial)' if partial else ''} validated: PCK@{key} {metric:.2f}")
        best = state.best
        is_best = best.metric is None or metric > best.metric
        if is_best:
            state.best = BestSoFar(metric, epoch, state.step)
        loss_sum, loss_n = state.epoch_loss_sum, state.epoch_loss_count
        record = {
            "type": "epoch",
            "epoch": epoch,
            "step": state.step,
            "partial": partial,
            "train_loss_mean": loss_sum / loss_n if loss_n else None,
            "val": {
                k: rep[k] for k in ("per_image", "per_keypoint", "per_category", "n_pairs", "beta_eff", "beta_eval")
            },
            **{f"val_pck@{a}": v for a, v in rep["per_image"].items()},
            "val_beta_eff_mean": rep["beta_eff"]["mean"],
            "best_metric": state.best.metric,
            "is_best": is_best,
        }
        self._log(record)
        self.callbacks.on_epoch(record)
        if is_best:
            self._check_finite_weights(epoch)
            if self.rank == 0:
                atomic_save(self._payload("best"), self.best_path)
            self.callbacks.on_checkpoint(self.best_path, True)

    def _check_finite_weights(self, epoch: int) -> None:
        if not self._params_finite():
            nan = float("nan")
            self._diverged(self.state.step, epoch, nan, {}, "non-finite weights (checkpoint not written)")

    def _save_last(self) -> None:
        self._flush()  # a checkpoint never precedes the records (and divergence check) of its steps
        self._check_finite_weights(self.state.epoch)
        if self.rank == 0:
            atomic_save(self._payload("last"), self.last_path)
        self.callbacks.on_checkpoint(self.last_path, False)

    def _payload(self, kind: str) -> dict[str, Any]:
        fh = self._metrics_fh
        if fh is None:  # a bug: checkpoints are written only during fit
            raise RuntimeError("Trainer._payload: metrics.jsonl is not open (only fit writes checkpoints)")
        return build_checkpoint(
            kind,
            model=self.model,
            config=self.cfg,
            state=self.state,
            optimizer=self.optimizer,
            scaler=self.scaler,
            metrics_offset=fh.tell(),
        )

    def _summary(self) -> dict[str, Any]:
        s = self.state
        steps_run = s.step
        return {
            "status": "finished",
            "step": s.step,
            "epoch": s.epoch,
            "best_metric": s.best.metric,
            "best_alpha": self.cfg.train.best_alpha,
            "best_epoch": s.best.epoch,
            "best_step": s.best.step,
            "best_checkpoint": str(self.best_path) if self.best_path.exists() else None,
            "last_checkpoint": str(self.last_path),
            "train_time_s": s.train_time,
            "steps_per_s": steps_run / s.train_time if s.train_time > 0 else None,
            "resumed_from_step": self._resumed_from,
            # Of this process's training loop (steps + waits for batches; not validation or
            # checkpoints): the share spent waiting for the loader.
            "data_wait_s": self._data_wait,
            "data_wait_fraction": (
                self._data_wait / (self._data_wait + self._step_time) if self._data_wait + self._step_time > 0 else None
            ),
            "out_dir": str(self.out_dir),
        }


class _LossModule(nn.Module):
    """The model's loss path as a module's forward, for DDP (it all-reduces the gradients of
    what a forward computed); ``loss_fn`` is the trainer's (possibly compiled) loss."""

    def __init__(self, model: SimSC, loss_fn) -> None:
        super().__init__()
        self.model = model
        self._loss_fn = loss_fn

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self._loss_fn(batch)


_AMP_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}

#: Steps between two reads of the step records on accelerators (``train.log_every_steps: null``).
DEVICE_LOG_EVERY_STEPS = 25


def _compile_backend(option: bool | str) -> str:
    """The torch.compile backend of a ``train.compile`` value (``true``: inductor)."""
    return "inductor" if option is True else str(option)


def _compile_fallback(backend: str, exc: BaseException) -> None:
    import warnings

    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    warnings.warn(
        f"train.compile: torch.compile (backend {backend!r}) failed ({type(exc).__name__}: {reason[:300]}); "
        "training runs eagerly instead",
        RuntimeWarning,
        stacklevel=3,
    )


def _collate(records):
    from ..data.records import collate_pairs

    return collate_pairs(records)


def train(
    config: Config | dict | str | os.PathLike,
    *,
    resume: bool = False,
    callbacks: Iterable[CallbackProtocol] = (),
    train_dataset: Dataset | None = None,
    val_dataset: Dataset | None = None,
    model: SimSC | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train as ``config`` describes (see :class:`Trainer`); returns the run summary.

    ``train.devices: N > 1`` (outside a process group) trains on N local processes, data
    parallel (:mod:`simsc.engine.distributed`): this process is rank 0 and keeps the callbacks;
    the other ranks get the datasets and model given here (they must pickle) or build them."""
    cfg = load_config(config)
    devices = int(cfg.train.devices)
    if devices > 1 and ddp.rank_world()[1] == 1:
        backend = ddp.backend_for(resolve_device(cfg.train.device, "train.device"))
        if backend == "nccl" and torch.cuda.device_count() < devices:
            raise ValueError(
                f"train.devices={devices}: this host has {torch.cuda.device_count()} CUDA device(s); "
                "use at most that many, or train.device=cpu"
            )
        rank0 = functools.partial(_train_rank, callbacks=callbacks)
        others = (cfg.to_dict(), resume, overwrite, train_dataset, val_dataset, model)
        return ddp.launch_local(_train_rank, others, devices, backend, rank0=rank0)
    trainer = Trainer(cfg, callbacks=callbacks, train_dataset=train_dataset, val_dataset=val_dataset, model=model)
    return trainer.fit(resume=resume, overwrite=overwrite)


def _train_rank(
    config: dict[str, Any],
    resume: bool,
    overwrite: bool,
    train_dataset: Dataset | None,
    val_dataset: Dataset | None,
    model: SimSC | None,
    callbacks: Iterable[CallbackProtocol] = (),
) -> dict[str, Any]:
    """One rank of a :func:`train` on several local processes."""
    trainer = Trainer(config, callbacks=callbacks, train_dataset=train_dataset, val_dataset=val_dataset, model=model)
    return trainer.fit(resume=resume, overwrite=overwrite)
