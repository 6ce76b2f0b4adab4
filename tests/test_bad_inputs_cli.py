"""Bad inputs of the ``simsc`` command line, second round: outputs that would replace inputs,
messages that named internals, sizes beyond memory, a read-only cache.

The cases run the real command line in a subprocess with the harness of
:mod:`tests.test_bad_inputs` (exit status, one ``error:`` line naming the culprit, no file
changed outside what the command may write).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_bad_inputs import (
    EVAL_SPAIR,
    SIMSC,
    TRAIN_SPAIR,
    Builder,
    Case,
    case_decorator,
    check_case,
    simsc_checkpoint,
    spair,
    two_images,
)

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300

CASES: dict[str, Builder] = {}
case = case_decorator(CASES)


EVAL_CKPT = ["evaluate", "--checkpoint", "c.pt", "--no-progress", "--device", "cpu"]
MATCH = ["match", "a.png", "b.png", "--backbone", "resnet18", "--device", "cpu"]


# -- outputs that would replace inputs


@case("evaluate_out_is_the_checkpoint")
def _(d: Path):
    spair(d)
    simsc_checkpoint(d / "c.pt")
    yield Case(SIMSC + EVAL_CKPT + ["--out", "c.pt"], 2, ("--out c.pt", "--checkpoint c.pt", "same file"))


@case("evaluate_out_is_a_link_to_the_checkpoint")
def _(d: Path):
    spair(d)
    simsc_checkpoint(d / "c.pt")
    (d / "link.pt").symlink_to("c.pt")
    yield Case(SIMSC + EVAL_CKPT + ["--out", "link.pt"], 2, ("--out link.pt", "--checkpoint c.pt"))


@case("evaluate_predictions_is_the_report")
def _(d: Path):
    spair(d)
    simsc_checkpoint(d / "c.pt")
    yield Case(
        SIMSC + EVAL_CKPT + ["--out", "r.json", "--predictions", "./out/../r.json"],
        2,
        ("--predictions out/../r.json", "output --out r.json"),
    )


@case("evaluate_predictions_is_the_checkpoint")
def _(d: Path):
    spair(d)
    simsc_checkpoint(d / "c.pt")
    yield Case(SIMSC + EVAL_CKPT + ["--out", "r.json", "--predictions", "c.pt"], 2, ("--predictions c.pt", "c.pt"))


@case("match_out_is_an_input_image")
def _(d: Path):
    two_images(d)
    yield Case(SIMSC + MATCH + ["--out", "b.png"], 2, ("--out b.png", "IMG_B b.png", "same file"))


@case("match_out_is_the_checkpoint")
def _(d: Path):
    two_images(d)
    simsc_checkpoint(d / "c.pt")
    argv = ["match", "a.png", "b.png", "--checkpoint", "c.pt", "--device", "cpu", "--out", "c.pt"]
    yield Case(SIMSC + argv, 2, ("--out c.pt", "--checkpoint c.pt"))


def _earlier_run(d: Path) -> None:
    spair(d)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, *SIMSC, *TRAIN_SPAIR, "--out", "run"], cwd=d, env=env, capture_output=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr


@case("train_overwrite_with_the_runs_own_config")
def _(d: Path):
    _earlier_run(d)
    yield Case(
        SIMSC + TRAIN_SPAIR + ["--config", "run/config.yaml", "--out", "run", "--overwrite"],
        2,
        ("run/config.yaml", "--config run/config.yaml", "same file"),
        may_change=("run/.simsc-run.lock",),
    )


@case("train_overwrite_with_the_runs_best_as_pretrained")
def _(d: Path):
    _earlier_run(d)
    yield Case(
        SIMSC + TRAIN_SPAIR + ["--set", "model.pretrained=run/checkpoints/best.pt", "--out", "run", "--overwrite"],
        2,
        ("run/checkpoints/best.pt", "model.pretrained"),
        may_change=("run/.simsc-run.lock",),
    )


@case("clean_train_resume_with_the_runs_own_config")
def _(d: Path):
    _earlier_run(d)
    yield Case(
        SIMSC + TRAIN_SPAIR + ["--config", "run/config.yaml", "--out", "run", "--resume", "--set", "train.max_steps=2"],
        0,
        ('"step": 2',),
        may_change=("run",),
    )


# -- messages that named internals


@case("spair_box_zero_size_in_float32")
def _(d: Path):
    # non-zero in the file's float64, zero-size once the record holds it in float32
    spair(d, lambda p: p.update(trg_bndbox=[50, 60, 50.000001, 60.000001]))
    yield Case(
        SIMSC + EVAL_SPAIR,
        2,
        ("aeroplane.json", "pair 000001-2008_002719-2008_004100:aeroplane", "target box", "float32", "theta_bbox = 0"),
        may_change=("out",),
    )


@case("match_points_nan")
def _(d: Path):
    two_images(d)
    yield Case(
        SIMSC + MATCH + ["--points", "nan,nan", "--out", "m.png"], 2, ("--points", "finite numbers", "'nan,nan'")
    )


@case("checkpoint_version_not_an_integer")
def _(d: Path):
    spair(d)
    simsc_checkpoint(d / "c.pt", version=[1])
    yield Case(SIMSC + EVAL_CKPT + ["--out", "r.json"], 2, ("c.pt", "entry 'version'", "integer", "[1]"))


def _edit_last(d: Path, **entries) -> None:
    import torch

    from simsc.engine.checkpoint import DIGEST_KEY, atomic_save

    path = d / "run" / "checkpoints" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt.pop(DIGEST_KEY)
    atomic_save({**ckpt, **entries}, path)  # a fresh digest: the edit is not caught as corruption


RESUME = TRAIN_SPAIR + ["--out", "run", "--resume", "--set", "train.max_steps=2"]


@case("train_resume_metrics_offset_not_an_integer")
def _(d: Path):
    _earlier_run(d)
    _edit_last(d, metrics_offset="x")
    yield Case(
        SIMSC + RESUME,
        2,
        ("run/checkpoints/last.pt", "entry 'metrics_offset'", "'x'"),
        may_change=("run/.simsc-run.lock",),
    )


@case("train_resume_rng_of_wrong_types")
def _(d: Path):
    _earlier_run(d)
    _edit_last(d, rng={"python": 5})
    yield Case(SIMSC + RESUME, 2, ("run/checkpoints/last.pt", "entry 'rng'", "cannot be restored"), may_change=("run",))


@case("train_out_dir_off")
def _(d: Path):
    yield Case(SIMSC + ["train", "--set", "train.out_dir=off"], 2, ("train.out_dir", "boolean false", "quote", '"off"'))


# -- sizes beyond memory: refused up front, naming the flag or key


@case("evaluate_resolution_beyond_memory")
def _(d: Path):
    spair(d)
    argv = [a if a != "64" else "200000" for a in EVAL_SPAIR]
    yield Case(SIMSC + argv, 2, ("--resolution 200000", "GiB of memory", "free", "smaller --resolution"))


@case("match_grid_beyond_memory")
def _(d: Path):
    two_images(d)
    yield Case(
        SIMSC + MATCH + ["--grid", "1000000", "--out", "m.png"],
        2,
        ("--grid 1000000", "1,000,000,000,000 query points", "GiB of memory", "smaller --grid"),
    )


@case("train_ns_beyond_memory")
def _(d: Path):
    spair(d)
    yield Case(
        SIMSC + TRAIN_SPAIR + ["--set", "model.ns=100001", "--set", "model.nk=100001", "--out", "run"],
        2,
        ("model.ns=100001", "GiB of memory", "smaller odd model.ns"),
        may_change=("run",),
    )


# -- a cache folder this process cannot write: read what it holds, decode the rest uncached


@case("evaluate_cache_dir_under_a_file")
def _(d: Path):
    # fails to write for root too (permission bits do not stop root)
    spair(d)
    (d / "afile").write_text("not a folder\n")
    yield Case(
        SIMSC + EVAL_SPAIR + ["--cache-dir", "afile/cache"],
        0,
        ("afile/cache/spair: cache folder not writable (Not a directory)", "PCK@0.1"),
        may_change=("out",),
    )


@case("evaluate_cache_dir_read_only_with_entries")
def _(d: Path):
    if os.geteuid() == 0:
        pytest.skip("root writes into a mode 555 folder")
    spair(d)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = [sys.executable, *SIMSC, *EVAL_SPAIR, "--cache-dir", "cache"]
    filled = subprocess.run(argv, cwd=d, env=env, capture_output=True, timeout=TIMEOUT)
    assert filled.returncode == 0, filled.stderr
    folders = [d / "cache", *(p for p in (d / "cache").rglob("*") if p.is_dir())]
    for folder in folders:
        folder.chmod(0o555)
    try:
        yield Case(
            SIMSC + EVAL_SPAIR + ["--cache-dir", "cache"],
            0,
            ("cache folder not writable", "PCK@0.1"),
            may_change=("out",),
        )
    finally:
        for folder in folders:
            folder.chmod(0o755)


# ----------------------------------------------------------------------------- the table test


@pytest.mark.slow  # one subprocess a case (a few seconds each)
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_cli(name: str, tmp_path: Path) -> None:
    check_case(CASES[name], tmp_path)
