"""collate_pairs: keypoint padding, stacking, thresholds dict, size mismatch error."""

from __future__ import annotations

import pytest
import torch

from simsc.data.records import collate_pairs
from simsc.data.spair import SPairDataset
from simsc.pck import theta_kps
from tests import data_fixtures as fx


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return fx.write_spair(tmp_path_factory.mktemp("spair"))


def test_padding_and_stacking(root):
    ds = SPairDataset(root, "test", 256)
    recs = [ds[0], ds[1]]  # 3 and 4 keypoints
    b = collate_pairs(recs)
    assert b["src_kps"].shape == (2, 4, 2) and b["valid"].shape == (2, 4)
    assert b["valid"].tolist() == [[True, True, True, False], [True, True, True, True]]
    assert b["src_kps"][0, 3].tolist() == [0.0, 0.0] and b["trg_kps"][0, 3].tolist() == [0.0, 0.0]
    assert torch.equal(b["src_kps"][0, :3], recs[0]["src_kps"])
    assert b["src_img"].shape == (2, 3, 256, 256) and b["trg_bbox"].shape == (2, 4)
    assert b["trg_orig_size"].tolist() == [[332, 500], [333, 500]] and b["src_size"].dtype == torch.long
    assert set(b["thresholds"]) == {"img", "kps", "bbox"}
    assert all(v.shape == (2,) for v in b["thresholds"].values())
    assert b["threshold"].shape == (2,) and torch.equal(b["threshold"], b["thresholds"]["bbox"])
    assert b["pair_id"] == [recs[0]["pair_id"], recs[1]["pair_id"]]
    assert b["category"] == ["aeroplane", "motorbike"] and b["threshold_kind"] == ["bbox", "bbox"]
    # padded rows are excluded from theta_kps, so the batch gives the per-record values
    assert torch.allclose(theta_kps(b["trg_kps"], b["valid"]), b["thresholds"]["kps"])


def test_original_resolution_needs_batch_size_one(root):
    ds = SPairDataset(root, "test", "original")
    with pytest.raises(ValueError, match="batch_size=1"):
        collate_pairs([ds[0], ds[1]])  # 500x332 vs 500x333 targets
    one = collate_pairs([ds[0]])
    assert one["trg_img"].shape == (1, 3, 332, 500)


def test_dataloader_and_errors(root):
    ds = SPairDataset(root, "test", 64)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_pairs)))
    assert batch["src_img"].shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="empty batch"):
        collate_pairs([])
    rec = dict(ds[0])
    del rec["category"]
    with pytest.raises(ValueError, match="keys"):
        collate_pairs([ds[0], rec])
