"""Training engine: the trainer, checkpoints and the callback interface."""

from .._lazy import lazy_attributes

# submodule -> the names it defines, each imported on first use (PEP 562), so that importing
# one submodule does not run the whole package: each DVC stage's dependencies are the
# modules it imports (pipeline/dvc_deps.py reads this table).
_LAZY = {
    "callbacks": ("Callback", "CallbackList", "CallbackProtocol", "HistoryCallback"),
    # build_model: re-exported by checkpoint from simsc.model (its home), for the engine's public API
    "checkpoint": (
        "BestSoFar",
        "CheckpointError",
        "TrainState",
        "atomic_save",
        "build_checkpoint",
        "build_model",
        "capture_rng_state",
        "load_checkpoint",
        "load_model",
        "restore_rng_state",
        "resume_training",
    ),
    "trainer": ("Trainer", "TrainingDivergedError", "param_groups", "train"),
    "runtime": ("epoch_seed", "resolve_device"),
    "run_folder": ("RunFolder", "RunFolderError"),
    "records": ("STEP_FIELDS", "read_records"),
}


__getattr__, __dir__, __all__ = lazy_attributes(__name__, _LAZY, globals())
