"""experiments/miniature.py: the pretrained ablations end to end on a tiny set, divergences, the data flags."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from experiments import miniature
from simsc.data.registry import build_dataset
from simsc.engine.trainer import TrainingDivergedError
from simsc.evaluate import evaluate
from simsc.model import SimSC
from simsc.temperature import MANUAL_BETA_EVAL


@pytest.mark.slow
def test_miniature_end_to_end_on_a_tiny_set(tmp_path):
    data, runs, res = tmp_path / "data", tmp_path / "runs", tmp_path / "results"
    argv = [
        "--difficulty=mild",  # every checkout has it (hard needs build_embedded_dataset(difficulty=))
        "--pairs=8,4,4",
        f"--data-dir={data}",
        f"--runs-dir={runs}",
        f"--results={res}",
        "--seeds=0",
        "--variants=mlp,fixed:1",
        "--set=train.max_steps=2",
        "--threads=1",
        "--no-progress",
    ]
    assert miniature.main(argv) == 0
    out = json.loads((res / "miniature.json").read_text(encoding="utf-8"))
    s = out["setup"]
    assert (s["backbone"], s["pretrained"], s["finetune"]) == ("efficientnet_lite0", True, "all")
    assert s["lr_backbone"] == pytest.approx(2e-5)  # the paper's, not params.yaml's random-init 1e-4
    assert s["lr_temperature"] == {"mlp": pytest.approx(1e-4), "single": pytest.approx(5e-3)}
    assert s["pairs"] == {"trn": 8, "val": 4, "test": 4}
    assert s["git_commit"] and s["command"].startswith("python -m experiments.miniature")
    variants = [r["variant"] for r in out["runs"]]
    assert variants == ["mlp", "fixed:1", miniature.NOT_FINETUNED]
    mlp = out["runs"][0]
    assert mlp["steps"] == 2 and not mlp["diverged"]
    assert len(mlp["curves"]["grad"]) == 3  # the last block's three convs (log_grad_stats)
    assert out["runs"][1]["test"]["beta_eval"] == MANUAL_BETA_EVAL
    assert "test_beta_eval_1" in out["runs"][1]  # fixed:1's supp. Fig. 3 point
    # The not-fine-tuned baseline: once (pretrained weights), built from the configuration. The
    # old bug built it with pretrained=False: its PCK must be the pretrained backbone's.
    (nf,) = [r for r in out["runs"] if r["variant"] == miniature.NOT_FINETUNED]
    assert (nf["backbone"], nf["pretrained"], nf["seed"]) == ("efficientnet_lite0", True, None)
    model = SimSC("efficientnet_lite0", "fixed:1", pretrained=True, finetune="none").eval()
    rep = evaluate(model, build_dataset("embedded", str(data), "test", 160), beta_eval=MANUAL_BETA_EVAL)
    assert nf["test"]["per_image"] == pytest.approx(rep["per_image"])
    # every model also at the beta_eval that is best on the val split (features apart from temperature)
    from simsc.evaluate import DEFAULT_BETA_SWEEP, beta_sweep

    assert all("test_val_beta" in r for r in out["runs"])
    sweep = beta_sweep(model, build_dataset("embedded", str(data), "val", 160), DEFAULT_BETA_SWEEP)
    chosen = nf["test_val_beta"]["beta_eval"]
    assert chosen == sweep["best"]["beta_eval"]
    at_chosen = evaluate(model, build_dataset("embedded", str(data), "test", 160), beta_eval=chosen)
    assert nf["test_val_beta"]["per_image"] == pytest.approx(at_chosen["per_image"])

    md = (res / "miniature.md").read_text(encoding="utf-8")
    for row in ("| WithL2Norm |", "| SimSC-mlp |", "| not fine-tuned |", "PF-Pascal, ResNet-101\\*, 256 px"):
        assert row in md
    assert "SimSC-mlp > WithL2Norm at PCK@0.1 (paper 92.6 vs 80.3): **" in md
    assert "ratio WithL2Norm / SimSC-mlp" in md
    assert "### The same models at the beta_eval chosen on the val split" in md
    for n in (1, 2, 3):
        assert (res / f"miniature_supp_fig{n}.png").stat().st_size > 0

    # A second call reuses every cached run (nothing is trained again).
    stamp = (runs / "prob_mlp_s0" / "miniature_eval.json").stat().st_mtime_ns
    assert miniature.main(argv) == 0
    assert (runs / "prob_mlp_s0" / "miniature_eval.json").stat().st_mtime_ns == stamp


def test_a_diverged_run_is_recorded_not_raised(tmp_path, monkeypatch, tiny_embedded):
    def diverge(cfg, resume):
        raise TrainingDivergedError(7, 0, float("nan"), [0.06], [0.06], "non-finite loss", None)

    monkeypatch.setattr(miniature, "train", diverge)
    task = {
        "config": str(miniature.REPO / "params.yaml"),
        "overrides": [*miniature.MINIATURE_SET, "model.pretrained=false"],
        "data_dir": str(tiny_embedded),
        "runs_dir": str(tmp_path),
        "variant": "fixed:0.004",
        "form": "prob",
        "seed": 1,
        "threads": 1,
        "jobs": 1,
        "no_progress": True,
    }
    row = miniature.run_one(task)
    assert (row["diverged"], row["diverged_step"], row["test"]) == (True, 7, None)
    summ = miniature.summarise([row], ["prob"], 50)
    cell = summ["fixed:0.004|prob"]
    assert (cell["n"], cell["n_runs"], cell["diverged"][0]["step"]) == (0, 1, 7)
    lines = miniature.reproduction_lines(summ, "prob", {})
    assert "- beta_trn = 0.004 diverges (paper: NaN): **yes** (1 of 1 seeds)" in lines
    assert miniature.run_one(task) == row  # cached: not trained again


def test_the_difficulty_needs_the_generator_parameter(tmp_path, monkeypatch):
    calls = []

    def old(root, *, seed=0, n_train=500, n_val=100, n_test=100, progress=True):
        calls.append({"n_train": n_train})
        return Path(root)

    def new(root, *, seed=0, n_train=500, n_val=100, n_test=100, difficulty="mild", progress=True):
        calls.append({"difficulty": difficulty})
        return Path(root)

    def args(difficulty):
        ns = argparse.Namespace(
            config=str(miniature.REPO / "params.yaml"),
            difficulty=difficulty,
            pairs="4,2,2",
            data_dir=None,
            runs_dir=None,
            no_progress=True,
        )
        miniature.resolve_dirs(ns, "x")
        return ns

    monkeypatch.setattr(miniature, "build_embedded_dataset", old)
    with pytest.raises(SystemExit, match="only the mild embedded set exists; pass --difficulty mild"):
        miniature.build_data(args("hard"))
    assert miniature.build_data(args("mild")).name == "embedded_mild"
    monkeypatch.setattr(miniature, "build_embedded_dataset", new)
    assert miniature.build_data(args("hard")).name == "embedded_hard"
    assert calls == [{"n_train": 4}, {"difficulty": "hard"}]


def test_variant_groups():
    assert miniature.parse_variants("tab3") == ["fixed:1", "no-l2", "single", "mlp"]
    assert miniature.parse_variants("mlp,fig3,mlp") == ["mlp", "fixed:0.004", "fixed:0.01", "fixed:0.03", "fixed:0.1"]
    with pytest.raises(ValueError, match="unknown temperature"):
        miniature.parse_variants("tab4")
