"""The training loop: Adam on the SimSC loss, validation PCK, checkpoints, exact resume.

What a run writes and where: :mod:`simsc.engine.run_folder`; the records of ``metrics.jsonl``:
:mod:`simsc.engine.records`; device, seeds, threads and compile: :mod:`simsc.engine.runtime`.

Exact resume: the data order of epoch ``e`` is ``torch.randperm`` from a generator seeded
with :func:`~simsc.engine.runtime.epoch_seed` (``seed``, ``e``); its state, the position in the
epoch, the global step, the optimiser state and the Python / NumPy / torch RNG states are
checkpointed, and a resumed run skips the batches already done (without loading them). On CPU
with the same thread count a killed-and-resumed run ends with bit-identical weights. Which
config keys may change between a run and its resumption is declared on the schema
(:func:`simsc.config.resumable_keys`).

The model stays in ``train()`` mode throughout (the backbone keeps its BatchNorm layers in
eval mode by design, see :mod:`simsc.backbones`); validation runs under ``no_grad``.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Iterable, Sized
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config import Config, load_config
from ..evaluate import alpha_key, evaluate
from ..memory import check_training_memory
from ..model import SimSC, build_model, check_batch
from ..progress import Progress
from . import distributed as ddp
from .callbacks import CallbackList, CallbackProtocol
from .checkpoint import BestSoFar, TrainState, atomic_save, build_checkpoint, resume_training
from .divergence import TrainingDivergedError, batch_temperatures
from .optim import grad_layers, param_groups
from .records import diverged_record, epoch_record, step_record_from_values
from .run_folder import RunFolder, RunFolderError
from .runtime import (
    AMP_DTYPES,
    DEVICE_LOG_EVERY_STEPS,
    compile_backend,
    compile_fallback,
    epoch_seed,
    maybe_compile,
    read_to_host,
    resolve_device,
    run_settings,
    seed_everything,
)

# Re-exported: where callers have found them (``simsc.engine.trainer.resolve_device``, ...).
__all__ = [
    "RunFolderError",
    "Trainer",
    "TrainingDivergedError",
    "epoch_seed",
    "param_groups",
    "resolve_device",
    "seed_everything",
    "train",
]


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
        self.folder = RunFolder(self.cfg.train.out_dir)
        self.out_dir = self.folder.out_dir
        self.last_path = self.folder.last_path
        self.best_path = self.folder.best_path
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
        try:
            # Rank 0 owns the run folder: it locks it and checks it; every rank learns the result.
            refused: RunFolderError | None = None
            if self.rank == 0:
                try:
                    self.folder.open(resume, overwrite)
                except RunFolderError as exc:
                    refused = exc
            ddp.agree(refused)
            with run_settings(t.num_threads, t.deterministic, t.device, self.world):
                return self._fit(resume)
        finally:
            if self.rank == 0:
                self.folder.close()

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
        self.grad_layers = grad_layers(self.model) if cfg.train.log_grad_stats else []
        t = cfg.train
        self.amp_dtype = AMP_DTYPES[str(t.amp)]  # the config check leaves one of these names
        # fp16 gradients underflow without loss scaling; bf16 has float32's exponent range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.amp == "fp16") if t.amp == "fp16" else None
        self._loss_fn = maybe_compile(self._eager_loss, t.compile)
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

    def _eager_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``model.loss`` with the value checks off (the batch is checked on the CPU)."""
        return self.model.loss(batch, check=False)

    def _log(self, record: Any) -> None:
        if self.rank == 0:
            self.folder.log(record)

    # -- the loop --------------------------------------------------------------------------
    def _fit(self, resume: bool) -> dict[str, Any]:
        cfg, t = self.cfg, self.cfg.train
        fresh = not self.folder.resumable(resume)
        self._build()
        model = self.model
        state = TrainState()
        offset: int | None = None
        if not fresh:
            state, offset = resume_training(self.last_path, cfg, model, self.optimizer, self.scaler)
            self._resumed_from = state.step
        if self.rank == 0:
            if fresh:
                self.folder.clear_earlier_outputs()
            self.folder.start_log(offset)
            self.folder.write_config(cfg)
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
            self.folder.write_summary(summary)
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
            gamma, world, bs = float(self.model.gamma), self.world, self.cfg.data.batch_size
            out, loss = ddp.global_loss(out, ce_pairs, n_local, n_global, gamma, world, bs)
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

    def _call_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self._compile_checked:
            return self._loss_fn(batch)
        # The first compiled call compiles; a host without a working compiler fails here.
        try:
            out = self._loss_fn(batch)
        except Exception as exc:
            if isinstance(exc, ValueError):
                raise
            compile_fallback(compile_backend(self.cfg.train.compile), exc)
            self._loss_fn = self._eager_loss
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
        host = read_to_host([ts for _, ts in pending])  # the sync
        dt = time.perf_counter() - t0
        self.state.train_time += dt
        self._step_time += dt
        state = self.state
        for (fields, _), v in zip(pending, host, strict=True):
            if not bool(v["loss_finite"]) or not bool(v["grads_finite"]):
                reason = "non-finite loss" if not bool(v["loss_finite"]) else "non-finite gradient"
                betas = (v["beta_a"].tolist(), v["beta_b"].tolist())
                self._diverged(fields["step"], fields["epoch"], float(v["loss"]), None, reason, betas=betas)
            record = step_record_from_values(fields, v)
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
            beta_a, beta_b = batch_temperatures(self.model, batch)
        last = self.last_path if self.last_path.exists() else None
        err = TrainingDivergedError(step, epoch, loss, beta_a, beta_b, reason, last)
        self._log(diverged_record(step, epoch, loss, reason, beta_a, beta_b, last))
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
        mean = loss_sum / loss_n if loss_n else None
        record = epoch_record(epoch, state.step, partial, mean, rep, state.best.metric, is_best)
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
        return build_checkpoint(
            kind,
            model=self.model,
            config=self.cfg,
            state=self.state,
            optimizer=self.optimizer,
            scaler=self.scaler,
            metrics_offset=self.folder.log_offset(),
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
