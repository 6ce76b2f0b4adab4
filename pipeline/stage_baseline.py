"""DVC stage ``baseline@<set>``: the backbone as configured, not fine-tuned, on one entry of ``evaluate.sets``.

The paper's reference point for what fine-tuning adds (Tab. 3's first row): ``model.backbone`` with
``model.pretrained``'s weights, frozen, matched with L2-normalised features at beta 1 and localised
with the kernel soft-argmax at beta_eval 0.02 (the WithL2Norm inference). The report puts it beside
the fine-tuned model.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.stage_common import STAGE_PARAMS, section, stage_main
from pipeline.stage_evaluate import evaluate_into, evaluation_set, pck_line

# The params.yaml keys this stage reads, and all it is given (its params: in dvc.yaml).
PARAMS = STAGE_PARAMS["baseline"]
BASELINE_DIR = Path("reports/baseline")


def stage_baseline(params: dict[str, Any], name: str) -> None:
    """Evaluate the not-fine-tuned backbone on one evaluation set; writes ``reports/baseline/<name>/``:
    ``report.json``, ``pck.json`` (DVC metrics) and ``predictions.jsonl``."""
    import torch

    from simsc import defaults as D
    from simsc.config import load_config
    from simsc.model import build_model

    ev, dataset = evaluation_set(params, name)
    model_sec = section(params, "model", [])
    cfg = load_config({"model": {**model_sec, "temperature": "fixed:1", "finetune": "none"}})
    # Pretrained weights leave nothing random; a random init (model.pretrained: false) is the default seed's.
    torch.manual_seed(D.SEED)
    model = build_model(cfg).eval()
    out = BASELINE_DIR / name
    extra = {"name": name, "model": f"{cfg.model.backbone} pretrained={cfg.model.pretrained}, not fine-tuned"}
    report = evaluate_into(out, model, dataset, ev, params["evaluate"].get("max_pairs"), extra)
    print(f"baseline {name} ({cfg.model.backbone}, not fine-tuned): {pck_line(report)}")


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("baseline", stage_baseline, PARAMS, argv, with_name=True, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
