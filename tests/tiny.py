"""The tests' one tiny training configuration: a random-init ResNet-18 on 64 px pairs, a batch
of 4, one epoch on the CPU, validation on 2 pairs, no progress output. A test states only how
its run differs (``model=``, ``data=`` and ``train`` keywords)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def tiny_config(
    out_dir: str | Path, *, model: Mapping[str, Any] = {}, data: Mapping[str, Any] = {}, **train: Any
) -> dict[str, Any]:
    """The tiny configuration (a ``load_config`` mapping) writing to ``out_dir``, with the
    given model / data keys and ``train`` keys over it."""
    return {
        "model": {"backbone": "resnet18", "pretrained": False, "finetune": "last_block", "temperature": "mlp", **model},
        "data": {"batch_size": 4, "resolution": 64, **data},
        "train": {
            "epochs": 1,
            "out_dir": str(out_dir),
            "progress": "off",
            "val_max_pairs": 2,
            "device": "cpu",
            **train,
        },
    }
