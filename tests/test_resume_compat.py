"""A checkpoint written by an earlier version of the trainer resumes and continues the same run.

``tests/fixtures/resume_v1/`` holds ``last.pt`` and ``metrics.jsonl`` of a tiny run stopped
mid-epoch at step 3 (``test_resnet``, random init, 1 thread), written before the trainer was
split into the loop, the run folder and the runtime; ``expected.json`` the losses of steps 4-6
and the weights' sums that the old code reached when it resumed that checkpoint. The new code
must reach them too: the data order, RNG states, optimiser state and metrics offset are read
as they were written. A tolerance, not bit equality, so the check does not depend on this
machine's float kernels; a wrong data order or RNG state moves the losses by ~1e-3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from simsc.engine import train
from simsc.engine.toy import ToyTranslationPairs

FIXTURE = Path(__file__).parent / "fixtures" / "resume_v1"


@pytest.mark.slow
def test_a_checkpoint_of_the_earlier_trainer_resumes_to_the_same_run(tmp_path):
    import torch

    expected = json.loads((FIXTURE / "expected.json").read_text())
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURE / "last.pt", run / "checkpoints" / "last.pt")
    shutil.copy(FIXTURE / "metrics.jsonl", run / "metrics.jsonl")
    cfg = torch.load(FIXTURE / "last.pt", weights_only=True)["config"]
    cfg["train"].update(out_dir=str(run), max_steps=6)
    trn, val = ToyTranslationPairs(8, 64, seed=0), ToyTranslationPairs(4, 64, seed=1, split="val")
    summary = train(cfg, resume=True, train_dataset=trn, val_dataset=val)
    assert summary["resumed_from_step"] == 3 and summary["step"] == expected["final_step"] == 6
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = {str(r["step"]): r["loss"] for r in records if r["type"] == "step"}
    assert sorted(losses) == ["1", "2", "3", "4", "5", "6"]  # the old records kept, no step twice
    for step, loss in expected["steps"].items():
        assert losses[step] == pytest.approx(loss, rel=1e-6, abs=1e-7), step
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    sums = {k: float(v.double().sum()) for k, v in state.items() if v.is_floating_point()}
    assert sums.keys() == expected["param_sums"].keys()
    for k, s in expected["param_sums"].items():
        assert sums[k] == pytest.approx(s, rel=1e-6, abs=1e-6), k
