"""DVC stage ``preprocess``: decode and resize every image of every split once into the cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

from pipeline.stage_common import section, stage_main

# The params.yaml keys this stage reads, and all it is given: its params: in dvc.yaml.
PARAMS = ("data.dataset", "data.root", "preprocess")


def stage_preprocess(params: dict[str, Any]) -> None:
    """Decode and resize every image of every split once into the cache."""
    from simsc.data.cache import build_cache
    from simsc.data.registry import build_dataset

    data = section(params, "data", ["dataset", "root"])
    pre = section(params, "preprocess", ["cache_dir", "resolutions", "splits"])
    summary = []
    for resolution in pre["resolutions"]:
        for split in pre["splits"]:
            ds = build_dataset(data["dataset"], data["root"], split, resolution, cache_dir=pre["cache_dir"])
            info = build_cache(ds, show_progress=True)
            summary.append({"split": split, "resolution": resolution, "images": info["images"]})
    Path(pre["cache_dir"], "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("preprocess", stage_preprocess, PARAMS, argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
