"""SimSC: semantic correspondence by fine-tuning a backbone with a learned softmax temperature."""

from ._lazy import lazy_attributes

# submodule -> the names it defines, each imported on first use (PEP 562), so that importing
# one submodule does not run the whole package: each DVC stage's dependencies are the
# modules it imports (pipeline/dvc_deps.py reads this table).
_LAZY = {
    "backbones": ("BACKBONES", "Backbone", "BackboneCheckpointError", "build_backbone"),
    "coords": ("feature_to_image", "image_to_feature", "rescale_box", "rescale_points"),
    "loss": (
        "cross_entropy",
        "cross_entropy_logprob",
        "cross_entropy_prob",
        "gaussian_target",
        "simsc_loss",
        "temperature_regularizer",
    ),
    "matching": ("full_correlation", "l2_normalize", "query_score_maps", "scale_by_temperature"),
    "model": ("SimSC", "build_model"),
    "pck": ("PCKAccumulator", "pck", "pck_per_image", "theta_bbox", "theta_img", "theta_kps"),
    "soft_argmax": ("kernel_soft_argmax",),
    "temperature": ("build_temperature", "effective_temperature"),
    "config": ("Config", "ConfigError", "apply_overrides", "load_config"),
    "engine": (
        "Callback",
        "CheckpointError",
        "HistoryCallback",
        "Trainer",
        "TrainingDivergedError",
        "load_checkpoint",
        "load_model",
        "train",
    ),
    "evaluate": ("DEFAULT_BETA_SWEEP", "beta_sweep", "evaluate_model"),
    "visualize": ("draw_matches", "grid_points", "predict_matches", "save_match_picture"),
}


__getattr__, __dir__, __all__ = lazy_attributes(__name__, _LAZY, globals())

__version__ = "0.1.0"
