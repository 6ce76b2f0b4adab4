"""Data sets: official layouts (PF-Pascal, PF-Willow, SPair-71k), the embedded offline set,
pair records and their collate function, the preprocessing cache and the downloader."""

from .._lazy import lazy_attributes

# submodule -> the names it defines, each imported on first use (PEP 562), so that importing
# one submodule does not run the whole package: each DVC stage's dependencies are the
# modules it imports (pipeline/dvc_deps.py reads this table).
_LAZY = {
    "records": (
        "THRESHOLD_KINDS",
        "DatasetFormatError",
        "PairDataset",
        "collate_pairs",
        "compute_thresholds",
        "parse_resolution",
    ),
    "images": ("MAX_PIXELS", "load_image"),
    "cache": ("CachedImages", "build_cache"),
    "pfpascal": ("PASCAL_CLASSES", "PFPascalDataset"),
    "pfwillow": ("PFWillowDataset",),
    "spair": ("SPairDataset",),
    "registry": ("DATASETS", "THRESHOLD_KIND", "build_dataset"),
    "embedded": ("EMBEDDED_PHOTOS", "EMBEDDED_SPLITS", "build_embedded_dataset"),
    "download": ("DownloadError", "download_dataset"),
}


__getattr__, __dir__, __all__ = lazy_attributes(__name__, _LAZY, globals())
