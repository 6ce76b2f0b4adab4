"""The ``simsc`` command line: train, evaluate, match; help texts and user errors."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from simsc.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained_run(tiny_embedded, tmp_path_factory):
    """One short CLI training run shared by the evaluate / match tests."""
    tmp = tmp_path_factory.mktemp("cli-run")
    cfg = {
        "model": {"backbone": "resnet18", "pretrained": False, "finetune": "all", "temperature": "mlp"},
        "data": {"dataset": "embedded", "root": str(tiny_embedded), "resolution": 96, "batch_size": 4},
        "train": {"epochs": 1, "lr_backbone": 1e-3, "device": "cpu"},
        "eval": {"resolution": 64},
        "report": {"n_pictures": 1},  # a params.yaml pipeline section: ignored by simsc train
    }
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    (tmp / "small.yaml").write_text("data: {resolution: 64}\n")  # composed after cfg.yaml
    out = tmp / "run"
    rc = main(
        [
            "train",
            "--config",
            str(tmp / "cfg.yaml"),
            "--config",
            str(tmp / "small.yaml"),
            "--set",
            "train.max_steps=2",
            "--set",
            "train.checkpoint_every_steps=1",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    return out


def _examples(text: str, command: str) -> list[list[str]]:
    """The example command lines of a help text as argv lists (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [
        shlex.split(line.strip(), comments=True)[1:]
        for line in joined.splitlines()
        if line.strip().startswith(f"simsc {command} ")
    ]


@pytest.mark.parametrize("command", ["train", "evaluate", "match"])
def test_help_lists_every_flag_and_its_examples_parse(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    flags = [o for a in sub._actions for o in a.option_strings if o.startswith("--")]
    assert flags and [f for f in flags if f not in text] == []
    examples = _examples(text, command)
    assert examples, text
    for argv in examples:  # each one parses into this command (a renamed or removed flag exits 2 here)
        args = parser.parse_args(argv)
        assert args.command == command and callable(args.func)


def test_train_writes_the_run_folder(trained_run, capsys):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "summary.json", "checkpoints"} <= names
    cfg = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert cfg["train"]["max_steps"] == 2 and cfg["train"]["out_dir"] == str(trained_run)
    # both --config files composed in order (the second's resolution wins), schema defaults below
    assert cfg["data"]["resolution"] == 64 and cfg["data"]["batch_size"] == 4 and cfg["model"]["sigma"] is None
    steps = [json.loads(x) for x in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["type"] == "step"] == [1, 2]
    # --resume on a finished run is a no-op that succeeds
    assert main(["train", "--config", str(trained_run / "config.yaml"), "--resume", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 2


def test_evaluate_checkpoint_report_and_predictions(trained_run, tmp_path, capsys):
    out = tmp_path / "r" / "report.json"
    rc = main(
        ["evaluate", "--checkpoint", str(trained_run / "checkpoints" / "best.pt"), "--out", str(out), "--no-progress"]
    )
    assert rc == 0
    rep = json.loads(out.read_text())
    assert (rep["dataset"], rep["split"], rep["resolution"], rep["n_pairs"]) == ("embedded", "test", 64, 4)
    assert rep["beta_eval"] == 1.0 and list(rep["per_image"]) == ["0.05", "0.1", "0.15"]
    preds = Path(rep["predictions"])
    assert preds == tmp_path / "r" / "report.predictions.jsonl"
    assert len(preds.read_text().splitlines()) == 4
    assert "PCK@0.1" in capsys.readouterr().out


def test_evaluate_beta_sweep_and_backbone(tiny_embedded, tmp_path):
    out = tmp_path / "sweep.json"
    rc = main(
        [
            "evaluate",
            "--backbone",
            "resnet18",
            "--dataset",
            "embedded",
            "--root",
            str(tiny_embedded),
            "--resolution",
            "64",
            "--beta-sweep",
            "0.01,0.1,1",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    sweep = json.loads(out.read_text())
    assert [r["beta_eval"] for r in sweep["rows"]] == [0.01, 0.1, 1.0]
    assert sweep["model"] == {"backbone": "resnet18", "pretrained": None}
    out = tmp_path / "orig.json"
    rc = main(
        [
            "evaluate",
            "--backbone",
            "resnet18",
            "--dataset",
            "embedded",
            "--root",
            str(tiny_embedded),
            "--resolution",
            "original",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["resolution"] == "original" and rep["beta_eval"] == 0.02


def test_match_writes_a_png(trained_run, tmp_path, capsys):
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    Image.fromarray((rng.random((70, 50, 3)) * 255).astype(np.uint8)).save(tmp_path / "b.png")
    out = tmp_path / "m.png"
    rc = main(
        [
            "match",
            str(tmp_path / "a.png"),
            str(tmp_path / "b.png"),
            "--checkpoint",
            str(trained_run / "checkpoints" / "last.pt"),
            "--points",
            "10,10",
            "40.5,30",
            "--resolution",
            "64",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    pic = Image.open(out)
    assert pic.format == "PNG" and pic.size == (80 + 50, 70)
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[0])["a"] == [10.0, 10.0] and len(lines) == 3
    # default: a 5 x 5 grid; the dots are drawn in saturated colours
    rc = main(
        [
            "match",
            str(tmp_path / "a.png"),
            str(tmp_path / "b.png"),
            "--backbone",
            "resnet18",
            "--resolution",
            "64",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert len(capsys.readouterr().out.splitlines()) == 26
    arr = np.asarray(Image.open(out)).astype(int)
    saturated = (arr.max(-1) - arr.min(-1)) > 200
    assert saturated[:60, :80].sum() > 100


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--config", "missing.yaml"], "config file not found"),
        (["train", "--set", "train.lr=1"], "allowed keys in 'train'"),
        (["train", "--set", "model.finetune=some"], "model.finetune"),
        (["evaluate", "--checkpoint", "nope.pt", "--out", "x.json"], "checkpoint not found"),
        (["evaluate", "--backbone", "resnet18", "--out", "x.json"], "--dataset and --root are required"),
        (
            ["evaluate", "--backbone", "resnet18", "--dataset", "mnist", "--root", ".", "--out", "x.json"],
            "unknown dataset",
        ),
        (["match", "a.png", "b.png", "--backbone", "resnet18", "--out", "m.png"], "a.png"),
    ],
)
def test_user_errors_exit_2_without_traceback(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"simsc {argv[0]}: error:" in err and needle in err and "Traceback" not in err


def test_diverged_training_exits_1(tiny_embedded, tmp_path, capsys):
    rc = main(
        [
            "train",
            "--set",
            "model.backbone=resnet18",
            "--set",
            "model.pretrained=false",
            "--set",
            "model.finetune=all",
            "--set",
            "model.temperature=fixed:1",
            "--set",
            f"data.root={tiny_embedded}",
            "--set",
            "data.resolution=64",
            "--set",
            "data.batch_size=4",
            "--set",
            "train.lr_backbone=1e6",
            "--set",
            "train.epochs=3",
            "--set",
            "train.device=cpu",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "training diverged at step" in err and "beta_a" in err


def test_process_exit_code_and_message(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "simsc.cli", "train", "--config", str(tmp_path / "no.yaml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "simsc train: error: config file not found" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture()
def ckpt_trained_at_48(trained_run, tmp_path, monkeypatch):
    """The trained run's checkpoint as the DVC train stage writes one: trained at 48 px, no
    ``eval`` section (the schema's 256 in it), served under the URI scheme ``fake:``."""
    from simsc import model_uri
    from simsc.engine.checkpoint import atomic_save, load_checkpoint

    ck = load_checkpoint(trained_run / "checkpoints" / "best.pt")
    ck["config"]["data"]["resolution"] = 48
    ck["config"]["eval"]["resolution"] = 256
    path = atomic_save(ck, tmp_path / "stage.pt")
    monkeypatch.setattr(model_uri, "_RESOLVERS", {"fake": lambda uri: path})
    return path


def test_evaluate_defaults_to_the_checkpoints_training_resolution(ckpt_trained_at_48, tmp_path, capsys):
    for source in (["--checkpoint", str(ckpt_trained_at_48)], ["--model", "fake:/m@champion"]):
        out = tmp_path / "r.json"
        assert main(["evaluate", *source, "--out", str(out), "--quiet"]) == 0
        assert json.loads(out.read_text())["resolution"] == 48
        # --quiet hides the progress, not the result
        res = capsys.readouterr()
        assert "test @48 (4 pairs" in res.out and "PCK@0.1" in res.out and "it/s" not in res.err
    assert main(["evaluate", "--model", "fake:/m", "--resolution", "64", "--out", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["resolution"] == 64


def test_match_takes_a_registered_model_at_its_training_resolution(ckpt_trained_at_48, tmp_path, capsys, monkeypatch):
    from simsc import visualize

    seen = {}
    real = visualize.predict_matches

    def spy(*a, **kw):
        seen["resolution"] = kw["resolution"]
        return real(*a, **kw)

    monkeypatch.setattr(visualize, "predict_matches", spy)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8)).save(tmp_path / name)
    out = tmp_path / "m.png"
    argv = ["match", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--model", "fake:/m@champion", "--grid", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    assert str(seen["resolution"]) == "48" and out.is_file()
    assert "wrote" in capsys.readouterr().out
    assert main([*argv, "--resolution", "64", "--out", str(out)]) == 0
    assert str(seen["resolution"]) == "64"
