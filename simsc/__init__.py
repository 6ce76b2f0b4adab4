"""SimSC: semantic correspondence by fine-tuning a backbone with a learned softmax temperature."""

from .backbones import BACKBONES, Backbone, BackboneCheckpointError, build_backbone
from .coords import feature_to_image, image_to_feature, rescale_box, rescale_points
from .loss import cross_entropy, gaussian_target, simsc_loss, temperature_regularizer
from .matching import full_correlation, l2_normalize, query_score_maps, scale_by_temperature
from .model import SimSC
from .pck import PCKAccumulator, pck, pck_per_image, theta_bbox, theta_img, theta_kps
from .soft_argmax import kernel_soft_argmax
from .temperature import build_temperature, effective_temperature

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneCheckpointError",
    "PCKAccumulator",
    "SimSC",
    "build_backbone",
    "build_temperature",
    "cross_entropy",
    "effective_temperature",
    "feature_to_image",
    "full_correlation",
    "gaussian_target",
    "image_to_feature",
    "kernel_soft_argmax",
    "l2_normalize",
    "pck",
    "pck_per_image",
    "query_score_maps",
    "rescale_box",
    "rescale_points",
    "scale_by_temperature",
    "simsc_loss",
    "temperature_regularizer",
    "theta_bbox",
    "theta_img",
    "theta_kps",
]
