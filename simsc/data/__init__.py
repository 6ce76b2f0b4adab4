"""Data sets: official layouts (PF-Pascal, PF-Willow, SPair-71k), the embedded offline set,
pair records and their collate function, the preprocessing cache and the downloader."""

from .._lazy import lazy_attributes

# name -> the submodule that defines it, imported on first use (PEP 562), so that importing
# one submodule does not run the whole package: each DVC stage's dependencies are the
# modules it imports (pipeline/dvc_deps.py reads this table).
_LAZY = {
    "THRESHOLD_KINDS": "records",
    "DatasetFormatError": "records",
    "PairDataset": "records",
    "collate_pairs": "records",
    "compute_thresholds": "records",
    "parse_resolution": "records",
    "MAX_PIXELS": "images",
    "load_image": "images",
    "CachedImages": "cache",
    "build_cache": "cache",
    "PASCAL_CLASSES": "pfpascal",
    "PFPascalDataset": "pfpascal",
    "PFWillowDataset": "pfwillow",
    "SPairDataset": "spair",
    "DATASETS": "registry",
    "THRESHOLD_KIND": "registry",
    "build_dataset": "registry",
    "EMBEDDED_PHOTOS": "embedded",
    "EMBEDDED_SPLITS": "embedded",
    "build_embedded_dataset": "embedded",
    "DownloadError": "download",
    "download_dataset": "download",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

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
