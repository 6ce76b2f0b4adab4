"""Evaluator: report structure, hand-checkable PCK, predictions file, beta_eval sweep."""

from __future__ import annotations

import json

import pytest
import torch

from simsc.engine.toy import ToyTranslationPairs
from simsc.evaluate import DEFAULT_BETA_SWEEP, beta_sweep, evaluate, pair_loader
from simsc.model import SimSC

ALPHAS = ["0.05", "0.1", "0.15"]


class CellCentres(ToyTranslationPairs):
    """Identical images (``max_shift=0``) with keypoints at the centres of the stride-16 cells of a
    ResNet layer3 (its receptive-field centres: pixel 16 u, ``Backbone.cell_origin`` 0)."""

    def __getitem__(self, i):
        rec = super().__getitem__(i)
        c = torch.arange(self.size // 16, dtype=torch.float32) * 16
        ys, xs = torch.meshgrid(c, c, indexing="ij")
        kps = torch.stack([xs.flatten(), ys.flatten()], dim=-1)
        rec.update(src_kps=kps, trg_kps=kps.clone(), valid=torch.ones(len(kps), dtype=torch.bool))
        return rec


@pytest.fixture(scope="module")
def untrained():
    torch.manual_seed(0)
    return SimSC("resnet18", "fixed:1", pretrained=False, finetune="none").eval()


def test_identical_pairs_score_100(untrained):
    ds = CellCentres(4, 64, max_shift=0)
    rep = evaluate(untrained, ds)
    # The query feature equals its own cell's feature (cosine 1, the maximum): the match is exact.
    assert rep["per_image"] == {"0.05": 100.0, "0.1": 100.0, "0.15": 100.0}
    assert rep["per_keypoint"]["0.1"] == 100.0
    assert rep["beta_eval"] == 0.02 and rep["beta_eval_source"] == "model default"


def test_report_structure(untrained, tmp_path):
    ds = ToyTranslationPairs(5, 64, max_shift=8, categories=2, split="test")
    preds = tmp_path / "p.jsonl"
    rep = evaluate(untrained, ds, batch_size=2, predictions=preds)
    assert set(rep) >= {
        "per_image",
        "per_keypoint",
        "per_category",
        "n_pairs",
        "n_keypoints",
        "dataset",
        "split",
        "resolution",
        "beta_eval",
        "beta_eff",
        "alphas",
        "threshold_kind",
    }
    assert list(rep["per_image"]) == ALPHAS and list(rep["per_keypoint"]) == ALPHAS
    assert set(rep["per_category"]) == {"cat0", "cat1"}
    assert rep["n_pairs"] == 5 and rep["n_keypoints"] == 5 * 16
    assert (rep["dataset"], rep["split"], rep["resolution"], rep["threshold_kind"]) == ("toy", "test", 64, "img")
    assert rep["beta_eff"] == {"mean": 1.0, "std": 0.0}  # fixed:1
    p = rep["per_image"]
    assert 0 <= p["0.05"] <= p["0.1"] <= p["0.15"] <= 100
    json.dumps(rep)  # plain JSON
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [r["pair_id"] for r in rows] == [f"test-{i:05d}" for i in range(5)]
    assert set(rows[0]) == {"pair_id", "category", "pred", "gt", "src", "valid", "threshold", "beta_eff"}
    assert len(rows[0]["pred"]) == 16 and rows[0]["threshold"] == 64.0
    # the report is recomputable from the predictions (per-image PCK@0.1)
    hits = []
    for r in rows:
        d = torch.tensor(r["pred"]) - torch.tensor(r["gt"])
        hits.append(float((d.norm(dim=-1) <= 0.1 * r["threshold"]).float().mean()) * 100)
    assert sum(hits) / len(hits) == pytest.approx(p["0.1"], abs=1e-6)


def test_predictions_match_model_predict(untrained):
    ds = ToyTranslationPairs(3, 64, max_shift=8)
    rows = []
    evaluate(untrained, ds, batch_size=3, beta_eval=0.05, predictions=rows)
    batch = next(iter(pair_loader(ds, 3)))
    pred = untrained.predict(batch["src_img"], batch["trg_img"], batch["src_kps"], batch["valid"], beta_eval=0.05)
    for b, row in enumerate(rows):
        assert torch.allclose(torch.tensor(row["pred"], dtype=torch.float64), pred[b].double(), atol=1e-3)


def test_learned_temperature_uses_beta_eval_1_and_reports_beta_eff():
    torch.manual_seed(0)
    model = SimSC("resnet18", "mlp", pretrained=False, finetune="none").eval()
    rep = evaluate(model, ToyTranslationPairs(3, 64), batch_size=2)
    assert rep["beta_eval"] == 1.0 and rep["temperature"] == "mlp"
    assert 0 < rep["beta_eff"]["mean"] < 1 and rep["beta_eff"]["std"] >= 0
    rep = evaluate(model, ToyTranslationPairs(3, 64), beta_eval=0.5)
    assert rep["beta_eval"] == 0.5 and rep["beta_eval_source"] == "manual"
    with pytest.raises(ValueError, match="beta_eval"):
        evaluate(model, ToyTranslationPairs(3, 64), beta_eval=0)


def test_beta_sweep_one_row_per_value_and_consistent(untrained):
    ds = ToyTranslationPairs(4, 64, max_shift=8)
    betas = [0.005, 0.02, 0.1, 1.0]
    sweep = beta_sweep(untrained, ds, betas, batch_size=2)
    assert [r["beta_eval"] for r in sweep["rows"]] == betas
    assert sweep["n_pairs"] == 4 and sweep["best"]["alpha"] == "0.1"
    for row in sweep["rows"]:
        assert list(row["per_image"]) == ALPHAS
    for row in (sweep["rows"][1], sweep["rows"][3]):  # same numbers as a plain evaluation
        single = evaluate(untrained, ds, beta_eval=row["beta_eval"], batch_size=2)
        assert row["per_image"] == single["per_image"]
    assert len(DEFAULT_BETA_SWEEP) == 13
    assert DEFAULT_BETA_SWEEP[0] == 0.005 and DEFAULT_BETA_SWEEP[-1] == 1.0


def test_original_resolution_uses_batch_size_1():
    ds = ToyTranslationPairs(3, 64)
    ds.resolution = "original"
    assert pair_loader(ds, batch_size=8).batch_size == 1
    assert pair_loader(ds, batch_size=8, max_pairs=2).dataset.__len__() == 2


@pytest.mark.parametrize("resolution", [64, "original"])
def test_embedded_test_split(untrained, tiny_embedded, resolution):
    from simsc.data.registry import build_dataset

    ds = build_dataset("embedded", tiny_embedded, "test", resolution)
    rep = evaluate(untrained, ds, batch_size=4)
    assert (rep["dataset"], rep["split"], rep["resolution"], rep["threshold_kind"]) == (
        "embedded",
        "test",
        resolution,
        "bbox",
    )
    assert rep["n_pairs"] == 4 and set(rep["per_category"]) <= {"chelsea", "motorcycle"}


# -- one inference path (SimSC.score_maps + SimSC.localise) and one evaluation writer --


@pytest.mark.parametrize("temperature,beta_eval", [("fixed:1", 0.02), ("mlp", None), ("mlp", 0.1)])
def test_evaluation_step_is_model_predict_bit_for_bit(temperature, beta_eval):
    from simsc.evaluate import predict_batch

    torch.manual_seed(0)
    model = SimSC("resnet18", temperature, pretrained=False, finetune="none").eval()
    batch = next(iter(pair_loader(ToyTranslationPairs(3, 64, max_shift=8), 3)))
    expected = model.predict(batch["src_img"], batch["trg_img"], batch["src_kps"], batch["valid"], beta_eval)
    beta = model.temperature.default_beta_eval if beta_eval is None else beta_eval
    pred, beta_eff = predict_batch(model, batch, [0.5, beta], torch.device("cpu"))
    assert torch.equal(pred[1], expected)
    out = model(batch["src_img"], batch["trg_img"])
    assert torch.equal(beta_eff, out["beta_a"] * out["beta_b"])


@pytest.fixture(scope="module")
def best_checkpoint(tmp_path_factory, tiny_embedded):
    """An untrained model saved as a run's best.pt (the writer the trainer uses)."""
    from simsc.config import load_config
    from simsc.engine.checkpoint import TrainState, atomic_save, build_checkpoint
    from simsc.model import build_model

    run = tmp_path_factory.mktemp("eval-run")
    cfg = load_config(
        {
            "model": {"backbone": "resnet18", "pretrained": False, "temperature": "mlp"},
            "data": {"dataset": "embedded", "root": str(tiny_embedded), "resolution": 64},
            "eval": {"resolution": 64, "batch_size": 3},
        }
    )
    torch.manual_seed(0)
    ck = build_checkpoint("best", model=build_model(cfg), config=cfg, state=TrainState())
    atomic_save(ck, run / "checkpoints" / "best.pt")
    return run


def test_cli_and_dvc_stage_write_the_same_evaluation(best_checkpoint, tiny_embedded, tmp_path, monkeypatch):
    from pipeline.stage_evaluate import stage_evaluate
    from simsc.cli import main

    ckpt = best_checkpoint / "checkpoints" / "best.pt"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "cli.json"), "--quiet"]) == 0
    monkeypatch.chdir(tmp_path)
    params = {
        "eval": {"resolution": 64, "batch_size": 3},
        "evaluate": {"sets": {"emb": {"dataset": "embedded", "root": str(tiny_embedded)}}, "sweep": False},
        "train": {"out_dir": str(best_checkpoint)},
    }
    stage_evaluate(params, "emb")
    cli = json.loads((tmp_path / "cli.json").read_text())
    stage = json.loads((tmp_path / "reports/eval/emb/report.json").read_text())
    assert cli.pop("model") == {"checkpoint": str(ckpt)} and cli.pop("predictions").endswith("cli.predictions.jsonl")
    assert stage.pop("name") == "emb" and stage.pop("checkpoint") == str(ckpt)
    assert cli == stage and cli["n_pairs"] == 4 and cli["resolution"] == 64 and cli["split"] == "test"
    assert (tmp_path / "cli.predictions.jsonl").read_bytes() == (
        tmp_path / "reports/eval/emb/predictions.jsonl"
    ).read_bytes()


def test_a_failed_evaluation_leaves_no_report_or_partial_predictions(tmp_path):
    from simsc.evaluate import evaluate_to_files

    torch.manual_seed(0)
    model = SimSC("resnet18", "fixed:1", pretrained=False, finetune="none").eval()
    with torch.no_grad():
        next(model.backbone.parameters()).fill_(float("nan"))  # non-finite score maps
    with pytest.raises(ValueError, match="non-finite predictions"):
        evaluate_to_files(model, ToyTranslationPairs(3, 64), tmp_path / "r.json", tmp_path / "p.jsonl", batch_size=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sweep_betas_defaults():
    from simsc.config import EvalConfig
    from simsc.evaluate import sweep_betas

    assert sweep_betas(EvalConfig()) == list(DEFAULT_BETA_SWEEP)
    assert sweep_betas(EvalConfig(beta_sweep=[0.1, 1.0])) == [0.1, 1.0]
    assert sweep_betas(EvalConfig(beta_sweep=[0.1]), [2]) == [2.0]
