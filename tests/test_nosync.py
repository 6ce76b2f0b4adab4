"""The training step and the evaluator's inner step read no tensor value on
the host (no GPU sync), with loss values unchanged, and bad batches still rejected clearly.

The guard (tests/sync_guard.py) turns every host read into an error; on the CPU those reads
cost nothing, so failing on them is how a CPU test proves the step free of GPU syncs. With
CUDA the same tests also run under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import json

import pytest
import torch

import simsc.loss as loss_mod
from simsc.engine import HistoryCallback, Trainer
from simsc.engine.toy import ToyTranslationPairs
from simsc.evaluate import predict_batch
from simsc.loss import simsc_loss
from simsc.model import SimSC, check_batch
from tests import tiny
from tests.sync_guard import HostSyncError, no_host_sync, optimizer_host_tensors


def _batch(b=3, n=6, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(b, n, generator=g) > 0.3
    valid[:, 0] = True
    src = torch.rand(b, n, 2, generator=g) * (size - 1)
    src[~valid] = float("nan")  # padded rows may hold anything
    return {
        "src_img": torch.rand(b, 3, size, size, generator=g),
        "trg_img": torch.rand(b, 3, size, size, generator=g),
        "src_kps": src,
        "trg_kps": torch.rand(b, n, 2, generator=g) * (size - 1),
        "valid": valid,
    }


# -- the guard itself --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "read",
    [
        lambda x: x.sum().item(),
        lambda x: bool((x > 0).any()),
        lambda x: float(x[0]),
        lambda x: x.tolist(),
        lambda x: x.nonzero(),
        lambda x: x[x > 0],
        lambda x: torch.where(x > 0),
        lambda x: x.unique(),
        lambda x: (x > 0).all() if (x > 0).all() else None,
    ],
)
def test_guard_catches_host_reads(read):
    x = torch.randn(5)
    with pytest.raises(HostSyncError, match="host read"):
        with no_host_sync():
            read(x)


def test_guard_lets_device_side_code_and_allowed_tensors_through():
    x = torch.randn(5)
    step = torch.tensor(3.0)
    with no_host_sync(allow=[step]):
        y = torch.where(x > 0, x, x.new_zeros(())).sum() / (x > 0).sum().clamp_min(1)
        assert step.item() == 3.0
    assert torch.isfinite(y)


# -- loss values: masked means == the boolean-indexing version ----------------------------------


def _old_mean_over_valid_queries(per_query, valid, who, check=True):
    """The implementation before the sync-free step (boolean indexing), kept as the reference."""
    valid = valid.bool()
    n = valid.sum(-1)
    has = n > 0
    if not bool(has.any()):
        raise ValueError(f"{who}: the batch has no valid keypoint")
    per_pair = torch.where(valid, per_query, per_query.new_zeros(())).sum(-1) / n.clamp_min(1)
    return per_pair[has].mean()


@pytest.mark.parametrize("form", ["prob", "logprob"])
@pytest.mark.parametrize("seed", range(6))
def test_masked_loss_equals_the_boolean_indexing_loss(monkeypatch, form, seed):
    g = torch.Generator().manual_seed(seed)
    b, n, h, w = 4, 7, 6, 8
    scores = torch.randn(b, n, h, w, generator=g) * 5
    uv_b = torch.rand(b, n, 2, generator=g) * torch.tensor([w + 3.0, h + 3.0]) - 1.5  # some off the map
    uv_b[0, :2] = torch.tensor([w + 4.0, h + 4.0])  # entirely off the map: dropped
    valid = torch.rand(b, n, generator=g) > 0.4
    valid[1] = False  # a pair with no valid query
    valid[2, 0] = True
    beta_a, beta_b = torch.rand(b, generator=g) * 0.2 + 0.01, torch.rand(b, generator=g) * 0.2 + 0.01
    new = simsc_loss(scores, uv_b, valid, beta_a, beta_b, ce_interpolation=form)
    unchecked = simsc_loss(scores, uv_b, valid, beta_a, beta_b, ce_interpolation=form, check=False)
    monkeypatch.setattr(loss_mod, "_mean_over_valid_queries", _old_mean_over_valid_queries)
    old = simsc_loss(scores, uv_b, valid, beta_a, beta_b, ce_interpolation=form)
    for k in ("loss", "ce", "reg"):
        assert torch.equal(new[k], unchecked[k]), k
        torch.testing.assert_close(new[k], old[k], rtol=1e-6, atol=1e-6)


def test_model_loss_unchecked_equals_checked_and_matches_old_reduction(monkeypatch):
    torch.manual_seed(0)
    model = SimSC("resnet18", "mlp", finetune="last_block")
    batch = _batch()
    checked = model.loss(batch, check=True)
    fast = model.loss(batch, check=False)
    default = model.loss(batch)  # CPU batch: checks run (they are free here)
    monkeypatch.setattr(loss_mod, "_mean_over_valid_queries", _old_mean_over_valid_queries)
    old = model.loss(batch)
    for k in ("loss", "ce", "reg", "beta_eff"):
        assert torch.equal(checked[k], fast[k]) and torch.equal(checked[k], default[k]), k
        torch.testing.assert_close(fast[k], old[k], rtol=1e-6, atol=1e-6)


# -- the step under the guard -------------------------------------------------------------------


@pytest.mark.parametrize("temperature", ["mlp", "single"])
def test_loss_backward_and_adam_step_make_no_host_read(temperature):
    torch.manual_seed(0)
    model = SimSC("resnet18", temperature, finetune="last_block").train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = _batch()
    check_batch(batch)  # the trainer's CPU-side check, before the batch would move

    def step():
        opt.zero_grad(set_to_none=True)
        model.loss(batch, check=False)["loss"].backward()
        opt.step()

    step()  # creates Adam's state (its step counters live on the host by design)
    with no_host_sync(allow=optimizer_host_tensors(opt)):
        step()
        step()
    # and the guard does see a sync introduced into this very step
    with pytest.raises(HostSyncError):
        with no_host_sync(allow=optimizer_host_tensors(opt)):
            opt.zero_grad(set_to_none=True)
            model.loss(batch, check=True)["loss"].backward()


@pytest.mark.parametrize("head", ["sfnet", "ncnet", "cats"])
def test_matching_head_step_makes_no_host_read(head):
    """The matching heads' path (supp. Tab. 2) is as sync-free as SimSC's own."""
    torch.manual_seed(0)
    model = SimSC("resnet18", "mlp", finetune="last_block", head=head, head_preset="small").train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = _batch()
    check_batch(batch)

    def step():
        opt.zero_grad(set_to_none=True)
        model.loss(batch, check=False)["loss"].backward()
        opt.step()

    step()
    with no_host_sync(allow=optimizer_host_tensors(opt)):
        step()


def _cfg(out_dir, **train):
    return tiny.tiny_config(out_dir, **{"log_grad_stats": True, **train})


def _datasets(n_train=12):
    return ToyTranslationPairs(n_train, 64, seed=0), ToyTranslationPairs(4, 64, seed=1, split="val")


def test_trainer_step_makes_no_host_read(tmp_path):
    trn, val = _datasets()
    trainer = Trainer(_cfg(tmp_path), train_dataset=trn, val_dataset=val)
    real = trainer._train_step
    guarded = []

    def step(batch, epoch, share=None):
        if trainer.state.step == 0:
            return real(batch, epoch, share)  # Adam's first step creates its host-side counters
        with no_host_sync(allow=optimizer_host_tensors(trainer.optimizer)):
            out = real(batch, epoch, share)
        guarded.append(trainer.state.step)
        return out

    trainer._train_step = step
    trainer.fit()
    assert guarded == [2, 3]


def test_batched_record_reads_give_the_same_metrics(tmp_path):
    trn, val = _datasets()
    runs = {}
    for every in (1, 2):
        hist = HistoryCallback()
        Trainer(
            _cfg(tmp_path / str(every), log_every_steps=every, epochs=2),
            callbacks=[hist],
            train_dataset=trn,
            val_dataset=val,
        ).fit()
        lines = [json.loads(x) for x in (tmp_path / str(every) / "metrics.jsonl").read_text().splitlines()]
        runs[every] = (hist.steps, [x for x in lines if x["type"] == "epoch"])
        assert [r["step"] for r in hist.steps] == list(range(1, 7))
    assert runs[1][0] == runs[2][0]
    for a, b in zip(runs[1][1], runs[2][1], strict=True):
        assert a["train_loss_mean"] == b["train_loss_mean"] and a["val"] == b["val"]


def test_divergence_found_by_a_batched_read_names_its_step_and_keeps_the_good_checkpoint(tmp_path):
    trn, val = _datasets(n_train=24)
    trainer = Trainer(_cfg(tmp_path, log_every_steps=4, checkpoint_every_steps=2), train_dataset=trn, val_dataset=val)
    build = trainer._build

    def patched():
        build()
        real = trainer.model.loss

        def loss(batch, **kwargs):
            out = real(batch, **kwargs)
            if trainer.state.step == 2:  # the third step
                out["loss"] = out["loss"] * float("nan")
            return out

        trainer.model.loss = loss

    trainer._build = patched
    from simsc.engine.trainer import TrainingDivergedError

    with pytest.raises(TrainingDivergedError, match=r"diverged at step 3 \(epoch 0\): non-finite loss; loss = nan"):
        trainer.fit()
    ck = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert ck["step"] == 2
    assert all(bool(torch.isfinite(v).all()) for v in ck["model"].values() if v.is_floating_point())
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["type"] == "step"] == [1, 2]
    assert lines[-1]["type"] == "diverged" and lines[-1]["step"] == 3 and len(lines[-1]["beta_a"]) == 4


# -- the evaluator's inner step -----------------------------------------------------------------


def test_evaluator_inner_step_makes_no_host_read():
    torch.manual_seed(0)
    model = SimSC("resnet18", "mlp", finetune="last_block").eval()
    batch = _batch()
    batch["src_kps"] = torch.nan_to_num(batch["src_kps"])
    with no_host_sync():
        pred, beta_eff = predict_batch(model, batch, [1.0, 0.1], torch.device("cpu"))
    assert pred.shape == (2, 3, 6, 2) and beta_eff.shape == (3,)
    torch.testing.assert_close(
        pred[0], model.predict(batch["src_img"], batch["trg_img"], batch["src_kps"], batch["valid"], beta_eval=1.0)
    )


# -- bad batches: clear errors from the CPU-side check ------------------------------------------


def test_check_batch_rejects_bad_batches_clearly():
    batch = _batch()
    check_batch(batch)  # NaN in padded rows is fine
    bad = dict(batch, trg_kps=batch["trg_kps"].clone())
    bad["trg_kps"][0, 0, 1] = float("nan")
    with pytest.raises(ValueError, match="trg_kps has NaN coordinates at valid keypoints"):
        check_batch(bad)
    with pytest.raises(ValueError, match="no valid keypoint"):
        check_batch(dict(batch, valid=torch.zeros_like(batch["valid"])))
    with pytest.raises(ValueError, match=r"src_kps must be \[B, N, 2\]"):
        check_batch(dict(batch, src_kps=batch["src_kps"][0]))


def test_trainer_rejects_a_nan_keypoint_batch_with_the_field_name(tmp_path):
    class NaNPairs(ToyTranslationPairs):
        def __getitem__(self, i):
            rec = super().__getitem__(i)
            rec["trg_kps"] = rec["trg_kps"].clone()
            rec["trg_kps"][0, 0] = float("nan")
            return rec

    trn = NaNPairs(4, 64, seed=0)
    with pytest.raises(ValueError, match="trg_kps has NaN coordinates at valid keypoints"):
        Trainer(_cfg(tmp_path), train_dataset=trn, val_dataset=_datasets()[1]).fit()
