"""``train.amp`` and ``train.compile`` give the same training within a stated
tolerance (on the CPU here; bench/bench_gpu_fastpath.py measures their speed on a GPU), and
runs with them resume exactly (the fp16 GradScaler state is checkpointed)."""

from __future__ import annotations

import pytest
import torch

from simsc.config import ConfigError, load_config
from simsc.engine import HistoryCallback, Trainer
from simsc.engine.toy import ToyTranslationPairs
from tests import tiny

# Stated tolerances on the per-step losses of a 4-step toy run against float32:
# bf16 keeps 8 mantissa bits (~3 significant digits) in the backbone and the score einsum;
# fp16 keeps 11. The softmax and the loss are float32 in both (simsc.loss._loss_dtype).
AMP_RTOL = {"bf16": 5e-3, "fp16": 1e-3}


def _cfg(out_dir, **train):
    return tiny.tiny_config(out_dir, **{"epochs": 2, **train})


def _data():
    return ToyTranslationPairs(8, 64, seed=0), ToyTranslationPairs(4, 64, seed=1, split="val")


def _run(out_dir, **train):
    trn, val = _data()
    hist = HistoryCallback()
    trainer = Trainer(_cfg(out_dir, **train), callbacks=[hist], train_dataset=trn, val_dataset=val)
    trainer.fit()
    return trainer, torch.tensor([r["loss"] for r in hist.steps], dtype=torch.float64)


def test_options_parse_and_default_off():
    t = load_config({}).train
    assert (t.amp, t.compile) == ("off", False)
    assert load_config({"train": {"compile": "true"}}).train.compile is True
    assert load_config({"train": {"compile": "aot_eager"}}).train.compile == "aot_eager"
    with pytest.raises(ConfigError, match="train.amp"):
        load_config({"train": {"amp": "fp8"}})


@pytest.fixture(scope="module")
def fp32_losses(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("fp32"))[1]


@pytest.mark.parametrize("amp", ["bf16", pytest.param("fp16", marks=pytest.mark.slow)])
def test_amp_training_matches_float32_within_tolerance(tmp_path, fp32_losses, amp):
    trainer, losses = _run(tmp_path, amp=amp)
    assert len(losses) == 4 and torch.isfinite(losses).all()
    torch.testing.assert_close(losses, fp32_losses, rtol=AMP_RTOL[amp], atol=0)
    assert not torch.equal(losses, fp32_losses)  # autocast really ran
    assert (trainer.scaler is not None) == (amp == "fp16")


@pytest.mark.slow
def test_fp16_run_resumes_exactly_with_its_grad_scaler(tmp_path):
    ref, _ = _run(tmp_path / "ref", amp="fp16")
    trn, val = _data()
    Trainer(_cfg(tmp_path / "run", amp="fp16", max_steps=3), train_dataset=trn, val_dataset=val).fit()
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ck["step"] == 3 and "scale" in ck["scaler"]
    resumed = Trainer(_cfg(tmp_path / "run", amp="fp16"), train_dataset=trn, val_dataset=val)
    resumed.fit(resume=True)
    for (k, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert ref.scaler.state_dict() == resumed.scaler.state_dict()


@pytest.mark.slow
def test_compile_through_dynamo_matches_eager(tmp_path, fp32_losses):
    # aot_eager traces the loss path with dynamo and AOTAutograd (what inductor compiles) without
    # generating C++, so it runs in seconds on any CPU.
    _, losses = _run(tmp_path, compile="aot_eager")
    torch.testing.assert_close(losses, fp32_losses, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_compile_with_inductor_matches_eager(tmp_path, fp32_losses):
    # About a minute of C++ compilation on a 2-core CPU (g++ is needed).
    _, losses = _run(tmp_path, compile=True)
    torch.testing.assert_close(losses, fp32_losses, rtol=1e-5, atol=1e-5)


def test_unknown_compile_backend_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="train.compile: unknown torch.compile backend 'no-such-backend'"):
        _run(tmp_path, compile="no-such-backend")


def test_a_failing_compile_falls_back_to_eager_with_a_warning(tmp_path, fp32_losses, monkeypatch):
    def broken_compile(fn, **kwargs):
        def compiled(*args, **kw):
            raise RuntimeError("InductorError: no working C++ compiler (simulated)")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(
        RuntimeWarning,
        match=r"train.compile: torch.compile \(backend 'inductor'\) failed .*simulated.*"
        r"runs eagerly",
    ):
        _, losses = _run(tmp_path, compile=True)
    torch.testing.assert_close(losses, fp32_losses, rtol=0, atol=0)


def test_summary_reports_the_share_of_time_spent_waiting_for_data(tmp_path):
    import json
    import time as _time

    class SlowPairs(ToyTranslationPairs):
        def __getitem__(self, i):
            _time.sleep(0.05)  # a loader slower than nothing: the wait must show
            return super().__getitem__(i)

    trainer = Trainer(_cfg(tmp_path, epochs=1), train_dataset=SlowPairs(8, 64, seed=0), val_dataset=_data()[1])
    assert trainer.pin_memory is None  # automatic: pinned batches exactly when the device is CUDA
    trainer.fit()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["data_wait_s"] >= 8 * 0.05
    assert 0 < summary["data_wait_fraction"] < 1
