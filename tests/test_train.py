"""The trainer: loss goes down, the metrics stream, callbacks, parameter groups."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from simsc.config import load_config
from simsc.engine import Callback, HistoryCallback, Trainer, param_groups, train
from simsc.engine.records import STEP_FIELDS, STEP_REQUIRED
from simsc.engine.toy import ToyTranslationPairs
from tests import tiny


def tiny_config(out_dir, **train):
    """The tests' tiny run, whole network trained for 2 epochs."""
    return tiny.tiny_config(out_dir, model={"finetune": "all"}, **{"epochs": 2, "lr_backbone": 1e-3, **train})


def datasets(n_train=8, n_val=4, size=64):
    return ToyTranslationPairs(n_train, size, seed=0), ToyTranslationPairs(n_val, size, seed=1, split="val")


@pytest.mark.slow
def test_loss_decreases_on_translations(tmp_path):
    trn, val = datasets(n_train=4)
    hist = HistoryCallback()
    train(tiny_config(tmp_path, epochs=10, val_max_pairs=1), callbacks=[hist], train_dataset=trn, val_dataset=val)
    losses = [r["loss"] for r in hist.steps]
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses


def test_metrics_stream_and_run_folder(tmp_path):
    trn, val = datasets()
    summary = train(tiny_config(tmp_path, log_grad_stats=True), train_dataset=trn, val_dataset=val)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert [r["epoch"] for r in steps] == [0, 0, 1, 1]
    for r in steps:
        # every field of the record type, in its declared order (grad_abs_mean: log_grad_stats is on)
        assert list(r) == list(STEP_FIELDS) and set(STEP_REQUIRED) < set(r)
        assert r["lr_backbone"] == 1e-3 and r["lr_temperature"] == 1e-4
        assert 0 < r["beta_eff_mean"] < 1
        assert r["loss"] == pytest.approx(r["ce"] + 0.2 * r["reg"], rel=1e-6)
        # supplement Fig. 2: the convolutions of the last block of layer3
        assert set(r["grad_abs_mean"]) == {"layer3.1.conv1", "layer3.1.conv2"}
    assert [r["epoch"] for r in epochs] == [0, 1]
    for r in epochs:
        assert set(r["val"]["per_image"]) == {"0.05", "0.1", "0.15"}
        assert r["val"]["n_pairs"] == 2 and "val_pck@0.1" in r
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "summary.json").exists()
    assert (tmp_path / "checkpoints" / "last.pt").exists() and (tmp_path / "checkpoints" / "best.pt").exists()
    assert summary["status"] == "finished" and summary["step"] == 4 and summary["epoch"] == 2
    assert json.loads((tmp_path / "summary.json").read_text())["best_metric"] == summary["best_metric"]


def test_max_steps_stops_mid_epoch_and_validates(tmp_path):
    trn, val = datasets(n_train=12)
    hist = HistoryCallback()
    summary = train(tiny_config(tmp_path, epochs=5, max_steps=4), callbacks=[hist], train_dataset=trn, val_dataset=val)
    assert summary["step"] == 4 and len(hist.steps) == 4
    assert [(e["epoch"], e["partial"]) for e in hist.epochs] == [(0, False), (1, True)]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["finished"]) == (4, 1, 1, True)


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_step(self, metrics):
        self.calls.append(("step", metrics["step"]))

    def on_epoch(self, metrics):
        self.calls.append(("epoch", metrics["epoch"]))

    def on_checkpoint(self, path, is_best):
        self.calls.append(("ckpt", path.name, is_best))

    def on_end(self, summary):
        self.calls.append(("end", summary["status"]))


def test_callbacks_are_called_in_order(tmp_path):
    trn, val = datasets()
    rec = Recorder()
    hist = HistoryCallback()
    train(
        tiny_config(tmp_path, epochs=1, checkpoint_every_steps=1),
        callbacks=[rec, hist],
        train_dataset=trn,
        val_dataset=val,
    )
    assert rec.calls == [
        ("step", 1),
        ("ckpt", "last.pt", False),
        ("step", 2),
        ("epoch", 0),
        ("ckpt", "best.pt", True),
        ("ckpt", "last.pt", False),
        ("end", "finished"),
    ]
    assert hist.summary["status"] == "finished" and len(hist.epochs) == 1


def test_callback_without_hooks_is_rejected(tmp_path):
    with pytest.raises(TypeError, match="on_step"):
        Trainer(tiny_config(tmp_path), callbacks=[object()])


def test_parameter_groups_and_learning_rates():
    from simsc.engine import build_model

    cfg = load_config(
        tiny_config("x")
        | {
            "model": {"backbone": "resnet18", "pretrained": False, "finetune": "last_block", "temperature": "single"},
            "train": {"lr_backbone": None},
        }
    )
    model = build_model(cfg)
    groups = param_groups(model, cfg)
    assert [(g["name"], g["lr"]) for g in groups] == [("backbone", 1e-4), ("temperature", 0.005)]
    block = {id(p) for m in model.backbone.last_block() for p in m.parameters()}
    assert {id(p) for p in groups[0]["params"]} == block
    # fixed temperatures have no parameters: the group is skipped
    cfg = load_config(
        {"model": {"backbone": "resnet18", "pretrained": False, "finetune": "all", "temperature": "fixed:1"}}
    )
    groups = param_groups(build_model(cfg), cfg)
    assert [(g["name"], g["lr"]) for g in groups] == [("backbone", 2e-5)]
    cfg = load_config(
        {"model": {"backbone": "resnet18", "pretrained": False, "finetune": "none", "temperature": "fixed:1"}}
    )
    with pytest.raises(ValueError, match="nothing to train"):
        param_groups(build_model(cfg), cfg)


def test_model_stays_in_train_mode_with_frozen_batchnorm(tmp_path):
    trn, val = datasets()

    class ModeCheck(Callback):
        def __init__(self, trainer_ref):
            self.ref = trainer_ref
            self.modes = []

        def on_step(self, metrics):
            m = self.ref[0].model
            bn = [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]
            self.modes.append((m.training, any(b.training for b in bn)))

    ref = []
    check = ModeCheck(ref)
    trainer = Trainer(tiny_config(tmp_path), callbacks=[check], train_dataset=trn, val_dataset=val)
    ref.append(trainer)
    trainer.fit()
    assert check.modes and all(mode == (True, False) for mode in check.modes)


def test_seeded_runs_are_identical(tmp_path):
    trn, val = datasets()
    a = Trainer(tiny_config(tmp_path / "a", epochs=1), train_dataset=trn, val_dataset=val)
    a.fit()
    b = Trainer(tiny_config(tmp_path / "b", epochs=1), train_dataset=trn, val_dataset=val)
    b.fit()
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


@pytest.mark.parametrize("val_beta_eval, expected", [(None, 0.02), (1.0, 1.0)])
def test_validation_beta_eval(tmp_path, val_beta_eval, expected):
    # fixed:1 validates at the baseline's 0.02 by default; supp. Fig. 3 sets beta_eval = beta_trn = 1
    trn, val = datasets(n_train=4)
    hist = HistoryCallback()
    cfg = tiny_config(tmp_path, epochs=1, val_beta_eval=val_beta_eval)
    cfg["model"]["temperature"] = "fixed:1"
    train(cfg, callbacks=[hist], train_dataset=trn, val_dataset=val)
    assert hist.epochs[0]["val"]["beta_eval"] == expected


def test_validation_beta_eval_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match=r"train\.val_beta_eval: must be a finite number > 0"):
        load_config(tiny_config(tmp_path, val_beta_eval=0))


def test_read_to_host_returns_every_group_in_one_promoted_transfer():
    """The step values of several steps come back as their own groups, names and values,
    in the dtype they promote to (a bool flag beside float losses reads as 1.0 / 0.0)."""
    from simsc.engine.runtime import read_to_host

    groups = [
        {"loss": torch.tensor(1.5), "beta_a": torch.tensor([[0.25, 0.5]]), "ok": torch.tensor(True)},
        {"loss": torch.tensor(2.5, dtype=torch.float64), "beta_a": torch.tensor([0.75]), "ok": torch.tensor(False)},
    ]
    host = read_to_host(groups)
    assert [list(h) for h in host] == [["loss", "beta_a", "ok"]] * 2
    assert host[0]["beta_a"].tolist() == [0.25, 0.5] and host[1]["beta_a"].tolist() == [0.75]
    assert [h["loss"].item() for h in host] == [1.5, 2.5] and [bool(h["ok"]) for h in host] == [True, False]
    assert {h["loss"].dtype for h in host} == {torch.float64}
    assert read_to_host([]) == []
