"""Training and evaluation report progress by default; plain lines when the
output is not a terminal (DVC, Ray, CI logs), a tqdm bar when it is; nothing when quiet."""

from __future__ import annotations

import io
import re

import pytest
import yaml

from simsc.cli import main
from simsc.config import load_config
from simsc.engine import Trainer
from simsc.engine.toy import ToyTranslationPairs
from simsc.progress import Progress, resolve_mode
from tests import tiny

TRAIN_LINE = re.compile(
    r"^train: step (\d+)/6 \(\d+%\), epoch \d, loss [\d.]+, beta_eff [\d.e-]+, "
    r"[\d.e+]+ step/s, ETA \d+:\d\d:\d\d$"
)


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_auto_mode_is_a_bar_on_a_terminal_and_lines_elsewhere():
    assert resolve_mode("auto", _Stream(True)) == "bar"
    assert resolve_mode("auto", _Stream(False)) == "log"
    assert resolve_mode(True, _Stream(False)) == "log" and resolve_mode(False) == "off"
    assert load_config({}).train.progress == "auto"  # on by default
    with pytest.raises(ValueError, match="progress must be one of"):
        resolve_mode("loud")


def test_log_lines_have_step_total_values_rate_and_eta():
    out = _Stream(False)
    p = Progress("auto", "train", 10, every_s=3600, stream=out, lines_on_advance=False)
    p.advance(4)
    p.set_values(loss=1.23456, beta_eff=0.0123456)
    p.maybe_line()
    p.maybe_line()  # not due again within every_s
    p.line("note")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert re.match(
        r"^train: step 4/10 \(40%\), loss 1\.235, beta_eff 0\.01235, [\d.e+]+ step/s, "
        r"ETA \d+:\d\d:\d\d$",
        lines[0],
    ), lines[0]
    assert lines[1].endswith(", note")


def _cfg(out_dir, **train):
    return tiny.tiny_config(out_dir, **{"epochs": 2, "progress": "auto", "progress_every_s": 0, **train})


def _fit(out_dir, **train):
    trn, val = ToyTranslationPairs(12, 64, seed=0), ToyTranslationPairs(4, 64, seed=1, split="val")
    Trainer(_cfg(out_dir, **train), train_dataset=trn, val_dataset=val).fit()


def test_training_prints_plain_progress_lines_when_not_a_terminal(tmp_path, capsys):
    _fit(tmp_path)  # progress: auto (the default); pytest's captured stderr is not a terminal
    err = capsys.readouterr().err.splitlines()
    steps = [int(m.group(1)) for m in map(TRAIN_LINE.match, err) if m]
    assert steps == [1, 2, 3, 4, 5, 6], err  # progress_every_s: 0 -> a line at every read of the records
    assert sum("epoch 0 validated: PCK@0.1" in x for x in err) == 1
    assert any(x.startswith("evaluate: batch 1/1") for x in err)
    assert not any("\r" in x for x in err)  # no bar redraws in a log file


def test_lines_come_at_the_first_read_then_every_progress_every_s(tmp_path, capsys):
    _fit(tmp_path, log_every_steps=2, progress_every_s=3600)
    err = capsys.readouterr().err.splitlines()
    assert [int(m.group(1)) for m in map(TRAIN_LINE.match, err) if m] == [2]  # the first read: after step 2
    assert sum("validated: PCK@0.1" in x for x in err) == 2  # and every epoch end


def test_quiet_training_prints_nothing(tmp_path, capsys):
    _fit(tmp_path, progress="off")
    assert capsys.readouterr().err == ""


def test_cli_quiet_flag_silences_train_and_evaluate(tiny_embedded, tmp_path, capsys):
    cfg = {
        "model": {"backbone": "resnet18", "pretrained": False, "finetune": "last_block", "temperature": "mlp"},
        "data": {"dataset": "embedded", "root": str(tiny_embedded), "resolution": 64, "batch_size": 4},
        "train": {"epochs": 1, "device": "cpu", "progress_every_s": 0, "val_max_pairs": 2},
        "eval": {"resolution": 64},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "train: step 1/2" in err and "train: step 2/2" in err
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "train: step" not in err and "evaluate:" not in err
    ckpt = str(tmp_path / "a" / "checkpoints" / "best.pt")
    assert main(["evaluate", "--checkpoint", ckpt, "--out", str(tmp_path / "r.json"), "--split", "val"]) == 0
    assert "evaluate: batch 1/1" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", ckpt, "--out", str(tmp_path / "q.json"), "--split", "val", "--quiet"]) == 0
    assert "evaluate:" not in capsys.readouterr().err


def test_download_and_preprocess_print_plain_lines_when_not_a_terminal(tmp_path, capsys):
    """The embedded data set (download stage) and the image cache (preprocess stage) write
    no carriage-return bar into a log: one plain line at least, none with a \\r."""
    from simsc.data import build_dataset
    from simsc.data.cache import build_cache
    from simsc.data.embedded import build_embedded_dataset

    root = build_embedded_dataset(tmp_path / "emb", seed=0, n_train=2, n_val=1, n_test=1, progress=True)
    ds = build_dataset("embedded", root, "trn", 32, cache_dir=tmp_path / "cache")
    build_cache(ds)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "embedded data set: pair 4/4" in err and "cache embedded/32: image" in err
