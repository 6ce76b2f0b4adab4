"""Training engine: the trainer, checkpoints and the callback interface."""

from .._lazy import lazy_attributes

# name -> the submodule that defines it, imported on first use (PEP 562), so that importing
# one submodule does not run the whole package: each DVC stage's dependencies are the
# modules it imports (pipeline/dvc_deps.py reads this table).
_LAZY = {
    "Callback": "callbacks",
    "CallbackList": "callbacks",
    "CallbackProtocol": "callbacks",
    "HistoryCallback": "callbacks",
    "BestSoFar": "checkpoint",
    "CheckpointError": "checkpoint",
    "TrainState": "checkpoint",
    "atomic_save": "checkpoint",
    "build_checkpoint": "checkpoint",
    # re-exported by checkpoint from simsc.model (its home), for the engine's public API
    "build_model": "checkpoint",
    "capture_rng_state": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_model": "checkpoint",
    "restore_rng_state": "checkpoint",
    "Trainer": "trainer",
    "TrainingDivergedError": "trainer",
    "epoch_seed": "runtime",
    "RunFolder": "run_folder",
    "RunFolderError": "run_folder",
    "resolve_device": "runtime",
    "STEP_FIELDS": "records",
    "read_records": "records",
    "param_groups": "trainer",
    "train": "trainer",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

__all__ = [
    "BestSoFar",
    "Callback",
    "CallbackList",
    "CallbackProtocol",
    "CheckpointError",
    "HistoryCallback",
    "RunFolder",
    "RunFolderError",
    "STEP_FIELDS",
    "TrainState",
    "Trainer",
    "TrainingDivergedError",
    "atomic_save",
    "build_checkpoint",
    "build_model",
    "capture_rng_state",
    "epoch_seed",
    "load_checkpoint",
    "load_model",
    "param_groups",
    "read_records",
    "resolve_device",
    "restore_rng_state",
    "train",
]
