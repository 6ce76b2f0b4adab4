"""Data sets: official layouts (PF-Pascal, PF-Willow, SPair-71k), the embedded offline set,
pair records and their collate function, the preprocessing cache and the downloader."""

from .records import (
    THRESHOLD_KINDS,
    DatasetFormatError,
    PairDataset,
    collate_pairs,
    compute_thresholds,
    parse_resolution,
)
from .images import MAX_PIXELS, load_image
from .cache import CachedImages, build_cache
from .pfpascal import PASCAL_CLASSES, PFPascalDataset
from .pfwillow import PFWillowDataset
from .spair import SPairDataset
from .registry import DATASETS, THRESHOLD_KIND, build_dataset
from .embedded import EMBEDDED_PHOTOS, EMBEDDED_SPLITS, build_embedded_dataset
from .download import DownloadError, download_dataset

__all__ = [
    "CachedImages",
    "DATASETS",
    "DatasetFormatError",
    "DownloadError",
    "EMBEDDED_PHOTOS",
    "EMBEDDED_SPLITS",
    "MAX_PIXELS",
    "PASCAL_CLASSES",
    "PFPascalDataset",
    "PFWillowDataset",
    "PairDataset",
    "SPairDataset",
    "THRESHOLD_KIND",
    "THRESHOLD_KINDS",
    "build_cache",
    "build_dataset",
    "build_embedded_dataset",
    "collate_pairs",
    "compute_thresholds",
    "download_dataset",
    "load_image",
    "parse_resolution",
]
