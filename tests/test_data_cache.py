"""Preprocessing cache: hits, invalidation, atomic entries, no JPEG decode in a cached epoch."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from simsc.data import images
from simsc.data.cache import CachedImages, build_cache
from simsc.data.records import collate_pairs
from simsc.data.spair import SPairDataset
from tests import data_fixtures as fx


@pytest.fixture
def root(tmp_path):
    return fx.write_spair(tmp_path / "spair")


@pytest.fixture
def count_decodes(monkeypatch):
    calls: list[str] = []
    real = images.load_image

    def counting(path, *a, **kw):
        calls.append(str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(images, "load_image", counting)
    return calls


def test_build_cache_then_epoch_never_decodes(root, tmp_path, count_decodes):
    ds = SPairDataset(root, "test", 256, cache_dir=tmp_path / "cache")
    report = build_cache(ds, show_progress=False)
    n_images = len(ds.image_paths())
    assert n_images == 4 and report["images"] == 4 and report["written"] == 4 and report["hits"] == 0
    assert len(count_decodes) == 4
    cdir = tmp_path / "cache" / "spair" / "256"
    assert len(list(cdir.glob("*.npy"))) == 4
    manifest = json.loads((cdir / "manifest.json").read_text())
    assert set(manifest["entries"]) == set(ds.image_paths()) and manifest["resolution"] == 256

    count_decodes.clear()
    fresh = SPairDataset(root, "test", 256, cache_dir=tmp_path / "cache")  # a new process would do the same
    for i in range(len(fresh)):
        fresh[i]
    assert count_decodes == []  # the cached epoch decoded no JPEG
    assert fresh.images.hits == 4 and fresh.images.misses == 0
    assert build_cache(fresh, show_progress=False)["hits"] == 4


def test_cached_records_equal_uncached(root, tmp_path):
    plain = SPairDataset(root, "test", 256)
    cached = SPairDataset(root, "test", 256, cache_dir=tmp_path / "c")
    for i in range(len(plain)):
        a, b = plain[i], cached[i]  # first pass fills the cache transparently
        c = cached[i]  # second pass reads it
        for k in ("src_img", "trg_img", "src_kps", "trg_kps", "trg_size", "src_orig_size", "threshold"):
            assert torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]), k
    assert cached.images.misses == 4 and cached.images.hits == 4


def test_modified_source_is_decoded_again_and_old_entry_pruned(root, tmp_path, count_decodes):
    ds = SPairDataset(root, "test", "original", cache_dir=tmp_path / "c")
    build_cache(ds, show_progress=False)
    rel = ds.pairs[0].src_path
    before = ds[0]["src_img"].clone()
    count_decodes.clear()
    path = root / rel
    st = os.stat(path)
    fx.make_image(path, 500, 333, seed=999)  # same size, new pixels
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a later mtime, as any edit gives
    after = ds[0]["src_img"]
    assert count_decodes == [str(path)]
    assert not torch.equal(before, after)
    assert torch.equal(after, SPairDataset(root, "test", "original")[0]["src_img"])
    cdir = tmp_path / "c" / "spair" / "original"
    assert len(list(cdir.glob("*.npy"))) == 5  # the superseded entry is still there ...
    assert build_cache(ds, show_progress=False)["pruned"] == 1  # ... until the next build
    assert len(list(cdir.glob("*.npy"))) == 4


def test_resolution_is_part_of_the_key(root, tmp_path):
    a = SPairDataset(root, "test", 256, cache_dir=tmp_path / "c")
    b = SPairDataset(root, "test", 128, cache_dir=tmp_path / "c")
    o = SPairDataset(root, "test", "original", cache_dir=tmp_path / "c")
    rel = a.pairs[0].src_path
    assert a.images.key(rel) != b.images.key(rel)
    assert a.images.get(rel)[0].shape == (256, 256, 3)
    assert b.images.get(rel)[0].shape == (128, 128, 3)
    img, orig = o.images.get(rel)
    assert img.shape == (333, 500, 3) and orig == (333, 500)  # 'original' caches the decoded image
    assert np.array_equal(img, images.load_image(root / rel))
    # one folder per resolution, plus the resolution-free pair index (simsc.data.index) and
    # this machine's memo of source digests
    names = {p.name for p in (tmp_path / "c" / "spair").iterdir()}
    assert names == {"256", "128", "original", "index", ".source-digests.json"}
    assert b.images.misses == 1 and b.images.hits == 0


def test_corrupt_entry_is_rebuilt(root, tmp_path, count_decodes):
    cache = CachedImages(tmp_path / "c", "spair", root, 64)
    rel = "JPEGImages/aeroplane/2008_002719.jpg"
    first, orig = cache.get(rel)
    (cache.dir / f"{cache.key(rel)}.npy").write_bytes(b"garbage")
    again, orig2 = cache.get(rel)
    assert np.array_equal(first, again) and orig == orig2 == (333, 500)
    assert len(count_decodes) == 2 and not list(cache.dir.glob("*.tmp"))


def test_cache_in_dataloader_workers(root, tmp_path):
    ds = SPairDataset(root, "test", 256, cache_dir=tmp_path / "c")
    build_cache(ds, show_progress=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_pairs)
    batch = next(iter(loader))
    assert batch["src_img"].shape == (2, 3, 256, 256) and batch["pair_id"][0] == ds.pairs[0].pair_id


def test_build_cache_requires_cache_dir(root):
    with pytest.raises(ValueError, match="cache_dir"):
        build_cache(SPairDataset(root, "test", 256), show_progress=False)


def test_build_cache_removes_only_stale_temporaries(root, tmp_path):
    """Another process's write in progress (a young .tmp) survives a concurrent preprocess; the
    leftover of an interrupted write (older than STALE_TMP_S) is removed."""
    import time

    from simsc.data.cache import STALE_TMP_S

    ds = SPairDataset(root, "test", 64, cache_dir=tmp_path / "c")
    cdir = tmp_path / "c" / "spair" / "64"
    cdir.mkdir(parents=True)
    young, old = cdir / ".abc.npy.x1.tmp", cdir / ".def.npy.x2.tmp"
    young.write_bytes(b"in progress")
    old.write_bytes(b"left over")
    past = time.time() - STALE_TMP_S - 60
    os.utime(old, (past, past))
    build_cache(ds, show_progress=False)
    assert young.exists() and not old.exists()


@pytest.mark.parametrize("what", ["manifest", "entry"])
def test_cache_files_holding_a_list_are_rebuilt(root, tmp_path, what):
    ds = SPairDataset(root, "test", 64, cache_dir=tmp_path / "c")
    build_cache(ds, show_progress=False)
    cdir = tmp_path / "c" / "spair" / "64"
    entries = sorted(p for p in cdir.glob("*.json") if p.name != "manifest.json")
    victim = cdir / "manifest.json" if what == "manifest" else entries[0]
    victim.write_text("[1, 2, 3]")
    again = SPairDataset(root, "test", 64, cache_dir=tmp_path / "c")
    out = build_cache(again, show_progress=False)
    assert out["images"] == len(again.image_paths())
    assert isinstance(json.loads((cdir / "manifest.json").read_text()), dict)
    again[0]  # reads through the cache


def _tree(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_preprocess_stage_output_is_the_same_bytes_in_another_clone(tmp_path, monkeypatch):
    """Two clones (other folders, sources written at other times) preprocess the same data:
    the cache, the DVC output whose hash dvc.lock records, must be byte for byte the same.
    Only this machine's digest memo (.dvcignore'd) may differ."""
    import shutil
    import time

    import yaml

    from pipeline.stage_preprocess import main

    params = {
        "data": {"dataset": "spair", "root": "data"},
        "preprocess": {"cache_dir": "cache", "resolutions": [32, "original"], "splits": ["test"]},
    }
    a, b = tmp_path / "clone_a", tmp_path / "deeper" / "clone_b"
    fx.write_spair(a / "data")
    shutil.copytree(a / "data", b / "data")  # new mtimes and inodes ...
    later = time.time_ns() + 3 * 10**9
    for p in (b / "data").rglob("*"):
        os.utime(p, ns=(later, later))  # ... and clearly another time
    for clone in (a, b):
        (clone / "params.yaml").write_text(yaml.safe_dump(params))
        monkeypatch.chdir(clone)
        assert main([]) == 0
        time.sleep(2.1)  # a zip date has 2 s resolution: the second run writes at another one
    tree_a, tree_b = _tree(a / "cache"), _tree(b / "cache")
    assert "spair/.source-digests.json" in tree_a  # the memo exists, and is machine state:
    assert str(a) in tree_a.pop("spair/.source-digests.json").decode()
    tree_b.pop("spair/.source-digests.json")
    assert "spair/index/test.npz" in tree_a and len(tree_a) > 10
    assert tree_a == tree_b
    for name, data in tree_a.items():
        assert str(tmp_path).encode() not in data, name  # no machine path in any output file
    # the memo is only a hint: an edit that keeps the size and the mtime is still seen (ctime)
    monkeypatch.chdir(b)
    ds = SPairDataset("data", "test", 32, cache_dir="cache")
    rel = ds.pairs[0].src_path
    before = ds.images.key(rel)
    path = b / "data" / rel
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # one byte of the JPEG's tail: same size
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the old mtime back
    fresh = SPairDataset("data", "test", 32, cache_dir="cache")
    assert fresh.images.key(rel) != before


@pytest.mark.slow
def test_two_preprocess_runs_on_one_cache_both_succeed(root, tmp_path):
    """Two processes filling one cache at once (two DVC stages, two users): both finish, and the
    cache then serves every image (a concurrent run's cleanup once deleted the other's temporary
    mid-write). Three rounds, a fresh cache each."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    code = (
        "import sys; from simsc.data.spair import SPairDataset; from simsc.data.cache import build_cache; "
        "build_cache(SPairDataset(sys.argv[1], 'test', 64, cache_dir=sys.argv[2]), show_progress=False)"
    )
    env = dict(os.environ, PYTHONPATH=str(repo))
    for i in range(3):
        cache = tmp_path / f"c{i}"
        runs = [
            subprocess.Popen([sys.executable, "-c", code, str(root), str(cache)], env=env, stderr=subprocess.PIPE)
            for _ in range(2)
        ]
        for run in runs:
            _, err = run.communicate(timeout=300)
            assert run.returncode == 0, err.decode()
        ds = SPairDataset(root, "test", 64, cache_dir=cache)
        out = build_cache(ds, show_progress=False)
        assert out["hits"] == out["images"] == len(ds.image_paths())
        assert not list((cache / "spair" / "64").glob("*.tmp"))
