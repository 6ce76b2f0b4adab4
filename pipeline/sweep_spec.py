"""Sweep specifications: a YAML file that names a search space over the engine config.

A spec (see ``configs/sweeps/*.yaml``)::

    name: lr_beta1                     # the sweep's name (Ray experiment, MLflow parent run)
    description: supplement Tab. 1 ...
    base: [params.yaml]                # overlay files composed in order (simsc.config.read_overlay)
    set:                               # fixed dotted overrides on top of base
      train.epochs: 4
    search:                            # the search space
      train.lr_backbone: {grid: [2.0e-6, 2.0e-5, 2.0e-4]}
      model.temperature: {grid: [mlp, single, "fixed:0.03"]}
      train.seed: {grid: [0, 1]}
      train.lr_temperature: {loguniform: [1.0e-4, 1.0e-2]}     # random search only
      dataset:                         # a bundle: one label sets several keys together
        grid:
          pfpascal: {data.dataset: pfpascal, data.root: data/pf-pascal}
          spair: {data.dataset: spair, data.root: data/spair-71k/SPair-71k}
    search_alg: grid                   # grid | random (random: num_samples draws, seeded)
    num_samples: 1                     # repeats of the grid (grid), draws (random)
    seed: 0                            # the random search's seed
    metric: val_pck                    # validation PCK@train.best_alpha (per image), maximised
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}   # default: {type: fifo}
    resources: {cpu: 1, gpu: 0}        # per trial; gpu may be a fraction (0.5: two per GPU)
    # resources: {workers: 2, cpus_per_worker: 4, gpus_per_worker: 1}   # data-parallel trials
    max_concurrent_trials: 2           # null: as many as the resources allow
    max_failures: 3                    # restarts of a trial whose worker died
    keep_checkpoints: 2                # newest checkpoints kept per trial
    reuse_actors: true                 # run the next trial in the same worker process (no re-import)
    storage: null                      # Ray results storage: a folder (NFS) or s3://... URI
    tracking: {enabled: true, experiment: simsc-sweeps, registered_model: null}
    profiles:                          # named partial specs merged over the rest (--profile)
      toy: {set: {...}}
      full: {base: [...], set: {...}}
    default_profile: toy

Search keys are dotted engine keys (``section.key`` of :mod:`simsc.config`) or bundle labels
(no dot) whose candidates are named mappings of dotted keys. Every candidate is composed into
a full engine config and validated when the spec is loaded, so a typo fails before any
worker starts, with the spec file and key in the message.

This module does not import Ray; :func:`param_space` builds Ray Tune's search space lazily.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simsc.config import (
    SECTIONS,
    ConfigError,
    absolute_paths,
    check_key,
    compose_data,
    engine_sections,
    load_config,
    merge_mappings,
    parse_override,
    read_overlay,
    set_dotted,
    yaml_number,
)
from simsc.io import read_yaml_mapping

from .paramset import REPLACED, merge

SAMPLERS = ("grid", "choice", "uniform", "loguniform", "randint")
SCHEDULERS = ("asha", "fifo")
#: Without a ``scheduler`` every trial runs to its end (Ray Tune's own default): early stopping
#: is a choice a spec makes, e.g. ``scheduler: {type: asha}``.
SCHEDULER_DEFAULT: dict[str, Any] = {"type": "fifo"}
#: ASHA's settings when a spec gives ``type: asha`` without them.
ASHA_DEFAULTS: dict[str, Any] = {"grace_period": 1, "reduction_factor": 2}


class SweepSpecError(ValueError):
    """An invalid sweep spec: the message names the file and the key."""


@dataclass
class SearchEntry:
    """One dimension of the search space."""

    key: str  # "section.name" or a bundle label
    sampler: str  # grid | choice | uniform | loguniform | randint
    values: list[Any]  # candidates (grid, choice) or [low, high]
    bundles: dict[str, dict[str, Any]] | None = None  # label -> {dotted key: value}

    @property
    def is_bundle(self) -> bool:
        return self.bundles is not None


@dataclass
class SweepSpec:
    name: str
    path: str
    description: str = ""
    profile: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # merged base files + set, absolute paths
    params_raw: dict[str, Any] = field(default_factory=dict)  # the same with paths as written
    root: str = "."  # the folder relative paths are resolved against
    set: dict[str, Any] = field(default_factory=dict)
    search: list[SearchEntry] = field(default_factory=list)
    search_alg: str = "grid"
    num_samples: int = 1
    seed: int = 0
    metric: str = "val_pck"
    mode: str = "max"
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(SCHEDULER_DEFAULT))
    #: ``{"workers", "cpu", "gpu"}``: cpu / gpu per worker (:func:`parse_resources`)
    resources: dict[str, float] = field(default_factory=lambda: {"workers": 1, "cpu": 1.0, "gpu": 0.0})
    max_concurrent_trials: int | None = None
    max_failures: int = 3
    keep_checkpoints: int = 2
    reuse_actors: bool = True
    storage: str | None = None
    tracking: dict[str, Any] = field(
        default_factory=lambda: {"enabled": True, "experiment": "simsc-sweeps", "registered_model": None}
    )

    # -- derived -------------------------------------------------------------------------
    def engine_base(self) -> dict[str, Any]:
        """The engine sections (model, data, train, eval) every trial starts from; with
        ``resources.workers: N > 1`` its ``train.devices`` is N (a trial's ranks)."""
        base = copy.deepcopy(engine_sections(self.params))
        if self.resources.get("workers", 1) > 1:
            base.setdefault("train", {})["devices"] = int(self.resources["workers"])
        return base

    def engine_config(self):
        """The base engine config as a validated :class:`simsc.config.Config`."""
        return load_config(self.engine_base())

    def max_epochs(self) -> int:
        """The longest trial in epochs (ASHA's ``max_t``)."""
        epochs = [int(self.engine_config().train.epochs)]
        for entry in self.search:
            for overrides in _candidate_overrides(entry):
                if "train.epochs" in overrides:
                    epochs.append(int(overrides["train.epochs"]))
        return max(epochs)

    def digest(self) -> str:
        """A short hash of everything that decides the trials (resume checks it)."""
        blob = {
            "params": self.params,
            "search": [dataclasses.asdict(e) for e in self.search],
            "search_alg": self.search_alg,
            "num_samples": self.num_samples,
            "seed": self.seed,
        }
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def summary(self) -> dict[str, Any]:
        """Flat description for the MLflow parent run's params."""
        out: dict[str, Any] = {
            "sweep.name": self.name,
            "sweep.profile": self.profile,
            "sweep.search_alg": self.search_alg,
            "sweep.num_samples": self.num_samples,
            "sweep.metric": self.metric,
            "sweep.scheduler": json.dumps(self.scheduler),
            "sweep.resources": json.dumps(self.resources),
            "sweep.max_concurrent_trials": self.max_concurrent_trials,
            "sweep.n_trials": n_trials(self),
        }
        for e in self.search:
            vals = list(e.bundles) if e.is_bundle else e.values
            out[f"search.{e.key}"] = f"{e.sampler}{json.dumps(vals, default=str)}"
        for k, v in self.set.items():
            out[f"set.{k}"] = v
        return out


# ----------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------

_DERIVED = {"path", "params", "params_raw", "root", "profile"}  # SweepSpec fields a spec file does not set
_TOP_KEYS = ({f.name for f in dataclasses.fields(SweepSpec)} - _DERIVED) | {"base", "profiles", "default_profile"}


def load_sweep_spec(
    path: str | os.PathLike,
    profile: str | None = None,
    *,
    overrides: Sequence[str] = (),
    root: str | os.PathLike | None = None,
) -> SweepSpec:
    """Read, merge (profile), compose and validate a sweep spec.

    Args:
        path: the spec's YAML file.
        profile: a key of the spec's ``profiles`` (default: its ``default_profile``).
        overrides: extra ``section.key=value`` strings added to ``set`` (the CLI's ``--set``).
        root: folder that relative ``base`` files and data paths are resolved against
            (default: the current folder, where ``params.yaml`` lives).
    """
    path = Path(path)
    where = str(path)
    raw, profile = _read_with_profile(path, profile)
    root = Path(root) if root is not None else Path.cwd()
    name = raw.get("name")
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ "):
        raise SweepSpecError(f"{where}: name: expected a non-empty string without '/', '\\' or spaces, got {name!r}")
    spec = SweepSpec(
        name=name,
        path=str(path),
        profile=profile,
        description=str(raw.get("description") or ""),
        root=str(root.absolute()),
    )
    _compose_params(spec, raw, overrides, root, where)
    _parse_search(spec, raw, root, where)
    _parse_options(spec, raw, where)
    return spec


def _default(name: str) -> Any:
    """The default of a :class:`SweepSpec` field: the one place it is written."""
    f = next(f for f in dataclasses.fields(SweepSpec) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _read_with_profile(path: Path, profile: str | None) -> tuple[dict[str, Any], str | None]:
    """The spec file with the chosen profile merged over it, and the profile's name."""
    where = str(path)
    raw = read_yaml_mapping(path, what="sweep spec", error=SweepSpecError)
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise SweepSpecError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(_TOP_KEYS))}")
    profiles = raw.pop("profiles", None) or {}
    default_profile = raw.pop("default_profile", None)
    if not isinstance(profiles, Mapping):
        raise SweepSpecError(f"{where}: profiles: expected a mapping of profile name -> partial spec")
    profile = profile or default_profile
    if profile is None:
        return raw, None
    if profile not in profiles:
        known = ", ".join(profiles) or "none"
        raise SweepSpecError(f"{where}: no profile {profile!r} (profiles: {known})")
    prof = profiles[profile] or {}
    if not isinstance(prof, Mapping):
        raise SweepSpecError(f"{where}: profiles.{profile}: expected a mapping")
    bad = sorted(set(prof) - (_TOP_KEYS - {"profiles", "default_profile"}))
    if bad:
        raise SweepSpecError(f"{where}: profiles.{profile}: unknown key {bad[0]!r}")
    return _merge_spec(raw, prof), profile


def base_params(base: Any, root: Path, where: str) -> dict[str, Any]:
    """The spec's ``base`` files composed in order (each through :func:`simsc.config.read_overlay`,
    so a base file's own ``defaults:`` list is honoured), on top of the schema's defaults."""
    if isinstance(base, str):
        base = [base]
    if not isinstance(base, list):
        raise SweepSpecError(f"{where}: base: expected a list of params files")
    params: dict[str, Any] = {}
    for b in base:
        bp = Path(b) if Path(b).is_absolute() else root / b
        params = merge(params, read_overlay(bp, what=f"{where}: base file", error=SweepSpecError, replace=REPLACED))
    return params


def _compose_params(spec: SweepSpec, raw: Mapping[str, Any], overrides: Sequence[str], root: Path, where: str) -> None:
    """``spec.params``: the base files, then ``set`` and the command line's ``--set``."""
    params = base_params(raw.get("base") or [], root, where)
    set_ = dict(raw.get("set") or {})
    for item in overrides:
        try:
            key, value = parse_override(item)
        except ConfigError as exc:
            raise SweepSpecError(str(exc)) from None
        set_[key] = value
    set_ = {k: yaml_number(v) for k, v in set_.items()}
    for key in set_:
        _check_key(key, f"{where}: set.{key}")
        _check_section(key, params, f"{where}: set.{key}")
    params = set_dotted(params, set_)
    spec.params_raw = copy.deepcopy(params)
    spec.params, spec.set = absolute_paths(params, root), set_
    _validate_engine(spec.engine_base(), f"{where}: base + set")


def _parse_search(spec: SweepSpec, raw: Mapping[str, Any], root: Path, where: str) -> None:
    """``spec.search``; every candidate composed with the base and validated."""
    search = raw.get("search") or {}
    if not isinstance(search, Mapping):
        raise SweepSpecError(f"{where}: search: expected a mapping of key -> {{grid|choice|...: values}}")
    spec.search = [_parse_entry(k, v, f"{where}: search.{k}") for k, v in search.items()]
    if not spec.search:
        raise SweepSpecError(
            f"{where}: search: no key to search; a sweep needs at least one (e.g. train.seed: {{grid: [0, 1]}}); "
            "for one run use simsc train or dvc exp run"
        )
    for e in spec.search:
        for key in [e.key] if e.bundles is None else sorted({k for b in e.bundles.values() for k in b}):
            _check_section(key, spec.params, f"{where}: search.{e.key}")
    set_keys = set(spec.set)
    for e in spec.search:
        for overrides_ in _candidate_overrides(e):
            clash = set_keys & set(overrides_)
            if clash:
                raise SweepSpecError(f"{where}: search.{e.key} and set both give {sorted(clash)[0]}")
            _validate_engine(compose(spec.engine_base(), overrides_, root=root), f"{where}: search.{e.key}")
    spec.search_alg = _choice(raw.get("search_alg", _default("search_alg")), ("grid", "random"), f"{where}: search_alg")
    if spec.search_alg == "grid":
        rnd = [e.key for e in spec.search if e.sampler != "grid"]
        if rnd:
            raise SweepSpecError(
                f"{where}: search.{rnd[0]}: search_alg grid takes only grid entries "
                "(choice and distributions need search_alg: random)"
            )
    spec.num_samples = _int(raw.get("num_samples", _default("num_samples")), f"{where}: num_samples", 1)
    spec.seed = _int(raw.get("seed", _default("seed")), f"{where}: seed", 0)


def parse_scheduler(value: Any, where: str) -> dict[str, Any]:
    """``scheduler``: ``{type: fifo}`` or ``{type: asha, grace_period, reduction_factor}``; a
    missing type, key or mapping takes :data:`SCHEDULER_DEFAULT` and :data:`ASHA_DEFAULTS`."""
    sched = dict(value or {})
    sched["type"] = _choice(sched.get("type", SCHEDULER_DEFAULT["type"]), SCHEDULERS, f"{where}: scheduler.type")
    if sched["type"] == "asha":
        sched = {**ASHA_DEFAULTS, **sched}
        sched["grace_period"] = _int(sched["grace_period"], f"{where}: scheduler.grace_period", 1)
        rf = sched["reduction_factor"]
        if not isinstance(rf, (int, float)) or rf < 2:
            raise SweepSpecError(f"{where}: scheduler.reduction_factor: expected a number >= 2, got {rf!r}")
    extra = sorted(set(sched) - {"type"} - (set(ASHA_DEFAULTS) if sched["type"] == "asha" else set()))
    if extra:
        raise SweepSpecError(f"{where}: scheduler: unknown key {extra[0]!r}")
    return sched


RESOURCE_KEYS = ("cpu", "gpu", "workers", "cpus_per_worker", "gpus_per_worker")


def parse_resources(raw: Any, where: str) -> dict[str, float]:
    """``resources`` of a spec -> ``{"workers": N, "cpu": per worker, "gpu": per worker}``.

    One worker (the default): ``{cpu, gpu}`` per trial. ``workers: N > 1``: each trial is a
    data-parallel Ray Train job of N workers with ``cpus_per_worker`` / ``gpus_per_worker``
    each (``cpu`` / ``gpu`` are read as per worker there too; give one spelling, not both)."""
    res = dict(raw or {})
    bad = sorted(set(res) - set(RESOURCE_KEYS))
    if bad:
        raise SweepSpecError(f"{where}: resources: unknown key {bad[0]!r} ({', '.join(RESOURCE_KEYS)})")
    workers = res.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SweepSpecError(f"{where}: resources.workers: expected an integer >= 1, got {workers!r}")
    for short, long in (("cpu", "cpus_per_worker"), ("gpu", "gpus_per_worker")):
        if short in res and long in res:
            raise SweepSpecError(f"{where}: resources: give {short} or {long}, not both")
        if long in res:
            res[short] = res.pop(long)
    res = {**_default("resources"), **res}
    cpu, gpu = res["cpu"], res["gpu"]
    if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or cpu <= 0:
        raise SweepSpecError(f"{where}: resources.cpu: expected a number > 0, got {cpu!r}")
    if isinstance(gpu, bool) or not isinstance(gpu, (int, float)) or gpu < 0 or (gpu > 1 and gpu != int(gpu)):
        raise SweepSpecError(f"{where}: resources.gpu: expected 0, a fraction in (0, 1] or a whole number, got {gpu!r}")
    if workers > 1 and gpu not in (0, 1):
        raise SweepSpecError(
            f"{where}: resources.gpus_per_worker: expected 0 or 1 with workers > 1 (one GPU per rank), got {gpu!r}"
        )
    return {"workers": int(workers), "cpu": float(cpu), "gpu": float(gpu)}


def _parse_options(spec: SweepSpec, raw: Mapping[str, Any], where: str) -> None:
    """The remaining keys: metric, scheduler, resources, concurrency, storage, tracking."""
    spec.metric = str(raw.get("metric", _default("metric")))
    spec.mode = _choice(raw.get("mode", _default("mode")), ("max", "min"), f"{where}: mode")
    spec.scheduler = parse_scheduler(raw.get("scheduler"), where)
    spec.resources = parse_resources(raw.get("resources"), where)
    mct = raw.get("max_concurrent_trials", _default("max_concurrent_trials"))
    spec.max_concurrent_trials = None if mct is None else _int(mct, f"{where}: max_concurrent_trials", 1)
    spec.max_failures = _int(raw.get("max_failures", _default("max_failures")), f"{where}: max_failures", -1)
    spec.keep_checkpoints = _int(
        raw.get("keep_checkpoints", _default("keep_checkpoints")), f"{where}: keep_checkpoints", 1
    )
    reuse = raw.get("reuse_actors", _default("reuse_actors"))
    if not isinstance(reuse, bool):
        raise SweepSpecError(f"{where}: reuse_actors: expected true or false, got {reuse!r}")
    spec.reuse_actors = reuse
    storage = raw.get("storage", _default("storage"))
    if storage is not None and not isinstance(storage, str):
        raise SweepSpecError(f"{where}: storage: expected a folder or a URI (s3://...), got {storage!r}")
    spec.storage = storage
    tr = {**_default("tracking"), **(raw.get("tracking") or {})}
    bad_tr = sorted(set(tr) - {"enabled", "experiment", "registered_model", "uri"})
    if bad_tr:
        raise SweepSpecError(
            f"{where}: tracking: unknown key {bad_tr[0]!r} (enabled, experiment, registered_model, uri)"
        )
    spec.tracking = tr
    if (
        spec.scheduler["type"] == "asha"
        and spec.metric not in ("val_pck", "best_val_pck")
        and not spec.metric.startswith("val_pck@")
    ):
        raise SweepSpecError(f"{where}: metric: expected val_pck, best_val_pck or val_pck@<alpha>, got {spec.metric!r}")


#: A profile's sections merged key by key into the spec's (one level: a ``search`` entry or a
#: ``set`` value is replaced whole); every other key of a profile (``base`` included) replaces.
PROFILE_MERGED = ("set", "search", "tracking", "scheduler", "resources")


def _merge_spec(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """A profile over its spec: :func:`simsc.config.merge_mappings` (the one merge rule) told what
    is replaced whole (see :data:`PROFILE_MERGED`)."""
    replace = {k for k in over if k not in PROFILE_MERGED}
    replace |= {f"{k}.{name}" for k in PROFILE_MERGED if isinstance(over.get(k), Mapping) for name in over[k]}
    return merge_mappings(base, over, replace=replace)


def _check_section(key: str, params: Mapping[str, Any], where: str) -> None:
    """A dotted key outside the engine sections must name a section of the base params (e.g.
    ``tracking.experiment``): a typo (``trian.max_steps``) would otherwise set a section that
    nothing reads, and the trials would run unchanged."""
    import difflib

    section = key.partition(".")[0]
    if "." not in key or section in SECTIONS or section in params:
        return
    known = sorted(set(SECTIONS) | set(params))
    close = difflib.get_close_matches(section, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise SweepSpecError(
        f"{where}: unknown section {section!r} (engine sections: {', '.join(SECTIONS)}; sections of the "
        f"base params: {', '.join(sorted(params)) or 'none'}){hint}"
    )


def _check_key(key: str, where: str) -> None:
    """An engine key must be one of the schema's (:func:`simsc.config.check_key`); a key of another
    section (``tracking.experiment``, ``evaluate.max_pairs``) belongs to params.yaml's sections."""
    section, _, name = key.partition(".")
    if section in SECTIONS:
        try:
            check_key(key, where)
        except ConfigError as exc:
            raise SweepSpecError(str(exc)) from None
    elif not name:
        raise SweepSpecError(f"{where}: expected a dotted key such as train.lr_backbone, got {key!r}")


def _validate_engine(engine: Mapping[str, Any], where: str) -> None:
    try:
        load_config(engine_sections(engine))
    except ConfigError as exc:
        raise SweepSpecError(f"{where}: {exc}") from None


def _parse_entry(key: str, value: Any, where: str) -> SearchEntry:
    if not isinstance(value, Mapping) or len(value) != 1:
        raise SweepSpecError(
            f"{where}: expected one of {{{' | '.join(SAMPLERS)}: ...}}, got {value!r} (fixed values go under set:)"
        )
    sampler, values = next(iter(value.items()))
    if sampler not in SAMPLERS:
        raise SweepSpecError(f"{where}: unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if "." not in key:  # a bundle
        if key in SECTIONS:
            raise SweepSpecError(f"{where}: a bundle label must not be a config section name")
        if sampler not in ("grid", "choice") or not isinstance(values, Mapping) or not values:
            raise SweepSpecError(
                f"{where}: a bundle (a label without a dot) needs grid or choice over named "
                "mappings, e.g. {grid: {pfpascal: {data.dataset: pfpascal, data.root: ...}}}"
            )
        bundles = {}
        for label, ov in values.items():
            if not isinstance(ov, Mapping) or not ov:
                raise SweepSpecError(f"{where}.{label}: expected a mapping of dotted keys to values")
            for k in ov:
                _check_key(k, f"{where}.{label}")
            bundles[str(label)] = {k: yaml_number(v) for k, v in ov.items()}
        return SearchEntry(key, sampler, list(bundles), bundles)
    _check_key(key, where)
    if not isinstance(values, list) or not values:
        raise SweepSpecError(f"{where}: {sampler}: expected a non-empty list, got {values!r}")
    if sampler in ("uniform", "loguniform", "randint"):
        values = [yaml_number(v) for v in values]
        if (
            len(values) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            or not values[0] < values[1]
        ):
            raise SweepSpecError(f"{where}: {sampler}: expected [low, high] with low < high, got {values!r}")
        if sampler == "loguniform" and values[0] <= 0:
            raise SweepSpecError(f"{where}: loguniform: low must be > 0, got {values[0]!r}")
    return SearchEntry(key, sampler, [yaml_number(v) for v in values])


def _candidate_overrides(entry: SearchEntry) -> Iterator[dict[str, Any]]:
    """Every candidate of one entry as dotted overrides (the two ends of a range)."""
    if entry.is_bundle:
        for ov in entry.bundles.values():
            yield dict(ov)
    elif entry.sampler == "randint":
        yield {entry.key: entry.values[0]}
        yield {entry.key: entry.values[1] - 1}  # Ray's randint excludes high
    else:
        for v in entry.values:
            yield {entry.key: v}


def _choice(value: Any, allowed: Sequence[str], where: str) -> str:
    if value not in allowed:
        raise SweepSpecError(f"{where}: expected one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SweepSpecError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------
# Trials
# ----------------------------------------------------------------------------------------


def compose(
    engine_base: Mapping[str, Any], overrides: Mapping[str, Any], *, root: str | os.PathLike | None = None
) -> dict[str, Any]:
    """``engine_base`` with dotted ``overrides`` applied (relative paths made absolute)."""
    return compose_data(base=engine_base, overrides=overrides, root=root)


def _sampled(entry: SearchEntry, sample: Mapping[str, Any]) -> Any:
    """An entry's value in one trial's sampled values (Ray's ``config``): dotted keys are nested
    ``{section: {name: value}}``, bundles are ``{label: name}``."""
    if entry.is_bundle:
        return sample.get(entry.key)
    section, name = entry.key.split(".")
    return sample[section][name]


def sample_overrides(spec: SweepSpec, sample: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted overrides of one trial from its sampled values (a bundle: its mapping of keys)."""
    out: dict[str, Any] = {}
    for e in spec.search:
        value = _sampled(e, sample)
        if not e.is_bundle:
            out[e.key] = value
        elif value in e.bundles:
            out.update(e.bundles[value])
        else:
            raise KeyError(f"trial config lacks bundle {e.key!r} (got {value!r})")
    return out


def trial_label(spec: SweepSpec, sample: Mapping[str, Any]) -> str:
    """``temperature=single lr_backbone=2e-05`` for run names and tables."""
    parts = []
    for e in spec.search:
        name, v = e.key.rpartition(".")[2], _sampled(e, sample)
        parts.append(f"{name}={v:.3g}" if isinstance(v, float) else f"{name}={v}")
    return " ".join(parts)


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """Ray Tune's ``param_space``: the search entries as ``tune.grid_search`` / samplers."""
    from ray import tune

    space: dict[str, Any] = {}
    for e in spec.search:
        values = list(e.bundles) if e.is_bundle else e.values
        if e.sampler in ("grid", "choice"):  # over the candidates
            dom = (tune.grid_search if e.sampler == "grid" else tune.choice)(values)
        else:  # uniform, loguniform, randint over [low, high]
            dom = getattr(tune, e.sampler)(*values)
        if e.is_bundle:
            space[e.key] = dom
        else:
            section, name = e.key.split(".")
            space.setdefault(section, {})[name] = dom
    return space


def n_trials(spec: SweepSpec) -> int:
    """Number of trials: product of the grid sizes times ``num_samples``."""
    n = 1
    for e in spec.search:
        if e.sampler == "grid":
            n *= len(e.values)
    return n * spec.num_samples


def expand_grid(spec: SweepSpec) -> list[dict[str, Any]]:
    """The grid trials' dotted overrides, in order (random entries shown as their sampler);
    for ``--dry-run``."""
    grids = [e for e in spec.search if e.sampler == "grid"]
    others = {e.key: f"{e.sampler}{e.values}" for e in spec.search if e.sampler != "grid"}
    out = []
    for _ in range(spec.num_samples):
        for combo in itertools.product(*[list(e.bundles.items()) if e.is_bundle else e.values for e in grids]):
            ov: dict[str, Any] = {}
            for e, v in zip(grids, combo, strict=True):
                if e.is_bundle:
                    ov[e.key] = v[0]
                    ov.update(v[1])
                else:
                    ov[e.key] = v
            ov.update(others)
            out.append(ov)
    return out
