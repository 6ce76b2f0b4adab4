"""DVC stage entry points: thin wrappers that read ``params.yaml`` and call the library.

``python -m pipeline.stages <stage>``; each stage reads only its own sections of
``params.yaml``, so DVC's ``params:`` declarations in ``dvc.yaml`` are exact.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from simsc.errors import ArgumentParser, UserError, add_debug_flag, run_main

PARAMS = Path("params.yaml")


def load_params(path: Path = PARAMS) -> dict[str, Any]:
    """``params.yaml`` as a mapping; :class:`UserError` naming the file when it is not one."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: not found (run the stages from the project root)") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(params, dict):
        raise UserError(f"{path}: expected a mapping of stage sections")
    return params


def _section(params: dict[str, Any], name: str, keys: Sequence[str]) -> dict[str, Any]:
    sec = params.get(name)
    if not isinstance(sec, dict):
        raise UserError(f"params.yaml: missing section {name!r}")
    missing = [k for k in keys if k not in sec]
    if missing:
        raise UserError(f"params.yaml: section {name!r} lacks {missing}")
    return sec


def tracking_section(params: dict[str, Any]) -> dict[str, Any]:
    """The ``tracking`` section, checked: a mapping whose ``enabled`` is a YAML boolean."""
    tracking = params.get("tracking")
    if tracking is None:
        return {}
    if not isinstance(tracking, dict):
        raise UserError(f"params.yaml: tracking must be a mapping (enabled, experiment, registered_model), "
                        f"got {tracking!r}")
    enabled = tracking.get("enabled", False)
    if not isinstance(enabled, bool):
        raise UserError(f"params.yaml: tracking.enabled must be true or false, got {enabled!r}")
    for key in ("experiment", "registered_model"):
        if tracking.get(key) is not None and not isinstance(tracking[key], str):
            raise UserError(f"params.yaml: tracking.{key} must be a string or null, got {tracking[key]!r}")
    return tracking


def stage_download(params: dict[str, Any]) -> None:
    """Materialise the data set: generate the embedded set, or download an official one."""
    data = _section(params, "data", ["dataset", "root"])
    if data["dataset"] == "embedded":
        from simsc.data.embedded import build_embedded_dataset

        emb = _section(params, "embedded", ["seed", "n_train", "n_val", "n_test"])
        build_embedded_dataset(
            data["root"], seed=emb["seed"], n_train=emb["n_train"], n_val=emb["n_val"], n_test=emb["n_test"]
        )
    else:
        from simsc.data.download import download_dataset

        download_dataset(data["dataset"], Path(data["root"]).parent)


def stage_preprocess(params: dict[str, Any]) -> None:
    """Decode and resize every image of every split once into the cache."""
    from simsc.data.cache import build_cache
    from simsc.data.registry import build_dataset

    data = _section(params, "data", ["dataset", "root"])
    pre = _section(params, "preprocess", ["cache_dir", "resolutions", "splits"])
    summary = []
    for resolution in pre["resolutions"]:
        for split in pre["splits"]:
            ds = build_dataset(data["dataset"], data["root"], split, resolution, cache_dir=pre["cache_dir"])
            info = build_cache(ds, show_progress=True)
            summary.append({"split": split, "resolution": resolution, "images": info["images"]})
    Path(pre["cache_dir"], "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


ENGINE_SECTIONS = ("model", "data", "train")
PLOTS_DIR = Path("reports/train")
EVAL_DIR = Path("reports/eval")


def engine_config(params: dict[str, Any]):
    """The training config: the ``model``, ``data`` and ``train`` sections of params.yaml.

    ``eval`` is left to its defaults here on purpose, so that evaluation settings do not
    invalidate the trained model (the evaluate stage reads ``eval`` and ``evaluate``).
    """
    from simsc.config import load_config

    return load_config({k: params[k] for k in ENGINE_SECTIONS if k in params})


def stage_train(params: dict[str, Any]) -> None:
    """Train with the MLflow callback (when ``tracking.enabled``) and export the plot data."""
    from simsc.engine.trainer import resolve_device, train

    cfg = engine_config(params)
    resolve_device(cfg.train.device, "params.yaml: train.device")  # before anything is built
    callbacks = []
    tracking = tracking_section(params)
    if tracking.get("enabled", False):
        from .tracking import MlflowCallback

        callbacks.append(MlflowCallback(cfg, cfg.train.out_dir, experiment=tracking.get("experiment"),
                                        registered_model=tracking.get("registered_model")))
    summary = train(cfg, callbacks=callbacks)
    export_train_plots(Path(cfg.train.out_dir) / "metrics.jsonl", PLOTS_DIR)
    print(json.dumps(summary, indent=2))


def export_train_plots(metrics: Path, out_dir: Path) -> None:
    """metrics.jsonl -> ``steps.csv`` (loss, betas, lr per step) and ``val_pck.csv`` (per epoch)."""
    import csv

    out_dir.mkdir(parents=True, exist_ok=True)
    steps, epochs = [], []
    for line in metrics.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec.get("type") == "step":
            steps.append({"step": rec["step"], "loss": rec["loss"], "beta_a": rec["beta_a_mean"],
                          "beta_b": rec["beta_b_mean"], "beta_eff": rec["beta_eff_mean"],
                          "lr_backbone": rec.get("lr_backbone")})
        elif rec.get("type") == "epoch":
            row = {"epoch": rec["epoch"], "step": rec["step"]}
            row.update({f"pck@{a}": v for a, v in rec["val"]["per_image"].items()})
            epochs.append(row)
    for name, rows in (("steps.csv", steps), ("val_pck.csv", epochs)):
        with open(out_dir / name, "w", newline="", encoding="utf-8") as fh:
            fields = list(rows[0]) if rows else ["step"]
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)


def stage_evaluate(params: dict[str, Any], name: str) -> None:
    """Evaluate the best checkpoint on one evaluation set of ``evaluate.sets``.

    Writes ``reports/eval/<name>/``: ``report.json`` (the full PCK report),
    ``pck.json`` (the DVC metrics), ``pck_vs_alpha.json`` and ``pck_vs_beta.json`` (plots),
    ``predictions.jsonl``.
    """
    from simsc.config import EvalConfig, load_config
    from simsc.data.records import parse_resolution
    from simsc.data.registry import build_dataset
    from simsc.engine.checkpoint import load_model
    from simsc.evaluate import beta_sweep, evaluate

    ev_sec = _section(params, "evaluate", ["sets"])
    sets = ev_sec["sets"]
    if name not in sets:
        raise UserError(f"params.yaml: evaluate.sets has no entry {name!r} (known: {', '.join(sets)})")
    spec = sets[name]
    ev: EvalConfig = load_config({"eval": params.get("eval") or {}}).eval
    train_sec = _section(params, "train", ["out_dir"])
    ckpt = Path(train_sec["out_dir"]) / "checkpoints" / "best.pt"
    model, _, _ = load_model(ckpt)
    cache_dir = (params.get("preprocess") or {}).get("cache_dir")
    resolution = parse_resolution(spec.get("resolution", ev.resolution))
    dataset = build_dataset(spec["dataset"], spec["root"], spec.get("split", ev.split), resolution,
                            cache_dir=cache_dir)
    out = EVAL_DIR / name
    out.mkdir(parents=True, exist_ok=True)
    max_pairs = ev_sec.get("max_pairs")
    report = evaluate(model, dataset, beta_eval=ev.beta_eval, batch_size=ev.batch_size, alphas=ev.alphas,
                      max_pairs=max_pairs, predictions=out / "predictions.jsonl")
    report["name"] = name
    report["checkpoint"] = str(ckpt)
    _write_json(out / "report.json", report)
    _write_json(out / "pck.json", {"pck": report["per_image"], "pck_keypoint": report["per_keypoint"],
                                   "n_pairs": report["n_pairs"], "beta_eval": report["beta_eval"],
                                   "beta_eff_mean": report["beta_eff"]["mean"]})
    _write_json(out / "pck_vs_alpha.json",
                [{"alpha": float(a), "pck": v} for a, v in report["per_image"].items()])
    rows = []
    sweep_on = ev_sec.get("sweep", True)
    if sweep_on is True or (isinstance(sweep_on, list) and name in sweep_on):
        from simsc.evaluate import DEFAULT_BETA_SWEEP

        betas = ev.beta_sweep or list(DEFAULT_BETA_SWEEP)
        sweep = beta_sweep(model, dataset, betas, batch_size=ev.batch_size, alphas=ev.alphas, max_pairs=max_pairs)
        rows = [{"beta_eval": r["beta_eval"], **{f"pck@{a}": v for a, v in r["per_image"].items()}}
                for r in sweep["rows"]]
    _write_json(out / "pck_vs_beta.json", rows)
    pck = ", ".join(f"PCK@{a} {v:.2f}" for a, v in report["per_image"].items())
    print(f"{name}: {report['n_pairs']} pairs, {pck}")


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def stage_report(params: dict[str, Any]) -> None:
    from .report import build_report

    build_report(params)


STAGES = {"download": stage_download, "preprocess": stage_preprocess, "train": stage_train,
          "evaluate": stage_evaluate, "report": stage_report}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one stage under the error contract of :mod:`simsc.errors` (user error: exit 2)."""
    parser = ArgumentParser(prog="python -m pipeline.stages", description=__doc__)
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("name", nargs="?", help="evaluate: the entry of evaluate.sets")
    parser.add_argument("--params", type=Path, default=PARAMS)
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.stage == "evaluate" and not args.name:
        parser.error("evaluate needs the name of an evaluate.sets entry")

    def body() -> int:
        params = load_params(args.params)
        if args.stage == "evaluate":
            stage_evaluate(params, args.name)
        else:
            STAGES[args.stage](params)
        return 0

    return run_main(f"pipeline.stages {args.stage}", body, debug=args.debug, user_errors=_user_error_types())


def _user_error_types() -> tuple[type[BaseException], ...]:
    # A failed download is fixed by the user (network, mirror, a file placed by hand).
    from simsc.data.download import DownloadError

    return (DownloadError,)


if __name__ == "__main__":
    sys.exit(main())
