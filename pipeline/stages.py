"""DVC stage entry points: thin wrappers that read ``params.yaml`` and call the library.

``python -m pipeline.stages <stage>``; each stage reads only its own sections of
``params.yaml``, so DVC's ``params:`` declarations in ``dvc.yaml`` are exact.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

PARAMS = Path("params.yaml")


def load_params(path: Path = PARAMS) -> dict[str, Any]:
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"{path}: not found (run the stages from the project root)") from None
    if not isinstance(params, dict):
        raise SystemExit(f"{path}: expected a mapping of stage sections")
    return params


def _section(params: dict[str, Any], name: str, keys: Sequence[str]) -> dict[str, Any]:
    sec = params.get(name)
    if not isinstance(sec, dict):
        raise SystemExit(f"params.yaml: missing section {name!r}")
    missing = [k for k in keys if k not in sec]
    if missing:
        raise SystemExit(f"params.yaml: section {name!r} lacks {missing}")
    return sec


def stage_download(params: dict[str, Any]) -> None:
    """Materialise the data set: generate the embedded set, or download an official one."""
    data = _section(params, "data", ["dataset", "root"])
    if data["dataset"] == "embedded":
        from simsc.data.embedded import build_embedded_dataset

        emb = _section(params, "embedded", ["seed", "n_train", "n_val", "n_test"])
        build_embedded_dataset(
            data["root"], seed=emb["seed"], n_train=emb["n_train"], n_val=emb["n_val"], n_test=emb["n_test"]
        )
    else:
        from simsc.data.download import download_dataset

        download_dataset(data["dataset"], Path(data["root"]).parent)


def stage_preprocess(params: dict[str, Any]) -> None:
    """Decode and resize every image of every split once into the cache."""
    from simsc.data.cache import build_cache
    from simsc.data.registry import build_dataset

    data = _section(params, "data", ["dataset", "root"])
    pre = _section(params, "preprocess", ["cache_dir", "resolutions", "splits"])
    summary = []
    for resolution in pre["resolutions"]:
        for split in pre["splits"]:
            ds = build_dataset(data["dataset"], data["root"], split, resolution, cache_dir=pre["cache_dir"])
            info = build_cache(ds, show_progress=True)
            summary.append({"split": split, "resolution": resolution, "images": info["images"]})
    Path(pre["cache_dir"], "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


STAGES = {"download": stage_download, "preprocess": stage_preprocess}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.stages", description=__doc__)
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--params", type=Path, default=PARAMS)
    args = parser.parse_args(argv)
    STAGES[args.stage](load_params(args.params))
    return 0


if __name__ == "__main__":
    sys.exit(main())
