"""The pair index (simsc.data.index): built once, loaded later, rebuilt when stale, refused
when corrupt; and the vectorised SPair-71k parse gives exactly what the per-pair parse gives."""

from __future__ import annotations

import json
import os
import pickle
import warnings

import numpy as np
import pytest

from simsc.data import index as index_mod
from simsc.data.annotations import DatasetFormatError
from simsc.data.index import PairTable
from simsc.data.pfpascal import PFPascalDataset
from simsc.data.pfwillow import PFWillowDataset
from simsc.data.spair import SPairDataset
from tests import data_fixtures as fx


def same_pairs(a, b) -> None:
    """Two datasets hold the same pairs, field by field, and the same reported issues."""
    assert len(a.pairs) == len(b.pairs)
    for x, y in zip(a.pairs, b.pairs, strict=True):
        for f in ("pair_id", "category", "src_path", "trg_path", "source", "row", "flip", "src_size", "trg_size"):
            assert getattr(x, f) == getattr(y, f), f
        for f in ("src_kps", "trg_kps", "valid"):
            assert np.array_equal(getattr(x, f), getattr(y, f), equal_nan=True), f
        assert (x.trg_bbox is None) == (y.trg_bbox is None)
        if x.trg_bbox is not None:
            assert np.array_equal(x.trg_bbox, y.trg_bbox)
    assert a.skipped == b.skipped and a.invalid_keypoints == b.invalid_keypoints


def record_equal(r1, r2) -> None:
    for k, v in r1.items():
        if hasattr(v, "shape"):
            assert np.array_equal(np.asarray(v), np.asarray(r2[k])), k
        elif isinstance(v, dict):
            assert all(np.array_equal(np.asarray(v[kk]), np.asarray(r2[k][kk])) for kk in v), k
        else:
            assert v == r2[k], k


@pytest.fixture()
def spair_root(tmp_path):
    pairs = json.loads(json.dumps(fx.SPAIR_DEFAULT["test"]))
    # one keypoint outside its target image (masked and reported) and one pair with none left
    pairs[1]["trg_kps"][0] = [900, 10]
    extra = fx.spair_pair(
        9,
        "aeroplane",
        ("2008_002719", 500, 333),
        ("2008_004100", 500, 332),
        [[10, 10]],
        [[-50, 10]],
        [36, 92, 500, 200],
    )
    return fx.write_spair(tmp_path / "spair", {"test": pairs + [extra]})


def build(cls, *args, **kw):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = cls(*args, **kw)
    return ds, [str(x.message) for x in w]


def test_built_once_then_loaded_with_the_same_pairs_issues_and_warning(spair_root, tmp_path):
    plain, w0 = build(SPairDataset, spair_root, "test")
    first, w1 = build(SPairDataset, spair_root, "test", cache_dir=tmp_path / "c")
    second, w2 = build(SPairDataset, spair_root, "test", 128, cache_dir=tmp_path / "c")  # any resolution
    assert (plain.index_state, first.index_state, second.index_state) == ("off", "built", "loaded")
    assert first.index_path == tmp_path / "c" / "spair" / "index" / "test.npz" and first.index_path.is_file()
    assert second.index_key == first.index_key and len(first.index_key) == 64
    same_pairs(plain, second)
    assert len(second) == 2 and len(second.skipped) == 1 and len(second.invalid_keypoints) == 2
    assert "target keypoint 0 [900.0, 10.0] is outside the 500x333 image" in second.invalid_keypoints[0].message
    assert w0 == w1 == w2 and len(w0) == 1  # the same report whichever way the pairs came
    record_equal(SPairDataset(spair_root, "test", 128)[1], second[1])


def test_an_edited_annotation_makes_the_index_stale(spair_root, tmp_path):
    SPairDataset(spair_root, "test", cache_dir=tmp_path / "c")
    jpath = next(p for p in (spair_root / "PairAnnotation" / "test").glob("*aeroplane.json") if "000001" in p.name)
    pair = json.loads(jpath.read_text())
    pair["trg_kps"][0] = [40, 146]
    jpath.write_text(json.dumps(pair))
    os.utime(jpath, ns=(1, 1))  # even with an old mtime: the size changed
    ds = SPairDataset(spair_root, "test", cache_dir=tmp_path / "c")
    assert ds.index_state == "rebuilt" and ds.pairs[0].trg_kps[0].tolist() == [40, 146]
    assert SPairDataset(spair_root, "test", cache_dir=tmp_path / "c").index_state == "loaded"


def test_same_size_edit_is_seen_through_the_mtime(spair_root, tmp_path):
    SPairDataset(spair_root, "test", cache_dir=tmp_path / "c")
    jpath = next((spair_root / "PairAnnotation" / "test").glob("000001-*.json"))
    text = jpath.read_text()
    assert '"trg_kps": [[39, 145]' in text
    st = jpath.stat()
    jpath.write_text(text.replace('"trg_kps": [[39, 145]', '"trg_kps": [[38, 145]'))
    os.utime(jpath, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    ds = SPairDataset(spair_root, "test", cache_dir=tmp_path / "c")
    assert ds.index_state == "rebuilt" and ds.pairs[0].trg_kps[0].tolist() == [38, 145]


def test_a_removed_file_rebuilds_and_gives_the_usual_error(spair_root, tmp_path):
    SPairDataset(spair_root, "test", cache_dir=tmp_path / "c")
    img = spair_root / "JPEGImages" / "motorbike" / "2009_000611.jpg"
    img.unlink()
    with pytest.raises(DatasetFormatError, match=r"motorbike\.json: image .*2009_000611\.jpg not found"):
        SPairDataset(spair_root, "test", cache_dir=tmp_path / "c")


def test_a_changed_listing_or_format_version_rebuilds(spair_root, tmp_path, monkeypatch):
    SPairDataset(spair_root, "test", cache_dir=tmp_path / "c")
    listing = spair_root / "Layout" / "large" / "test.txt"
    listing.write_text("\n".join(listing.read_text().split()[:1]) + "\n")
    ds = SPairDataset(spair_root, "test", cache_dir=tmp_path / "c")
    assert ds.index_state == "rebuilt" and len(ds) == 1
    monkeypatch.setattr(index_mod, "INDEX_VERSION", index_mod.INDEX_VERSION + 1)
    assert SPairDataset(spair_root, "test", cache_dir=tmp_path / "c").index_state == "rebuilt"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "drop_column"])
def test_a_corrupt_index_is_a_clear_error_naming_it(spair_root, tmp_path, damage):
    ds = SPairDataset(spair_root, "test", cache_dir=tmp_path / "c")
    path = ds.index_path
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "garbage":
        path.write_bytes(b"not an index at all")
    else:
        with np.load(path) as z:
            cols = {k: z[k] for k in z.files if k != "a_valid"}
        with open(path, "wb") as f:
            np.savez(f, **cols)
    with pytest.raises(DatasetFormatError, match=rf"{path.name}: not a readable pair index"):
        SPairDataset(spair_root, "test", cache_dir=tmp_path / "c")


def test_the_index_is_written_atomically_and_without_pickles(spair_root, tmp_path):
    ds = SPairDataset(spair_root, "test", cache_dir=tmp_path / "c")
    assert [p.name for p in ds.index_path.parent.iterdir()] == ["test.npz"]  # no temporary file left
    with np.load(ds.index_path, allow_pickle=False) as z:  # plain arrays only
        assert all(z[k].dtype != object for k in z.files)
        assert json.loads(z["meta"].tobytes())["version"] == index_mod.INDEX_VERSION


def test_an_unwritable_cache_warns_and_still_loads(spair_root, tmp_path):
    (tmp_path / "c").write_text("a file where the cache folder should be")
    ds, w = build(SPairDataset, spair_root, "test", cache_dir=tmp_path / "c")
    expected = (
        f"{tmp_path / 'c' / 'spair'}: cache folder not writable (Not a directory); reading the entries it holds, "
        "decoding the other images without caching them"
    )
    assert len(ds) == 2 and [m for m in w if "not writable" in m] == [expected]  # one warning, no index warning
    assert ds[0]["src_img"].shape[0] == 3  # decoded, not stored


def test_vectorised_spair_parse_equals_the_per_pair_parse(tmp_path):
    root = fx.make_spair_synthetic(tmp_path / "s", n_images=8, n_pairs=60, split="trn", seed=3)
    fast = SPairDataset.__new__(SPairDataset)
    fast.root, fast.split, fast.pairs_file = root, "trn", root / "Layout" / "large" / "trn.txt"
    fast.invalid_keypoints = []
    table = fast._parse_fast()
    assert table is not None  # well-formed files take the fast path
    exact = PairTable.from_pairs(fast._parse_exact())
    assert table.strings == exact.strings
    for k in exact.arrays:
        assert np.array_equal(table.arrays[k], exact.arrays[k], equal_nan=True), k
        assert table.arrays[k].dtype == exact.arrays[k].dtype, k


@pytest.mark.parametrize(
    "edit",
    [
        {"src_kps": [[212, 153], None, [330, 127]]},  # null keypoint: reported, not an error
        {"trg_imsize": [500.0, 332.0, 3]},  # integral floats are accepted
        {"src_kps": [[212, 153], [300, True], [330, 127]]},  # bool is not a number
        {"trg_bndbox": [36, 92, "500", 200]},
    ],
)
def test_unusual_files_take_the_exact_path(tmp_path, edit):
    pair = json.loads(json.dumps(fx.SPAIR_DEFAULT["test"][0]))
    pair.update(edit)
    root = fx.write_spair(tmp_path / "s", {"test": [pair]})
    ds = SPairDataset.__new__(SPairDataset)
    ds.root, ds.split, ds.pairs_file = root, "test", root / "Layout" / "large" / "test.txt"
    assert ds._parse_fast() is None
    if "src_kps" in edit and None in edit["src_kps"]:
        assert SPairDataset(root, "test").pairs[0].valid.tolist() == [True, False, True]
    elif "trg_imsize" in edit:
        assert SPairDataset(root, "test").pairs[0].trg_size == (332, 500)
    else:
        with pytest.raises(DatasetFormatError, match="expected a list of .* finite numbers"):
            SPairDataset(root, "test")


def test_pfpascal_index_round_trip_and_image_change(tmp_path):
    root = fx.write_pfpascal(tmp_path / "pfp")
    for split in ("trn", "test"):
        plain = PFPascalDataset(root, split)
        a = PFPascalDataset(root, split, cache_dir=tmp_path / "c")
        b = PFPascalDataset(root, split, cache_dir=tmp_path / "c")
        assert (a.index_state, b.index_state) == ("built", "loaded")
        same_pairs(plain, b)
        record_equal(plain[1 if split == "trn" else 0], b[1 if split == "trn" else 0])  # trn row 1 is flipped
    # the loader reads image sizes from the headers: a replaced image makes the index stale
    img = root / fx.pfp_image_path("2008_000002")
    fx.make_image(img, 300, 200, seed=5)
    c = PFPascalDataset(root, "trn", cache_dir=tmp_path / "c")
    assert c.index_state == "rebuilt" and c.pairs[0].trg_size == (200, 300)


def test_pfwillow_index_round_trip(tmp_path):
    root = fx.write_pfwillow(tmp_path / "pfw")
    plain = PFWillowDataset(root)
    PFWillowDataset(root, cache_dir=tmp_path / "c")
    b = PFWillowDataset(root, cache_dir=tmp_path / "c")
    assert b.index_state == "loaded"
    same_pairs(plain, b)


def test_a_loaded_dataset_pickles_for_dataloader_workers(spair_root, tmp_path):
    SPairDataset(spair_root, "test", cache_dir=tmp_path / "c")
    ds = SPairDataset(spair_root, "test", 64, cache_dir=tmp_path / "c")
    clone = pickle.loads(pickle.dumps(ds))
    record_equal(ds[0], clone[0])
    with pytest.raises(ValueError):
        ds.pairs.arrays["src_kps"][0, 0] = 1.0  # the table is read-only: records cannot alter it


def test_the_preprocess_stage_writes_the_index_that_later_stages_load(spair_root, tmp_path):
    from pipeline.stage_preprocess import stage_preprocess
    from simsc.data.registry import build_dataset

    cache = tmp_path / "cache"
    params = {
        "data": {"dataset": "spair", "root": str(spair_root)},
        "preprocess": {"cache_dir": str(cache), "resolutions": [32, "original"], "splits": ["test"]},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stage_preprocess(params)
        summary = json.loads((cache / "summary.json").read_text())
        assert [(s["split"], s["resolution"], s["pairs"], s["index"]) for s in summary] == [
            ("test", 32, 2, "spair/index/test.npz"),
            ("test", "original", 2, "spair/index/test.npz"),
        ]
        # what the train and evaluate stages do: build_dataset(..., cache_dir=preprocess.cache_dir)
        ds = build_dataset("spair", spair_root, "test", 64, cache_dir=cache)
    assert ds.index_state == "loaded"


@pytest.mark.parametrize("column", ["a_trg_kps", "s_src_path"])
def test_an_edited_index_is_stale_not_ground_truth(spair_root, tmp_path, column):
    """Editing the index file itself (keypoints that would score PCK 100, a path out of the root)
    changes no source file: the key covers the stored columns, so the split is parsed again."""
    first, _ = build(SPairDataset, spair_root, "test", cache_dir=tmp_path / "c")
    path = first.index_path
    with np.load(path, allow_pickle=False) as z:
        cols = {k: z[k] for k in z.files}
    if column == "a_trg_kps":
        cols[column] = cols["a_src_kps"].copy()  # "ground truth" = the source points
    else:
        n = len(cols["a_offsets"]) - 1
        paths = index_mod._split(cols[column], n)
        cols[column] = index_mod._join(["../secret/x.jpg"] + paths[1:], "src_path")
    with open(path, "wb") as f:
        np.savez(f, **cols)
    again, _ = build(SPairDataset, spair_root, "test", cache_dir=tmp_path / "c")
    assert again.index_state == "rebuilt"  # reparsed and rewritten, the edit not read
    same_pairs(first, again)
    assert again.index_key == first.index_key
