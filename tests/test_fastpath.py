"""The fast-path options and the batched training path (see bench/RESULTS.md)."""

from __future__ import annotations

import math

import pytest
import torch

from simsc.config import ConfigError, load_config
from simsc.engine import HistoryCallback, Trainer
from simsc.engine.toy import ToyTranslationPairs
from simsc.loss import gaussian_target, simsc_loss
from simsc.matching import l2_normalize, query_score_maps
from simsc.soft_argmax import kernel_soft_argmax
from tests import tiny


def _cfg(out_dir, **train):
    return tiny.tiny_config(out_dir, **train)


def test_channels_last_option_parses_and_defaults_off():
    assert load_config({}).train.channels_last is False
    assert load_config({"train": {"channels_last": "true"}}).train.channels_last is True
    with pytest.raises(ConfigError, match="train.channels_last"):
        load_config({"train": {"channels_last": "sometimes"}})


def test_channels_last_training_matches_default(tmp_path):
    trn = ToyTranslationPairs(8, 64, seed=0)
    val = ToyTranslationPairs(4, 64, seed=1, split="val")
    losses = {}
    for on in (False, True):
        hist = HistoryCallback()
        trainer = Trainer(
            _cfg(tmp_path / str(on), channels_last=on), callbacks=[hist], train_dataset=trn, val_dataset=val
        )
        trainer.fit()
        conv = trainer.model.backbone.model.conv1.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) is on
        losses[on] = torch.tensor([r["loss"] for r in hist.steps])
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-4, atol=1e-5)


def test_training_path_is_batched():
    """Score maps, targets, loss and soft-argmax of a batch equal those of each pair alone."""
    g = torch.Generator().manual_seed(0)
    b, c, h, w, n = 3, 16, 6, 7, 5
    fa = l2_normalize(torch.randn(b, c, h, w, generator=g))
    fb = l2_normalize(torch.randn(b, c, h, w, generator=g))
    uv_a = torch.rand(b, n, 2, generator=g) * torch.tensor([w - 1, h - 1])
    uv_b = torch.rand(b, n, 2, generator=g) * torch.tensor([w - 1, h - 1])
    scores = query_score_maps(fa, fb, uv_a)
    target = gaussian_target(uv_b, (h, w))
    valid = torch.ones(b, n, dtype=torch.bool)
    uv = kernel_soft_argmax(scores)
    ce = {form: simsc_loss(scores, uv_b, valid, ce_interpolation=form)["ce"] for form in ("prob", "logprob")}
    per_pair = {"prob": [], "logprob": []}
    for i in range(b):
        s_i = query_score_maps(fa[i : i + 1], fb[i : i + 1], uv_a[i : i + 1])
        torch.testing.assert_close(s_i, scores[i : i + 1])
        torch.testing.assert_close(gaussian_target(uv_b[i : i + 1], (h, w)), target[i : i + 1])
        torch.testing.assert_close(kernel_soft_argmax(s_i), uv[i : i + 1])
        for form, values in per_pair.items():
            values.append(simsc_loss(s_i, uv_b[i : i + 1], valid[i : i + 1], ce_interpolation=form)["ce"])
    for form, values in per_pair.items():
        torch.testing.assert_close(ce[form], torch.stack(values).mean())


def test_query_scores_are_bilinear_rows_of_the_full_correlation():
    """A query's score map is the bilinear blend of the 4D-correlation rows of its four neighbour cells (the full-4D
    baseline of bench/bench_loss_memory.py relies on this); the expected maps are built with plain Python loops."""
    g = torch.Generator().manual_seed(1)
    b, c, h, w = 2, 8, 5, 6
    fa = l2_normalize(torch.randn(b, c, h, w, generator=g))
    fb = l2_normalize(torch.randn(b, c, h, w, generator=g))
    # cell centres, corners of the map, and fractional points in both directions
    uv_a = torch.tensor(
        [[[0.0, 0.0], [2.25, 1.5], [5.0, 4.0], [3.7, 0.2]], [[1.5, 3.25], [0.0, 4.0], [4.9, 2.0], [2.0, 2.0]]]
    )
    expected = torch.zeros(b, uv_a.shape[1], h, w)
    for k in range(b):
        for n, (x, y) in enumerate(uv_a[k].tolist()):
            x0, y0 = math.floor(x), math.floor(y)
            fx, fy = x - x0, y - y0
            for yy, xx, wt in (
                (y0, x0, (1 - fx) * (1 - fy)),
                (y0, x0 + 1, fx * (1 - fy)),
                (y0 + 1, x0, (1 - fx) * fy),
                (y0 + 1, x0 + 1, fx * fy),
            ):
                if wt == 0.0:  # the neighbour past the last cell carries no weight
                    continue
                for i in range(h):
                    for j in range(w):
                        expected[k, n, i, j] += wt * float(fa[k, :, yy, xx] @ fb[k, :, i, j])
    torch.testing.assert_close(query_score_maps(fa, fb, uv_a), expected, rtol=1e-5, atol=1e-5)
