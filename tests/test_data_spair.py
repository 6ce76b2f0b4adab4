"""SPair-71k loader, the 'embedded' registry name, and the registry."""

from __future__ import annotations

import json

import pytest

from simsc.data.records import DatasetFormatError
from simsc.data.registry import DATASETS, build_dataset
from simsc.data.spair import SPairDataset
from tests import data_fixtures as fx
from tests.data_fixtures import close


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return fx.write_spair(tmp_path_factory.mktemp("spair"))


def test_counts_ids_and_categories(root):
    assert [len(SPairDataset(root, s)) for s in ("trn", "val", "test")] == [1, 1, 2]
    ds = SPairDataset(root, "test", 256)
    assert ds.threshold_kind == "bbox" and ds.name == "spair"
    r = ds[0]
    assert r["pair_id"] == "000001-2008_002719-2008_004100:aeroplane" and r["category"] == "aeroplane"
    assert ds[1]["category"] == "motorbike"
    assert r["src_path"] == "JPEGImages/aeroplane/2008_002719.jpg"


def test_original_resolution(root):
    r = SPairDataset(root, "test", "original")[0]
    # trg 500x332, trg_bndbox [36, 92, 500, 200] -> max(464, 108)
    assert close(r["threshold"], 464.0) and r["threshold_kind"] == "bbox"
    assert close(r["trg_bbox"], [36, 92, 500, 200])
    assert close(r["src_kps"], [[212, 153], [300, 130], [330, 127]])
    assert close(r["trg_kps"], [[39, 145], [364, 171], [416, 173]])
    assert r["valid"].tolist() == [True, True, True]
    assert close(r["thresholds"]["img"], 500.0)
    assert close(r["thresholds"]["kps"], 377.0)  # max(416 - 39, 173 - 145)
    assert r["trg_orig_size"].tolist() == [332, 500] and r["trg_img"].shape == (3, 332, 500)


def test_resized_256(root):
    ds = SPairDataset(root, "test", 256)
    r = ds[0]
    sx, sy = 256 / 500, 256 / 332
    assert close(r["trg_kps"][0], [39.5 * sx - 0.5, 145.5 * sy - 0.5])
    assert close(r["trg_kps"][0], [19.724, 111.69277])
    assert close(r["threshold"], 237.568)  # 464 * 256 / 500
    assert close(r["trg_bbox"], [36.5 * sx - 0.5, 92.5 * sy - 0.5, 500.5 * sx - 0.5, 200.5 * sy - 0.5])
    r2 = ds[1]  # motorbike: trg 500x333, box [187, 163, 447, 299] -> max(260, 136) * 0.512
    assert close(r2["threshold"], 133.12)
    assert r2["valid"].shape == (4,) and r2["src_img"].shape == (3, 256, 256)


def _write_single(tmp_path, **changes):
    """Write the fixture's first test pair (images at the true sizes), then edit its JSON."""
    pair = json.loads(json.dumps(fx.SPAIR_DEFAULT["test"][0]))
    fx.write_spair(tmp_path, {"test": [pair]})
    for k, v in changes.items():
        if v is None:
            del pair[k]
        else:
            pair[k] = v
    jpath = tmp_path / "PairAnnotation" / "test" / f"{pair['filename']}.json"
    jpath.write_text(json.dumps(pair))
    return jpath


def test_missing_field_names_file_and_field(tmp_path):
    _write_single(tmp_path, trg_bndbox=None)
    with pytest.raises(DatasetFormatError, match=r"2008_004100:aeroplane\.json: field 'trg_bndbox' missing"):
        SPairDataset(tmp_path, "test")


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"src_kps": [[1], [2, 3], [4, 5]]}, r"field 'src_kps\[0\]' is \[1\]; expected a list of 2"),
        ({"trg_kps": [[1, 2]]}, r"'src_kps' \(3\) and 'trg_kps' \(1\) must have the same length"),
        ({"trg_bndbox": [5, 5, 1, 9]}, r"'trg_bndbox' .* expected \[x1, y1, x2, y2\]"),
        ({"trg_imsize": "500x332"}, r"field 'trg_imsize' must be a list"),
        ({"category": 3}, r"field 'category' must be a str"),
    ],
)
def test_malformed_fields(tmp_path, change, pattern):
    _write_single(tmp_path, **change)
    with pytest.raises(DatasetFormatError, match=pattern):
        SPairDataset(tmp_path, "test")


def test_invalid_json_missing_json_empty_split(tmp_path):
    jpath = _write_single(tmp_path)
    jpath.write_text("{not json")
    with pytest.raises(DatasetFormatError, match=r"aeroplane\.json: invalid JSON"):
        SPairDataset(tmp_path, "test")
    jpath.unlink()
    with pytest.raises(DatasetFormatError, match=r"test\.txt, row 1: pair annotation .*aeroplane\.json not found"):
        SPairDataset(tmp_path, "test")
    (tmp_path / "Layout/large/test.txt").write_text("\n")
    with pytest.raises(DatasetFormatError, match=r"test\.txt: split 'test' lists no pair"):
        SPairDataset(tmp_path, "test")
    with pytest.raises(DatasetFormatError, match=r"val\.txt: file not found"):
        SPairDataset(tmp_path, "val")


def test_missing_image_and_size_mismatch(tmp_path):
    _write_single(tmp_path, trg_imsize=[400, 332, 3], trg_bndbox=[36, 92, 400, 200])  # box inside the declared size
    with pytest.warns(UserWarning, match="outside"):  # trg keypoint x = 416 in a declared width of 400
        ds = SPairDataset(tmp_path, "test")
    with pytest.raises(
        DatasetFormatError, match=r"2008_004100\.jpg is 500x332 \(WxH\) but the annotation expects 400x332"
    ):
        ds[0]
    (tmp_path / "JPEGImages/aeroplane/2008_004100.jpg").unlink()
    with pytest.raises(DatasetFormatError, match=r"aeroplane\.json: image .*2008_004100\.jpg not found"):
        SPairDataset(tmp_path, "test")


def test_null_and_out_of_image_keypoints_are_reported(tmp_path):
    _write_single(tmp_path, src_kps=[[212, 153], None, [330, 127]], trg_kps=[[39, 145], [364, 171], [600, 173]])
    with pytest.warns(UserWarning, match=r"2 keypoint\(s\) marked invalid"):
        ds = SPairDataset(tmp_path, "test", 256)
    assert ds[0]["valid"].tolist() == [True, False, False]
    assert {("null" in str(i)) or ("outside" in str(i)) for i in ds.invalid_keypoints} == {True}
    assert close(ds[0]["thresholds"]["kps"], 0.0)  # one valid keypoint: extent 0; SPair scores with bbox
    _write_single(tmp_path, trg_kps=[[-50, 145], [364, 900], [600, 173]])
    with pytest.warns(UserWarning, match=r"1 pair\(s\) skipped"):
        with pytest.raises(DatasetFormatError, match="no usable pair"):
            SPairDataset(tmp_path, "test")


def test_embedded_fields_only_and_registry(tmp_path):
    keep = ["src_imname", "trg_imname", "src_imsize", "trg_imsize", "src_bndbox", "trg_bndbox", "src_kps", "trg_kps",
            "category", "pair_id", "filename"]  # fmt: skip
    pairs = [{k: p[k] for k in keep} for p in fx.SPAIR_DEFAULT["test"]]
    fx.write_spair(tmp_path, {"trn": pairs[:1], "val": pairs[1:], "test": pairs})
    ds = build_dataset("embedded", tmp_path, "test", 256, cache_dir=tmp_path / "cache")
    assert isinstance(ds, SPairDataset) and ds.name == "embedded" and ds.threshold_kind == "bbox"
    assert len(ds) == 2 and close(ds[0]["threshold"], 237.568)
    assert (tmp_path / "cache" / "embedded" / "256").is_dir()
    assert SPairDataset.name == "spair"  # the class default is untouched


def test_registry_names_and_unknown():
    assert set(DATASETS) == {"pfpascal", "pfwillow", "spair", "embedded"}
    with pytest.raises(
        ValueError, match=r"unknown dataset 'caltech'; known datasets: embedded, pfpascal, pfwillow, spair"
    ):
        build_dataset("caltech", ".", "test")


def test_registry_builds_each_loader(tmp_path):
    fx.write_pfpascal(tmp_path / "pfp")
    fx.write_pfwillow(tmp_path / "pfw")
    fx.write_spair(tmp_path / "sp")
    kinds = {
        "pfpascal": build_dataset("pfpascal", tmp_path / "pfp", "test", 256).threshold_kind,
        "pfwillow": build_dataset("pfwillow", tmp_path / "pfw", "test", "original").threshold_kind,
        "spair": build_dataset("spair", tmp_path / "sp", "test", "256").threshold_kind,
    }
    assert kinds == {"pfpascal": "img", "pfwillow": "kps", "spair": "bbox"}
    with pytest.raises(ValueError, match="resolution"):
        build_dataset("spair", tmp_path / "sp", "test", 0)
