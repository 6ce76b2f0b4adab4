"""SimSC: semantic correspondence by fine-tuning a backbone with a learned softmax temperature."""

from .backbones import BACKBONES, Backbone, BackboneCheckpointError, build_backbone
from .coords import feature_to_image, image_to_feature, rescale_box, rescale_points
from .loss import (
    cross_entropy,
    cross_entropy_logprob,
    cross_entropy_prob,
    gaussian_target,
    simsc_loss,
    temperature_regularizer,
)
from .matching import full_correlation, l2_normalize, query_score_maps, scale_by_temperature
from .model import SimSC
from .pck import PCKAccumulator, pck, pck_per_image, theta_bbox, theta_img, theta_kps
from .soft_argmax import kernel_soft_argmax
from .temperature import build_temperature, effective_temperature
from .config import Config, ConfigError, apply_overrides, load_config
from .engine import (
    Callback,
    CheckpointError,
    HistoryCallback,
    Trainer,
    TrainingDivergedError,
    build_model,
    load_checkpoint,
    load_model,
    train,
)
from .evaluate import DEFAULT_BETA_SWEEP, beta_sweep, evaluate_model
from .visualize import draw_matches, grid_points, predict_matches, save_match_picture

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
