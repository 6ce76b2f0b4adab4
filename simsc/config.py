"""Typed run configuration, loaded from a ``params.yaml``-style nested mapping.

A configuration has four sections, each a dataclass::

    model:  backbone, pretrained, finetune, temperature, ns, nk, sigma, gamma, beta_thres,
            ce_interpolation, reg_over_images, cell_centre
    data:   dataset, root, resolution, batch_size, workers, cache_dir, train_split, val_split
    train:  epochs, max_steps, lr_backbone, lr_temperature, seed, ... (see :class:`TrainConfig`)
    eval:   split, resolution, beta_eval, batch_size, alphas, beta_sweep

:func:`load_config` accepts a mapping, a YAML file path or an existing :class:`Config`;
missing keys take the defaults below, unknown keys raise :class:`ConfigError` naming the
key and the allowed keys, bad values raise :class:`ConfigError` naming the field
(``train.lr_backbone: must be > 0, got -1``). :func:`apply_overrides` applies the CLI's
``--set section.key=value`` strings (values parsed as YAML scalars / lists).

``lr_backbone`` and ``lr_temperature`` default to ``None``, meaning the paper's values
(Sec. 4.2, supp. Sec. 6): 1e-4 when only the last block trains, 2e-5 when the whole backbone
does; 1e-4 for the ``mlp`` temperature module and 0.005 for the ``single`` parameter.
:meth:`Config.resolved_lr_backbone` / :meth:`Config.resolved_lr_temperature` give the
effective values.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from . import defaults as D
from .choices import (
    CE_INTERPOLATION_NAMES,
    CELL_CENTRES,
    FINETUNE_MODES,
    HEAD_NAMES,
    HEAD_PRESETS,
    REG_OVER_IMAGES,
    parse_temperature,
)
from .io import read_yaml_mapping, yaml_load
from .progress import PROGRESS_MODES


class ConfigError(ValueError):
    """An invalid configuration: the message names the offending key or field."""


#: Field metadata of the keys that may change when a run resumes (where it runs, how it logs,
#: when it stops, how it is evaluated); every other key must match the checkpoint's.
RESUMABLE = {"resumable": True}

#: ``train.amp`` values: autocast dtype of the forward pass, or none.
AMP_MODES = ("off", "bf16", "fp16")


@dataclass
class ModelConfig:
    """The SimSC model (paper Sec. 3 and 4.2)."""

    backbone: str = D.BACKBONE
    #: ``false`` (random init), ``true`` (timm's default weights), a timm tag or a local path.
    pretrained: bool | str = True
    finetune: str = D.FINETUNE  # "last_block" | "all" | "none"
    temperature: str = D.TEMPERATURE  # "mlp" | "single" | "fixed:<beta>" | "no-l2"
    ns: int = D.NS
    nk: int = D.NK
    #: kernel soft-argmax std in feature cells; ``null``: 7 (paper Eq. 9), or the head's own (SFNet 5).
    sigma: float | None = None
    gamma: float = D.GAMMA
    beta_thres: float = D.BETA_THRES
    #: sub-pixel cross-entropy: "prob" (paper Eq. 3: log of the interpolated probability) | "logprob"
    ce_interpolation: str = D.CE_INTERPOLATION
    #: L_reg over the pair's two images: "sum" (L_reg(beta_A) + L_reg(beta_B)) | "mean"
    reg_over_images: str = D.REG_OVER_IMAGES
    #: where feature cells sit in the image: "backbone" (its declared centre) | "patch" ((s-1)/2 for all)
    cell_centre: str = D.CELL_CENTRE
    #: matching head: "none" (SimSC) | "sfnet" | "ncnet" | "cats" (supp. Sec. 5); with a head,
    #: ``temperature: default`` is the head's own (SFNet/CATs fixed:0.02, NCNet fixed:1).
    head: str = D.HEAD
    #: head sizes: "paper" (the original papers') | "small" (CPU toy runs)
    head_preset: str = D.HEAD_PRESET


@dataclass
class DataConfig:
    """Training / validation data. ``resolution``: square training size in pixels."""

    dataset: str = "embedded"
    root: str = field(default="data/embedded", metadata=RESUMABLE)
    resolution: int = D.RESOLUTION
    batch_size: int = D.TRAIN_BATCH_SIZE
    workers: int = field(default=D.WORKERS, metadata=RESUMABLE)
    cache_dir: str | None = field(default=None, metadata=RESUMABLE)
    train_split: str = "trn"
    val_split: str = "val"


@dataclass
class TrainConfig:
    """Optimisation, checkpointing and logging."""

    epochs: int = field(default=D.EPOCHS, metadata=RESUMABLE)
    #: stop after this many optimiser steps (over all epochs); ``null`` = run all epochs.
    max_steps: int | None = field(default=None, metadata=RESUMABLE)
    #: ``null`` = paper default for the fine-tuning mode (1e-4 last block, 2e-5 all).
    lr_backbone: float | None = None
    #: ``null`` = paper default for the temperature (1e-4 mlp, 0.005 single).
    lr_temperature: float | None = None
    #: learning rate of the matching head's parameters (``null``: 1e-4).
    lr_head: float | None = None
    seed: int = D.SEED
    #: log the mean |grad| of every conv / linear layer of the last backbone block (supp. Fig. 2).
    log_grad_stats: bool = field(default=False, metadata=RESUMABLE)
    #: the run directory: metrics.jsonl, config.yaml, checkpoints/, summary.json.
    out_dir: str = field(default="runs/default", metadata=RESUMABLE)
    #: also write ``checkpoints/last.pt`` every this many steps (``null``: only at epoch ends).
    checkpoint_every_steps: int | None = field(default=None, metadata=RESUMABLE)
    #: alphas of the validation PCK; the best checkpoint is chosen by per-image PCK@``best_alpha``.
    alphas: list[float] = field(default_factory=lambda: list(D.ALPHAS))
    best_alpha: float = 0.1
    #: validate on at most this many pairs (``null``: the whole validation split).
    val_max_pairs: int | None = field(default=None, metadata=RESUMABLE)
    #: beta_eval of the validation PCK (``null``: the model's default, 1 for learned and
    #: fixed:<beta> temperatures, 0.02 for fixed:1). Supp. Fig. 3 validates fixed:1 at 1.
    val_beta_eval: float | None = None
    #: ``torch.set_num_threads`` during training (``null``: leave torch's setting).
    num_threads: int | None = field(default=None, metadata=RESUMABLE)
    #: ``torch.use_deterministic_algorithms(True, warn_only=True)`` during training.
    deterministic: bool = True
    #: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1" ...
    device: str = field(default=D.DEVICE, metadata=RESUMABLE)
    #: data-parallel processes of one run (one per GPU, or CPU processes): the global batch
    #: ``data.batch_size`` is split across them; 1 = one process (simsc.engine.distributed).
    devices: int = field(default=1, metadata=RESUMABLE)
    #: progress of training and validation: "auto" (a tqdm bar when stderr is a terminal, else
    #: a plain log line on stderr every ``progress_every_s`` seconds and at epoch ends: DVC, Ray,
    #: CI logs), "bar", "log" or "off" (``true`` = auto, ``false`` = off; ``--quiet`` = off).
    progress: bool | str = field(default=D.PROGRESS, metadata=RESUMABLE)
    #: seconds between two plain progress lines (the first comes after the first step).
    progress_every_s: float = field(default=D.PROGRESS_EVERY_S, metadata=RESUMABLE)
    #: steps between two reads of the step records from the device (one host sync for all of
    #: them): metrics.jsonl, callbacks, progress and the divergence check see them then.
    #: ``null``: every step on the CPU (reading costs nothing there), every 25 on accelerators.
    log_every_steps: int | None = field(default=None, metadata=RESUMABLE)
    #: mixed precision of the forward pass: "off", "bf16" or "fp16" (autocast; the softmax and
    #: the loss stay float32; fp16 adds a GradScaler, saved in checkpoints). YAML reads a bare
    #: ``off`` as false, which means "off" too.
    amp: bool | str = "off"
    #: ``torch.compile`` the model's loss path: false, true (inductor) or a backend name
    #: (e.g. "aot_eager"). Falls back to eager, with a warning, when compiling fails.
    compile: bool | str = False
    #: keep the model's 4D weights and the image batches in ``torch.channels_last`` (NHWC) memory
    #: format. Same results; helps GPU convolutions once they are compute-bound (large batches or
    #: images, bf16), not CPU training (bench/RESULTS.md).
    channels_last: bool = False


@dataclass
class EvalConfig:
    """Evaluation defaults (``simsc evaluate`` flags override them)."""

    split: str = field(default="test", metadata=RESUMABLE)
    resolution: int | str = field(default=D.RESOLUTION, metadata=RESUMABLE)  # a size in pixels or "original"
    #: ``null`` = the model's default (1 for learned temperatures, 0.02 for fixed:1 / untrained).
    beta_eval: float | None = field(default=None, metadata=RESUMABLE)
    batch_size: int = field(default=D.EVAL_BATCH_SIZE, metadata=RESUMABLE)
    alphas: list[float] = field(default_factory=lambda: list(D.ALPHAS), metadata=RESUMABLE)
    #: beta_eval values of the sweep mode (paper Fig. 6); ``null`` = 0.005 .. 1, log-spaced.
    beta_sweep: list[float] | None = field(default=None, metadata=RESUMABLE)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (only str/int/float/bool/None/list), safe for YAML, JSON and
        ``torch.load(weights_only=True)``."""
        return dataclasses.asdict(self)

    def resolved_lr_backbone(self) -> float:
        if self.train.lr_backbone is not None:
            return float(self.train.lr_backbone)
        return D.LR_BACKBONE.get(self.model.finetune, D.LR_BACKBONE["last_block"])

    def resolved_lr_temperature(self) -> float:
        if self.train.lr_temperature is not None:
            return float(self.train.lr_temperature)
        return D.LR_TEMPERATURE.get(self.model.temperature, D.LR_TEMPERATURE["mlp"])

    def resolved_lr_head(self) -> float:
        return float(self.train.lr_head) if self.train.lr_head is not None else D.LR_HEAD


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "eval": EvalConfig}
#: The sections that decide a trained model: ``eval`` only sets how it is evaluated, so the train
#: stage and sweep trials leave it out and evaluation settings do not invalidate a trained model.
TRAIN_SECTIONS: tuple[str, ...] = tuple(k for k in SECTIONS if k != "eval")


# ----------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------


def load_config(source: Config | Mapping[str, Any] | str | os.PathLike | None = None) -> Config:
    """Build a validated :class:`Config` from a nested mapping, a YAML file or a Config.

    Top-level keys other than the four sections raise :class:`ConfigError`, as do unknown
    keys inside a section; values are coerced where lossless (``"1e-4"`` -> float, ``3.0`` ->
    int) and checked (see :func:`validate`).
    """
    if source is None:
        data: Mapping[str, Any] = {}
    elif isinstance(source, Config):
        data = source.to_dict()
    elif isinstance(source, (str, os.PathLike)):
        data = read_yaml(source)
    elif isinstance(source, Mapping):
        data = source
    else:
        raise ConfigError(f"config must be a mapping, a YAML path or a Config, got {type(source).__name__}")
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown config section {unknown[0]!r}; allowed sections: {', '.join(SECTIONS)}")
    sections = {}
    for name, cls in SECTIONS.items():
        raw = data.get(name) or {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"config section {name!r} must be a mapping, got {type(raw).__name__}")
        sections[name] = _build_section(name, cls, raw)
    cfg = Config(**sections)
    validate(cfg)
    return cfg


def merge_mappings(
    base: Mapping[str, Any], over: Mapping[str, Any], *, replace: Collection[str] = (), _prefix: str = ""
) -> dict[str, Any]:
    """Deep-merge ``over`` into a copy of ``base``: mappings merge key by key, everything else
    (lists, scalars, and mappings at the dotted keys in ``replace``) replaces the base value."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        dotted = f"{_prefix}{key}"
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and dotted not in replace:
            out[key] = merge_mappings(out[key], value, replace=replace, _prefix=dotted + ".")
        else:
            out[key] = copy.deepcopy(value)
    return out


#: The key of an overlay file that lists the files it builds on.
DEFAULTS_KEY = "defaults"


def read_overlay(
    path: str | os.PathLike,
    *,
    what: str = "YAML file",
    contents: str = "a mapping",
    error: Callable[[str], Exception] = ValueError,
    replace: Collection[str] = (),
    _chain: tuple[Path, ...] = (),
) -> dict[str, Any]:
    """An overlay file composed with the files it builds on.

    An overlay may start with ``defaults: [a.yaml, b.yaml]`` (paths relative to the overlay):
    those are read first (recursively), merged in order with :func:`merge_mappings`, and the
    overlay's own keys are merged last. This is the project's one way of composing settings:
    paper configs, sweep profiles' ``base`` lists and ``simsc train --config`` all use it.
    """
    p = Path(path)
    if p.resolve() in _chain:
        cycle = " -> ".join(str(c) for c in (*_chain, p.resolve()))
        raise error(f"{what} {p}: {DEFAULTS_KEY} form a cycle: {cycle}")
    data = read_yaml_mapping(p, what=what, contents=contents, error=error)
    parents = data.pop(DEFAULTS_KEY, None) or []
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(x, str) and x for x in parents):
        raise error(f"{what} {p}: {DEFAULTS_KEY}: expected a list of YAML file paths, got {parents!r}")
    out: dict[str, Any] = {}
    for parent in parents:
        parent_path = Path(parent) if Path(parent).is_absolute() else p.parent / parent
        layer = read_overlay(
            parent_path,
            what=f"{p}: {DEFAULTS_KEY} file",
            contents=contents,
            error=error,
            replace=replace,
            _chain=(*_chain, p.resolve()),
        )
        out = merge_mappings(out, layer, replace=replace)
    return merge_mappings(out, data, replace=replace)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A config file as a mapping, composed with the files its ``defaults:`` list names
    (:func:`read_overlay`); :class:`ConfigError` naming the file when it cannot be read."""
    return read_overlay(
        path, what="config file", contents="a mapping of sections (model, data, train, eval)", error=ConfigError
    )


def read_configs(paths: Sequence[str | os.PathLike]) -> tuple[dict[str, Any], list[str]]:
    """Config files composed in order (each through :func:`read_yaml`, so ``defaults:`` lists
    count), over nothing: the schema's defaults fill the rest when the result is loaded.
    Returns the engine sections and the names of the other top-level sections, which a
    ``params.yaml`` holds for the pipeline and a config file leaves to it (the caller says
    that it ignored them, so a misspelt section does not pass unnoticed)."""
    data: dict[str, Any] = {}
    for path in paths:
        data = merge_mappings(data, read_yaml(path))
    return engine_sections(data), [k for k in data if k not in SECTIONS]


def engine_sections(params: Mapping[str, Any], sections: Sequence[str] = tuple(SECTIONS)) -> dict[str, Any]:
    """The engine sections of a ``params.yaml``-style mapping (other sections belong to the pipeline)."""
    return {k: params[k] for k in sections if k in params}


def _build_section(section: str, cls: type, raw: Mapping[str, Any]):
    allowed = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in allowed:
            raise ConfigError(f"unknown config key {section}.{key}; allowed keys in {section!r}: {', '.join(allowed)}")
        kwargs[key] = _coerce(f"{section}.{key}", allowed[key], value)
    return cls(**kwargs)


def _coerce(name: str, f: dataclasses.Field, value: Any) -> Any:
    """Coerce ``value`` to the field's annotated type (annotations are strings here)."""
    ann = str(f.type)
    optional = "None" in ann
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name}: must not be null")
    if ann.startswith("list"):
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: must be a list of numbers, got {value!r}")
        return [_to_float(name, v) for v in value]
    if ann.startswith("bool |"):  # pretrained: bool or str
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("true", "yes"):
                return True
            if low in ("false", "no", "none", ""):
                return False
            return value
        expected = _BOOL_OR_STR_EXPECTED.get(name, "true, false or a string")
        raise ConfigError(f"{name}: must be {expected}, got {value!r}")
    if ann.startswith("bool"):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.strip().lower() in ("true", "yes", "1")
        raise ConfigError(f"{name}: must be true or false, got {value!r}")
    if ann.startswith("int | str"):  # resolution: int or "original"
        if isinstance(value, str) and not value.strip().isdigit():
            return value.strip()
        return _to_int(name, value)
    if ann.startswith("int"):
        return _to_int(name, value)
    if ann.startswith("float"):
        return _to_float(name, value)
    if ann.startswith("str"):
        if isinstance(value, bool):
            # YAML (a config file, a --set value) reads an unquoted off/no/yes/on as a boolean.
            raise ConfigError(
                f"{name}: must be a string, got the boolean {str(value).lower()} (YAML reads an unquoted "
                f'off, no, on or yes as one); quote the value: {name}: "off" in a file, '
                f"--set '{name}=\"off\"' on the command line"
            )
        if isinstance(value, (dict, list, tuple)):
            raise ConfigError(f"{name}: must be a string, got {value!r}")
        return str(value)
    return value  # pragma: no cover - every field has one of the types above


#: The largest batch a config may ask for: far beyond any memory, below what indexing overflows at.
MAX_BATCH = 1_000_000

#: What the ``bool | str`` fields take, for their error messages.
_BOOL_OR_STR_EXPECTED = {
    "model.pretrained": "true, false, a timm tag or a checkpoint path",
    "train.amp": "off, bf16 or fp16 (false = off)",
    "train.compile": "true, false or a torch.compile backend name (e.g. aot_eager)",
    "train.progress": "auto, bar, log or off (true = auto, false = off)",
}


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def yaml_number(value: Any) -> Any:
    """``"1e-4"`` -> ``1e-4``, ``"3"`` -> ``3``; anything else unchanged. YAML 1.1 reads exponents
    without a dot (``1e-4``) as strings: the project's one number coercion."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        text = value.strip()
        return float(text) if any(c in text for c in ".eE") else int(text)
    return value


def _to_int(name: str, value: Any) -> int:
    # 3.0 is 3 (YAML writes a float), "3" is 3 (an override's text); "3.0" and true are not
    number = yaml_number(value) if isinstance(value, str) else value
    if isinstance(number, float) and not isinstance(value, str) and number.is_integer():
        return int(number)
    if isinstance(number, int) and not isinstance(number, bool):
        return number
    raise ConfigError(f"{name}: must be an integer, got {value!r}")


def _to_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{name}: must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value.strip())
        except ValueError:
            raise ConfigError(f"{name}: must be a number, got {value!r}") from None
    else:
        raise ConfigError(f"{name}: must be a number, got {value!r}")
    if not math.isfinite(out):
        raise ConfigError(f"{name}: must be finite, got {value!r}")
    return out


# ----------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------


def validate(cfg: Config) -> None:
    """Check values; raise :class:`ConfigError` naming the first bad field."""
    m, d, t, e = cfg.model, cfg.data, cfg.train, cfg.eval

    def bad(name: str, msg: str, value: Any) -> None:
        raise ConfigError(f"{name}: {msg}, got {value!r}")

    if not m.backbone:
        bad("model.backbone", "must be a backbone name", m.backbone)
    if m.finetune not in FINETUNE_MODES:
        bad("model.finetune", f"must be one of {list(FINETUNE_MODES)}", m.finetune)
    if m.head != "none" and m.head not in HEAD_NAMES:
        bad("model.head", f"must be 'none' or one of {sorted(HEAD_NAMES)}", m.head)
    if m.head_preset not in HEAD_PRESETS:
        bad("model.head_preset", f"must be one of {list(HEAD_PRESETS)}", m.head_preset)
    if m.temperature == "default":
        if m.head == "none":
            bad("model.temperature", "'default' is a matching head's own temperature; set model.head", m.temperature)
    else:
        try:
            parse_temperature(m.temperature)
        except ValueError as exc:
            raise ConfigError(f"model.temperature: {exc}") from None
    if m.ns < 1 or m.ns % 2 == 0:
        bad("model.ns", "must be an odd integer >= 1", m.ns)
    if m.nk < m.ns:
        bad("model.nk", f"must be >= model.ns ({m.ns})", m.nk)
    if m.sigma is not None and not m.sigma > 0:
        bad("model.sigma", "must be > 0", m.sigma)
    if m.gamma < 0:
        bad("model.gamma", "must be >= 0", m.gamma)
    if not m.beta_thres > 0:
        bad("model.beta_thres", "must be > 0", m.beta_thres)
    if m.ce_interpolation not in CE_INTERPOLATION_NAMES:
        bad("model.ce_interpolation", f"must be one of {sorted(CE_INTERPOLATION_NAMES)}", m.ce_interpolation)
    if m.reg_over_images not in REG_OVER_IMAGES:
        bad("model.reg_over_images", f"must be one of {list(REG_OVER_IMAGES)}", m.reg_over_images)
    if m.cell_centre not in CELL_CENTRES:
        bad("model.cell_centre", f"must be one of {list(CELL_CENTRES)}", m.cell_centre)

    if not d.dataset:
        bad("data.dataset", "must name a dataset", d.dataset)
    if d.resolution < 16:
        bad("data.resolution", "must be an integer >= 16 (square training size)", d.resolution)
    if not 1 <= d.batch_size <= MAX_BATCH:
        bad("data.batch_size", f"must be between 1 and {MAX_BATCH} (pairs held in memory at once)", d.batch_size)
    if d.workers < 0:
        bad("data.workers", "must be >= 0", d.workers)

    if t.epochs < 1:
        bad("train.epochs", "must be >= 1", t.epochs)
    if t.max_steps is not None and t.max_steps < 1:
        bad("train.max_steps", "must be >= 1 or null", t.max_steps)
    for name in ("lr_backbone", "lr_temperature", "lr_head"):
        v = getattr(t, name)
        if v is not None and not v > 0:
            bad(f"train.{name}", "must be > 0 or null (paper default)", v)
    if t.seed < 0:
        bad("train.seed", "must be >= 0", t.seed)
    if not t.out_dir:
        bad("train.out_dir", "must be a folder path", t.out_dir)
    if t.checkpoint_every_steps is not None and t.checkpoint_every_steps < 1:
        bad("train.checkpoint_every_steps", "must be >= 1 or null", t.checkpoint_every_steps)
    _check_alphas("train.alphas", t.alphas)
    if t.best_alpha not in t.alphas:
        bad("train.best_alpha", f"must be one of train.alphas {t.alphas}", t.best_alpha)
    if t.val_max_pairs is not None and t.val_max_pairs < 1:
        bad("train.val_max_pairs", "must be >= 1 or null", t.val_max_pairs)
    if t.val_beta_eval is not None and not (math.isfinite(t.val_beta_eval) and t.val_beta_eval > 0):
        bad("train.val_beta_eval", "must be a finite number > 0 or null", t.val_beta_eval)
    if not (t.device in ("auto", "cpu") or t.device.startswith(("cuda", "mps"))):
        bad("train.device", "must be 'auto', 'cpu', 'cuda[:N]' or 'mps'", t.device)
    if t.num_threads is not None and t.num_threads < 1:
        bad("train.num_threads", "must be >= 1 or null", t.num_threads)
    if isinstance(t.devices, bool) or not isinstance(t.devices, int) or t.devices < 1:
        bad("train.devices", "must be an integer >= 1 (processes of one data-parallel run)", t.devices)
    if t.devices > 1 and t.device.startswith("cuda:"):
        bad("train.devices", "takes train.device auto, cpu or cuda (rank r uses cuda:r), not one GPU", t.device)
    if t.devices > 1 and t.device == "mps":
        bad("train.devices", "is not supported on mps (one device); use 1", t.devices)
    if isinstance(t.progress, bool):
        t.progress = "auto" if t.progress else "off"
    if t.progress not in PROGRESS_MODES:
        bad("train.progress", f"must be one of {list(PROGRESS_MODES)} (or true/false)", t.progress)
    if not t.progress_every_s >= 0:
        bad("train.progress_every_s", "must be >= 0", t.progress_every_s)
    if t.log_every_steps is not None and t.log_every_steps < 1:
        bad("train.log_every_steps", "must be >= 1 or null", t.log_every_steps)
    if t.amp is False:
        t.amp = "off"
    if t.amp not in AMP_MODES:
        bad("train.amp", f"must be one of {list(AMP_MODES)}", t.amp)
    if isinstance(t.compile, str) and not t.compile.strip():
        bad("train.compile", "must be true, false or a torch.compile backend name", t.compile)

    if isinstance(e.resolution, str):
        if e.resolution not in ("original", "ori", "ori."):
            bad("eval.resolution", "must be a size in pixels or 'original'", e.resolution)
        e.resolution = "original"
    elif e.resolution < 16:
        bad("eval.resolution", "must be >= 16 or 'original'", e.resolution)
    if e.beta_eval is not None and not e.beta_eval > 0:
        bad("eval.beta_eval", "must be > 0 or null (model default)", e.beta_eval)
    if not 1 <= e.batch_size <= MAX_BATCH:
        bad("eval.batch_size", f"must be between 1 and {MAX_BATCH} (pairs held in memory at once)", e.batch_size)
    _check_alphas("eval.alphas", e.alphas)
    if e.beta_sweep is not None:
        if not e.beta_sweep or any(not b > 0 for b in e.beta_sweep):
            bad("eval.beta_sweep", "must be a non-empty list of values > 0 or null", e.beta_sweep)


def _check_alphas(name: str, alphas: Sequence[float]) -> None:
    if not alphas or any(not 0 < a <= 1 for a in alphas):
        raise ConfigError(f"{name}: must be a non-empty list of values in (0, 1], got {list(alphas)!r}")


# ----------------------------------------------------------------------------------------
# Overrides and serialisation
# ----------------------------------------------------------------------------------------


def allowed_keys() -> list[str]:
    """Every ``section.key`` a config accepts."""
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls)]


def parse_override(item: str) -> tuple[str, Any]:
    """``"section.key=value"`` -> ``("section.key", value)``, the value parsed as YAML (``1e-4``,
    ``true``, ``null``, ``[0.05, 0.1]``; an empty value is null, a mapping stays the raw text).
    The one ``--set`` parser of the project (``simsc train``, sweeps, experiments)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.max_steps=100")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, dict):
        value = raw
    return key, value


def check_key(key: str, where: str) -> None:
    """``key`` must be ``section.name`` of the schema; :class:`ConfigError` listing the allowed keys."""
    parts = key.split(".")
    if len(parts) != 2 or parts[0] not in SECTIONS:
        raise ConfigError(f"{where}: unknown config key {key!r}; allowed keys: {', '.join(allowed_keys())}")
    section, name = parts
    names = [f.name for f in fields(SECTIONS[section])]
    if name not in names:
        raise ConfigError(f"{where}: unknown config key {key!r}; allowed keys in {section!r}: {', '.join(names)}")


def set_dotted(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` (copied) with each dotted key of ``overrides`` set: ``{"train.seed": 1}`` sets
    ``data["train"]["seed"]``, creating sections as needed. The project's one override rule."""
    out = copy.deepcopy(dict(data))
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            elif not isinstance(node[part], dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"{key}: {where!r} must be a mapping, got {type(node[part]).__name__}")
            node = node[part]
        node[parts[-1]] = copy.deepcopy(value)
    return out


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (:func:`parse_override`, each key checked against the
    schema) to a nested mapping (returns a new dict); :func:`load_config` validates the result."""
    dotted: dict[str, Any] = {}
    for item in overrides:
        key, value = parse_override(item)
        check_key(key, f"--set {item!r}")
        dotted[key] = value
    return set_dotted(data, dotted)


#: Engine keys that hold a path (made absolute against a root by :func:`compose`).
PATH_KEYS = ("data.root", "data.cache_dir", "model.pretrained")


def absolute_paths(data: Mapping[str, Any], root: str | os.PathLike) -> dict[str, Any]:
    """``data`` (copied) with the relative paths of :data:`PATH_KEYS` made absolute against
    ``root`` (a sweep trial runs in another folder); URIs, timm tags and ``true`` are left."""
    out = copy.deepcopy(dict(data))
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = (out.get(section) or {}).get(name)
        if not isinstance(value, str) or not value:
            continue
        if key == "model.pretrained" and not (
            ("/" in value) or value.endswith((".pt", ".pth", ".bin", ".safetensors"))
        ):
            continue  # a timm tag or "true"
        if "://" in value or Path(value).is_absolute():
            continue
        out[section][name] = str((Path(root) / value).absolute())
    return out


def compose(
    files: Sequence[str | os.PathLike] = (),
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    base: Mapping[str, Any] | None = None,
    out_dir: str | None = None,
    root: str | os.PathLike | None = None,
) -> Config:
    """The one composition of a run's configuration (see :func:`compose_data`), on top of the
    schema's defaults and checked (:func:`load_config`)."""
    return load_config(compose_data(files, overrides, base=base, out_dir=out_dir, root=root))


def compose_data(
    files: Sequence[str | os.PathLike] = (),
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    base: Mapping[str, Any] | None = None,
    out_dir: str | None = None,
    root: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The one composition of a run's configuration, used by every entry point (``simsc
    train``, the DVC stages, sweep trials, experiments, ``paramset``):

    ``base`` (a params mapping; its engine sections) <- ``files`` in order (each with its
    ``defaults:`` list, merged by :func:`merge_mappings`) <- ``overrides`` (``key=value``
    strings checked against the schema, or a mapping of dotted keys) <- ``out_dir`` (a path as
    typed, never parsed as YAML); relative paths made absolute against ``root`` when given;
    the engine sections as a mapping (:func:`compose` loads it)."""
    data = engine_sections(base or {})
    for path in files:
        data = merge_mappings(data, engine_sections(read_yaml(path)))
    if isinstance(overrides, Mapping):
        data = set_dotted(data, overrides)
    else:
        data = apply_overrides(data, overrides)
    if out_dir:
        data = set_dotted(data, {"train.out_dir": out_dir})
    if root is not None:
        data = absolute_paths(data, root)
    return data


def resumable_keys() -> frozenset[str]:
    """The dotted keys declared resumable on the schema (:data:`RESUMABLE`)."""
    return frozenset(
        f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in fields(cls) if f.metadata.get("resumable")
    )


def dump_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (the run directory's ``config.yaml``)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")


def diff_configs(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """``section.key`` names whose values differ between two plain config dicts."""
    out = []
    for section in SECTIONS:
        sa, sb = a.get(section) or {}, b.get(section) or {}
        for k in sorted(set(sa) | set(sb)):
            if sa.get(k) != sb.get(k):
                out.append(f"{section}.{k}")
    return out
