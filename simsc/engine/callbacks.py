"""Callbacks: how a tracker (MLflow, Ray Tune, ...) follows a training run.

:mod:`simsc` itself imports no tracking library; integrations subclass :class:`Callback`
(or implement the same four methods, see :class:`CallbackProtocol`) and are passed to
:class:`~simsc.engine.trainer.Trainer`. Every hook receives plain Python values (numbers,
strings, nested dicts), the same records that go to ``metrics.jsonl``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class CallbackProtocol(Protocol):
    def on_step(self, metrics: dict[str, Any]) -> None: ...

    def on_epoch(self, metrics: dict[str, Any]) -> None: ...

    def on_checkpoint(self, path: Path, is_best: bool) -> None: ...

    def on_end(self, summary: dict[str, Any]) -> None: ...


class Callback:
    """No-op base class; override the hooks you need.

    - ``on_step(metrics)``: after every optimiser step (the ``type: step`` record).
    - ``on_epoch(metrics)``: after each validation (the ``type: epoch`` record).
    - ``on_checkpoint(path, is_best)``: after a checkpoint file was written atomically
      (``last.pt``: ``is_best=False``; ``best.pt``: ``is_best=True``).
    - ``on_end(summary)``: once, when training finished (``summary["status"] == "finished"``)
      or diverged (``"diverged"``, called before :class:`TrainingDivergedError` propagates).
    """

    def on_step(self, metrics: dict[str, Any]) -> None:
        pass

    def on_epoch(self, metrics: dict[str, Any]) -> None:
        pass

    def on_checkpoint(self, path: Path, is_best: bool) -> None:
        pass

    def on_end(self, summary: dict[str, Any]) -> None:
        pass


class CallbackList(Callback):
    """Fan a hook out to several callbacks, in order."""

    def __init__(self, callbacks: Iterable[CallbackProtocol] = ()) -> None:
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            missing = [m for m in ("on_step", "on_epoch", "on_checkpoint", "on_end") if not hasattr(cb, m)]
            if missing:
                raise TypeError(f"callback {cb!r} lacks {', '.join(missing)}; subclass simsc.engine.Callback")

    def on_step(self, metrics):
        for cb in self.callbacks:
            cb.on_step(metrics)

    def on_epoch(self, metrics):
        for cb in self.callbacks:
            cb.on_epoch(metrics)

    def on_checkpoint(self, path, is_best):
        for cb in self.callbacks:
            cb.on_checkpoint(path, is_best)

    def on_end(self, summary):
        for cb in self.callbacks:
            cb.on_end(summary)


class HistoryCallback(Callback):
    """Keeps every record in memory (handy in notebooks and tests)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.epochs: list[dict[str, Any]] = []
        self.checkpoints: list[tuple[Path, bool]] = []
        self.summary: dict[str, Any] | None = None

    def on_step(self, metrics):
        self.steps.append(metrics)

    def on_epoch(self, metrics):
        self.epochs.append(metrics)

    def on_checkpoint(self, path, is_best):
        self.checkpoints.append((Path(path), is_best))

    def on_end(self, summary):
        self.summary = summary
