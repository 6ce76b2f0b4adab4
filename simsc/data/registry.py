"""Dataset registry: ``build_dataset(name, root, split, resolution, **kw)``.

``embedded`` is the SPair-71k loader (``theta_bbox`` protocol) reading the generated set
that :mod:`simsc.data.embedded` writes in the SPair layout under its own root; it caches
under its own name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simsc import defaults as D
from simsc.data.pfpascal import PFPascalDataset
from simsc.data.pfwillow import PFWillowDataset
from simsc.data.records import PairDataset, Resolution
from simsc.data.spair import SPairDataset

#: name -> the loader of the installed data set (where its files come from:
#: :data:`simsc.data.sources.DATASET_SOURCES`).
DATASETS: dict[str, Callable[..., PairDataset]] = {
    "pfpascal": PFPascalDataset,
    "pfwillow": PFWillowDataset,
    "spair": SPairDataset,
    "embedded": functools.partial(SPairDataset, name="embedded"),
}

#: The protocol threshold of each registered dataset.
THRESHOLD_KIND: dict[str, str] = {"pfpascal": "img", "pfwillow": "kps", "spair": "bbox", "embedded": "bbox"}


def build_dataset(
    name: str, root: str | Path, split: str, resolution: Resolution | str = D.RESOLUTION, **kwargs: Any
) -> PairDataset:
    """Instantiate a registered dataset; extra keywords (``cache_dir``, ``pairs_dir`` ...) go
    to its constructor."""
    try:
        factory = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}") from None
    return factory(root, split=split, resolution=resolution, **kwargs)
