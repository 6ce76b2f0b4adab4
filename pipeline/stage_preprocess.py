"""DVC stage ``preprocess``: decode and resize every image of every split once into the cache,
and write each split's pair index (``<cache_dir>/<dataset>/index/<split>.npz``, see
:mod:`simsc.data.index`) that the train and evaluate stages load instead of parsing."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.stage_common import STAGE_PARAMS, section, stage_main

# The params.yaml keys this stage reads, and all it is given (its params: in dvc.yaml).
PARAMS = STAGE_PARAMS["preprocess"]


def stage_preprocess(params: dict[str, Any]) -> None:
    """Decode and resize every image of every split once into the cache; the first
    construction of each split writes its pair index."""
    from simsc.data.cache import build_cache
    from simsc.data.registry import build_dataset
    from simsc.io import atomic_write_json

    data = section(params, "data", ["dataset", "root"])
    pre = section(params, "preprocess", ["cache_dir", "resolutions", "splits"])
    summary = []
    for resolution in pre["resolutions"]:
        for split in pre["splits"]:
            ds = build_dataset(data["dataset"], data["root"], split, resolution, cache_dir=pre["cache_dir"])
            info = build_cache(ds, show_progress=True)
            # the index path, not its load state: the file must be the same on every run
            index = Path(ds.index_path).relative_to(pre["cache_dir"]).as_posix() if ds.index_path else None
            summary.append(
                {"split": split, "resolution": resolution, "images": info["images"], "pairs": len(ds), "index": index}
            )
    atomic_write_json(Path(pre["cache_dir"], "summary.json"), summary, indent=2)


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("preprocess", stage_preprocess, PARAMS, argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
