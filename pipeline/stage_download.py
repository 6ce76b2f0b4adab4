"""DVC stage ``download``: generate the embedded data set, or download an official one."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.stage_common import STAGE_PARAMS, section, stage_main
from simsc.errors import UserError

# The params.yaml keys this stage reads, and all it is given (its params: in dvc.yaml).
PARAMS = STAGE_PARAMS["download"]


def stage_download(params: dict[str, Any]) -> None:
    """Materialise the data set: generate the embedded set, or download an official one."""
    data = section(params, "data", ["dataset", "root"])
    if data["dataset"] == "embedded":
        from simsc.data.embedded import DIFFICULTIES, build_embedded_dataset

        emb = section(params, "embedded", ["seed", "n_train", "n_val", "n_test", "difficulty"])
        if emb["difficulty"] not in DIFFICULTIES:
            raise UserError(
                f"params.yaml: embedded.difficulty must be one of {', '.join(DIFFICULTIES)}, got {emb['difficulty']!r}"
            )
        build_embedded_dataset(
            data["root"],
            seed=emb["seed"],
            n_train=emb["n_train"],
            n_val=emb["n_val"],
            n_test=emb["n_test"],
            difficulty=emb["difficulty"],
        )
    else:
        from simsc.data.download import download_dataset

        download_dataset(data["dataset"], Path(data["root"]).parent)


def user_errors() -> tuple[type[BaseException], ...]:
    """A failed download is fixed by the user (network, mirror, a file placed by hand)."""
    from simsc.data.download import DownloadError

    return (DownloadError,)


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("download", stage_download, PARAMS, argv, doc=__doc__, user_errors=user_errors())


if __name__ == "__main__":
    sys.exit(main())
