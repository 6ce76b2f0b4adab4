import pytest
import torch

from simsc.pck import PCKAccumulator, pck, pck_per_image, theta_bbox, theta_img, theta_kps


def test_theta_img_is_max_side():
    assert theta_img(333, 500).item() == 500.0
    assert torch.equal(theta_img(torch.tensor([256, 300]), torch.tensor([256, 200])), torch.tensor([256.0, 300.0]))


def test_theta_kps_uses_valid_keypoints_only():
    kps = torch.tensor([[[10.0, 20.0], [40.0, 25.0], [30.0, 60.0], [0.0, 0.0], [-1.0, -1.0]]])
    valid = torch.tensor([[True, True, True, False, False]])
    # x extent 40 - 10 = 30, y extent 60 - 20 = 40 -> 40; padding (0,0)/(-1,-1) would give 61
    assert theta_kps(kps, valid).item() == 40.0
    assert theta_kps(kps).item() == 61.0
    with pytest.raises(ValueError, match="at least one valid"):
        theta_kps(kps, torch.zeros(1, 5, dtype=torch.bool))


def test_theta_bbox():
    assert theta_bbox(torch.tensor([36.0, 92.0, 500.0, 200.0])).item() == 464.0
    assert theta_bbox(torch.tensor([[10.0, 10.0, 20.0, 50.0]])).tolist() == [40.0]


def _case():
    gt = torch.zeros(2, 4, 2)
    pred = torch.zeros(2, 4, 2)
    # pair 0: errors 4, 9, 14 px (valid), 0 px padded -> theta 100
    pred[0, :3, 0] = torch.tensor([4.0, 9.0, 14.0])
    # pair 1: errors 1, 30 px (valid) and two padded rows that would be "correct"
    pred[1, :2, 1] = torch.tensor([1.0, 30.0])
    valid = torch.tensor([[True, True, True, False], [True, True, False, False]])
    thr = torch.tensor([100.0, 200.0])
    return pred, gt, thr, valid


def test_pck_hand_computed_with_padding():
    pred, gt, thr, valid = _case()
    per_image = pck(pred, gt, thr, (0.05, 0.1, 0.15), valid)
    # pair 0: alpha .05 -> <=5: 1/3; .1 -> <=10: 2/3; .15 -> <=15: 3/3
    # pair 1: alpha .05 -> <=10: 1/2; .1 -> <=20: 1/2; .15 -> <=30: 2/2
    assert per_image[0.05] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert per_image[0.1] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert per_image[0.15] == pytest.approx(1.0)
    pooled = pck(pred, gt, thr, (0.05, 0.1), valid, average="keypoint")
    assert pooled[0.05] == pytest.approx(2 / 5)
    assert pooled[0.1] == pytest.approx(3 / 5)
    per = pck_per_image(pred, gt, thr, (0.1,), valid)[0.1]
    assert torch.allclose(per, torch.tensor([2 / 3, 1 / 2]))


def test_pck_per_protocol_threshold():
    # Same predictions scored with each theta of a 300 x 400 (H x W) target.
    gt = torch.tensor([[[100.0, 100.0], [150.0, 180.0], [0.0, 0.0]]])
    pred = gt + torch.tensor([[[12.0, 0.0], [0.0, 5.0], [0.0, 0.0]]])
    valid = torch.tensor([[True, True, False]])
    t_img = theta_img(300, 400)  # 400 -> alpha .05 = 20 px: both correct
    t_kps = theta_kps(gt, valid)  # max(50, 80) = 80 -> 4 px: none; .1 -> 8 px: one
    t_box = theta_bbox(torch.tensor([[50.0, 60.0, 290.0, 260.0]]))  # 240 -> 12 px: both
    assert pck(pred, gt, t_img, (0.05,), valid)[0.05] == 1.0
    assert pck(pred, gt, t_kps, (0.05, 0.1), valid) == {0.05: 0.0, 0.1: 0.5}
    assert pck(pred, gt, t_box, (0.05,), valid)[0.05] == 1.0


def test_accumulator_reports_all_averages_in_percent():
    pred, gt, thr, valid = _case()
    acc = PCKAccumulator((0.1,))
    acc.update(pred, gt, thr, valid, ["cat", "dog"])
    acc.update(pred[:1], gt[:1], thr[:1], valid[:1], ["cat"])
    r = acc.report()
    assert r["n_pairs"] == 3 and r["n_keypoints"] == 8
    assert r["per_image"][0.1] == pytest.approx(100 * (2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert r["per_keypoint"][0.1] == pytest.approx(100 * 5 / 8)
    assert r["per_category"] == {"cat": {0.1: pytest.approx(100 * 2 / 3)}, "dog": {0.1: pytest.approx(50.0)}}


def test_bad_input():
    pred, gt, thr, valid = _case()
    with pytest.raises(ValueError, match=r"\[\.\.\., N, 2\]"):
        pck(pred[..., 0], gt[..., 0], thr)
    with pytest.raises(ValueError, match="no valid keypoint"):
        pck(pred, gt, thr, valid=torch.zeros(2, 4, dtype=torch.bool))
    nan_gt = gt.clone()
    nan_gt[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        pck(pred, nan_gt, thr, valid=valid)
    with pytest.raises(ValueError, match="> 0"):
        pck(pred, gt, torch.tensor([0.0, 1.0]), valid=valid)
    with pytest.raises(ValueError, match="average"):
        pck(pred, gt, thr, valid=valid, average="median")
