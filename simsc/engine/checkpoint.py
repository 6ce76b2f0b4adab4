"""The checkpoint format, written and read here only: :func:`build_checkpoint` makes the
dict (from the model, config, optimiser, scaler and the trainer's :class:`TrainState`),
:func:`atomic_save` writes it with its digest, :func:`load_checkpoint` reads and validates
it (``weights_only=True``) and :meth:`TrainState.from_dict` turns it back into the state.

A training checkpoint (``<run>/checkpoints/last.pt``) is a plain dict that
``torch.load(path, weights_only=True)`` reads (tensors, numbers, strings, lists, dicts only):

===================  ==================================================================
``format``           ``"simsc.checkpoint"``; ``version``: :data:`CHECKPOINT_VERSION`
``kind``             ``"last"`` (full training state) or ``"best"`` (model + config only)
``model``            ``SimSC.state_dict()`` (backbone + temperature module)
``optimizer``        ``torch.optim.Adam.state_dict()`` (``last`` only)
``step``             optimiser steps done (global)
``epoch``            the epoch to continue in (0-based)
``batch_in_epoch``   batches of that epoch already done (0 = start of the epoch)
``rng``              ``python`` / ``numpy`` / ``torch`` generator states as tensors, and
                     ``sampler``: the state of the epoch's data-order generator
``config``           the run's :class:`~simsc.config.Config` as a plain nested dict
``best``             ``{"metric", "epoch", "step"}`` of the best validation so far
``epoch_loss``       ``[sum, count]`` of the epoch's step losses so far (its mean is logged)
``train_time``       seconds of training so far
``metrics_offset``   size of ``metrics.jsonl`` when written (resume truncates it there)
``scaler``           ``GradScaler.state_dict()`` (``last`` with ``train.amp: fp16`` only)
``finished``         the run reached its end (``epochs`` / ``max_steps``)
``torch_version``    the torch that wrote it (information only)
``digest``           ``"sha256:<hex>"`` of the content (every other entry, tensors as
                     dtype, shape and bytes): :func:`load_checkpoint` recomputes it, so a
                     flipped byte in a weight is an error, not a silently different model
===================  ==================================================================

The trainer's state is stored as flat entries (the layout of version 1, unchanged since:
checkpoints written before :class:`TrainState` existed load as they are).

Files are written to a temporary file in the same folder, flushed, fsynced and moved into
place with :func:`os.replace`, so a reader (or a crash) never sees a partial file.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import Config, ConfigError, diff_configs, load_config, resumable_keys
from ..errors import first_line
from ..io import atomic_write
from ..model import SimSC, build_model  # build_model: re-exported, simsc.engine.build_model

CHECKPOINT_FORMAT = "simsc.checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not a simsc checkpoint."""


DIGEST_KEY = "digest"

#: Entries every simsc checkpoint has (``load_model`` needs them); ``last`` adds :data:`LAST_KEYS`.
REQUIRED_KEYS = ("model", "config")
LAST_KEYS = (
    "optimizer",
    "rng",
    "step",
    "epoch",
    "batch_in_epoch",
    "best",
    "epoch_loss",
    "train_time",
    "finished",
    "metrics_offset",
)


def _feed(h: hashlib._Hash, obj: Any) -> None:
    # A canonical walk: the same content hashes the same after a save/load round trip
    # (tuples may come back as lists, dict order may differ).
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)  # .data: the buffer, no copy
    elif isinstance(obj, Mapping):
        h.update(b"{")
        for k in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            h.update(repr(k).encode() + b":")
            _feed(h, obj[k])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            _feed(h, v)
            h.update(b",")
        h.update(b"]")
    elif isinstance(obj, np.ndarray):
        h.update(f"A{obj.dtype}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).data.cast("B"))
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def content_digest(ckpt: Mapping[str, Any]) -> str:
    """``"sha256:<hex>"`` of a checkpoint's content, the ``digest`` entry itself excluded."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in ckpt.items() if k != DIGEST_KEY})
    return "sha256:" + h.hexdigest()


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file next to ``path``, fsync, then ``os.replace``
    (:func:`simsc.io.atomic_write` with ``durable=True``). A simsc checkpoint gets its
    content digest (``digest``), which :func:`load_checkpoint` verifies."""
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        obj = {**obj, DIGEST_KEY: content_digest(obj)}

    def save(f) -> None:
        stream = _WriteErrors(f)
        try:
            torch.save(obj, stream)  # type: ignore[arg-type]  # a write/flush stream is all torch uses
        except RuntimeError:
            # torch's zip writer turns a failed write (a full disk) into a C++ enforce message
            # ("unexpected pos ..."): raise the write's own OSError, which names the cause.
            if stream.error is not None:
                raise stream.error from None
            raise

    return atomic_write(path, save, durable=True)


class _WriteErrors:
    """A binary file wrapper that remembers the first ``OSError`` of a write."""

    def __init__(self, f) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            if self.error is None:
                self.error = exc
            raise

    def flush(self) -> None:
        self._f.flush()


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a simsc checkpoint safely (``weights_only=True``, on CPU) and verify its digest.

    Raises :class:`CheckpointError` naming the file: missing, empty, unreadable, not a simsc
    checkpoint, newer than this code, a missing ``model`` / ``config`` entry, or content that
    does not match its stored digest (a corrupted file). Checkpoints written before digests
    were stored (no ``digest`` entry) load unverified.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is empty (0 bytes; an interrupted "
            "copy or a full disk?); use another checkpoint or rerun the training"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types on a damaged file; all mean that
        reason = first_line(exc)
        raise CheckpointError(
            f"cannot read checkpoint {path} ({size} bytes): {reason}; the file is damaged or not a torch checkpoint"
        ) from None
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a simsc checkpoint (no format={CHECKPOINT_FORMAT!r} entry)")
    version = ckpt.get("version", 0)  # checkpoints before versions were stored have none
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(
            f"{path}: checkpoint entry 'version' must be an integer, got {version!r:.80}; the file was "
            "edited or is not a simsc checkpoint"
        )
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {ckpt.get('version')} is newer than this simsc "
            f"(reads up to {CHECKPOINT_VERSION})"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if ckpt.get("kind") == "last":
        missing += [k for k in LAST_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path}: simsc checkpoint without its {', '.join(repr(k) for k in missing)} "
            f"entr{'y' if len(missing) == 1 else 'ies'}; the file is incomplete or was "
            "edited, use another checkpoint"
        )
    # The config entry is read as a config, never as a path to one (a path would make the
    # loader open whatever file an edited checkpoint names).
    for key, kind in (("config", Mapping), ("model", Mapping)):
        if not isinstance(ckpt[key], kind):
            raise CheckpointError(
                f"{path}: entry {key!r} must be a mapping (the run's {'config' if key == 'config' else 'weights'}), "
                f"got {type(ckpt[key]).__name__}; the file was edited or is not a simsc checkpoint"
            )
    stored = ckpt.get(DIGEST_KEY)
    if stored is not None:
        actual = content_digest(ckpt)
        if stored != actual:
            raise CheckpointError(
                f"{path}: content digest mismatch (stored {stored}, computed {actual}): "
                "the file is corrupted; use another checkpoint (e.g. best.pt / an earlier copy)"
            )
    return dict(ckpt)


# ----------------------------------------------------------------------------------------
# RNG states as plain tensors
# ----------------------------------------------------------------------------------------


def capture_rng_state(sampler_generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python ``random``, NumPy's global generator, torch CPU and the data-order generator."""
    version, py_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {
            "version": int(version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": gauss,
        },
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64).copy()),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if sampler_generator is not None:
        state["sampler"] = sampler_generator.get_state()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the global generators captured by :func:`capture_rng_state` (not ``sampler``)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    npst = state["numpy"]
    np.random.set_state(
        (npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])


# ----------------------------------------------------------------------------------------
# The trainer's state, and the checkpoint that holds it
# ----------------------------------------------------------------------------------------


@dataclass
class BestSoFar:
    """The best validation so far (all ``None`` before the first validation)."""

    metric: float | None = None
    epoch: int | None = None
    step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's ``best`` entry."""
        return {"metric": self.metric, "epoch": self.epoch, "step": self.step}


@dataclass
class TrainState:
    """Where a training run stands: what a ``last`` checkpoint must hold to resume exactly.

    ``sampler`` is the state of the running epoch's data-order generator (``None`` between
    epochs); ``epoch_loss_sum`` / ``epoch_loss_count`` accumulate the epoch's mean loss.
    """

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    sampler: torch.Tensor | None = None
    best: BestSoFar = field(default_factory=BestSoFar)
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    train_time: float = 0.0
    finished: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint entries of this state (plain types, ``weights_only``-loadable), in
        the layout of the module docstring; ``sampler`` goes under ``rng`` (see
        :func:`build_checkpoint`), so it is not among them."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "best": self.best.to_dict(),
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_loss": [self.epoch_loss_sum, self.epoch_loss_count],
            "train_time": float(self.train_time),
            "finished": bool(self.finished),
        }

    @classmethod
    def from_dict(cls, ckpt: Mapping[str, Any], source: str | os.PathLike = "checkpoint") -> TrainState:
        """The state a ``last`` checkpoint holds (its ``rng.sampler`` included). Checkpoints of
        every version so far share this layout. Raises :class:`CheckpointError` naming
        ``source`` and the missing or malformed entry."""

        def bad(key: str, expected: str, got: Any) -> CheckpointError:
            return CheckpointError(
                f"{source}: checkpoint entry {key!r} must be {expected}, got {got!r:.80}; "
                "the file was edited or written by other code, it cannot be resumed"
            )

        def integer(key: str, value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(key, "an integer >= 0", value)
            return value

        missing = [
            k
            for k in ("step", "epoch", "batch_in_epoch", "best", "epoch_loss", "train_time", "finished", "rng")
            if k not in ckpt
        ]
        if missing:
            raise CheckpointError(
                f"{source}: checkpoint without its {', '.join(repr(k) for k in missing)} "
                f"entr{'y' if len(missing) == 1 else 'ies'}; it cannot be resumed"
            )
        best = ckpt["best"]
        if not isinstance(best, Mapping) or set(best) != {"metric", "epoch", "step"}:
            raise bad("best", "a mapping of metric, epoch and step", best)
        metric = best["metric"]
        if metric is not None and (isinstance(metric, bool) or not isinstance(metric, (int, float))):
            raise bad("best.metric", "a number or null", metric)
        for k in ("epoch", "step"):
            if best[k] is not None:
                integer(f"best.{k}", best[k])
        loss = ckpt["epoch_loss"]
        if (
            not isinstance(loss, (list, tuple))
            or len(loss) != 2
            or isinstance(loss[0], bool)
            or not isinstance(loss[0], (int, float))
        ):
            raise bad("epoch_loss", "[sum, count]", loss)
        train_time = ckpt["train_time"]
        if isinstance(train_time, bool) or not isinstance(train_time, (int, float)):
            raise bad("train_time", "a number of seconds", train_time)
        if not isinstance(ckpt["finished"], bool):
            raise bad("finished", "true or false", ckpt["finished"])
        rng = ckpt["rng"]
        sampler = rng.get("sampler") if isinstance(rng, Mapping) else None
        if not isinstance(rng, Mapping) or not (sampler is None or isinstance(sampler, torch.Tensor)):
            raise bad("rng", "a mapping of generator states", type(rng).__name__)
        return cls(
            epoch=integer("epoch", ckpt["epoch"]),
            batch_in_epoch=integer("batch_in_epoch", ckpt["batch_in_epoch"]),
            step=integer("step", ckpt["step"]),
            sampler=sampler,
            best=BestSoFar(metric, best["epoch"], best["step"]),
            epoch_loss_sum=loss[0],
            epoch_loss_count=integer("epoch_loss[1]", loss[1]),
            train_time=train_time,
            finished=ckpt["finished"],
        )


def build_checkpoint(
    kind: str,
    *,
    model: nn.Module,
    config: Config,
    state: TrainState,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
    metrics_offset: int | None = None,
) -> dict[str, Any]:
    """The checkpoint dict (layout: the module docstring) of a run in ``state``; save it with
    :func:`atomic_save`, read it back with :func:`load_checkpoint` and
    :meth:`TrainState.from_dict`.

    ``kind="best"``: model, config and the step / epoch / best entries. ``kind="last"`` adds
    what an exact resume needs: ``optimizer``, ``scaler`` (fp16 loss scaling, when given),
    the RNG states captured now, the rest of ``state`` and ``metrics_offset`` (required).
    """
    if kind not in ("last", "best"):
        raise ValueError(f"checkpoint kind must be 'last' or 'best', got {kind!r}")
    entries = state.to_dict()
    ckpt: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "kind": kind,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config.to_dict(),
        "step": entries["step"],
        "epoch": entries["epoch"],
        "best": entries["best"],
        "torch_version": str(torch.__version__),
    }
    if kind == "last":
        if optimizer is None or metrics_offset is None:
            raise ValueError("a 'last' checkpoint needs the optimizer and the metrics offset")
        rng = capture_rng_state()
        # Mid-epoch only: a finished epoch's successor reseeds its generator (epoch_seed).
        if state.sampler is not None and state.batch_in_epoch > 0:
            rng["sampler"] = state.sampler
        if scaler is not None:
            ckpt["scaler"] = scaler.state_dict()
        ckpt.update(
            optimizer=optimizer.state_dict(),
            batch_in_epoch=entries["batch_in_epoch"],
            rng=rng,
            epoch_loss=entries["epoch_loss"],
            train_time=entries["train_time"],
            finished=entries["finished"],
            metrics_offset=int(metrics_offset),
        )
    return ckpt


# ----------------------------------------------------------------------------------------
# Models from configs and checkpoints
# ----------------------------------------------------------------------------------------


def resume_training(
    path: Path,
    config: Config,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[TrainState, int]:
    """Continue a run from its ``last`` checkpoint at ``path``: check that it is a training
    checkpoint of ``config`` (only the keys the schema marks resumable may differ) and that
    every entry is sound, then load it into the model, optimiser, scaler and the global RNGs.
    Returns the train state and the ``metrics.jsonl`` offset to truncate the log to."""
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != "last":
        raise CheckpointError(f"{path}: not a training checkpoint (kind={ckpt.get('kind')!r})")
    resumable = resumable_keys()
    changed = [k for k in diff_configs(ckpt["config"], config.to_dict()) if k not in resumable]
    if changed:
        raise CheckpointError(
            f"cannot resume {path}: the config differs in {', '.join(changed)} "
            f"(only {', '.join(sorted(resumable))} may change); start a new run instead"
        )
    state = TrainState.from_dict(ckpt, path)  # every entry checked before anything is restored
    offset = ckpt["metrics_offset"]
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise CheckpointError(
            f"{path}: checkpoint entry 'metrics_offset' must be an integer >= 0, got {offset!r:.80}; "
            "the file was edited or written by other code, it cannot be resumed"
        )
    restores: list[tuple[str, Callable[[], Any]]] = [
        ("model", lambda: model.load_state_dict(ckpt["model"], strict=True)),
        ("optimizer", lambda: optimizer.load_state_dict(ckpt["optimizer"])),
        ("rng", lambda: restore_rng_state(ckpt["rng"])),
    ]
    if scaler is not None and ckpt.get("scaler") is not None:
        restores.append(("scaler", lambda: scaler.load_state_dict(ckpt["scaler"])))
    for key, restore in restores:
        try:
            restore()
        except (RuntimeError, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            reason = first_line(exc)
            raise CheckpointError(
                f"{path}: checkpoint entry {key!r} cannot be restored ({reason:.200}); the file was "
                "edited or written by other code, it cannot be resumed"
            ) from None
    return state, offset


def load_model(path: str | os.PathLike) -> tuple[SimSC, Config, dict[str, Any]]:
    """Rebuild the model of a checkpoint (``last.pt`` or ``best.pt``) with its weights.

    The backbone is built without downloading anything (``pretrained=False``): every weight
    comes from the checkpoint. Returns ``(model in eval mode, config, checkpoint metadata)``.
    """
    ckpt = load_checkpoint(path)
    try:
        cfg = load_config(ckpt["config"])
    except (ConfigError, KeyError) as exc:
        raise CheckpointError(f"{path}: stored config is invalid: {exc}") from None
    model = build_model(cfg, pretrained=False)
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        hint = ""
        if cfg.model.head != "none" and "head." in str(exc):
            hint = (
                f" (the {cfg.model.head!r} head changed, its layers or where the temperature enters, when the "
                "heads were made to compute what their papers' code computes; a checkpoint of the earlier head "
                "cannot be loaded: retrain it)"
            )
        raise CheckpointError(f"{path}: weights do not fit the configured model{hint}: {exc}") from None
    model.eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "rng", DIGEST_KEY)}
    return model, cfg, meta
