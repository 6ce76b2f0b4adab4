"""Training engine: the trainer, checkpoints and the callback interface."""

from .callbacks import Callback, CallbackList, CallbackProtocol, HistoryCallback
from .checkpoint import (
    CheckpointError,
    atomic_save,
    build_model,
    capture_rng_state,
    load_checkpoint,
    load_model,
    restore_rng_state,
)
from .trainer import Trainer, TrainingDivergedError, epoch_seed, param_groups, train

__all__ = [
    "Callback",
    "CallbackList",
    "CallbackProtocol",
    "CheckpointError",
    "HistoryCallback",
    "Trainer",
    "TrainingDivergedError",
    "atomic_save",
    "build_model",
    "capture_rng_state",
    "epoch_seed",
    "load_checkpoint",
    "load_model",
    "param_groups",
    "restore_rng_state",
    "train",
]
