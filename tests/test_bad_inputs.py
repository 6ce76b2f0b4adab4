"""Bad inputs, hostile files and faults, one named case a row.

Every case of :data:`CASES` builds its inputs in a fresh folder, runs the real command line
(``python -m simsc.cli``, ``pipeline.stages``, ``pipeline.sweep``, ``pipeline.relog``,
``simsc.data.embedded``) in a subprocess and checks the contract of :mod:`simsc.errors`:

* the exit status (2 for a user error, 0 for a clean or corrected case);
* for an error, exactly one ``error:`` line on stderr, naming the culprit (file, row,
  field, flag) and no traceback;
* that no file outside the folder the command may write changed (a snapshot of the whole
  case folder before and after, sizes and SHA-256).

The cases that are about the library rather than a command line (archive bombs, corrupted
cache entries, two trainers in one process) are plain tests at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.data_fixtures import PFP_IMAGES, SPAIR_DEFAULT, make_image, write_pfpascal, write_pfwillow, write_spair
from tests.http_server import LocalHTTPServer

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300


# ----------------------------------------------------------------------------- the harness


@dataclass
class Case:
    """What to run and what must come out."""

    argv: list[str]  # after the python executable, e.g. ["-m", "simsc.cli", "train", ...]
    rc: int
    needles: tuple[str, ...] = ()  # must all appear in the error line (rc != 0) or stdout (rc == 0)
    may_change: tuple[str, ...] = ()  # paths (relative to the case folder) the command may write
    check: Callable[[Path, subprocess.CompletedProcess], None] | None = None
    env: dict[str, str] = field(default_factory=dict)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder`` -> its SHA-256 (``"dir"`` for folders)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def changed_outside(before: dict[str, str], after: dict[str, str], allowed: tuple[str, ...]) -> list[str]:
    def ok(rel: str) -> bool:
        if any(rel == a or rel.startswith(a.rstrip("/") + "/") for a in allowed):
            return True
        # The folders leading to an allowed path may be created.
        return after.get(rel) == "dir" and rel not in before and any(a.startswith(rel + "/") for a in allowed)

    keys = set(before) | set(after)
    return sorted(k for k in keys if before.get(k) != after.get(k) and not ok(k))


def run_case(case: Case, folder: Path, repo: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(repo), **case.env)
    env.pop("SIMSC_MIRROR", None)
    return subprocess.run(
        [sys.executable, *case.argv], cwd=folder, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


# ----------------------------------------------------------------------------- inputs

SIMSC = ["-m", "simsc.cli"]
EVAL_SPAIR = [
    "evaluate",
    "--backbone",
    "resnet18",
    "--dataset",
    "spair",
    "--root",
    "spair",
    "--split",
    "test",
    "--resolution",
    "64",
    "--out",
    "out/r.json",
    "--no-progress",
    "--device",
    "cpu",
]
TRAIN_SPAIR = [
    "train",
    "--set",
    "model.backbone=resnet18",
    "--set",
    "model.pretrained=false",
    "--set",
    "model.finetune=last_block",
    "--set",
    "data.dataset=spair",
    "--set",
    "data.root=spair",
    "--set",
    "data.resolution=64",
    "--set",
    "data.batch_size=1",
    "--set",
    "train.max_steps=1",
    "--set",
    "train.device=cpu",
    "--set",
    "eval.resolution=64",
    "--no-progress",
]


def spair(folder: Path, edit: Callable[[dict], None] | None = None) -> Path:
    """The small SPair-layout set of :mod:`data_fixtures`; ``edit`` changes the first test pair."""
    splits = json.loads(json.dumps(SPAIR_DEFAULT))
    if edit is not None:
        edit(splits["test"][0])
    return write_spair(folder / "spair", splits)


def two_images(folder: Path, size_b: tuple[int, int] = (50, 40)) -> None:
    make_image(folder / "a.png", 60, 45, seed=1)
    make_image(folder / "b.png", *size_b, seed=2)


def simsc_checkpoint(path: Path, drop: str | None = None, **replace: Any) -> Path:
    """A real ``best.pt`` of a random resnet18 model (``drop``: leave that entry out;
    ``replace``: entries to write instead of the real ones, with a matching digest)."""
    from simsc.config import load_config
    from simsc.engine.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, atomic_save, build_model

    cfg = load_config(
        {
            "model": {"backbone": "resnet18", "pretrained": False, "temperature": "mlp"},
            "data": {"dataset": "spair", "root": "spair", "resolution": 64},
            "eval": {"resolution": 64},
        }
    )
    torch.manual_seed(0)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "kind": "best",
        "model": build_model(cfg).state_dict(),
        "config": cfg.to_dict(),
        "step": 1,
        "epoch": 1,
        "best": {"metric": 0.0, "epoch": 0, "step": 1},
    }
    if drop:
        payload.pop(drop)
    payload.update(replace)
    return atomic_save(payload, path)


def flip_tensor_byte(path: Path) -> None:
    """Flip one byte in the middle of the largest tensor record of a torch zip checkpoint."""
    with zipfile.ZipFile(path) as zf:
        info = max(zf.infolist(), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        pos = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0xFF]))


def toy_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


WILLOW_CSV = (
    "imageA,imageB,"
    + ",".join(f"X{i}" for i in range(40))
    + "\n"
    + "".join(
        f"PF-dataset/car(G)/Cars_{k:03d}a.png,PF-dataset/car(G)/Cars_{k:03d}b.png," + ",".join(["10"] * 40) + "\n"
        for k in range(200)
    )
).encode()
WILLOW_ZIP = toy_zip({"PF-dataset/car(G)/Cars_000a.png": os.urandom(20_000)})


def params_file(folder: Path, tracking) -> None:
    params = {
        "model": {"backbone": "resnet18", "pretrained": False},
        "train": {"out_dir": "run", "device": "cpu"},
        "tracking": tracking,
    }
    (folder / "params.yaml").write_text(yaml.safe_dump(params))


def run_folder_with_outputs(folder: Path) -> None:
    run = folder / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(b"an earlier run's best model")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"type": "step", "step": i}) + "\n" for i in range(63)))
    (run / "config.yaml").write_text("train: {seed: 0}\n")


@contextlib.contextmanager
def tmpfs_mount(path: Path, options: str) -> Iterator[bool]:
    """A tmpfs mounted at ``path`` with ``options`` (needs mount rights); yields False when unavailable."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        yield False
        return
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "none", str(path)], capture_output=True)
    try:
        yield res.returncode == 0
    finally:
        if res.returncode == 0:
            subprocess.run(["umount", str(path)], capture_output=True)


def mem_available() -> int:
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


# ----------------------------------------------------------------------------- the cases
# Each builder gets the case folder and yields the Case (a context: servers, locks and
# mounts live while the command runs). pytest.skip() inside a builder skips the case.

Builder = Callable[[Path], "contextlib.AbstractContextManager[Case]"]
CASES: dict[str, Builder] = {}


def case_decorator(cases: dict[str, Builder]) -> Callable[[str], Callable]:
    """``@case(name)`` that adds a builder (a generator yielding its :class:`Case`) to ``cases``."""

    def case(name: str) -> Callable:
        def register(fn):
            cases[name] = contextlib.contextmanager(fn)
            return fn

        return register

    return case


case = case_decorator(CASES)


# -- failure 1: annotation paths outside the data root


@case("spair_json_imname_outside_root")
def _(d: Path):
    spair(d, lambda p: p.update(src_imname="../../../outside/x.jpg"))  # the fixture writes the image there
    assert (d / "outside" / "x.jpg").is_file()
    yield Case(SIMSC + EVAL_SPAIR, 2, ("000001-2008_002719-2008_004100:aeroplane.json", "src_imname"))


@case("spair_layout_line_outside_root")
def _(d: Path):
    root = spair(d)
    pair = json.loads(next((root / "PairAnnotation" / "test").glob("*.json")).read_text())
    (d / "evil.json").write_text(json.dumps(pair))
    (root / "Layout" / "large" / "test.txt").write_text("../../../evil\n")
    yield Case(SIMSC + EVAL_SPAIR, 2, ("test.txt, row 1", "pair name", "../../../evil"))


def _pfpascal_with_test_row(d: Path, src: str, trg: str) -> None:
    root = write_pfpascal(d / "pfp")
    outside = d / "outside"
    outside.mkdir()
    for stem in ("2008_000001", "2008_000002"):
        shutil.copy(root / "PF-dataset-PASCAL" / "JPEGImages" / f"{stem}.jpg", outside / f"{stem}.jpg")
    lines = (root / "test_pairs.csv").read_text().splitlines()
    cols = lines[1].split(",")
    cols[0] = src.format(outside=outside)
    cols[1] = trg.format(outside=outside)
    lines[1] = ",".join(cols)
    (root / "test_pairs.csv").write_text("\n".join(lines) + "\n")


EVAL_PFP = [
    "evaluate",
    "--backbone",
    "resnet18",
    "--dataset",
    "pfpascal",
    "--root",
    "pfp",
    "--split",
    "test",
    "--resolution",
    "64",
    "--out",
    "out/r.json",
    "--no-progress",
    "--device",
    "cpu",
]


@case("pfpascal_csv_absolute_path")
def _(d: Path):
    _pfpascal_with_test_row(d, "{outside}/2008_000001.jpg", "PF-dataset-PASCAL/JPEGImages/2008_000002.jpg")
    yield Case(SIMSC + EVAL_PFP, 2, ("test_pairs.csv, row 2", "source_image", str(d / "outside")))


@case("pfpascal_csv_dotdot_path")
def _(d: Path):
    _pfpascal_with_test_row(d, "PF-dataset-PASCAL/JPEGImages/2008_000001.jpg", "../outside/2008_000002.jpg")
    yield Case(SIMSC + EVAL_PFP, 2, ("test_pairs.csv, row 2", "target_image", "../outside"))


@case("pfwillow_csv_dotdot_path")
def _(d: Path):
    root = write_pfwillow(d / "pfw")
    (d / "outside").mkdir()
    shutil.copy(root / "PF-dataset/car(G)/Cars_006a.png", d / "outside" / "Cars_006a.png")
    lines = (root / "test_pairs_pf.csv").read_text().splitlines()
    lines[1] = lines[1].replace("PF-dataset/car(G)/Cars_006a.png", "../outside/Cars_006a.png", 1)
    (root / "test_pairs_pf.csv").write_text("\n".join(lines) + "\n")
    argv = [
        "evaluate",
        "--backbone",
        "resnet18",
        "--dataset",
        "pfwillow",
        "--root",
        "pfw",
        "--resolution",
        "64",
        "--out",
        "out/r.json",
        "--no-progress",
        "--device",
        "cpu",
    ]
    yield Case(SIMSC + argv, 2, ("test_pairs_pf.csv, row 2", "imageA"))


# -- failure 2: a download without Content-Length, cut half-way


def _willow_download(server: LocalHTTPServer) -> list[str]:
    return SIMSC + [
        "download",
        "pfwillow",
        "--root",
        "data",
        "--mirror",
        server.base_url,
        "--retries",
        "0",
        "--backoff",
        "0",
        "--timeout",
        "10",
        "--no-progress",
    ]


@case("download_no_length_cut_csv_completed_by_range")
def _(d: Path):
    with LocalHTTPServer({"/PF-dataset.zip": WILLOW_ZIP, "/test_pairs_pf.csv": WILLOW_CSV}) as server:
        server.send_length = False
        server.cut_next("/test_pairs_pf.csv", after=len(WILLOW_CSV) // 2)

        def check(folder: Path, proc) -> None:
            installed = folder / "data" / "pf-willow" / "test_pairs_pf.csv"
            assert installed.read_bytes() == WILLOW_CSV  # the whole list, not the first half
            lock = json.loads((folder / "data" / "simsc-download.lock.json").read_text())
            assert lock["test_pairs_pf.csv"]["sha256"] == hashlib.sha256(WILLOW_CSV).hexdigest()

        yield Case(_willow_download(server), 0, may_change=("data",), check=check)


@case("download_no_length_no_range_not_installed")
def _(d: Path):
    with LocalHTTPServer({"/PF-dataset.zip": WILLOW_ZIP, "/test_pairs_pf.csv": WILLOW_CSV}) as server:
        server.send_length = False
        server.honor_range = False
        server.cut_next("/test_pairs_pf.csv", after=len(WILLOW_CSV) // 2)

        def check(folder: Path, proc) -> None:
            assert not (folder / "data" / "pf-willow").exists()
            assert not (folder / "data" / "simsc-download.lock.json").exists()  # nothing trusted
            assert not (folder / "data" / ".downloads" / "test_pairs_pf.csv").exists()

        yield Case(
            _willow_download(server),
            2,
            ("test_pairs_pf.csv", "Content-Length"),
            may_change=("data/.downloads",),
            check=check,
        )


@case("download_no_length_truncated_zip_not_installed")
def _(d: Path):
    with LocalHTTPServer({"/PF-dataset.zip": WILLOW_ZIP, "/test_pairs_pf.csv": WILLOW_CSV}) as server:
        server.send_length = False
        server.honor_range = False
        server.cut_next("/PF-dataset.zip", after=len(WILLOW_ZIP) // 2)
        server.cut_next("/PF-dataset.zip", after=len(WILLOW_ZIP) // 2)

        def check(folder: Path, proc) -> None:
            assert not (folder / "data" / "pf-willow").exists()
            assert not (folder / "data" / "simsc-download.lock.json").exists()

        yield Case(
            _willow_download(server),
            2,
            ("PF-dataset.zip", "truncated or corrupt"),
            may_change=("data/.downloads",),
            check=check,
        )


# -- failures 3 and 4: the run folder


@case("train_run_folder_locked_by_another_run")
def _(d: Path):
    from simsc.engine.run_folder import RunLock

    spair(d)
    lock = RunLock(d / "run")
    lock.acquire()  # a real flock held by this process, as a running training holds it
    try:
        yield Case(
            SIMSC + TRAIN_SPAIR + ["--out", "run"],
            2,
            (f"pid {os.getpid()}", socket.gethostname(), "in use by another training run"),
        )
    finally:
        lock.release()


@case("train_outputs_without_last_pt_refused")
def _(d: Path):
    spair(d)
    run_folder_with_outputs(d)
    yield Case(
        SIMSC + TRAIN_SPAIR + ["--out", "run"],
        2,
        ("run", "best.pt", "metrics.jsonl", "--overwrite"),
        may_change=("run/.simsc-run.lock",),
    )


@case("train_resume_outputs_without_last_pt_refused")
def _(d: Path):
    spair(d)
    run_folder_with_outputs(d)
    yield Case(
        SIMSC + TRAIN_SPAIR + ["--out", "run", "--resume"],
        2,
        ("no last.pt to resume", "--overwrite"),
        may_change=("run/.simsc-run.lock",),
    )


# -- failure 5: pipeline.stages train with a non-boolean tracking setting


@case("stages_train_tracking_yes")
def _(d: Path):
    params_file(d, "yes")
    yield Case(["-m", "pipeline.stages", "train"], 2, ("params.yaml", "tracking must be a mapping", "'yes'"))


@case("stages_train_tracking_enabled_yes")
def _(d: Path):
    params_file(d, {"enabled": "yes"})
    yield Case(["-m", "pipeline.stages", "train"], 2, ("tracking.enabled must be true or false", "'yes'"))


@case("stages_train_device_cuda_99")
def _(d: Path):
    params_file(d, {"enabled": False})
    params = yaml.safe_load((d / "params.yaml").read_text())
    params["train"]["device"] = "cuda:99"
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    yield Case(["-m", "pipeline.stages", "train"], 2, ("params.yaml: train.device cuda:99",))


@case("stages_evaluate_unknown_set")
def _(d: Path):
    (d / "params.yaml").write_text(yaml.safe_dump({"evaluate": {"sets": {"test": {"dataset": "spair"}}}}))
    yield Case(["-m", "pipeline.stages", "evaluate", "val"], 2, ("evaluate.sets has no entry 'val'", "test"))


# -- failure 6: simsc match --height 0 / negative


@case("match_height_zero")
def _(d: Path):
    two_images(d)
    yield Case(
        SIMSC + ["match", "a.png", "b.png", "--backbone", "resnet18", "--out", "m.png", "--height", "0"],
        2,
        ("--height", "got 0"),
    )


@case("match_height_negative")
def _(d: Path):
    two_images(d)
    yield Case(
        SIMSC + ["match", "a.png", "b.png", "--backbone", "resnet18", "--out", "m.png", "--height=-5"],
        2,
        ("--height", "got -5"),
    )


# -- failure 7: a checkpoint without its model / config entry


@case("checkpoint_without_model")
def _(d: Path):
    spair(d)
    simsc_checkpoint(d / "c.pt", drop="model")
    yield Case(
        SIMSC + ["evaluate", "--checkpoint", "c.pt", "--out", "out/r.json", "--no-progress"], 2, ("c.pt", "'model'")
    )


@case("checkpoint_without_config")
def _(d: Path):
    spair(d)
    simsc_checkpoint(d / "c.pt", drop="config")
    yield Case(
        SIMSC + ["evaluate", "--checkpoint", "c.pt", "--out", "out/r.json", "--no-progress"], 2, ("c.pt", "'config'")
    )


@case("checkpoint_config_is_a_path")
def _(d: Path):
    # an edited checkpoint naming a file as its config: refused, the file is never read
    spair(d)
    (d / "secret.txt").write_text("root:SECRET-LINE:0:0\n")
    simsc_checkpoint(d / "c.pt", config=str(d / "secret.txt"))
    yield Case(
        SIMSC + ["evaluate", "--checkpoint", "c.pt", "--out", "out/r.json", "--no-progress"],
        2,
        ("c.pt", "entry 'config' must be a mapping", "got str"),
        check=lambda d, out: _assert_absent("SECRET", out),
    )


def _assert_absent(text: str, out: subprocess.CompletedProcess) -> None:
    assert text not in out.stdout and text not in out.stderr, out.stderr


# -- the error contract: files, disks, folders


@case("config_not_utf8")
def _(d: Path):
    (d / "bad.yaml").write_bytes(b"model:\n  backbone: \xff\xfe\n")
    yield Case(SIMSC + ["train", "--config", "bad.yaml"], 2, ("bad.yaml", "not UTF-8"))


#: 396 bytes that expand to 9**9 (387 million) strings through nested aliases
ALIAS_BOMB = (
    "a: &a ["
    + ", ".join(["lol"] * 9)
    + "]\n"
    + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
)


@case("config_alias_bomb")
def _(d: Path):
    (d / "bomb.yaml").write_text(ALIAS_BOMB)
    yield Case(SIMSC + ["train", "--config", "bomb.yaml"], 2, ("bomb.yaml", "expands to more than 100000 nodes"))


@case("config_duplicate_section")
def _(d: Path):
    (d / "dup.yaml").write_text("train:\n  epochs: 1\nmodel:\n  backbone: resnet18\ntrain:\n  epochs: 5\n")
    yield Case(SIMSC + ["train", "--config", "dup.yaml"], 2, ("dup.yaml", "duplicate key 'train' (first at line 1)"))


@case("config_duplicate_key")
def _(d: Path):
    (d / "dup.yaml").write_text("train:\n  epochs: 1\n  seed: 3\n  epochs: 5\n")
    yield Case(SIMSC + ["train", "--config", "dup.yaml"], 2, ("dup.yaml", "duplicate key 'epochs' (first at line 2)"))


@case("sweep_params_alias_bomb")
def _(d: Path):
    # a params file whose bomb sits in a section no trial reads: refused before anything else
    (d / "params.yaml").write_text("unused:\n" + "".join("  " + line + "\n" for line in ALIAS_BOMB.splitlines()))
    (d / "spec.yaml").write_text("name: s\nbase: [params.yaml]\nsearch:\n  train.seed: {grid: [0, 1]}\n")
    yield Case(["-m", "pipeline.sweep", "spec.yaml", "--dry-run"], 2, ("params.yaml", "expands to more than"))


def _sweep_spec(d: Path, body: str) -> None:
    (d / "params.yaml").write_text("train:\n  epochs: 1\ntracking:\n  enabled: false\n")
    (d / "spec.yaml").write_text("name: s\nbase: [params.yaml]\n" + body)


@case("sweep_set_section_typo")
def _(d: Path):
    _sweep_spec(d, "set:\n  trian.max_steps: 2\nsearch:\n  train.seed: {grid: [0, 1]}\n")
    yield Case(
        ["-m", "pipeline.sweep", "spec.yaml", "--dry-run"],
        2,
        ("spec.yaml", "set.trian.max_steps", "unknown section 'trian'", "did you mean 'train'?"),
    )


@case("sweep_search_section_typo")
def _(d: Path):
    _sweep_spec(d, "search:\n  modle.temperature: {grid: [mlp, single]}\n")
    yield Case(
        ["-m", "pipeline.sweep", "spec.yaml", "--dry-run"], 2, ("search.modle.temperature", "did you mean 'model'?")
    )


@case("sweep_cli_set_section_typo")
def _(d: Path):
    _sweep_spec(d, "search:\n  train.seed: {grid: [0, 1]}\n")
    yield Case(["-m", "pipeline.sweep", "spec.yaml", "--dry-run", "--set", "trian.x=1"], 2, ("set.trian.x", "'train'"))


@case("sweep_embedded_root_missing")
def _(d: Path):
    # a mistyped root must not become a freshly built default data set (and a sweep over it)
    _sweep_spec(d, "set:\n  data.dataset: embedded\n  data.root: no-such-set\nsearch:\n  train.seed: {grid: [0]}\n")
    yield Case(
        ["-m", "pipeline.sweep", "spec.yaml", "--out", "out"],
        2,
        ("spec.yaml", "no-such-set holds no embedded data set"),
        check=lambda d, out: _assert_not_created(d / "no-such-set"),
    )


def _assert_not_created(path: Path) -> None:
    assert not path.exists(), f"{path} was created"


@case("config_amp_number")
def _(d: Path):
    yield Case(SIMSC + ["train", "--set", "train.amp=16"], 2, ("train.amp", "off, bf16 or fp16", "got 16"))


@case("config_compile_number")
def _(d: Path):
    yield Case(SIMSC + ["train", "--set", "train.compile=1"], 2, ("train.compile", "backend name", "got 1"))


@case("config_batch_size_1e20")
def _(d: Path):
    yield Case(SIMSC + ["train", "--set", "data.batch_size=1e20"], 2, ("data.batch_size", "between 1 and 1000000"))


@case("truncated_image_in_a_loader_worker")
def _(d: Path):
    # the worker's traceback stays out of the one-line error: the same line as without workers
    root = spair(d)
    img = sorted((root / "JPEGImages").rglob("*.jpg"))[0]
    img.write_bytes(img.read_bytes()[: img.stat().st_size // 3])
    yield Case(
        SIMSC + EVAL_SPAIR + ["--workers", "1"],
        2,
        (img.name, "cannot decode image", "truncated"),
        may_change=("out",),  # the report's (empty) folder: no report in it
        check=lambda d, out: _assert_absent("Traceback", out),
    )


@case("stages_params_not_utf8")
def _(d: Path):
    (d / "bad.yaml").write_bytes(b"train: \xff\n")
    yield Case(["-m", "pipeline.stages", "train", "--params", "bad.yaml"], 2, ("bad.yaml", "not UTF-8"))


@case("stages_params_missing")
def _(d: Path):
    yield Case(["-m", "pipeline.stages", "download"], 2, ("params.yaml", "not found"))


@case("sweep_spec_not_utf8")
def _(d: Path):
    (d / "bad.yaml").write_bytes(b"name: \xff\n")
    yield Case(["-m", "pipeline.sweep", "bad.yaml", "--dry-run"], 2, ("bad.yaml", "not UTF-8"))


@case("relog_not_a_run_folder")
def _(d: Path):
    yield Case(["-m", "pipeline.relog", "nothere"], 2, ("nothere", "metrics.jsonl"))


@case("disk_full_enospc")
def _(d: Path):
    two_images(d)
    with tmpfs_mount(d / "small", "size=64k") as mounted:
        if not mounted:
            pytest.skip("cannot mount a small file system here")
        filler = d / "small" / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as f:
            f.write(bytes(200 << 10))  # fills it up: the picture cannot be written
        yield Case(
            SIMSC + ["match", "a.png", "b.png", "--backbone", "resnet18", "--resolution", "64", "--out", "small/m.png"],
            2,
            ("small/m.png", "No space left on device"),
        )


@case("read_only_file_system_erofs")
def _(d: Path):
    spair(d)
    with tmpfs_mount(d / "ro", "ro,size=1m") as mounted:
        if not mounted:
            pytest.skip("cannot mount a read-only file system here")
        yield Case(SIMSC + TRAIN_SPAIR + ["--out", "ro/run"], 2, ("ro/run", "Read-only file system"))


@case("download_root_is_a_file")
def _(d: Path):
    (d / "afile").write_text("not a folder\n")
    yield Case(SIMSC + ["download", "pfwillow", "--root", "afile", "--retries", "0"], 2, ("--root", "afile"))


@case("train_out_below_a_file")
def _(d: Path):
    spair(d)
    (d / "afile").write_text("not a folder\n")
    yield Case(SIMSC + TRAIN_SPAIR + ["--out", "afile/run"], 2, ("afile", "Not a directory"))


@case("embedded_builder_foreign_root")
def _(d: Path):
    (d / "mine").mkdir()
    (d / "mine" / "notes.txt").write_text("my own files\n")
    yield Case(
        ["-m", "simsc.data.embedded", "mine", "--n-train", "1", "--n-val", "1", "--n-test", "1", "--no-progress"],
        2,
        ("mine", "not an embedded data set"),
    )


# -- flags and devices


@case("evaluate_device_cuda_missing")
def _(d: Path):
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    spair(d)
    argv = [a if a != "cpu" else "cuda" for a in EVAL_SPAIR]
    yield Case(SIMSC + argv, 2, ("--device cuda", "CUDA is not available"))


@case("train_device_cuda_99")
def _(d: Path):
    spair(d)
    yield Case(SIMSC + TRAIN_SPAIR + ["--set", "train.device=cuda:99", "--out", "run"], 2, ("train.device cuda:99",))


@case("evaluate_max_pairs_zero")
def _(d: Path):
    spair(d)
    yield Case(SIMSC + EVAL_SPAIR + ["--max-pairs", "0"], 2, ("--max-pairs", "got 0"))


@case("evaluate_batch_size_zero")
def _(d: Path):
    spair(d)
    yield Case(SIMSC + EVAL_SPAIR + ["--batch-size", "0"], 2, ("--batch-size", "got 0"))


@case("bad_flag_value_one_line")
def _(d: Path):
    yield Case(
        SIMSC + ["evaluate", "--backbone", "resnet18", "--batch-size", "eight", "--out", "x.json"],
        2,
        ("--batch-size", "'eight'"),
    )


# -- checkpoints and annotations


@case("checkpoint_zero_bytes")
def _(d: Path):
    (d / "c.pt").write_bytes(b"")
    yield Case(SIMSC + ["evaluate", "--checkpoint", "c.pt", "--out", "out/r.json"], 2, ("c.pt", "empty (0 bytes"))


@case("checkpoint_flipped_byte")
def _(d: Path):
    spair(d)
    simsc_checkpoint(d / "c.pt")
    flip_tensor_byte(d / "c.pt")
    yield Case(
        SIMSC + ["evaluate", "--checkpoint", "c.pt", "--out", "out/r.json", "--no-progress"],
        2,
        ("c.pt", "digest mismatch", "corrupted"),
    )


@case("spair_zero_size_box")
def _(d: Path):
    spair(d, lambda p: p.update(trg_bndbox=[50, 60, 50, 60]))
    yield Case(SIMSC + EVAL_SPAIR, 2, ("000001-2008_002719-2008_004100:aeroplane.json", "trg_bndbox", "non-zero"))


@case("spair_box_beyond_the_image")
def _(d: Path):
    # a box of 2e6 px (or 1e39) is a PCK threshold that accepts every prediction: refused
    spair(d, lambda p: p.update(trg_bndbox=[-1e6, -1e6, 1e6, 1e6]))
    yield Case(
        SIMSC + EVAL_SPAIR,
        2,
        ("000001-2008_002719-2008_004100:aeroplane.json", "trg_bndbox", "lies outside the target image"),
    )


@case("spair_box_of_1e39")
def _(d: Path):
    spair(d, lambda p: p.update(trg_bndbox=[0, 0, 1e39, 1e39]))
    yield Case(SIMSC + EVAL_SPAIR, 2, ("aeroplane.json", "trg_bndbox", "expected 0 <= x1 < x2 <="))


@case("pfpascal_zero_size_box")
def _(d: Path):
    images = dict(PFP_IMAGES)
    w, h, cls, kps, _ = images["2008_000002"]
    images["2008_000002"] = (w, h, cls, kps, [30, 40, 30, 90])
    write_pfpascal(d / "pfp", images=images)
    yield Case(SIMSC + EVAL_PFP, 2, ("2008_000002.mat", "'bbox'", "non-zero"))


# -- match at original size


@case("match_one_pixel_target_original")
def _(d: Path):
    two_images(d, size_b=(1, 1))

    def check(folder: Path, proc) -> None:
        points = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        assert len(points) == 4 and all(p["b"] == [0.0, 0.0] for p in points)  # the only pixel there is
        assert Image.open(folder / "m.png").size == (61, 45)

    yield Case(
        SIMSC
        + [
            "match",
            "a.png",
            "b.png",
            "--backbone",
            "resnet18",
            "--resolution",
            "original",
            "--grid",
            "2",
            "--out",
            "m.png",
        ],
        0,
        ("wrote m.png",),
        may_change=("m.png",),
        check=check,
    )


@case("match_original_size_too_large_for_memory")
def _(d: Path):
    from simsc.memory import inference_bytes

    side = 7900  # 62.4 MP: under the 64 MP decoding limit
    if inference_bytes("resnet50", [(side, side)]) <= mem_available():
        pytest.skip("this host has the memory for it")
    Image.new("RGB", (side, side), (90, 120, 30)).save(d / "big.png", compress_level=1)
    make_image(d / "a.png", 60, 45, seed=1)
    yield Case(
        SIMSC + ["match", "a.png", "big.png", "--backbone", "resnet50", "--resolution", "original", "--out", "m.png"],
        2,
        ("7900 x 7900", "GiB", "--resolution"),
    )


# -- --debug


@case("debug_flag_prints_the_traceback")
def _(d: Path):
    def check(folder: Path, proc) -> None:
        assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr

    yield Case(SIMSC + ["--debug", "train", "--config", "missing.yaml"], 2, ("config file not found",), check=check)


# -- clean cases


@case("clean_help")
def _(d: Path):
    yield Case(SIMSC + ["--help"], 0, ("exit status", "--debug"))


@case("clean_download_list")
def _(d: Path):
    yield Case(SIMSC + ["download", "all", "--list", "--root", "data"], 0, ("pfwillow", "test_pairs_pf.csv"))


@case("clean_evaluate_spair")
def _(d: Path):
    spair(d)

    def check(folder: Path, proc) -> None:
        assert json.loads((folder / "out" / "r.json").read_text())["n_pairs"] == 2

    yield Case(SIMSC + EVAL_SPAIR, 0, ("PCK@0.1",), may_change=("out",), check=check)


@case("clean_sweep_dry_run")
def _(d: Path):
    # the toy profile's base files, relative to the working folder (the project root for a user)
    for base in ("params.yaml", "configs/overlays/toy.yaml"):
        (d / base).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / base, d / base)
    yield Case(["-m", "pipeline.sweep", str(REPO / "configs/sweeps/single_vs_mlp.yaml"), "--dry-run"], 0, ("trials",))


# ----------------------------------------------------------------------------- the table test


def check_case(build: Builder, tmp_path: Path) -> None:
    """Run one case in a fresh folder: its exit status; on failure one ``error:`` line holding
    every needle (on success the needles anywhere in the output); no traceback unless asked
    for; nothing changed outside what the command may write; no temporary left behind."""
    folder = tmp_path / "case"
    folder.mkdir()
    with build(folder) as c:
        before = snapshot(folder)
        proc = run_case(c, folder)
        after = snapshot(folder)
    detail = f"exit {proc.returncode}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-3000:]}"
    assert proc.returncode == c.rc, detail
    if c.rc != 0:
        lines = error_lines(proc.stderr)
        assert len(lines) == 1, detail  # one line, naming what and where
        for needle in c.needles:
            assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    else:
        for needle in c.needles:
            assert needle in proc.stdout + proc.stderr, detail
    if "--debug" not in c.argv:
        assert "Traceback" not in proc.stderr, detail
    assert changed_outside(before, after, c.may_change) == [], detail
    assert not [
        p for p in after if p.endswith((".tmp", ".part")) and p not in before and not p.startswith("data/.downloads")
    ], after
    if c.check is not None:
        c.check(folder, proc)


@pytest.mark.slow  # one subprocess a case (about 2 s each): `make test`, not `make test-fast`
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, tmp_path: Path) -> None:
    check_case(CASES[name], tmp_path)


# ----------------------------------------------------------------------------- library cases


def test_archive_bomb_is_capped_by_the_known_size(tmp_path):
    """200 MB of zeros compress to about 200 KB; a data set known to be small refuses it."""
    from simsc.data.download import DownloadError, download_dataset
    from simsc.data.sources import Dataset, SourceFile

    bomb = toy_zip({"toy/images/zeros.bin": bytes(50 << 20)})
    assert len(bomb) < 100_000
    sources = {
        "toy": Dataset(
            "toy",
            "toy-set",
            (SourceFile("https://x.invalid/toy.zip", "toy.zip", "archive", ""),),
            expect=("toy/images",),
            max_bytes=1 << 20,
        )
    }
    with LocalHTTPServer({"/toy.zip": bomb}) as server:
        with pytest.raises(DownloadError, match=r"toy.zip: it expands beyond|members declare"):
            download_dataset(
                "toy", tmp_path, mirror=server.base_url, retries=0, backoff=0, progress=False, sources=sources
            )
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no data set, no temp folder, no lock, no download


def test_archive_lying_about_its_size_is_capped_while_writing(tmp_path):
    """A tar member's data is counted as written, so the cap holds whatever headers say."""
    import tarfile

    from simsc.data.download import DownloadError, extract_archive

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("big.bin")
        info.size = 3 << 20
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    (tmp_path / "a.tar.gz").write_bytes(buf.getvalue())
    with pytest.raises(DownloadError, match="expands beyond 1048576 bytes"):
        extract_archive(tmp_path / "a.tar.gz", tmp_path / "out", max_bytes=1 << 20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz"]


def test_corrupted_cache_entry_is_decoded_again(tmp_path):
    from simsc.data.cache import CachedImages
    from simsc.data.images import decode_resized

    make_image(tmp_path / "root" / "x.png", 40, 30, seed=3)
    cache = CachedImages(tmp_path / "cache", "toy", tmp_path / "root", 32)
    good, _ = cache.get("x.png")
    npy = next((tmp_path / "cache").rglob("*.npy"))
    size = npy.stat().st_size
    with open(npy, "r+b") as f:  # same size, one pixel byte flipped
        f.seek(size - 10)
        b = f.read(1)
        f.seek(size - 10)
        f.write(bytes([b[0] ^ 0xFF]))
    again = CachedImages(tmp_path / "cache", "toy", tmp_path / "root", 32)
    arr, _ = again.get("x.png")
    assert again.misses == 1 and again.hits == 0
    np.testing.assert_array_equal(arr, good)
    np.testing.assert_array_equal(arr, decode_resized(tmp_path / "root" / "x.png", 32)[0])
    third = CachedImages(tmp_path / "cache", "toy", tmp_path / "root", 32)
    third.get("x.png")
    assert third.hits == 1  # the entry was rewritten


def test_checkpoint_digest_survives_a_round_trip_and_catches_a_flip(tmp_path):
    from simsc.engine.checkpoint import CheckpointError, load_checkpoint, load_model

    path = simsc_checkpoint(tmp_path / "c.pt")
    ckpt = load_checkpoint(path)
    assert ckpt["digest"].startswith("sha256:")
    load_model(path)
    flip_tensor_byte(path)
    with pytest.raises(CheckpointError, match="digest mismatch"):
        load_checkpoint(path)


def test_two_trainers_in_one_folder_the_second_refuses(tmp_path):
    """The lock is taken before anything is written; released when the run ends."""
    from simsc.engine.run_folder import RunFolderBusyError, RunLock

    first = RunLock(tmp_path / "run")
    first.acquire()
    second = RunLock(tmp_path / "run")
    with pytest.raises(RunFolderBusyError, match=f"pid {os.getpid()} on host"):
        second.acquire()
    first.release()
    second.acquire()  # free again once the holder let go
    second.release()


def test_train_lock_is_released_and_overwrite_replaces_outputs(tmp_path):
    """A finished run leaves its folder unlocked; a fresh start over it needs --overwrite."""
    from simsc.engine.run_folder import RunLock

    spair(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, *SIMSC, *TRAIN_SPAIR, "--out", "run"]
    assert subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, timeout=TIMEOUT).returncode == 0
    lock = RunLock(tmp_path / "run")
    lock.acquire()
    lock.release()
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    with open(tmp_path / "run" / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"type": "earlier run"}\n')
    over = subprocess.run(cmd + ["--overwrite"], cwd=tmp_path, env=env, capture_output=True, timeout=TIMEOUT)
    assert over.returncode == 0
    assert "earlier run" not in (tmp_path / "run" / "metrics.jsonl").read_text()  # a new run's records


def _start_endless_training(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """``cmd`` (a ``simsc train``) in the background, with more steps than any test waits for."""
    return subprocess.Popen(
        cmd + ["--set", "train.max_steps=100000", "--set", "train.epochs=100000"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_two_concurrent_trainings_the_second_refuses_naming_the_first(tmp_path):
    """The issue's case: `simsc train --out R` twice at once, different seeds. B refuses while
    A trains; A's metrics stay whole (no spliced lines)."""
    import time

    spair(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, *SIMSC, *TRAIN_SPAIR, "--out", "run"]
    a = _start_endless_training(cmd, tmp_path, env)
    try:
        lock = tmp_path / "run" / ".simsc-run.lock"
        deadline = time.monotonic() + TIMEOUT
        while not (lock.exists() and f"pid {a.pid} " in lock.read_text()):
            assert a.poll() is None and time.monotonic() < deadline, "training A did not start"
            time.sleep(0.2)
        b = subprocess.run(
            cmd + ["--set", "train.seed=1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT
        )
        assert b.returncode == 2, b.stderr
        assert f"pid {a.pid} on host {socket.gethostname()}" in b.stderr and "Traceback" not in b.stderr
        assert a.poll() is None  # A carries on
    finally:
        a.terminate()
        a.wait(timeout=60)
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["train"]["seed"] == 0  # A's run folder, not B's
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        json.loads(line)


def test_a_killed_training_does_not_leave_its_lock_to_its_loader_workers(tmp_path):
    """SIGKILL of `simsc train` with data.workers=2: the forked loader workers outlive it for a
    while, but they hold no lock, so a restart right away is not refused naming the dead pid."""
    import signal
    import time

    import psutil

    from simsc.engine.run_folder import RunLock

    spair(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, *SIMSC, *TRAIN_SPAIR, "--out", "run", "--set", "data.workers=2"]
    a = _start_endless_training(cmd, tmp_path, env)
    try:
        metrics = tmp_path / "run" / "metrics.jsonl"
        deadline = time.monotonic() + TIMEOUT
        while not (metrics.exists() and metrics.read_text().count('"type": "step"') >= 2):
            assert a.poll() is None and time.monotonic() < deadline, "training A did not start"
            time.sleep(0.1)
        while not psutil.Process(a.pid).children():  # kill while the loader's workers run
            assert a.poll() is None and time.monotonic() < deadline, "no loader workers"
            time.sleep(0.01)
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=60)
        lock = RunLock(tmp_path / "run")
        lock.acquire()  # at once: the orphaned workers do not hold it
        lock.release()
        b = subprocess.run(
            cmd + ["--overwrite", "--set", "train.max_steps=1"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert b.returncode == 0, b.stderr
    finally:
        if a.poll() is None:
            a.kill()


def test_temporaries_of_a_write_killed_midway_are_removed_on_the_next_start(tmp_path):
    """SIGKILL during a checkpoint write leaves `.last.pt.<random>.tmp`; the next run in the
    folder (holding its lock, so nobody else writes there) removes it."""
    spair(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    stale = [ckpts / ".last.pt.k3j2h1.tmp", ckpts / ".best.pt.x9y8z7.tmp", tmp_path / "run" / ".summary.json.q1.tmp"]
    for p in stale:
        p.write_bytes(b"\0" * 1024)
    keep = ckpts / "notes.tmp"  # not ours: stays
    keep.write_text("mine")
    out = subprocess.run(
        [sys.executable, *SIMSC, *TRAIN_SPAIR, "--out", "run"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert not any(p.exists() for p in stale) and keep.exists()
    assert (ckpts / "last.pt").exists()


@pytest.mark.parametrize("out", ["1e3", "010", "12:30", "run #2", "off"])
def test_train_out_is_a_path_as_typed(tmp_path, out):
    """`--out` is a folder name, not a YAML value (1e3 gave a folder 1000.0, 010 gave 8, off an error)."""
    spair(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, *SIMSC, *TRAIN_SPAIR, "--out", out], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / out / "checkpoints" / "last.pt").is_file()
    assert json.loads(done.stdout)["out_dir"] == out


def test_a_full_disk_during_a_checkpoint_write_says_so(tmp_path, tiny_disk):
    """torch.save on a full disk raised a C++ enforce message (exit 3, "a bug"); now the
    write's own error: exit 2 naming the file and the full disk, no temporary left."""
    spair(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, *SIMSC, *TRAIN_SPAIR, "--out", str(tiny_disk / "run")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert "checkpoints/" in line and ".pt: No space left" in line and "the disk is full" in line, line
    assert not list((tiny_disk / "run").rglob("*.tmp"))


def test_overwrite_with_a_mistyped_data_root_keeps_the_earlier_checkpoints(tmp_path):
    """--overwrite deleted best.pt / last.pt before the new run failed on its data root."""
    spair(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, *SIMSC, *TRAIN_SPAIR, "--out", "run"]
    assert subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, timeout=TIMEOUT).returncode == 0
    before = {p: p.read_bytes() for p in (tmp_path / "run" / "checkpoints").glob("*.pt")}
    assert len(before) == 2
    out = subprocess.run(
        cmd + ["--overwrite", "--set", "data.root=spiar"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 2 and "spiar" in out.stderr, out.stderr
    assert {p: p.read_bytes() for p in (tmp_path / "run" / "checkpoints").glob("*.pt")} == before
