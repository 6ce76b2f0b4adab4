"""PF-Pascal loader: counts, keypoints, validity, flips and thresholds (hand-computed)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.io
import torch

from simsc.data.images import DirectImages
from simsc.data.pfpascal import PASCAL_CLASSES, PFPascalDataset
from simsc.data.records import DatasetFormatError
from tests import data_fixtures as fx
from tests.data_fixtures import close


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return fx.write_pfpascal(tmp_path_factory.mktemp("pfpascal"))


def test_classes_are_the_20_pascal_classes():
    assert len(PASCAL_CLASSES) == 20 and PASCAL_CLASSES[0] == "aeroplane" and PASCAL_CLASSES[19] == "tvmonitor"
    assert PASCAL_CLASSES[7] == "cat"  # class 8 in the CSV (1-based)


def test_counts_and_categories(root):
    assert len(PFPascalDataset(root, "trn", 256)) == 3
    assert len(PFPascalDataset(root, "val", 256)) == 1
    test = PFPascalDataset(root, "test", 256)
    assert len(test) == 2
    assert [test[i]["category"] for i in range(2)] == ["aeroplane", "cat"]
    assert test.threshold_kind == "img"


def test_trn_original_resolution_from_mat(root):
    r = PFPascalDataset(root, "trn", "original")[0]
    # src 2008_000001 (500x333) kps [[100,50],[200,100],NaN,[499,332]];
    # trg 2008_000002 (400x300) kps [[50,60],NaN,[150,160],[300,200]] -> valid where both non-NaN
    assert r["valid"].tolist() == [True, False, False, True]
    assert close(r["src_kps"], [[100, 50], [0, 0], [0, 0], [499, 332]])
    assert close(r["trg_kps"], [[50, 60], [0, 0], [0, 0], [300, 200]])
    assert not torch.isnan(r["src_kps"]).any() and not torch.isnan(r["trg_kps"]).any()
    assert r["src_img"].shape == (3, 333, 500) and r["trg_img"].shape == (3, 300, 400)
    assert r["src_orig_size"].tolist() == [333, 500] and r["trg_size"].tolist() == [300, 400]
    assert close(r["trg_bbox"], [5, 6, 390, 290])
    assert close(r["thresholds"]["img"], 400.0)  # max(H=300, W=400)
    assert close(r["thresholds"]["kps"], 250.0)  # max(300-50, 200-60)
    assert close(r["thresholds"]["bbox"], 385.0)  # max(390-5, 290-6)
    assert r["threshold_kind"] == "img" and close(r["threshold"], 400.0)
    assert r["threshold"].dtype == torch.float32 and r["src_img"].dtype == torch.float32
    assert r["valid"].dtype == torch.bool and r["src_orig_size"].dtype == torch.long


def test_trn_resized_256(root):
    r = PFPascalDataset(root, "trn", 256)[0]
    sx, sy = 256 / 500, 256 / 333  # source 500x333 -> 256x256
    tx, ty = 256 / 400, 256 / 300  # target 400x300 -> 256x256
    exp_src = [
        [(100 + 0.5) * sx - 0.5, (50 + 0.5) * sy - 0.5],
        [0, 0],
        [0, 0],
        [(499 + 0.5) * sx - 0.5, (332 + 0.5) * sy - 0.5],
    ]
    assert close(r["src_kps"], exp_src)
    assert close(r["src_kps"][0], [50.956, 38.32282])  # the same, written out
    exp_trg = [[50.5 * tx - 0.5, 60.5 * ty - 0.5], [0, 0], [0, 0], [300.5 * tx - 0.5, 200.5 * ty - 0.5]]
    assert close(r["trg_kps"], exp_trg)
    assert close(r["trg_kps"][3], [191.82, 170.59333])
    assert r["src_img"].shape == (3, 256, 256) and r["trg_size"].tolist() == [256, 256]
    assert r["trg_orig_size"].tolist() == [300, 400]
    assert close(r["thresholds"]["img"], 256.0)
    assert close(r["thresholds"]["kps"], 160.0)  # x extent 250 * 0.64 = 160 > y extent 140 * 256/300
    assert close(r["thresholds"]["bbox"], 246.4)  # (390-5) * 0.64 = 246.4 > (290-6) * 256/300 = 242.35
    assert close(r["trg_bbox"], [5.5 * tx - 0.5, 6.5 * ty - 0.5, 390.5 * tx - 0.5, 290.5 * ty - 0.5])
    assert r["src_img"].min() >= 0 and r["src_img"].max() <= 1


def test_flip_flag_flips_images_keypoints_and_box(root):
    ds = PFPascalDataset(root, "trn", "original")
    r = ds[1]  # src 2008_000002 (400x300), trg 2008_000001 (500x333), flip = 1
    assert r["valid"].tolist() == [True, False, False, True]
    # x -> W - 1 - x: src (50,60) -> (349,60), (300,200) -> (99,200)
    assert close(r["src_kps"], [[349, 60], [0, 0], [0, 0], [99, 200]])
    # trg (100,50) -> (399,50), (499,332) -> (0,332)
    assert close(r["trg_kps"], [[399, 50], [0, 0], [0, 0], [0, 332]])
    # box [10,20,480,300] -> [500-1-480, 20, 500-1-10, 300]
    assert close(r["trg_bbox"], [19, 20, 489, 300])
    direct = DirectImages(root, "original")
    src_plain, _ = direct.get(fx.pfp_image_path("2008_000002"))
    expect = torch.from_numpy(src_plain[:, ::-1].copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(r["src_img"], expect)


def test_flip_commutes_with_resize(root):
    r = PFPascalDataset(root, "trn", 256)[1]
    # flipped src (349, 60) in 400x300, then resized: ((349 + .5) * 256/400 - .5, (60 + .5) * 256/300 - .5)
    assert close(r["src_kps"][0], [349.5 * 0.64 - 0.5, 60.5 * 256 / 300 - 0.5])
    # equivalently flip at 256: 255 - x'(50)
    assert close(r["src_kps"][0, 0], 255 - (50.5 * 0.64 - 0.5))


def test_test_split_uses_csv_keypoints(root):
    ds = PFPascalDataset(root, "test", "original")
    r = ds[0]  # XA 100;200;300 YA 50;100;150 XB 50;150;250 YB 60;160;260
    assert r["valid"].tolist() == [True, True, True]
    assert close(r["src_kps"], [[100, 50], [200, 100], [300, 150]])
    assert close(r["trg_kps"], [[50, 60], [150, 160], [250, 260]])
    assert close(r["threshold"], 400.0) and close(r["trg_bbox"], [5, 6, 390, 290])
    r2 = ds[1]  # decimal values kept
    assert close(r2["src_kps"], [[10.5, 30], [20, 40.25]])
    assert close(r2["threshold"], 500.0)  # target 375x500 (WxH): max = 500
    r256 = PFPascalDataset(root, "test", 256)[0]
    sx, sy = 0.64, 256 / 300  # 256 / 400 and 256 / 300: the target's width and height scales
    assert close(
        r256["trg_kps"],
        [
            [50.5 * sx - 0.5, 60.5 * sy - 0.5],
            [150.5 * sx - 0.5, 160.5 * sy - 0.5],
            [250.5 * sx - 0.5, 260.5 * sy - 0.5],
        ],
    )
    assert close(r256["trg_kps"][2], [159.82, 221.79333])
    assert close(r256["threshold"], 256.0)


def test_train_pairs_csv_name_and_pairs_dir(tmp_path):
    root = fx.write_pfpascal(tmp_path / "a", train_name="train_pairs.csv")
    assert len(PFPascalDataset(root, "train", 256)) == 3  # 'train' is an alias of 'trn'
    other = tmp_path / "lists"
    other.mkdir()
    (root / "val_pairs.csv").rename(other / "val_pairs.csv")
    assert len(PFPascalDataset(root, "val", 256, pairs_dir=other)) == 1
    with pytest.raises(DatasetFormatError, match="val_pairs.csv"):
        PFPascalDataset(root, "val", 256)


# --------------------------------------------------------------------------- bad inputs
@pytest.fixture
def fresh(tmp_path):
    return fx.write_pfpascal(tmp_path)


def _rewrite(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_wrong_column_count_names_file_and_row(fresh):
    _rewrite(fresh / "trn_pairs.csv", ".jpg,1,1\n", ".jpg,1,1,7\n")  # second data row -> line 3
    with pytest.raises(DatasetFormatError, match=r"trn_pairs\.csv, row 3: expected 4 columns"):
        PFPascalDataset(fresh, "trn")


def test_bad_class_and_flip(fresh):
    _rewrite(fresh / "trn_pairs.csv", ".jpg,8,0\n", ".jpg,21,0\n")
    with pytest.raises(DatasetFormatError, match=r"row 4: class must be an integer 1\.\.20, got '21'"):
        PFPascalDataset(fresh, "trn")
    _rewrite(fresh / "val_pairs.csv", ",8,0\n", ",8,yes\n")
    with pytest.raises(DatasetFormatError, match=r"val_pairs\.csv, row 2: flip must be 0 or 1"):
        PFPascalDataset(fresh, "val")


def test_non_numeric_and_length_mismatch_in_test_csv(fresh):
    _rewrite(fresh / "test_pairs.csv", "100;200;300", "100;abc;300")
    with pytest.raises(DatasetFormatError, match=r"test_pairs\.csv, row 2: XA value 'abc' must be a number"):
        PFPascalDataset(fresh, "test")
    _rewrite(fresh / "test_pairs.csv", "100;abc;300", "100;200")
    with pytest.raises(DatasetFormatError, match=r"row 2: XA, YA, XB, YB must list the same number"):
        PFPascalDataset(fresh, "test")


def test_nan_and_out_of_image_in_test_csv_are_masked_and_reported(fresh):
    _rewrite(fresh / "test_pairs.csv", "100;200;300", "100;nan;300")  # NaN source x of keypoint 1
    _rewrite(fresh / "test_pairs.csv", "50;150;250", "50;150;900")  # target is 400 wide: kp 2 outside
    with pytest.warns(UserWarning, match=r"0 pair\(s\) skipped, 2 keypoint\(s\) marked invalid"):
        ds = PFPascalDataset(fresh, "test", 256)
    assert len(ds.invalid_keypoints) == 2
    assert "row 2" in str(ds.invalid_keypoints[0]) and "NaN" in str(ds.invalid_keypoints[0])
    assert "outside" in str(ds.invalid_keypoints[1])
    r = ds[0]
    assert r["valid"].tolist() == [True, False, False]
    assert not torch.isnan(r["src_kps"]).any() and r["src_kps"][1].tolist() == [0.0, 0.0]


def test_pair_without_valid_keypoint_is_skipped_and_reported(fresh):
    _rewrite(fresh / "test_pairs.csv", "10.5;20,30;40.25", "nan;20,30;nan")
    with pytest.warns(UserWarning, match=r"1 pair\(s\) skipped"):
        ds = PFPascalDataset(fresh, "test")
    assert len(ds) == 1 and len(ds.skipped) == 1 and "row 3" in str(ds.skipped[0])


def test_mat_problems_name_the_file(fresh):
    mat = fresh / "PF-dataset-PASCAL/Annotations/cat/2009_000004.mat"
    scipy.io.savemat(str(mat), {"kps": np.zeros((3, 2))})
    with pytest.raises(DatasetFormatError, match=r"2009_000004\.mat: field 'bbox' missing"):
        PFPascalDataset(fresh, "val")
    scipy.io.savemat(str(mat), {"kps": np.zeros((5, 2)), "bbox": np.array([[1, 2, 3, 4]])})
    with pytest.raises(DatasetFormatError, match=r"has 3 keypoints but target .*2009_000004\.mat has 5"):
        PFPascalDataset(fresh, "val")
    mat.unlink()
    with pytest.raises(
        DatasetFormatError, match=r"val_pairs\.csv, row 2: annotation file .*2009_000004\.mat not found"
    ):
        PFPascalDataset(fresh, "val")


def test_missing_image_empty_split_missing_list(fresh):
    (fresh / fx.pfp_image_path("2009_000003")).unlink()
    with pytest.raises(DatasetFormatError, match=r"row 2: image .*2009_000003\.jpg not found"):
        PFPascalDataset(fresh, "val")
    (fresh / "val_pairs.csv").write_text("source_image,target_image,class,flip\n")
    with pytest.raises(DatasetFormatError, match=r"val_pairs\.csv: split 'val' lists no pair"):
        PFPascalDataset(fresh, "val")
    (fresh / "test_pairs.csv").write_text("source_image,target_image,class\n")
    with pytest.raises(DatasetFormatError, match=r"lacks column\(s\) \['XA', 'YA', 'XB', 'YB'\]"):
        PFPascalDataset(fresh, "test")
    (fresh / "trn_pairs.csv").unlink()
    with pytest.raises(DatasetFormatError, match=r"trn_pairs\.csv or .*train_pairs\.csv"):
        PFPascalDataset(fresh, "trn")
    with pytest.raises(ValueError, match="split"):
        PFPascalDataset(fresh, "nope")


def test_no_warning_for_normal_mat_nans(root):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = PFPascalDataset(root, "trn")
    assert ds.skipped == [] and ds.invalid_keypoints == []
