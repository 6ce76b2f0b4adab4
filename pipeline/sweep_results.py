"""A finished sweep's outputs: the results table (CSV + Markdown) and the best parameters.

``rows_from_results`` turns Ray Tune's ``ResultGrid`` into one plain row per trial;
``write_results`` writes ``results.csv`` / ``results.md``; ``best_params`` gives the best
trial's configuration as a parameter set (apply it with
``python -m pipeline.paramset FILE --apply`` then ``dvc exp run``, or pass the printed
``-S`` flags to ``dvc exp run``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

# A trial trains with the train stage's sections (model, data, train): what its PCK measured.
# Other keys of a spec's ``set`` (e.g. ``eval.*``, which trials never read) are not handed to
# DVC as if the sweep had tuned them.
from simsc.config import TRAIN_SECTIONS as TRIAL_SECTIONS
from simsc.config import engine_sections, load_config
from simsc.io import atomic_write_bytes, read_yaml_mapping

from .stage_common import STAGE_PARAMS
from .sweep_spec import SweepSpec, compose, sample_overrides, trial_label

STATUS_COMPLETED = "completed"
STATUS_STOPPED = "stopped early"
STATUS_ERROR = "error"
STATUS_DIVERGED = "diverged"


def _trial_epochs(spec: SweepSpec, overrides: Mapping[str, Any]) -> int:
    return int(load_config(compose(spec.engine_base(), overrides)).train.epochs)


def rows_from_results(results, spec: SweepSpec) -> list[dict[str, Any]]:
    """One row per trial of a Ray ``ResultGrid`` (sorted best first by ``best_val_pck``)."""
    rows = []
    for res in results:
        metrics = dict(res.metrics or {})
        config = res.config or {}
        overrides = sample_overrides(spec, config)
        trial_id = metrics.get("trial_id") or Path(str(res.path)).name
        epochs = _trial_epochs(spec, overrides)
        done = int(metrics.get("epochs_done") or 0)
        if res.error is not None or metrics.get("user_error"):
            status = STATUS_ERROR
        elif metrics.get("diverged"):
            status = STATUS_DIVERGED
        elif done >= epochs:
            status = STATUS_COMPLETED
        else:
            status = STATUS_STOPPED
        history = res.metrics_dataframe
        val_hist = []
        if history is not None and "val_pck" in history:
            # the divergence report repeats the last validation: one value per epoch
            flags = history["diverged"] if "diverged" in history else [False] * len(history)
            val_hist = [float(v) for v, d in zip(history["val_pck"], flags, strict=True) if not _is_true(d)]
        row: dict[str, Any] = {"trial_id": trial_id, "label": trial_label(spec, config), "status": status}
        row.update(overrides)
        row.update(
            {
                "epochs_done": done,
                "epochs": epochs,
                "best_val_pck": metrics.get("best_val_pck"),
                "val_pck_last": metrics.get("val_pck"),
                **{k: v for k, v in metrics.items() if k.startswith("val_pck@")},
                "val_beta_eff": metrics.get("val_beta_eff"),
                "beta_eff_last_step": metrics.get("beta_eff"),
                "val_pck_history": json.dumps([round(v, 3) for v in val_hist]),
                "trial_starts": metrics.get("trial_starts"),
                "error": (
                    _error_line(res.error)
                    if res.error is not None
                    else str(metrics.get("user_error") or metrics.get("diverged_reason") or "")
                ),
            }
        )
        row["_overrides"] = overrides
        row["_checkpoint"] = res.checkpoint or _train_checkpoint(metrics.get("checkpoint_path"))
        row["_path"] = str(res.path)
        rows.append(row)
    rows.sort(key=lambda r: (r["best_val_pck"] is None, -(r["best_val_pck"] or 0.0)))
    return rows


def _train_checkpoint(path: Any):
    """A multi-worker trial's newest checkpoint: Ray Train keeps it in its own storage and
    Tune's result carries only its path (``checkpoint_path``)."""
    if not isinstance(path, str) or not path:
        return None
    from ray.train import Checkpoint

    if "://" in path:
        import pyarrow.fs

        fs, inner = pyarrow.fs.FileSystem.from_uri(path)
        return Checkpoint(inner, filesystem=fs)
    return Checkpoint(path) if Path(path).exists() else None


def _error_line(error: BaseException) -> str:
    """The exception's own line (Ray wraps it: the first lines name the actor, not the cause)."""
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


def _is_true(value: Any) -> bool:
    """True for ``True`` / ``numpy.True_``; False for False, NaN (a column absent in a report)."""
    return value is True or (hasattr(value, "item") and value.item() is True)


def public(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k in public(r):
            if k not in cols:
                cols.append(k)
    return cols


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-2 and v != 0 else f"{v:.2f}"
    return str(v)


def results_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    cols = _columns(rows)
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in public(r).items()})
    return buf.getvalue()


def results_markdown(
    rows: Sequence[Mapping[str, Any]],
    spec: SweepSpec,
    best_flags: str | None = None,
    left_out: Mapping[str, str] | None = None,
) -> str:
    skip = {"val_pck_history", "error", "label"}
    cols = [c for c in _columns(rows) if c not in skip]
    lines = [f"# Sweep `{spec.name}`" + (f" (profile {spec.profile})" if spec.profile else ""), ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    lines += [
        f"{len(rows)} trials; metric `{spec.metric}` = validation PCK@{spec.engine_config().train.best_alpha} "
        f"(per image), best over each trial's epochs.",
        "",
    ]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(public(r).get(c)) for c in cols) + " |" for r in rows]
    errors = [r for r in rows if r.get("error")]
    if errors:
        lines += ["", "Errors:", ""] + [f"- {r['trial_id']}: {r['error']}" for r in errors]
    if best_flags:
        lines += ["", "Best configuration as a DVC experiment:", "", "```", best_flags, "```"]
    if left_out:
        lines += ["", "Keys of the sweep not passed to DVC:", ""]
        lines += [f"- `{k}`: {why}" for k, why in left_out.items()]
    return "\n".join(lines) + "\n"


def best_row(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    ok = [r for r in rows if r["status"] != STATUS_ERROR and r["best_val_pck"] is not None]
    return max(ok, key=lambda r: r["best_val_pck"]) if ok else None


def is_declared(key: str) -> bool:
    """Whether some DVC stage reads the params.yaml ``key`` (or its section): its ``params:`` in
    ``dvc.yaml``, :data:`pipeline.stage_common.STAGE_PARAMS`."""
    return any(key == d or key.startswith(d + ".") for keys in STAGE_PARAMS.values() for d in keys)


def _trial_keys(spec: SweepSpec, row: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The dotted keys the sweep set for the best trial (``set``, its sampled values and a fresh
    ``train.out_dir``) that a trial reads and a stage declares, and the others with the reason."""
    # train.out_dir stays params.yaml's (runs/default): DVC keeps each experiment's outputs
    # itself, and a new folder made dvc exp run remove runs/default from the workspace and
    # warn "No file hash info found" for the folder dvc.lock does not know yet.
    keys = {**spec.set, **row["_overrides"]}
    kept, dropped = {}, {}
    for k, v in keys.items():
        if k == "train.seed" and k in row["_overrides"]:
            dropped[k] = "searched seeds are replicates: the best trial's seed is luck, not a setting"
        elif k.split(".")[0] not in TRIAL_SECTIONS:
            dropped[k] = "sweep trials do not read it"
        elif not is_declared(k):
            dropped[k] = "no DVC stage declares it (dvc.yaml params)"
        else:
            kept[k] = v
    return kept, dropped


def trial_config(spec: SweepSpec, keys: Mapping[str, Any]) -> dict[str, Any]:
    """The engine config of the trial keys (:func:`_trial_keys`) as plain values (paths as the
    spec wrote them): the sweep's base with those keys; ``eval`` stays the base's (trials never
    read it)."""
    return load_config(compose(engine_sections(spec.params_raw), keys)).to_dict()


def handoff(spec: SweepSpec, row: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The ``dvc exp run -S`` keys of the best trial: every key of the trained sections whose
    value differs from the project's ``params.yaml`` (the base files of a toy profile and the
    sweep's ``set`` included), and the sweep keys left out, with the reason."""
    keys, dropped = _trial_keys(spec, row)
    trial = trial_config(spec, keys)
    params_file = Path(spec.root) / "params.yaml"
    raw = read_yaml_mapping(params_file, what="params file", error=ValueError) if params_file.is_file() else {}
    now = load_config(engine_sections(raw)).to_dict()
    kept = {
        f"{section}.{key}": value
        for section in TRIAL_SECTIONS
        for key, value in trial[section].items()
        if now[section][key] != value and (section, key) != ("train", "out_dir")
    }
    kept.update(_follow_resolution(raw, now["data"]["resolution"], trial["data"]["resolution"]))
    kept["tracking.registered_model"] = registered_name(spec)
    return kept, dropped


def registered_name(spec: SweepSpec) -> str:
    """The registered model a sweep's hand-off trains into: its own, not the default run's."""
    return f"simsc-sweep-{spec.name}"


def _follow_resolution(params: Mapping[str, Any], old: int, new: int) -> dict[str, Any]:
    """When the best trial trained at another size than params.yaml's ``data.resolution``: the
    evaluation sets at the old size evaluate at the new one (and the preprocess stage caches
    it), so the model is evaluated at the resolution it was trained at."""
    if old == new:
        return {}
    out: dict[str, Any] = {}
    for name, entry in ((params.get("evaluate") or {}).get("sets") or {}).items():
        if isinstance(entry, Mapping) and entry.get("resolution") == old:
            out[f"evaluate.sets.{name}.resolution"] = new
    sizes = list((params.get("preprocess") or {}).get("resolutions") or [])
    if out and new not in sizes:
        out["preprocess.resolutions"] = [new if r == old else r for r in sizes] if old in sizes else [new, *sizes]
    return out


def best_params(spec: SweepSpec, row: Mapping[str, Any]) -> dict[str, Any]:
    """The best trial as a parameter set: its engine sections as differences from the schema's
    defaults. ``python -m pipeline.paramset FILE --apply``
    makes params.yaml train exactly this configuration."""
    trial = trial_config(spec, _trial_keys(spec, row)[0])
    defaults = load_config().to_dict()
    out = {
        section: {k: v for k, v in values.items() if v != defaults[section][k] and (section, k) != ("train", "out_dir")}
        for section, values in trial.items()
    }
    return {section: values for section, values in out.items() if values}


def dvc_flags(spec: SweepSpec, row: Mapping[str, Any]) -> str:
    """``dvc exp run -S '++key=value' ...`` for the keys of :func:`handoff` (``++``: add the key
    when params.yaml leaves it to its default, override it otherwise)."""
    return format_dvc_flags(handoff(spec, row)[0])


def format_dvc_flags(keys: Mapping[str, Any]) -> str:
    """``dvc exp run -S '++key=value' ...`` for dotted ``keys`` (values written as YAML, as DVC reads them)."""
    flags = " ".join(
        f"-S '++{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}'"
        for k, v in keys.items()
    )
    return f"dvc exp run {flags}"


def write_results(out_dir: Path, spec: SweepSpec, rows: list[dict[str, Any]]) -> dict[str, Path]:
    """Write results.csv, results.md and (when a trial succeeded) best_params.yaml atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "results.csv", "md": out_dir / "results.md"}
    best = best_row(rows)
    flags, left_out = None, None
    if best is not None:
        params = best_params(spec, best)
        header = (
            f"# Best trial {best['trial_id']} of sweep {spec.name} ({best['label']}): "
            f"best val PCK {best['best_val_pck']:.2f}\n"
            f"# Its engine config as differences from the schema defaults (results.md lists sweep keys left out).\n"
            f"# Use: python -m pipeline.paramset {out_dir / 'best_params.yaml'} --apply && "
            f"dvc exp run -S 'tracking.registered_model={registered_name(spec)}'\n"
        )
        paths["best_params"] = out_dir / "best_params.yaml"
        atomic_write_bytes(paths["best_params"], (header + yaml.safe_dump(params, sort_keys=False)).encode())
        kept, left_out = handoff(spec, best)
        flags = format_dvc_flags(kept)
    atomic_write_bytes(paths["csv"], results_csv(rows).encode())
    atomic_write_bytes(paths["md"], results_markdown(rows, spec, flags, left_out).encode())
    return paths
