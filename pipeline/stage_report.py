"""DVC stage ``report``: the Markdown/HTML report and its figures."""

from __future__ import annotations

import sys
from typing import Any, Sequence

from pipeline.stage_common import stage_main

# The params.yaml keys this stage reads, and all it is given: its params: in dvc.yaml.
PARAMS = ("report", "evaluate", "tracking", "train.out_dir")


def stage_report(params: dict[str, Any]) -> None:
    from .report import build_report

    build_report(params)


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("report", stage_report, PARAMS, argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
