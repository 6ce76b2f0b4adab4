"""PF-Willow loader: theta_kps over valid keypoints only, keypoint box, bad rows."""

from __future__ import annotations

import numpy as np
import pytest

from simsc.data.pfwillow import PFWillowDataset
from simsc.data.records import DatasetFormatError
from tests import data_fixtures as fx
from tests.data_fixtures import close

A, B = "PF-dataset/car(G)/Cars_006a.png", "PF-dataset/car(G)/Cars_007b.png"  # 300x200, 250x400 (WxH)
SRC = np.stack([np.arange(10, 110, 10), np.arange(20, 120, 10)], 1).astype(float)  # (10,20) ... (100,110)
TRG = np.stack([[10, 20, 30, 40, 50, 60, 70, 80, 90, 200], np.arange(100, 200, 10)], 1).astype(float)


def write(root, pairs=None, **kw):
    pairs = [(A, B, SRC, TRG)] + fx.pfw_default_pairs()[1:] if pairs is None else pairs
    return fx.write_pfwillow(root, pairs, **kw)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write(tmp_path_factory.mktemp("pfwillow"))


def test_original_resolution(root):
    ds = PFWillowDataset(root, resolution="original")
    assert len(ds) == 2 and ds.threshold_kind == "kps"
    r = ds[0]
    assert r["category"] == "car(G)" and ds[1]["category"] == "duck(S)"
    assert r["valid"].all() and r["src_kps"].shape == (10, 2)
    assert close(r["src_kps"], SRC) and close(r["trg_kps"], TRG)
    assert close(r["thresholds"]["kps"], 190.0)  # max(200 - 10, 190 - 100)
    assert close(r["threshold"], 190.0) and r["threshold_kind"] == "kps"
    assert close(r["trg_bbox"], [10, 100, 200, 190])  # box of the valid target keypoints
    assert close(r["thresholds"]["bbox"], 190.0)
    assert close(r["thresholds"]["img"], 400.0)  # target 250x400
    assert r["src_img"].shape == (3, 200, 300) and r["trg_img"].shape == (3, 400, 250)


def test_resized_256(root):
    r = PFWillowDataset(root, resolution=256)[0]
    sx, sy = 256 / 250, 256 / 400  # target 250x400 -> 256x256
    assert close(r["trg_kps"][9], [200.5 * sx - 0.5, 190.5 * sy - 0.5])
    assert close(r["trg_kps"][9], [204.812, 121.42])
    assert close(r["src_kps"][0], [10.5 * 256 / 300 - 0.5, 20.5 * 256 / 200 - 0.5])
    # x extent 190 * 1.024 = 194.56 > y extent 90 * 0.64 = 57.6
    assert close(r["thresholds"]["kps"], 194.56) and close(r["threshold"], 194.56)
    assert close(r["thresholds"]["bbox"], 194.56)
    assert close(r["thresholds"]["img"], 256.0)


def test_theta_kps_ignores_invalid_keypoints(tmp_path):
    trg = TRG.copy()
    trg[9] = np.nan  # the keypoint that set the x extent
    with pytest.warns(UserWarning, match=r"1 keypoint\(s\) marked invalid"):
        ds = PFWillowDataset(write(tmp_path, [(A, B, SRC, trg)]), resolution="original")
    r = ds[0]
    assert r["valid"].tolist() == [True] * 9 + [False]
    assert r["trg_kps"][9].tolist() == [0.0, 0.0]
    # valid x 10..90, y 100..180 -> max(80, 80); padding/zeros never enter theta
    assert close(r["threshold"], 80.0)
    assert close(r["trg_bbox"], [10, 100, 90, 180])


def test_csv_in_pf_dataset_subfolder(tmp_path):
    ds = PFWillowDataset(write(tmp_path, in_subdir=True))
    assert len(ds) == 2 and ds.pairs_file.parent.name == "PF-dataset"


def test_out_of_image_keypoint_marked_invalid(tmp_path):
    trg = TRG.copy()
    trg[0] = [10, 401.6]  # target height 400: y beyond 399.5 + 1 pixel tolerance
    trg[1] = [20, 400.0]  # within tolerance (1-based annotation tools): kept
    with pytest.warns(UserWarning, match="outside"):
        ds = PFWillowDataset(write(tmp_path, [(A, B, SRC, trg)]))
    assert ds[0]["valid"].tolist() == [False] + [True] * 9
    assert "outside the 250x400 image" in str(ds.invalid_keypoints[0])


def test_malformed_rows_name_file_and_row(tmp_path):
    good = ",".join(["1"] * 40)
    root = write(tmp_path, [(A, B, SRC, TRG), (A, B, ",".join(["1"] * 39), None)])
    with pytest.raises(DatasetFormatError, match=r"test_pairs_pf\.csv, row 3: expected 42 columns .* got 41"):
        PFWillowDataset(root)
    root = write(tmp_path, [(A, B, good.replace("1", "x", 1), None)])
    with pytest.raises(DatasetFormatError, match=r"row 2: column 3 \(coordinate\) must be a number, got 'x'"):
        PFWillowDataset(root)
    root = write(tmp_path, [("PF-dataset/car(G)/missing.png", B, good, None)])
    with pytest.raises(DatasetFormatError, match=r"row 2: image .*missing\.png not found"):
        PFWillowDataset(root)
    root = write(tmp_path, [])
    with pytest.raises(DatasetFormatError, match="no pair row"):
        PFWillowDataset(root)
    with pytest.raises(ValueError, match="only has a 'test' split"):
        PFWillowDataset(root, split="trn")


def test_zero_extent_pair_is_skipped(tmp_path):
    same = np.full((10, 2), 50.0)
    with pytest.warns(UserWarning, match=r"1 pair\(s\) skipped"):
        ds = PFWillowDataset(write(tmp_path, [(A, B, SRC, TRG), (A, B, SRC, same)]))
    assert len(ds) == 1 and "theta_kps = 0" in str(ds.skipped[0])
