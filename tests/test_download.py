"""The downloader against a local HTTP server on 127.0.0.1 serving archives built here."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from simsc.data import download as dl
from simsc.data.download import (
    LOCK_NAME,
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    download_dataset,
    extract_archive,
    fetch,
)
from simsc.data.sources import DATASET_SOURCES, MIRROR_ENV, Dataset, SourceFile, resolve_url
from tests.http_server import LocalHTTPServer, unused_port

FAST = dict(retries=2, backoff=0.001, timeout=5.0, progress=False)

# ----------------------------------------------------------------------------- helpers


_NOISE = random.Random(0).randbytes(150_000)  # incompressible: the archives stay ~150 kB


def _payload() -> dict[str, bytes]:
    return {
        "toy/images/a.bin": _NOISE,
        "toy/images/b.txt": b"hello\n",
        "toy/Annotations/c.json": b'{"kps": [[1, 2]]}',
    }


CSV = b"source_image,target_image,class,flip\ntoy/images/a.bin,toy/images/b.txt,1,0\n"


def make_zip(files: dict[str, bytes], extra: list[zipfile.ZipInfo | tuple[zipfile.ZipInfo, bytes]] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        for item in extra:
            info, data = item if isinstance(item, tuple) else (item, b"evil")
            zf.writestr(info, data)
    return buf.getvalue()


def make_tar_gz(files: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tf:
        dirs = sorted({str(Path(n).parent) for n in files})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            if info.isfile():
                tf.addfile(info, io.BytesIO(b"x" * info.size))
            else:
                tf.addfile(info)
    return buf.getvalue()


def toy_sources(archive_name: str, *, with_csv: bool = True, sha256: str | None = None) -> dict[str, Dataset]:
    files = [SourceFile(f"https://example.invalid/pub/{archive_name}", archive_name, "archive", "", sha256)]
    if with_csv:
        files.append(SourceFile("https://other.invalid/lists/pairs.csv", "pairs.csv", "file", "lists/pairs.csv"))
    return {"toy": Dataset("toy", "toy-set", tuple(files), expect=("toy/images",))}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree(root: Path) -> list[str]:
    """Every path under root (files and folders), relative, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


ARCHIVES = {"zip": ("toy.zip", make_zip), "tar.gz": ("toy.tar.gz", make_tar_gz)}


@pytest.fixture
def server():
    with LocalHTTPServer() as srv:
        yield srv


# ----------------------------------------------------------------------------- 1. resume


@pytest.mark.parametrize("fmt", list(ARCHIVES))
def test_cut_download_resumes_and_installs(server, tmp_path, fmt):
    name, build = ARCHIVES[fmt]
    payload = _payload()
    data = build(payload)
    server.files = {f"/{name}": data, "/pairs.csv": CSV}
    cut = len(data) // 2
    server.cut_next(f"/{name}", after=cut)
    root = tmp_path / "data"
    messages: list[str] = []

    final = download_dataset(
        "toy", root, mirror=server.base_url, sources=toy_sources(name), log=messages.append, **FAST
    )

    reqs = server.requests_for(f"/{name}")
    assert [r.range for r in reqs] == [None, f"bytes={cut}-"]
    assert cut > 0
    assert final == root / "toy-set"
    for member, content in payload.items():
        assert (final / member).read_bytes() == content
    assert (final / "lists/pairs.csv").read_bytes() == CSV
    lock = json.loads((root / LOCK_NAME).read_text())
    assert lock[name] == {"url": server.url(name), "sha256": sha(data), "size": len(data)}
    assert lock["pairs.csv"]["sha256"] == sha(CSV)
    marker = json.loads((final / dl.MARKER_NAME).read_text())
    assert marker["files"][name]["sha256"] == sha(data)
    # nothing else left in the root: no .downloads, no temporary folders
    assert sorted(p.name for p in root.iterdir()) == [LOCK_NAME, "toy-set"]
    assert any("retrying" in m for m in messages)


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = make_zip(_payload())
    server.files = {"/toy.zip": data}
    server.honor_range = False
    server.cut_next("/toy.zip", after=1000)
    res = fetch(server.url("toy.zip"), tmp_path / "toy.zip", **FAST)
    assert [r.range for r in server.requests] == [None, "bytes=1000-"]
    assert (tmp_path / "toy.zip").read_bytes() == data
    assert res.sha256 == sha(data) and res.size == len(data)
    assert not (tmp_path / "toy.zip.part").exists()


def test_existing_part_file_is_resumed(server, tmp_path):
    data = make_zip(_payload())
    server.files = {"/toy.zip": data}
    (tmp_path / "toy.zip.part").write_bytes(data[:777])
    fetch(server.url("toy.zip"), tmp_path / "toy.zip", **FAST)
    assert [r.range for r in server.requests] == ["bytes=777-"]
    assert (tmp_path / "toy.zip").read_bytes() == data


# ----------------------------------------------------------------------------- 2. idempotent


@pytest.mark.parametrize("fmt", list(ARCHIVES))
def test_second_run_does_no_network_work(server, tmp_path, fmt):
    name, build = ARCHIVES[fmt]
    server.files = {f"/{name}": build(_payload()), "/pairs.csv": CSV}
    kwargs = dict(mirror=server.base_url, sources=toy_sources(name), **FAST)
    root = tmp_path / "data"
    download_dataset("toy", root, **kwargs)
    before = server.request_count()
    lock_before = (root / LOCK_NAME).read_bytes()
    messages: list[str] = []
    assert download_dataset("toy", root, log=messages.append, **kwargs) == root / "toy-set"
    assert server.request_count() == before
    assert any("up to date" in m for m in messages)
    assert (root / LOCK_NAME).read_bytes() == lock_before


def test_second_run_restores_a_deleted_lock_file_without_network(server, tmp_path):
    data = make_zip(_payload())
    server.files = {"/toy.zip": data, "/pairs.csv": CSV}
    kwargs = dict(mirror=server.base_url, sources=toy_sources("toy.zip"), **FAST)
    download_dataset("toy", tmp_path, **kwargs)
    (tmp_path / LOCK_NAME).unlink()
    n = server.request_count()
    download_dataset("toy", tmp_path, **kwargs)
    assert server.request_count() == n
    assert json.loads((tmp_path / LOCK_NAME).read_text())["toy.zip"]["sha256"] == sha(data)


def test_foreign_folder_in_the_way_is_not_touched(server, tmp_path):
    (tmp_path / "toy-set").mkdir()
    (tmp_path / "toy-set" / "mine.txt").write_text("keep")
    with pytest.raises(DownloadError, match="not completed by `simsc download`"):
        download_dataset("toy", tmp_path, mirror=server.base_url, sources=toy_sources("toy.zip"), **FAST)
    assert (tmp_path / "toy-set" / "mine.txt").read_text() == "keep"
    assert server.request_count() == 0


# ----------------------------------------------------------------------------- 3. corrupt


@pytest.mark.parametrize("fmt", list(ARCHIVES))
def test_bytes_differing_from_the_lock_fail_and_leave_a_clean_root(server, tmp_path, fmt):
    name, build = ARCHIVES[fmt]
    good = build(_payload())
    server.files = {f"/{name}": good}
    kwargs = dict(mirror=server.base_url, sources=toy_sources(name, with_csv=False), **FAST)
    download_dataset("toy", tmp_path, **kwargs)
    lock_before = (tmp_path / LOCK_NAME).read_bytes()
    shutil.rmtree(tmp_path / "toy-set")
    bad = build({**_payload(), "toy/images/b.txt": b"tampered\n"})
    server.files[f"/{name}"] = bad

    with pytest.raises(ChecksumError) as err:
        download_dataset("toy", tmp_path, **kwargs)
    msg = str(err.value)
    assert name in msg and sha(good) in msg and sha(bad) in msg
    assert "nothing was extracted" in msg
    assert tree(tmp_path) == [LOCK_NAME]  # no folder, no temp folder, no .downloads
    assert (tmp_path / LOCK_NAME).read_bytes() == lock_before


def test_known_digest_in_the_source_table_is_enforced(server, tmp_path):
    data = make_zip(_payload())
    server.files = {"/toy.zip": data}
    wrong = "0" * 64
    with pytest.raises(ChecksumError, match=wrong):
        download_dataset(
            "toy",
            tmp_path,
            mirror=server.base_url,
            sources=toy_sources("toy.zip", with_csv=False, sha256=wrong),
            **FAST,
        )
    assert tree(tmp_path) == []
    download_dataset(
        "toy",
        tmp_path,
        mirror=server.base_url,
        sources=toy_sources("toy.zip", with_csv=False, sha256=sha(data)),
        **FAST,
    )
    assert (tmp_path / "toy-set/toy/images/b.txt").read_bytes() == b"hello\n"


@pytest.mark.parametrize("fmt", list(ARCHIVES))
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_invalid_archive_fails_and_leaves_a_clean_root(server, tmp_path, fmt, damage):
    name, build = ARCHIVES[fmt]
    data = build(_payload())
    served = data[: len(data) * 2 // 3] if damage == "truncated" else b"<html>not an archive</html>" * 50
    server.files = {f"/{name}": served}
    with pytest.raises(DownloadError, match=f"cannot extract {name}") as err:
        download_dataset("toy", tmp_path, mirror=server.base_url, sources=toy_sources(name, with_csv=False), **FAST)
    assert "nothing was extracted" in str(err.value)
    assert tree(tmp_path) == []  # no lock entry for a file that never installed


def test_unexpected_layout_installs_nothing(server, tmp_path):
    server.files = {"/toy.zip": make_zip({"other/x.txt": b"x"})}
    with pytest.raises(DownloadError, match="unexpected archive layout"):
        download_dataset(
            "toy", tmp_path, mirror=server.base_url, sources=toy_sources("toy.zip", with_csv=False), **FAST
        )
    assert tree(tmp_path) == []


def test_corrupt_hand_placed_file_is_rejected(server, tmp_path):
    data = make_zip(_payload())
    server.files = {"/toy.zip": data}
    kwargs = dict(mirror=server.base_url, sources=toy_sources("toy.zip", with_csv=False), **FAST)
    download_dataset("toy", tmp_path, **kwargs)
    shutil.rmtree(tmp_path / "toy-set")
    (tmp_path / ".downloads").mkdir()
    mid = len(data) // 2
    (tmp_path / ".downloads" / "toy.zip").write_bytes(data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :])
    with pytest.raises(ChecksumError, match=sha(data)):
        download_dataset("toy", tmp_path, **kwargs)
    assert tree(tmp_path) == [LOCK_NAME]  # the bad file was deleted
    n = server.request_count()
    download_dataset("toy", tmp_path, **kwargs)  # a rerun downloads it again
    assert server.request_count() == n + 1


# ----------------------------------------------------------------------------- 4. unsafe members


def _zip_symlink() -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo("toy/link")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, b"/etc/passwd"


def _tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = 4 if kind == tarfile.REGTYPE else 0
    info.mode = 0o644
    return info


UNSAFE = {
    "zip-dotdot": ("bad.zip", lambda: make_zip(_payload(), [zipfile.ZipInfo("../evil")]), "../evil", "'..'"),
    "zip-nested-dotdot": (
        "bad.zip",
        lambda: make_zip(_payload(), [zipfile.ZipInfo("toy/../../evil")]),
        "toy/../../evil",
        "'..'",
    ),
    "zip-absolute": ("bad.zip", lambda: make_zip(_payload(), [zipfile.ZipInfo("/tmp/evil")]), "/tmp/evil", "absolute"),
    "zip-symlink": ("bad.zip", lambda: make_zip(_payload(), [_zip_symlink()]), "toy/link", "symlink"),
    "tar-dotdot": ("bad.tar.gz", lambda: make_tar_gz(_payload(), [_tar_member("../evil")]), "../evil", "'..'"),
    "tar-absolute": (
        "bad.tar.gz",
        lambda: make_tar_gz(_payload(), [_tar_member("/tmp/evil")]),
        "/tmp/evil",
        "absolute",
    ),
    "tar-symlink": (
        "bad.tar.gz",
        lambda: make_tar_gz(_payload(), [_tar_member("toy/link", tarfile.SYMTYPE, "/etc")]),
        "toy/link",
        "symlink",
    ),
    "tar-symlink-escape": (
        "bad.tar.gz",
        lambda: make_tar_gz(_payload(), [_tar_member("toy/up", tarfile.SYMTYPE, "../..")]),
        "toy/up",
        "symlink",
    ),
    "tar-hardlink": (
        "bad.tar.gz",
        lambda: make_tar_gz(_payload(), [_tar_member("toy/hard", tarfile.LNKTYPE, "/etc/passwd")]),
        "toy/hard",
        "hard link",
    ),
    "tar-device": (
        "bad.tar.gz",
        lambda: make_tar_gz(_payload(), [_tar_member("toy/dev", tarfile.CHRTYPE)]),
        "toy/dev",
        "device",
    ),
}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_unsafe_member_is_refused(tmp_path, case):
    name, build, member, why = UNSAFE[case]
    work = tmp_path / "work"
    work.mkdir()
    archive = tmp_path / name
    archive.write_bytes(build())
    root = work / "root"
    root.mkdir()
    target = root / "target"
    with pytest.raises(UnsafeArchiveError) as err:
        extract_archive(archive, target)
    assert repr(member) in str(err.value) and why in str(err.value)
    assert not target.exists()
    assert tree(work) == ["root"]  # nothing inside (no temp folder) nor beside the target
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil").exists()


@pytest.mark.parametrize("fmt", ["zip", "tar"])
def test_unsafe_archive_via_download_leaves_a_clean_root(server, tmp_path, fmt):
    if fmt == "zip":
        name, data = "toy.zip", make_zip(_payload(), [zipfile.ZipInfo("../evil")])
    else:
        name, data = "toy.tar.gz", make_tar_gz(_payload(), [_tar_member("../evil")])
    server.files = {f"/{name}": data}
    root = tmp_path / "data"
    with pytest.raises(UnsafeArchiveError, match=r"'\.\./evil'"):
        download_dataset("toy", root, mirror=server.base_url, sources=toy_sources(name, with_csv=False), **FAST)
    assert tree(root) == []
    assert tree(tmp_path) == ["data"]


def test_extract_archive_is_atomic_and_refuses_an_existing_target(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(make_tar_gz(_payload()))
    target = extract_archive(archive, tmp_path / "out")
    assert (target / "toy/images/b.txt").read_bytes() == b"hello\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz", "out"]
    with pytest.raises(DownloadError, match="already exists"):
        extract_archive(archive, target)


# ----------------------------------------------------------------------------- 5. no network


def test_connection_refused_names_the_url_and_the_manual_fix(tmp_path):
    mirror = f"http://127.0.0.1:{unused_port()}/"
    root = tmp_path / "data"
    with pytest.raises(DownloadError) as err:
        download_dataset(
            "toy",
            root,
            mirror=mirror,
            sources=toy_sources("toy.zip"),
            retries=1,
            backoff=0.001,
            timeout=2.0,
            progress=False,
        )
    msg = str(err.value)
    assert mirror + "toy.zip" in msg
    assert "https://example.invalid/pub/toy.zip" in msg  # the official URL to fetch by hand
    assert str(root / ".downloads" / "toy.zip") in msg
    assert LOCK_NAME in msg and "by hand" in msg
    assert "2 attempts" in msg
    assert tree(root) == []


def test_hand_placed_file_installs_without_network(tmp_path):
    data = make_zip(_payload())
    root = tmp_path / "data"
    (root / ".downloads").mkdir(parents=True)
    (root / ".downloads" / "toy.zip").write_bytes(data)
    mirror = f"http://127.0.0.1:{unused_port()}/"  # unreachable: must not be needed
    final = download_dataset("toy", root, mirror=mirror, sources=toy_sources("toy.zip", with_csv=False), **FAST)
    assert (final / "toy/images/a.bin").read_bytes() == _payload()["toy/images/a.bin"]
    assert json.loads((root / LOCK_NAME).read_text())["toy.zip"]["sha256"] == sha(data)
    assert sorted(p.name for p in root.iterdir()) == [LOCK_NAME, "toy-set"]


def test_cli_reports_the_error_without_traceback(tmp_path, capsys):
    from simsc.cli import main

    port = unused_port()
    rc = main(
        [
            "download",
            "pfpascal",
            "--root",
            str(tmp_path),
            "--mirror",
            f"http://127.0.0.1:{port}",
            "--retries",
            "0",
            "--backoff",
            "0",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc != 0
    assert f"http://127.0.0.1:{port}/PF-dataset-PASCAL.zip" in err
    assert "by hand" in err and str(tmp_path / ".downloads" / "PF-dataset-PASCAL.zip") in err
    assert "Traceback" not in err


def test_http_404_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(server.url("missing.zip"), tmp_path / "missing.zip", **FAST)
    assert len(server.requests) == 1


# ----------------------------------------------------------------------------- 6. retries


def test_503_twice_then_served(server, tmp_path):
    data = make_tar_gz(_payload())
    server.files = {"/toy.tar.gz": data}
    server.fail_next("/toy.tar.gz", 503, times=2)
    final = download_dataset(
        "toy", tmp_path, mirror=server.base_url, sources=toy_sources("toy.tar.gz", with_csv=False), **FAST
    )
    assert len(server.requests_for("/toy.tar.gz")) == 3
    assert (final / "toy/images/b.txt").read_bytes() == b"hello\n"


def test_503_beyond_the_retry_budget_fails(server, tmp_path):
    server.files = {"/toy.zip": make_zip(_payload())}
    server.fail_next("/toy.zip", 503, times=3)
    with pytest.raises(DownloadError, match="HTTP 503"):
        fetch(server.url("toy.zip"), tmp_path / "toy.zip", **FAST)
    assert len(server.requests) == 3
    assert not (tmp_path / "toy.zip").exists()


# ----------------------------------------------------------------------------- real table, CLI


def test_source_table_is_consistent():
    names = [f.filename for ds in DATASET_SOURCES.values() for f in ds.files]
    assert len(names) == len(set(names))
    assert set(DATASET_SOURCES) == {"pfpascal", "pfwillow", "spair"}
    for ds in DATASET_SOURCES.values():
        for f in ds.files:
            assert f.url.rsplit("/", 1)[-1] == f.filename
            assert f.kind in ("archive", "file")
            assert not Path(f.dest).is_absolute() and ".." not in Path(f.dest).parts
            assert f.sha256 is None or len(f.sha256) == 64
    src = DATASET_SOURCES["spair"].files[0]
    assert resolve_url(src, None) == "http://cvlab.postech.ac.kr/research/SPair-71k/data/SPair-71k.tar.gz"
    assert resolve_url(src, "http://127.0.0.1:9/m/") == "http://127.0.0.1:9/m/SPair-71k.tar.gz"


def test_cli_installs_pfpascal_from_a_mirror_given_by_the_environment(server, tmp_path, monkeypatch, capsys):
    from simsc.cli import main

    archive = make_zip(
        {
            "PF-dataset-PASCAL/JPEGImages/2008_006579.jpg": b"jpg",
            "PF-dataset-PASCAL/Annotations/car/2008_006579.mat": b"mat",
        }
    )
    csvs = {
        f"/{s}_pairs.csv": f"source_image,target_image,class,flip\n# {s}\n".encode() for s in ("train", "val", "test")
    }
    server.files = {"/PF-dataset-PASCAL.zip": archive, **csvs}
    monkeypatch.setenv(MIRROR_ENV, server.base_url)
    argv = ["download", "pfpascal", "--root", str(tmp_path), "--backoff", "0", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    base = tmp_path / "pf-pascal"
    assert out.strip() == str(base)  # the loader root
    assert (base / "PF-dataset-PASCAL/JPEGImages/2008_006579.jpg").read_bytes() == b"jpg"
    for s in ("train", "val", "test"):
        assert (base / f"{s}_pairs.csv").read_bytes() == csvs[f"/{s}_pairs.csv"]
    lock = json.loads((tmp_path / LOCK_NAME).read_text())
    assert set(lock) == {"PF-dataset-PASCAL.zip", "train_pairs.csv", "val_pairs.csv", "test_pairs.csv"}
    n = server.request_count()
    assert main(argv) == 0
    assert server.request_count() == n
    assert "up to date" in capsys.readouterr().err


def test_cli_help_and_list(capsys):
    from simsc.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["download", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--mirror" in out and LOCK_NAME in out
    assert main(["download", "all", "--list", "--root", "/nonexistent-root"]) == 0
    out = capsys.readouterr().out
    assert "PF-dataset-PASCAL.zip" in out and "SPair-71k.tar.gz" in out and "test_pairs_pf.csv" in out
    assert not os.path.exists("/nonexistent-root")


def test_spair_installs_under_its_loader_root(server, tmp_path):
    archive = make_tar_gz(
        {"SPair-71k/Layout/large/test.txt": b"000001-a-b:cat\n", "SPair-71k/JPEGImages/cat/a.jpg": b"jpg"}
    )
    server.files = {"/SPair-71k.tar.gz": archive}
    path = download_dataset("spair", tmp_path, mirror=server.base_url, **FAST)
    assert path == tmp_path / "spair-71k" / "SPair-71k"
    assert (path / "Layout/large/test.txt").read_bytes() == b"000001-a-b:cat\n"
    assert download_dataset("spair", tmp_path, mirror=server.base_url, **FAST) == path
    assert len(server.requests) == 1


class _RawReply:
    """A one-route HTTP server on 127.0.0.1 that answers every GET with the given headers and
    then streams ``body_chunk`` ``repeat`` times (``None``: until the client hangs up)."""

    def __init__(self, headers: dict[str, str], body_chunk: bytes, repeat: int | None) -> None:
        import socketserver
        import threading

        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                head = "HTTP/1.0 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
                try:
                    self.wfile.write(head.encode())
                    n = 0
                    while repeat is None or n < repeat:
                        self.wfile.write(body_chunk)
                        n += 1
                        outer.sent += len(body_chunk)
                except OSError:
                    pass

        self.sent = 0
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/f.csv"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_stated_size_beyond_the_cap_is_refused_before_reading(tmp_path):
    from simsc.data.download import DownloadError, fetch

    srv = _RawReply({"Content-Length": str(10**12)}, b"x" * 65536, None)
    try:
        with pytest.raises(DownloadError, match=r"states 1000000000000 bytes, more than the 1048576 bytes"):
            fetch(srv.url, tmp_path / "f.csv", max_bytes=1 << 20, retries=0, progress=False)
    finally:
        srv.close()
    assert not list(tmp_path.iterdir())  # no .part, nothing installed


def test_a_reply_that_never_ends_stops_at_the_cap(tmp_path):
    from simsc.data.download import DownloadError, fetch

    srv = _RawReply({}, b"x" * 65536, None)  # no length, streams forever
    try:
        with pytest.raises(DownloadError, match="has sent .* bytes, more than the 4194304 bytes"):
            fetch(srv.url, tmp_path / "f.csv", max_bytes=4 << 20, retries=0, progress=False)
    finally:
        srv.close()
    assert srv.sent < 64 << 20 and not list(tmp_path.iterdir())


def test_a_gzip_encoded_reply_is_not_installed_as_the_file(tmp_path):
    import gzip

    from simsc.data.download import DownloadError, fetch

    body = gzip.compress(b"a,b\n1,2\n")
    srv = _RawReply({"Content-Length": str(len(body)), "Content-Encoding": "gzip"}, body, 1)
    try:
        with pytest.raises(DownloadError, match="Content-Encoding: gzip"):
            fetch(srv.url, tmp_path / "f.csv", retries=0, progress=False)
    finally:
        srv.close()
    assert not (tmp_path / "f.csv").exists()


def test_a_full_disk_is_named_and_leaves_no_part(tiny_disk):
    import errno

    from simsc.data.download import DownloadError, fetch

    with LocalHTTPServer({"/big.zip": b"z" * (4 << 20)}) as server:
        # a stated size beyond the free space: refused before a byte is written
        with pytest.raises(DownloadError, match=r"4194304 bytes and .*small has \d+ bytes free"):
            fetch(server.url("/big.zip"), tiny_disk / "big.zip", retries=0, progress=False)
        # no stated size: the write that fills the disk is the error, named, not a retried "connection lost"
        server.send_length = False
        with pytest.raises(OSError) as e:
            fetch(server.url("/big.zip"), tiny_disk / "big.zip", retries=0, progress=False)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tiny_disk / "big.zip.part")
    assert not list(tiny_disk.iterdir())
