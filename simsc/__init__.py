"""SimSC: semantic correspondence by fine-tuning a backbone with a learned softmax temperature."""

import importlib

# name -> the submodule that defines it, imported on first use (PEP 562), so that importing
# one submodule does not run the whole package: each DVC stage's dependencies are the
# modules it imports (tests/test_dvc_deps.py reads this table).
_LAZY = {
    'BACKBONES': 'backbones',
    'Backbone': 'backbones',
    'BackboneCheckpointError': 'backbones',
    'build_backbone': 'backbones',
    'feature_to_image': 'coords',
    'image_to_feature': 'coords',
    'rescale_box': 'coords',
    'rescale_points': 'coords',
    'cross_entropy': 'loss',
    'cross_entropy_logprob': 'loss',
    'cross_entropy_prob': 'loss',
    'gaussian_target': 'loss',
    'simsc_loss': 'loss',
    'temperature_regularizer': 'loss',
    'full_correlation': 'matching',
    'l2_normalize': 'matching',
    'query_score_maps': 'matching',
    'scale_by_temperature': 'matching',
    'SimSC': 'model',
    'PCKAccumulator': 'pck',
    'pck': 'pck',
    'pck_per_image': 'pck',
    'theta_bbox': 'pck',
    'theta_img': 'pck',
    'theta_kps': 'pck',
    'kernel_soft_argmax': 'soft_argmax',
    'build_temperature': 'temperature',
    'effective_temperature': 'temperature',
    'Config': 'config',
    'ConfigError': 'config',
    'apply_overrides': 'config',
    'load_config': 'config',
    'Callback': 'engine',
    'CheckpointError': 'engine',
    'HistoryCallback': 'engine',
    'Trainer': 'engine',
    'TrainingDivergedError': 'engine',
    'build_model': 'engine',
    'load_checkpoint': 'engine',
    'load_model': 'engine',
    'train': 'engine',
    'DEFAULT_BETA_SWEEP': 'evaluate',
    'beta_sweep': 'evaluate',
    'evaluate_model': 'evaluate',
    'draw_matches': 'visualize',
    'grid_points': 'visualize',
    'predict_matches': 'visualize',
    'save_match_picture': 'visualize',
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneCheckpointError",
    "Callback",
    "CheckpointError",
    "Config",
    "ConfigError",
    "DEFAULT_BETA_SWEEP",
    "HistoryCallback",
    "PCKAccumulator",
    "SimSC",
    "Trainer",
    "TrainingDivergedError",
    "apply_overrides",
    "beta_sweep",
    "build_backbone",
    "build_model",
    "build_temperature",
    "cross_entropy",
    "cross_entropy_logprob",
    "cross_entropy_prob",
    "draw_matches",
    "effective_temperature",
    "evaluate_model",
    "feature_to_image",
    "full_correlation",
    "gaussian_target",
    "grid_points",
    "image_to_feature",
    "kernel_soft_argmax",
    "l2_normalize",
    "load_checkpoint",
    "load_config",
    "load_model",
    "pck",
    "pck_per_image",
    "predict_matches",
    "query_score_maps",
    "rescale_box",
    "rescale_points",
    "save_match_picture",
    "scale_by_temperature",
    "simsc_loss",
    "temperature_regularizer",
    "theta_bbox",
    "theta_img",
    "theta_kps",
    "train",
]
