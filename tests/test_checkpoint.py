"""Checkpoints: atomic writes, safe loading, exact resume (also after SIGKILL), divergence."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from simsc.engine import (
    Callback,
    CheckpointError,
    Trainer,
    TrainingDivergedError,
    atomic_save,
    capture_rng_state,
    load_checkpoint,
    load_model,
    restore_rng_state,
)
from simsc.engine.toy import ToyTranslationPairs
from tests import tiny

REPO = Path(__file__).resolve().parents[1]


def tiny_config(out_dir, **train):
    """The tests' tiny run, whole network trained, batch 2, 3 epochs, a checkpoint every 3 steps."""
    train = {"epochs": 3, "lr_backbone": 1e-3, "checkpoint_every_steps": 3, "num_threads": 1, **train}
    return tiny.tiny_config(out_dir, model={"finetune": "all"}, data={"batch_size": 2}, **train)


def datasets():
    return ToyTranslationPairs(10, 64, seed=0), ToyTranslationPairs(2, 64, seed=1, split="val")


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def max_abs_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


def test_atomic_save_replaces_without_leftovers(tmp_path):
    p = tmp_path / "ck" / "x.pt"
    atomic_save({"a": torch.ones(3)}, p)
    atomic_save({"a": torch.zeros(3)}, p)
    assert torch.equal(torch.load(p, weights_only=True)["a"], torch.zeros(3))
    assert sorted(os.listdir(p.parent)) == ["x.pt"]

    class Boom:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        atomic_save({"a": Boom()}, p)
    assert sorted(os.listdir(p.parent)) == ["x.pt"]  # the old file is intact, no temp file left
    assert torch.equal(torch.load(p, weights_only=True)["a"], torch.zeros(3))


def test_rng_state_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = capture_rng_state()
    atomic_save({"rng": state}, tmp_path / "r.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a simsc checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_checkpoint_contents_are_weights_only(tmp_path):
    trn, val = datasets()
    Trainer(tiny_config(tmp_path, epochs=1), train_dataset=trn, val_dataset=val).fit()
    ck = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert ck["format"] == "simsc.checkpoint" and ck["kind"] == "last"
    assert (ck["step"], ck["epoch"], ck["batch_in_epoch"], ck["finished"]) == (5, 1, 0, True)
    assert ck["config"]["train"]["checkpoint_every_steps"] == 3
    assert set(ck["rng"]) >= {"python", "numpy", "torch"}
    assert ck["optimizer"]["param_groups"][0]["name"] == "backbone"
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert best["kind"] == "best" and "optimizer" not in best
    model, cfg, meta = load_model(tmp_path / "checkpoints" / "best.pt")
    assert cfg.model.backbone == "resnet18" and not model.training and meta["best"]["step"] == 5


class Interrupt(Exception):
    pass


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step(self, metrics):
        if metrics["step"] == self.step:
            raise Interrupt


def test_resume_in_process_is_exact_and_metrics_are_not_duplicated(tmp_path):
    trn, val = datasets()
    ref = Trainer(tiny_config(tmp_path / "ref"), train_dataset=trn, val_dataset=val)
    ref.fit()
    run = tmp_path / "run"
    with pytest.raises(Interrupt):  # dies at step 8: last.pt is from step 6 (epoch 1, batch 1)
        Trainer(tiny_config(run), callbacks=[StopAt(8)], train_dataset=trn, val_dataset=val).fit()
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (ck["step"], ck["epoch"], ck["batch_in_epoch"]) == (6, 1, 1)
    summary = Trainer(tiny_config(run), train_dataset=trn, val_dataset=val).fit(resume=True)
    assert summary["resumed_from_step"] == 6 and summary["step"] == 15
    assert (
        max_abs_diff(weights(run / "checkpoints" / "last.pt"), weights(tmp_path / "ref" / "checkpoints" / "last.pt"))
        == 0
    )
    steps = [
        json.loads(x)["step"]
        for x in (run / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["type"] == "step"
    ]
    assert steps == list(range(1, 16))
    # resuming a finished run does nothing
    again = Trainer(tiny_config(run), train_dataset=trn, val_dataset=val).fit(resume=True)
    assert again["step"] == 15


def test_resume_refuses_a_changed_config_and_fresh_start_refuses_a_used_folder(tmp_path):
    trn, val = datasets()
    Trainer(tiny_config(tmp_path, epochs=1), train_dataset=trn, val_dataset=val).fit()
    with pytest.raises(CheckpointError, match="model.temperature"):
        cfg = tiny_config(tmp_path, epochs=2)
        cfg["model"]["temperature"] = "single"
        Trainer(cfg, train_dataset=trn, val_dataset=val).fit(resume=True)
    with pytest.raises(CheckpointError, match="already holds a run"):
        Trainer(tiny_config(tmp_path, epochs=2), train_dataset=trn, val_dataset=val).fit()
    # more epochs is an allowed change: training continues
    summary = Trainer(tiny_config(tmp_path, epochs=2), train_dataset=trn, val_dataset=val).fit(resume=True)
    assert summary["step"] == 10


_CHILD = """
import json, sys, time
from simsc.engine import Callback, Trainer
from simsc.engine.toy import ToyTranslationPairs

cfg = json.loads(open(sys.argv[1]).read())
stall, marker, resume = int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"


class Stall(Callback):
    def on_step(self, metrics):
        if metrics["step"] == stall:
            open(marker, "w").write(str(metrics["step"]))
            time.sleep(600)


trn, val = ToyTranslationPairs(10, 64, seed=0), ToyTranslationPairs(2, 64, seed=1, split="val")
Trainer(cfg, callbacks=[Stall()], train_dataset=trn, val_dataset=val).fit(resume=resume)
"""


def _child(tmp_path, cfg, stall, resume):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, str(script), str(cfg_path), str(stall), str(tmp_path / "marker"), "1" if resume else "0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_bit_identical_weights(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(run)
    proc = _child(tmp_path, cfg, stall=8, resume=False)
    try:
        # the reference run (same seed, never interrupted) runs here meanwhile
        trn, val = datasets()
        Trainer(tiny_config(tmp_path / "ref"), train_dataset=trn, val_dataset=val).fit()
        deadline = time.time() + 120
        while not (tmp_path / "marker").exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, "the child never reached step 8"
            time.sleep(0.05)
        ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
        assert (ck["step"], ck["epoch"], ck["batch_in_epoch"]) == (6, 1, 1)  # mid-epoch checkpoint exists
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    steps = [
        json.loads(x)["step"]
        for x in (run / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["type"] == "step"
    ]
    assert steps[-1] == 8  # the killed run had gone past its checkpoint

    resumed = _child(tmp_path, cfg, stall=-1, resume=True)
    out, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, out.decode()
    final = weights(run / "checkpoints" / "last.pt")
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 15
    assert max_abs_diff(final, weights(tmp_path / "ref" / "checkpoints" / "last.pt")) == 0
    steps = [
        json.loads(x)["step"]
        for x in (run / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["type"] == "step"
    ]
    assert steps == list(range(1, 16))


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_huge_learning_rate_diverges_and_keeps_the_last_good_checkpoint(tmp_path):
    trn, val = datasets()
    cfg = tiny_config(tmp_path, lr_backbone=1e6, lr_temperature=1e6, checkpoint_every_steps=1)
    with pytest.raises(TrainingDivergedError) as e:
        Trainer(cfg, train_dataset=trn, val_dataset=val).fit()
    err = e.value
    msg = str(err)
    assert f"step {err.step}" in msg and "beta_a = [" in msg and "beta_b = [" in msg and "loss = " in msg
    assert len(err.beta_a) == 2 and len(err.beta_b) == 2
    ck = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert ck["step"] == err.step - 1
    assert all(bool(torch.isfinite(v).all()) for v in ck["model"].values() if v.is_floating_point())
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["type"] == "diverged" and lines[-1]["step"] == err.step


def test_injected_nan_names_step_and_betas_and_writes_no_checkpoint(tmp_path):
    trn, val = datasets()
    trainer = Trainer(tiny_config(tmp_path, checkpoint_every_steps=2), train_dataset=trn, val_dataset=val)
    trainer._build_orig = trainer._build

    def build():
        trainer._build_orig()
        model = trainer.model
        real = model.loss
        calls = {"n": 0}

        def loss(batch, **kwargs):
            out = real(batch, **kwargs)
            calls["n"] += 1
            if calls["n"] == 3:
                out["loss"] = out["loss"] * float("nan")
            return out

        model.loss = loss

    trainer._build = build
    seen = []

    class End(Callback):
        def on_end(self, summary):
            seen.append(summary)

    trainer.callbacks.callbacks.append(End())
    with pytest.raises(
        TrainingDivergedError,
        match=r"diverged at step 3 \(epoch 0\): non-finite loss; loss = nan, "
        r"beta_a = \[0\.\d+, 0\.\d+\] \(mean 0\.\d+\), beta_b = \[",
    ):
        trainer.fit()
    assert seen and seen[0]["status"] == "diverged" and seen[0]["step"] == 3
    ck = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert ck["step"] == 2
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


# -- the checkpoint format: one writer (build_checkpoint), one reader (load_checkpoint + TrainState) --


def _written_state(model, cfg, tmp_path, **state):
    """A ``last`` checkpoint of ``state`` written with build_checkpoint and read back."""
    from simsc.engine import TrainState, build_checkpoint

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    s = TrainState(**state)
    ck = build_checkpoint("last", model=model, config=cfg, state=s, optimizer=opt, metrics_offset=123)
    atomic_save(ck, tmp_path / "last.pt")
    return s, load_checkpoint(tmp_path / "last.pt")


def test_build_checkpoint_round_trips_the_train_state(tmp_path):
    from simsc.config import load_config
    from simsc.engine import BestSoFar, TrainState
    from simsc.model import build_model

    cfg = load_config(tiny_config(tmp_path))
    model = build_model(cfg)
    g = torch.Generator().manual_seed(5)
    torch.randperm(10, generator=g)
    # awkward values: a float sum that is not a round number, a metric with many digits
    state, ck = _written_state(
        model,
        cfg,
        tmp_path,
        epoch=2,
        batch_in_epoch=3,
        step=13,
        sampler=g.get_state(),
        best=BestSoFar(41.123456789, 1, 10),
        epoch_loss_sum=0.1 + 0.2,
        epoch_loss_count=3,
        train_time=1.5,
        finished=False,
    )
    back = TrainState.from_dict(ck, "last.pt")
    assert torch.equal(back.sampler, state.sampler)
    back.sampler = state.sampler = None  # tensors do not compare with ==
    assert back == state and back.epoch_loss_sum == 0.30000000000000004
    assert ck["metrics_offset"] == 123 and ck["kind"] == "last" and ck["rng"]["sampler"] is not None
    assert all(torch.equal(ck["model"][k], v) for k, v in model.state_dict().items())
    # the layout main wrote (flat entries, epoch_loss as [sum, count]) is the layout read
    assert ck["epoch_loss"] == [0.30000000000000004, 3] and ck["best"] == {
        "metric": 41.123456789,
        "epoch": 1,
        "step": 10,
    }
    # between epochs the sampler is not stored: the next epoch reseeds its generator
    _, ck = _written_state(model, cfg, tmp_path, epoch=3, sampler=g.get_state())
    assert "sampler" not in ck["rng"] and TrainState.from_dict(ck).sampler is None
    assert TrainState.from_dict(ck).best == BestSoFar()


def test_a_checkpoint_without_an_entry_is_refused_by_name_or_restores_the_same(tmp_path):
    """Every entry the writer puts in a training checkpoint, taken out in turn: the reader
    either refuses the file naming that entry, or the entry is bookkeeping and the run
    restores exactly as from the whole file (model, optimizer, train state)."""
    from simsc.config import load_config
    from simsc.engine import TrainState
    from simsc.model import build_model

    cfg = load_config(tiny_config(tmp_path))
    _, ck = _written_state(build_model(cfg), cfg, tmp_path)
    whole = TrainState.from_dict(ck, "last.pt")
    refused = []
    for field in ck:
        atomic_save({k: v for k, v in ck.items() if k != field}, tmp_path / "cut.pt")  # a fresh digest
        try:
            cut = load_checkpoint(tmp_path / "cut.pt")
        except CheckpointError as exc:
            assert "cut.pt" in str(exc) and re.search(rf"\b{field}\b", str(exc)), (field, exc)
            refused.append(field)
            continue
        state = TrainState.from_dict(cut, "cut.pt")
        assert state.to_dict() == whole.to_dict(), field
        assert cut["optimizer"] == ck["optimizer"] and cut["config"] == ck["config"], field
        assert all(torch.equal(cut["model"][k], v) for k, v in ck["model"].items()), field
    assert {"model", "config", "optimizer", "step", "rng"} <= set(refused), refused


@pytest.mark.parametrize(
    "field,value,expected",
    [
        ("step", -1, "'step' must be an integer >= 0"),
        ("epoch", 1.5, "'epoch' must be an integer >= 0"),
        ("best", {"metric": 1.0}, "'best' must be a mapping of metric, epoch and step"),
        ("epoch_loss", [0.0], r"'epoch_loss' must be \[sum, count\]"),
        ("finished", "yes", "'finished' must be true or false"),
    ],
)
def test_malformed_train_state_names_the_file_and_field(tmp_path, field, value, expected):
    from simsc.config import load_config
    from simsc.engine import TrainState
    from simsc.model import build_model

    cfg = load_config(tiny_config(tmp_path))
    _, ck = _written_state(build_model(cfg), cfg, tmp_path)
    ck[field] = value
    with pytest.raises(CheckpointError, match=rf"^last\.pt: checkpoint entry {expected}"):
        TrainState.from_dict(ck, "last.pt")


def test_a_value_error_in_the_forward_pass_is_not_taken_for_a_divergence(tmp_path):
    """The loss runs unchecked, so a ValueError there is a shape / config error and propagates
    as itself, whatever its message says (it once counted as a divergence when it named beta);
    only with non-finite weights is it a divergence."""
    trn, val = datasets()

    def run(out_dir, poison):
        trainer = Trainer(tiny_config(out_dir, epochs=1), train_dataset=trn, val_dataset=val)
        build = trainer._build

        def patched():
            build()

            def loss(batch, **kwargs):
                if poison:
                    with torch.no_grad():
                        next(trainer.model.parameters()).fill_(float("nan"))
                raise ValueError("beta must have shape [2], got (3,)")

            trainer.model.loss = loss

        trainer._build = patched
        trainer.fit()

    with pytest.raises(ValueError, match="beta must have shape") as e:
        run(tmp_path / "a", poison=False)
    assert not isinstance(e.value, TrainingDivergedError)
    with pytest.raises(TrainingDivergedError, match=r"the forward pass failed \(beta must have shape"):
        run(tmp_path / "b", poison=True)


def test_resume_training_restores_the_state_or_refuses_by_name(tmp_path):
    """resume_training: a ``last`` checkpoint of this config loads into a fresh model and
    optimiser with its train state and metrics offset; a ``best`` checkpoint, an edited offset
    and a changed non-resumable key are refused naming the file and the entry."""
    from simsc.config import load_config
    from simsc.engine import resume_training
    from simsc.model import build_model

    cfg = load_config(tiny_config(tmp_path))
    model = build_model(cfg)
    written, ck = _written_state(model, cfg, tmp_path, step=7, epoch=2)
    fresh = build_model(cfg)
    opt = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    state, offset = resume_training(tmp_path / "last.pt", cfg, fresh, opt)
    assert (state.step, state.epoch, offset) == (7, 2, 123)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True))
    for name, edit, message in [
        ("best", {"kind": "best"}, "not a training checkpoint"),
        ("offset", {"metrics_offset": -1}, "'metrics_offset' must be an integer >= 0"),
    ]:
        atomic_save({**ck, **edit}, tmp_path / f"{name}.pt")
        with pytest.raises(CheckpointError, match=rf"{name}\.pt.*{message}"):
            resume_training(tmp_path / f"{name}.pt", cfg, build_model(cfg), opt)
    other = load_config(tiny_config(tmp_path, lr_backbone=0.5))
    with pytest.raises(CheckpointError, match=r"cannot resume .*last\.pt: the config differs in train\.lr_backbone"):
        resume_training(tmp_path / "last.pt", other, build_model(other), opt)
