"""The embedded offline data set (simsc.data.embedded): determinism, splits by photo, exact
ground truth, the SPair-71k layout and the atomic, idempotent build."""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simsc.data import embedded as E

COUNTS = {"trn": 12, "val": 4, "test": 4}

# A real SPair-71k pair annotation (PairAnnotation/test/000001-...:aeroplane.json), copied.
SPAIR_SAMPLE = json.loads(
    '{"pair_id": 1, "filename": "000001-2008_002719-2008_004100:aeroplane", "src_imname": "2008_002719.jpg", '
    '"trg_imname": "2008_004100.jpg", "src_imsize": [500, 333, 3], "trg_imsize": [500, 332, 3], '
    '"src_bndbox": [210, 34, 475, 250], "trg_bndbox": [36, 92, 500, 200], "category": "aeroplane", '
    '"src_pose": "Left", "trg_pose": "Left", "src_kps": [[212, 153], [300, 130], [330, 127]], '
    '"trg_kps": [[39, 145], [364, 171], [416, 173]], "kps_ids": ["0", "7", "11"], "mirror": 0, '
    '"viewpoint_variation": 0, "scale_variation": 0, "truncation": 2, "occlusion": 2}'
)


def _build(root: Path, seed: int = 0, counts: dict[str, int] = COUNTS, **kw) -> Path:
    return E.build_embedded_dataset(
        root, seed=seed, n_train=counts["trn"], n_val=counts["val"], n_test=counts["test"], progress=False, **kw
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("emb") / "embedded")


def _pairs(root: Path, split: str) -> list[dict]:
    lines = (root / "Layout" / "large" / f"{split}.txt").read_text().split()
    return [json.loads((root / "PairAnnotation" / split / f"{line}.json").read_text()) for line in lines]


def _image(root: Path, ann: dict, side: str) -> np.ndarray:
    return np.asarray(Image.open(root / "JPEGImages" / ann["category"] / ann[f"{side}_imname"]).convert("RGB"))


def _gray_thumb(img: np.ndarray, size=(64, 64)) -> np.ndarray:
    t = np.asarray(Image.fromarray(img).convert("L").resize(size, Image.Resampling.BILINEAR), dtype=np.float64)
    t = t - t.mean()
    return t / (np.linalg.norm(t) + 1e-12)


# -- photos and splits -------------------------------------------------------------------------


def test_photos_load_without_network(monkeypatch):
    def refuse(*a, **k):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert len(set(E.EMBEDDED_PHOTOS)) == len(E.EMBEDDED_PHOTOS) >= 10
    for name in E.EMBEDDED_PHOTOS:
        img = E.load_photo.__wrapped__(name)  # bypass the cache: really read the file
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert min(img.shape[:2]) >= 240, name


def test_splits_disjoint_and_photos_distinct():
    splits = E.EMBEDDED_SPLITS
    assert set(splits) == {"trn", "val", "test"}
    seen = [p for s in splits.values() for p in s]
    assert len(seen) == len(set(seen)) and set(seen) == set(E.EMBEDDED_PHOTOS)
    assert all(len(v) >= 2 for v in splits.values())
    # No two photos share their content (e.g. skimage's `cat` is `chelsea`; both would leak).
    thumbs = {n: _gray_thumb(E.load_photo(n)) for n in E.EMBEDDED_PHOTOS}
    names = list(thumbs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert float(thumbs[a].ravel() @ thumbs[b].ravel()) < 0.9, (a, b)
    # ... and the check would catch such a duplicate.
    from skimage import data as skdata

    assert float(_gray_thumb(skdata.cat()).ravel() @ thumbs["chelsea"].ravel()) > 0.99


def test_pairs_come_from_their_split_photos(built):
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["splits"] == {k: list(v) for k, v in E.EMBEDDED_SPLITS.items()}
    for split in ("trn", "val", "test"):
        for ann in _pairs(built, split):
            photo = ann["embedded"]["photo"]
            assert ann["category"] == photo and photo in E.EMBEDDED_SPLITS[split]
            # Pixel provenance: the source image is the recorded crop of that photo.
            src = _image(built, ann, "src")
            w, h = ann["src_imsize"][:2]
            ref = np.asarray(
                Image.fromarray(E.load_photo(photo)).resize(
                    (w, h), Image.Resampling.BICUBIC, box=tuple(ann["embedded"]["photo_crop"])
                )
            )
            assert np.abs(src.astype(float) - ref).mean() < 4.0, ann["filename"]


# -- determinism and the build ------------------------------------------------------------------


def test_same_seed_byte_identical_and_other_seed_differs(built, tmp_path):
    again = _build(tmp_path / "again")
    assert E.dataset_digest(again) == E.dataset_digest(built)
    other = E.dataset_digest(_build(tmp_path / "other", seed=1))
    ref = E.dataset_digest(built)
    images = [k for k in ref if k.endswith(".jpg")]
    assert images and all(k in other for k in images)  # same names ...
    assert all(other[k] != ref[k] for k in images)  # ... other pixels


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real = E._pair_record

    def flaky(*args):
        calls.append(args)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return real(*args)

    monkeypatch.setattr(E, "_pair_record", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        _build(tmp_path / "emb", counts={"trn": 3, "val": 1, "test": 1})
    assert list(tmp_path.iterdir()) == []


def test_second_call_is_a_no_op(built):
    before = {p: p.stat().st_mtime_ns for p in built.rglob("*")}
    assert (
        E.build_embedded_dataset(
            built, seed=0, n_train=COUNTS["trn"], n_val=COUNTS["val"], n_test=COUNTS["test"], progress=False
        )
        == built
    )
    after = {p: p.stat().st_mtime_ns for p in built.rglob("*")}
    assert before == after
    assert not [p for p in built.parent.iterdir() if p.name.startswith(f".{built.name}.")]  # no temp left


def test_rebuild_with_other_parameters_replaces_and_foreign_root_is_refused(tmp_path):
    counts = {"trn": 2, "val": 1, "test": 1}
    root = _build(tmp_path / "emb", counts=counts)
    _build(root, seed=3, counts=counts)
    assert json.loads((root / "manifest.json").read_text())["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        _build(foreign, counts=counts)
    assert (foreign / "keep.txt").read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb", "mine"]


def test_manifest_and_layout_counts(built):
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["counts"] == COUNTS
    assert manifest["generator_version"] == E.GENERATOR_VERSION
    for split, n in COUNTS.items():
        lines = (built / "Layout" / "large" / f"{split}.txt").read_text().splitlines()
        jsons = sorted(p.stem for p in (built / "PairAnnotation" / split).glob("*.json"))
        assert len(lines) == n == len(jsons) and sorted(lines) == jsons
        for k, line in enumerate(lines, start=1):
            ids, rest = line.split("-", 1)
            src_stem, rest = rest.split("-", 1)
            trg_stem, category = rest.split(":")
            assert ids == f"{k:06d}" and category in E.EMBEDDED_SPLITS[split]
            assert (built / "JPEGImages" / category / f"{src_stem}.jpg").is_file()
            assert (built / "JPEGImages" / category / f"{trg_stem}.jpg").is_file()
    n_images = sum(1 for _ in (built / "JPEGImages").rglob("*.jpg"))
    assert n_images == 2 * sum(COUNTS.values())


def test_json_fields_match_spair(built):
    def kind(v):
        return "number" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__

    for split in COUNTS:
        for ann in _pairs(built, split):
            assert set(ann) == set(SPAIR_SAMPLE) | {"embedded"}
            for key, ref in SPAIR_SAMPLE.items():
                assert type(ann[key]) is type(ref) or kind(ann[key]) == kind(ref) == "number", key
            for key in ("pair_id", "mirror", "viewpoint_variation", "scale_variation", "truncation", "occlusion"):
                assert type(ann[key]) is int
            for key in ("src_imsize", "trg_imsize", "src_bndbox", "trg_bndbox"):
                assert all(type(v) is int for v in ann[key]), key
            assert ann["src_imsize"][2] == ann["trg_imsize"][2] == 3
            for key in ("src_kps", "trg_kps"):
                assert all(len(p) == 2 and all(kind(v) == "number" for v in p) for p in ann[key])
            assert ann["kps_ids"] == [str(i) for i in range(len(ann["src_kps"]))]
            assert ann["filename"] == (
                f"{ann['pair_id']:06d}-{ann['src_imname'][:-4]}-{ann['trg_imname'][:-4]}:{ann['category']}"
            )


def test_images_and_keypoints(built):
    (w0, h0), (w1, h1) = E.DEFAULT_IMAGE_SIZE
    for split in COUNTS:
        for ann in _pairs(built, split):
            src, trg = _image(built, ann, "src"), _image(built, ann, "trg")
            assert list(src.shape[1::-1]) == ann["src_imsize"][:2]
            assert list(trg.shape[1::-1]) == ann["trg_imsize"][:2]
            for img in (src, trg):
                assert w0 <= img.shape[1] <= w1 and h0 <= img.shape[0] <= h1
            s = np.asarray(ann["src_kps"], dtype=float)
            t = np.asarray(ann["trg_kps"], dtype=float)
            assert E.MIN_KPS <= len(s) == len(t) <= E.KPS_RANGE[1]
            (sh, sw), (th, tw) = src.shape[:2], trg.shape[:2]
            assert (s >= 0).all() and (s[:, 0] <= sw - 1).all() and (s[:, 1] <= sh - 1).all()
            assert (t >= 0).all() and (t[:, 0] <= tw - 1).all() and (t[:, 1] <= th - 1).all()
            assert np.array_equal(s, np.round(s))  # source points are pixel centres
            assert ann["src_bndbox"] == [0, 0, sw - 1, sh - 1]
            x1, y1, x2, y2 = ann["trg_bndbox"]
            assert 0 <= x1 < x2 <= tw - 1 and 0 <= y1 < y2 <= th - 1
            assert (t[:, 0] >= x1).all() and (t[:, 0] <= x2).all() and (t[:, 1] >= y1).all() and (t[:, 1] <= y2).all()
            # The stored warp reproduces the stored target keypoints.
            rec = ann["embedded"]["warp"]
            b = rec["bumps"]
            warp = E.Warp(
                np.array(rec["homography"]),
                [x["center"] for x in b],
                [x["amplitude"] for x in b],
                [x["sigma"] for x in b],
            )
            assert np.abs(warp.forward(s) - t).max() < 0.01


# -- exact ground truth -------------------------------------------------------------------------


def _warps(n: int) -> list[tuple[E.Warp, tuple[int, int], tuple[int, int]]]:
    out = []
    rng = np.random.default_rng(123)
    while len(out) < n:
        src_size = (int(rng.integers(320, 481)), int(rng.integers(240, 361)))
        trg_size = (int(rng.integers(320, 481)), int(rng.integers(240, 361)))
        warp = E.sample_warp(rng, src_size, trg_size)
        if len(warp.sigmas) or len(out) == 0:  # keep one pure homography, the rest with bumps
            out.append((warp, src_size, trg_size))
    return out


def test_forward_inverts_inverse():
    rng = np.random.default_rng(0)
    for warp, (ws, hs), _ in _warps(6):
        p = rng.uniform(0, 1, size=(200, 2)) * [ws - 1, hs - 1]
        q = warp.forward(p)
        back, w = warp.inverse(q)
        assert (w > 0).all()
        assert np.abs(back - p).max() < 1e-6


def test_planted_dots_land_on_warped_keypoints():
    """Warp of the image (inverse map) and of the points (forward map) agree."""
    rng = np.random.default_rng(7)
    checked = 0
    for warp, (ws, hs), (wt, ht) in _warps(6):
        pts = rng.integers([20, 20], [ws - 20, hs - 20], size=(6, 2)).astype(float)
        for p in pts:
            q = warp.forward(p[None])[0]
            if not (3 <= q[0] <= wt - 4 and 3 <= q[1] <= ht - 4):
                continue
            yy, xx = np.mgrid[0:hs, 0:ws]
            dot = np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2) / (2 * 1.2**2)).astype(np.float32)
            out, mask = E.warp_image(dot, warp, (wt, ht))
            assert out.shape == (ht, wt) and mask.shape == (ht, wt)
            iy, ix = np.unravel_index(np.argmax(out), out.shape)
            assert np.hypot(ix - q[0], iy - q[1]) <= 1.0
            # Sub-pixel: the intensity centroid around the peak is the warped point.
            win = out[iy - 3 : iy + 4, ix - 3 : ix + 4].astype(float)
            gy, gx = np.mgrid[iy - 3 : iy + 4, ix - 3 : ix + 4]
            c = np.array([(win * gx).sum(), (win * gy).sum()]) / win.sum()
            assert np.hypot(*(c - q)) < 0.3
            checked += 1
    assert checked >= 20


def test_generated_pair_dot_check():
    """Same check through make_pair: the keypoints of a real generated pair."""
    pair = E.make_pair("chelsea", np.random.default_rng([5, 2, 0]))
    hs, ws = pair.src.shape[:2]
    ht, wt = pair.trg.shape[:2]
    yy, xx = np.mgrid[0:hs, 0:ws]
    img = np.zeros((hs, ws), np.float32)
    for p in pair.src_kps:
        img += np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2) / (2 * 1.0**2)).astype(np.float32)
    out, _ = E.warp_image(img, pair.warp, (wt, ht))
    for q in pair.trg_kps:
        ix, iy = int(round(q[0])), int(round(q[1]))
        y0, x0 = max(iy - 2, 0), max(ix - 2, 0)
        win = out[y0 : iy + 3, x0 : ix + 3]
        jy, jx = np.unravel_index(np.argmax(win), win.shape)
        assert np.hypot(x0 + jx - q[0], y0 + jy - q[1]) <= 1.0
        assert win.max() > 0.5


# -- the SPair loader reads it unchanged --------------------------------------------------------


def test_spair_loader_reads_the_embedded_set(built):
    from simsc.data import spair  # the project's own loader: an import error fails the test

    for split, n in COUNTS.items():
        ds = spair.SPairDataset(built, split, "original", name="embedded")
        assert len(ds) == n and not ds.skipped and not ds.invalid_keypoints
        anns = _pairs(built, split)
        rec = ds[0]
        ann = anns[0]
        assert rec["category"] == ann["category"]
        assert tuple(rec["trg_img"].shape) == (3, ann["trg_imsize"][1], ann["trg_imsize"][0])
        np.testing.assert_allclose(rec["src_kps"].numpy(), ann["src_kps"], atol=1e-4)
        np.testing.assert_allclose(rec["trg_kps"].numpy(), ann["trg_kps"], atol=1e-3)
        np.testing.assert_allclose(rec["trg_bbox"].numpy(), ann["trg_bndbox"])
        x1, y1, x2, y2 = ann["trg_bndbox"]
        assert float(rec["threshold"]) == pytest.approx(max(x2 - x1, y2 - y1))
    ds = spair.SPairDataset(built, "trn", 256, name="embedded")
    rec = ds[1]
    assert tuple(rec["src_img"].shape) == (3, 256, 256) and bool(rec["valid"].all())


# -- difficulty: mild unchanged, hard -----------------------------------------------------------

# The pair files of a 2/1/1 mild set (default sizes, seed 0), digested as in _pair_files_digest,
# recorded by the generator before the difficulty setting existed, on this stack.
MILD_GOLDEN = "ad3d4bf5ab440ccc2668bce2ea8bc78d953709c9ca37b17149b27a2e6b241db8"
MILD_GOLDEN_STACK = {"numpy": "2.4.6", "pillow": "13.0.0", "scipy": "1.17.1", "scikit-image": "0.26.0"}
TINY = {"trn": 2, "val": 1, "test": 1}
HARD_COUNTS = {"trn": 3, "val": 2, "test": 2}


def _pair_files_digest(root: Path) -> str:
    import hashlib

    files = {k: v for k, v in E.dataset_digest(root).items() if k.split("/")[0] != "Layout" and "/" in k}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


@pytest.fixture(scope="module")
def hard(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("hard") / "embedded", counts=HARD_COUNTS, difficulty="hard")


def test_mild_is_the_set_made_before_the_difficulty_setting(tmp_path):
    from importlib.metadata import version

    default = _build(tmp_path / "default", counts=TINY)
    mild = _build(tmp_path / "mild", counts=TINY, difficulty="mild")
    assert E.dataset_digest(default) == E.dataset_digest(mild)
    manifest = json.loads((mild / "manifest.json").read_text())
    assert "difficulty" not in manifest and "difficulty_params" not in manifest  # as before the setting
    assert all("difficulty" not in ann["embedded"] for split in TINY for ann in _pairs(mild, split))
    stack = {name: version(name) for name in MILD_GOLDEN_STACK}
    if stack != MILD_GOLDEN_STACK:
        pytest.skip(f"golden digest recorded with {MILD_GOLDEN_STACK}, this stack is {stack}")
    assert _pair_files_digest(mild) == MILD_GOLDEN


def test_a_mild_set_without_the_key_is_kept_and_another_difficulty_rebuilds(tmp_path):
    counts = {"trn": 1, "val": 1, "test": 1}
    root = _build(tmp_path / "emb", counts=counts)
    manifest = json.loads((root / "manifest.json").read_text())
    assert "difficulty" not in manifest  # what every mild set made before the setting holds
    before = E.dataset_digest(root)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert _build(root, counts=counts, difficulty="mild") == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == mtimes  # read as mild: no rebuild
    _build(root, counts=counts, difficulty="hard")
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["difficulty"] == "hard" and manifest["difficulty_params"] == E.HARD.to_json()
    _build(root, counts=counts, difficulty="mild")
    assert E.dataset_digest(root) == before
    # A change of the hard parameters rebuilds too (they are part of the identity).
    tweaked = dataclasses.replace(E.HARD, min_coverage=0.2)
    assert not E._matches(
        E._manifest(0, counts, ((320, 240), (480, 360)), tweaked),
        E._manifest(0, counts, ((320, 240), (480, 360)), E.HARD),
    )
    with pytest.raises(ValueError, match="unknown difficulty"):
        _build(tmp_path / "x", counts=counts, difficulty="extreme")


def test_hard_build_is_deterministic(hard, tmp_path):
    again = _build(tmp_path / "again", counts=HARD_COUNTS, difficulty="hard")
    assert E.dataset_digest(again) == E.dataset_digest(hard)
    manifest = json.loads((hard / "manifest.json").read_text())
    assert manifest["difficulty"] == "hard" and manifest["counts"] == HARD_COUNTS


def test_hard_set_layout_splits_and_same_split_textures(hard):
    from simsc.data import spair

    for split, n in HARD_COUNTS.items():
        anns = _pairs(hard, split)
        assert len(anns) == n
        for ann in anns:
            photo, rec = ann["category"], ann["embedded"]
            assert photo in E.EMBEDDED_SPLITS[split] and rec["difficulty"] == "hard"
            others = set(E.EMBEDDED_SPLITS[split]) - {photo}
            assert rec["clutter"]["photo"] in others
            assert rec["occluders"] and ann["occlusion"] == 2
            for occ in rec["occluders"]:
                assert "noise_seed" in occ["texture"] or occ["texture"]["photo"] in others
            assert E.MIN_KPS <= len(ann["src_kps"]) == len(ann["trg_kps"]) <= E.KPS_RANGE[1]
        ds = spair.SPairDataset(hard, split, "original", name="embedded")
        assert len(ds) == n and not ds.skipped and not ds.invalid_keypoints
    for photo in E.EMBEDDED_PHOTOS:  # every photo's texture pool is its own split, less itself
        split = next(s for s, ps in E.EMBEDDED_SPLITS.items() if photo in ps)
        assert set(E.texture_photos(photo)) == set(E.EMBEDDED_SPLITS[split]) - {photo} != set()


def test_hard_ground_truth_is_exact_and_visible():
    for split_index, photo in enumerate(("astronaut", "coffee", "chelsea", "motorcycle")):
        pair = E.make_pair(photo, np.random.default_rng([3, split_index, 0]), difficulty="hard")
        ht, wt = pair.trg.shape[:2]
        back, w = pair.warp.inverse(pair.trg_kps)
        assert (w > 0).all() and np.abs(back - pair.src_kps).max() < 1e-6
        t = pair.trg_kps
        assert (t >= 2).all() and (t[:, 0] <= wt - 3).all() and (t[:, 1] <= ht - 3).all()
        mask = E.occluder_mask(pair.occluders, (wt, ht))
        assert mask.any() and not E.occluded_keypoints(t, mask, E.HARD.occlusion.margin).any()


def test_occlusion_drops_exactly_the_covered_keypoints(monkeypatch):
    # the rule on a hand-made mask: pixels x, y in 5..9 covered
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:10, 5:10] = True
    pts = np.array([[7, 7], [9.4, 7], [9.6, 7], [10.4, 7], [10.6, 7], [11.6, 7], [7, 10.2], [15, 15], [7, -3]])
    assert E.occluded_keypoints(pts, mask, 0).tolist() == [True, True, False, False, False, False, False, False, False]
    assert E.occluded_keypoints(pts, mask, 1).tolist() == [True, True, True, True, False, False, True, False, False]
    # ... and through make_pair: the points it tested, the answer, and what it kept
    calls = []
    real = E.occluded_keypoints

    def spy(q, m, margin):
        out = real(q, m, margin)
        calls.append((q.copy(), m.copy(), out))
        return out

    monkeypatch.setattr(E, "occluded_keypoints", spy)
    pair = E.make_pair("chelsea", np.random.default_rng([4, 2, 0]), difficulty="hard")  # 6 covered
    q, m, out = calls[-1]
    ht, wt = pair.trg.shape[:2]
    assert np.array_equal(m, E.occluder_mask(pair.occluders, (wt, ht)))
    ys, xs = np.nonzero(m)  # brute force: Chebyshev distance to every covered pixel
    near = np.floor(q + 0.5)
    d = np.maximum(np.abs(near[:, None, 0] - xs[None]), np.abs(near[:, None, 1] - ys[None])).min(axis=1)
    on = (near >= 0).all(axis=1) & (near[:, 0] <= wt - 1) & (near[:, 1] <= ht - 1)
    assert np.array_equal(out, on & (d <= E.HARD.occlusion.margin))
    inside = (q[:, 0] >= 2) & (q[:, 0] <= wt - 3) & (q[:, 1] >= 2) & (q[:, 1] <= ht - 3)
    assert pair.n_occluded == int((inside & out).sum()) > 0
    expected = q[inside & ~out][: len(pair.trg_kps)]
    assert np.array_equal(pair.trg_kps, expected)  # the first visible ones, none covered


def test_paste_occluders_changes_exactly_the_masked_pixels():
    planes = np.zeros((3, 40, 50), dtype=np.float32)
    occs = [
        E.Occluder("rectangle", (10.0, 12.0), (6.0, 3.0), 0.3, noise_seed=1),
        E.Occluder("ellipse", (48.0, 20.0), (8.0, 5.0), 1.0, noise_seed=2),  # cut by the border
        E.Occluder(
            "blob", (25.0, 30.0), (7.0, 6.0), 0.0, ((0.1, 0.0), (0.1, 1.0), (0.1, 2.0)), "coffee", (0, 0, 60, 60)
        ),
    ]
    out = E.paste_occluders(planes, occs)
    mask = E.occluder_mask(occs, (50, 40))
    assert mask.sum() > 100 and not mask.all()
    assert (out[:, ~mask] == 0).all() and (out.max(axis=0)[mask] > 0).mean() > 0.95
    assert out.shape == planes.shape and (planes == 0).all()  # the input is left alone


def test_appearance_operations_on_hand_made_images():
    img = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], dtype=np.uint8)  # 1 x 4 x 3
    planes = img.transpose(2, 0, 1).astype(np.float32) / np.float32(255)

    def u8(p):
        return np.rint(p * 255).astype(int).transpose(1, 2, 0)

    assert np.array_equal(u8(E.invert(planes)), 255 - img.astype(int))
    grey = u8(E.to_greyscale(planes))
    assert (grey == grey[:, :, :1]).all()  # equal channels
    # 0.299 * 255 = 76.2, 0.587 * 255 = 149.7, 0.114 * 255 = 29.1, 0.299*10 + 0.587*20 + 0.114*30 = 18.2
    assert grey[0, :, 0].tolist() == [76, 150, 29, 18]
    ramp = np.tile(np.linspace(0, 1, 256, dtype=np.float32), (3, 1, 1))
    for levels in (2, 3, 5):
        post = E.posterise(ramp, levels)
        assert np.allclose(np.unique(post), np.arange(levels) / (levels - 1))
        assert np.all(np.diff(post[0, 0]) >= 0)  # monotone
    # Through apply_photometric with everything else neutral: inverted greyscale of the image.
    draw = E.PhotometricDraw(0.0, 1.0, 1.0, 0.0, 0.0, 0.0, greyscale=True, invert=True)
    out = E.apply_photometric(planes, draw, np.random.default_rng(0))
    assert out[0, :, 0].tolist() == [255 - 76, 255 - 150, 255 - 29, 255 - 18]
    # A mild draw has no extra operation and consumes the same random numbers as before.
    d = E.sample_photometric(np.random.default_rng(0))
    assert not d.greyscale and not d.invert and d.posterise == 0


def _rotation_and_scale(warp: E.Warp, src_size, trg_size) -> tuple[float, float]:
    """Rotation (deg) and relative scale of the homography at the source centre (its Jacobian
    there is rotation @ diag(s sqrt(a), s / sqrt(a)))."""
    (ws, hs), (wt, ht) = src_size, trg_size
    h = warp.h
    c = np.array([(ws - 1) / 2, (hs - 1) / 2, 1.0])
    w = h[2] @ c
    u = h[:2] @ c / w
    jac = (h[:2, :2] - np.outer(u, h[2, :2])) / w
    return float(np.degrees(np.arctan2(jac[1, 0], jac[0, 0]))), float(
        np.sqrt(np.linalg.det(jac)) / np.sqrt(wt * ht / (ws * hs))
    )


def test_hard_warp_ranges_are_reached_and_stay_invertible():
    rng = np.random.default_rng(0)
    rots, scales = [], []
    p = E.HARD.warp
    for _ in range(400):
        src_size = (int(rng.integers(320, 481)), int(rng.integers(240, 361)))
        trg_size = (int(rng.integers(320, 481)), int(rng.integers(240, 361)))
        warp = E.sample_warp(rng, src_size, trg_size, p)
        rot, scale = _rotation_and_scale(warp, src_size, trg_size)
        rots.append(rot)
        scales.append(scale)
        if len(warp.sigmas):  # the field's Lipschitz bound stays below 1
            lip = (np.hypot(*warp.amplitudes.T) / warp.sigmas).sum() * np.exp(-0.5)
            assert lip <= p.bump_lipschitz + 1e-9 < 1
    rots_a, scales_a = np.array(rots), np.log(scales)
    assert (
        np.abs(rots_a).max() <= p.rotation_deg
        and rots_a.min() < 5 - p.rotation_deg
        and rots_a.max() > p.rotation_deg - 5
    )
    lo, hi = np.log(p.scale)
    assert lo - 1e-9 <= scales_a.min() < lo + 0.05 and hi - 0.05 < scales_a.max() <= hi + 1e-9
    assert abs(np.median(scales_a)) < 0.15  # log-uniform: as much zoom-in as zoom-out
    assert p.rotation_deg >= 60 and p.scale == (0.5, 2.0)  # the hard protocol's ranges
    # the exact forward map still inverts the closed-form inverse at these amplitudes
    for warp_rng in range(5):
        r = np.random.default_rng(warp_rng)
        warp = E.sample_warp(r, (400, 300), (400, 300), dataclasses.replace(p, bump_prob=1.0))
        pts = r.uniform(0, 1, size=(200, 2)) * [399, 299]
        q = warp.forward(pts)
        back, w = warp.inverse(q)
        assert np.abs(back[w > 0] - pts[w > 0]).max() < 1e-6


def test_command_line_builds_the_hard_set(tmp_path):
    argv = [str(tmp_path / "cli"), "--n-train", "1", "--n-val", "1", "--n-test", "1", "--no-progress"]
    assert E.main([*argv, "--difficulty", "hard"]) == 0
    assert json.loads((tmp_path / "cli" / "manifest.json").read_text())["difficulty"] == "hard"
    with pytest.raises(SystemExit) as exc:
        E.main([*argv, "--difficulty", "extreme"])
    assert exc.value.code == 2


def test_download_stage_passes_the_difficulty(tmp_path):
    from pipeline.stage_download import stage_download
    from simsc.errors import UserError

    params = {
        "data": {"dataset": "embedded", "root": str(tmp_path / "stage")},
        "embedded": {"seed": 0, "n_train": 1, "n_val": 1, "n_test": 1, "difficulty": "hard"},
    }
    stage_download(params)
    ref = _build(tmp_path / "ref", counts={"trn": 1, "val": 1, "test": 1}, difficulty="hard")
    assert E.dataset_digest(tmp_path / "stage") == E.dataset_digest(ref)
    params["embedded"]["difficulty"] = "extreme"
    with pytest.raises(UserError, match="embedded.difficulty"):
        stage_download(params)
