"""Evaluation: PCK reports, per-pair predictions and the beta_eval sweep (paper Fig. 6).

Predictions are made at the dataset's resolution (``256`` or ``"original"``) and compared
in that resolution's pixels against each record's protocol ``threshold`` (theta_img,
theta_kps or theta_bbox at the returned size), with alphas 0.05 / 0.1 / 0.15.

Report layout (JSON, alphas as strings ``"0.05"``, PCK in %)::

    {"per_image": {alpha: pck}, "per_keypoint": {...}, "per_category": {cat: {alpha: pck}},
     "n_pairs", "n_keypoints", "dataset", "split", "resolution", "threshold_kind",
     "beta_eval", "beta_eval_source": "model default" | "manual",
     "beta_eff": {"mean", "std"}}

The sweep computes the score maps of a pair once and applies the kernel soft-argmax at
every ``beta_eval``; it returns one row per value.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence, Sized
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from . import defaults as D
from .io import atomic_write, atomic_write_json
from .model import SimSC
from .pck import DEFAULT_ALPHAS, PCKAccumulator
from .progress import track

if TYPE_CHECKING:
    from .config import EvalConfig

#: Batches between two reads of the predictions from the device (one transfer for all of them).
READ_EVERY_BATCHES = 16

#: Default beta_eval values of the sweep: 13 values log-spaced from 0.005 to 1.
DEFAULT_BETA_SWEEP: tuple[float, ...] = tuple(float(f"{v:.4g}") for v in np.logspace(math.log10(0.005), 0.0, 13))


def alpha_key(alpha: float) -> str:
    """JSON key of an alpha (``0.1`` -> ``"0.1"``)."""
    return f"{alpha:g}"


def collate_with_sizes(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """:func:`~simsc.data.records.collate_pairs` plus ``n_kps``: each record's own keypoint count."""
    from .data.records import collate_pairs

    batch = collate_pairs(records)
    batch["n_kps"] = [int(r["valid"].shape[0]) for r in records]
    return batch


def pair_loader(
    dataset: Dataset,
    batch_size: int = D.EVAL_BATCH_SIZE,
    workers: int = D.WORKERS,
    max_pairs: int | None = None,
    pin_memory: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> DataLoader:
    """A sequential loader over ``dataset`` (the first ``max_pairs`` pairs when given).
    Datasets at ``resolution="original"`` hold images of different sizes: batch size 1.
    ``pin_memory``: page-locked batches, for asynchronous copies to a CUDA device.
    ``shard=(rank, world)``: only rank ``rank``'s contiguous part of those pairs."""
    from .engine.distributed import chunk_bounds

    if getattr(dataset, "resolution", None) == "original":
        batch_size = 1
    if not isinstance(dataset, Sized):
        raise TypeError(f"evaluate: the dataset ({type(dataset).__name__}) must have a length (__len__)")
    n = len(dataset) if max_pairs is None else min(max_pairs, len(dataset))
    start, stop = chunk_bounds(n, *shard)
    if (start, stop) != (0, len(dataset)):
        dataset = Subset(dataset, range(start, stop))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_with_sizes,
        pin_memory=pin_memory,
    )


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


@torch.no_grad()
def score_maps(model: SimSC, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """:meth:`SimSC.score_maps` of a pair batch, unchecked: no value is read on the host (no
    device sync; :func:`_host_copy` checks the predictions once per transfer instead)."""
    return model.score_maps(batch["src_img"], batch["trg_img"], batch["src_kps"], batch["valid"].bool(), check=False)


def localise(model: SimSC, scores: torch.Tensor, beta_eval: float) -> torch.Tensor:
    """:meth:`SimSC.localise` without the finiteness check (a host read)."""
    return model.localise(scores, beta_eval, check=False)


@torch.no_grad()
def predict_batch(
    model: SimSC, batch: dict[str, Any], betas: Sequence[float], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation's inner step: predictions ``[len(betas), B, N, 2]`` (target pixels) and
    ``beta_eff [B]``, left on ``device``: nothing is read on the host."""
    batch = _to(batch, device)
    out = score_maps(model, batch)
    pred = torch.stack([localise(model, out["scores"], b) for b in betas])
    return pred, out["beta_a"] * out["beta_b"]


def _host_copy(pending: list[tuple[dict[str, Any], torch.Tensor, torch.Tensor]]):
    """Move the pending batches' predictions and betas to the host in one transfer, checking
    that they are finite (the check kernel_soft_argmax makes per call, made here once)."""
    if not pending:
        return
    flat = [t.reshape(-1) for _, pred, beta in pending for t in (pred, beta)]
    dtype = torch.promote_types(flat[0].dtype, flat[1].dtype)
    host = iter(torch.cat([t.to(dtype) for t in flat]).cpu().split([t.numel() for t in flat]))
    for batch, pred, beta in pending:
        p, b = next(host).view(pred.shape), next(host).view(beta.shape)
        if not bool(torch.isfinite(p).all()):
            ids = batch.get("pair_id") or []
            raise ValueError(
                f"evaluate: the score maps of pair(s) {', '.join(map(str, ids)) or '?'} contain NaN "
                "or inf (non-finite predictions)"
            )
        yield batch, p, b


def _meta(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch without its images (the pending batches keep only what scoring needs)."""
    return {k: v for k, v in batch.items() if k not in ("src_img", "trg_img")}


def resolve_beta_eval(model: SimSC, beta_eval: float | None) -> tuple[float, str]:
    if beta_eval is None:
        return float(model.temperature.default_beta_eval), "model default"
    beta_eval = float(beta_eval)
    if not beta_eval > 0 or not math.isfinite(beta_eval):
        raise ValueError(f"beta_eval must be a finite number > 0, got {beta_eval}")
    return beta_eval, "manual"


def _dataset_info(dataset: Dataset) -> dict[str, Any]:
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    res = getattr(base, "resolution", None)
    return {
        "dataset": getattr(base, "name", type(base).__name__),
        "split": getattr(base, "split", None),
        "resolution": res,
        "threshold_kind": getattr(base, "threshold_kind", None),
    }


def _json_report(rep: dict[str, Any]) -> dict[str, Any]:
    return {
        "per_image": {alpha_key(a): v for a, v in rep["per_image"].items()},
        "per_keypoint": {alpha_key(a): v for a, v in rep["per_keypoint"].items()},
        "per_category": {c: {alpha_key(a): v for a, v in d.items()} for c, d in rep["per_category"].items()},
        "n_pairs": rep["n_pairs"],
        "n_keypoints": rep["n_keypoints"],
    }


def _beta_stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": float("nan"), "std": float("nan")}
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std())}


def _progress(iterable, progress: bool | str, desc: str, total: int | None = None, every_s: float = 20.0):
    """``progress``: ``False``/``"off"``, ``True``/``"auto"``, ``"bar"`` or ``"log"`` (see :mod:`simsc.progress`)."""
    return track(iterable, progress, desc, total, unit="batch", every_s=every_s)


def _prediction_rows(batch: dict[str, Any], pred: torch.Tensor, beta_eff: torch.Tensor) -> Iterable[dict[str, Any]]:
    n_kps = batch.get("n_kps") or [pred.shape[1]] * pred.shape[0]
    for b, n in enumerate(n_kps):
        yield {
            "pair_id": batch["pair_id"][b] if "pair_id" in batch else str(b),
            "category": batch["category"][b] if "category" in batch else "all",
            "pred": np.round(pred[b, :n].cpu().double().numpy(), 3).tolist(),
            "gt": np.round(batch["trg_kps"][b, :n].cpu().double().numpy(), 3).tolist(),
            "src": np.round(batch["src_kps"][b, :n].cpu().double().numpy(), 3).tolist(),
            "valid": batch["valid"][b, :n].cpu().bool().tolist(),
            "threshold": float(batch["threshold"][b]),
            "beta_eff": float(beta_eff[b]),
        }


def evaluate(
    model: SimSC,
    dataset: Dataset,
    *,
    beta_eval: float | None = None,
    batch_size: int = D.EVAL_BATCH_SIZE,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    workers: int = D.WORKERS,
    max_pairs: int | None = None,
    predictions: str | os.PathLike | list | None = None,
    progress: bool | str = D.PROGRESS,
    device: str | torch.device | None = None,
    progress_every_s: float = D.PROGRESS_EVERY_S,
    shard: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """PCK report of ``model`` on ``dataset`` (see the module docstring for the layout).

    ``beta_eval=None`` uses the model's default (1 for learned temperatures, 0.02 for the
    ``fixed:1`` baseline / untrained backbones). ``predictions``: a JSON-lines path or a list
    that receives one row per pair (pair_id, category, pred, gt, src, valid, threshold,
    beta_eff). The model's train/eval mode is left as it was. ``progress``: see :func:`_progress`.

    The loop reads nothing back per batch: predictions stay on the device and move to the
    host every :data:`READ_EVERY_BATCHES` batches in one transfer.

    ``shard=(rank, world)``: every rank of a process group calls this, scores its contiguous
    part of the pairs and receives the report of all of them: the per-pair hit counts are
    gathered in the pairs' order and reduced once, so the numbers equal one process's.
    """
    beta, source = resolve_beta_eval(model, beta_eval)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    acc = PCKAccumulator(alphas)
    betas: list[float] = []
    rows: list[dict[str, Any]] = []
    sink, commit = _open_sink(predictions)
    final_sink = sink
    if shard is not None and shard[1] > 1:
        if sink is not None:
            sink = rows.append  # gathered below, written by rank 0
        if shard[0] != 0:
            final_sink = commit = None
    else:
        shard = None

    def score(pending):
        for batch, pred, beta_eff in _host_copy(pending):
            pred = pred[0]
            acc.update(pred, batch["trg_kps"], batch["threshold"], batch["valid"], batch.get("category"))
            betas.extend(beta_eff.double().tolist())
            if sink is not None:
                for row in _prediction_rows(batch, pred, beta_eff):
                    sink(row)
        pending.clear()

    loader = pair_loader(dataset, batch_size, workers, max_pairs, device.type == "cuda", shard or (0, 1))
    pending: list = []
    for batch in _progress(loader, progress, "evaluate", len(loader), progress_every_s):
        pred, beta_eff = predict_batch(model, batch, [beta], device)
        pending.append((_meta(batch), pred, beta_eff))
        if len(pending) >= READ_EVERY_BATCHES:
            score(pending)
    score(pending)
    if shard is not None:
        from .engine.distributed import gather_objects

        parts = gather_objects((acc.pairs, betas, rows))
        acc = PCKAccumulator(alphas)
        betas = []
        for pairs, part_betas, part_rows in parts:
            acc.extend(pairs)
            betas.extend(part_betas)
            if final_sink is not None:
                for row in part_rows:
                    final_sink(row)
    if commit is not None:
        commit()
    report = _json_report(acc.report())
    report.update(_dataset_info(dataset))
    report.update(
        {
            "alphas": [float(a) for a in alphas],
            "beta_eval": beta,
            "beta_eval_source": source,
            "beta_eff": _beta_stats(betas),
            "temperature": getattr(model.temperature, "name", ""),
        }
    )
    return report


def _open_sink(predictions):
    """A row sink for ``predictions``, and for a path the callable that writes the file once
    the evaluation succeeded (atomically: an interrupted run leaves no partial file)."""
    if predictions is None:
        return None, None
    if isinstance(predictions, list):
        return predictions.append, None
    path = Path(predictions)
    lines: list[str] = []

    def write(row):
        lines.append(json.dumps(row) + "\n")

    def commit():
        atomic_write(path, lambda f: f.write("".join(lines).encode("utf-8")))

    return write, commit


def beta_sweep(
    model: SimSC,
    dataset: Dataset,
    betas: Sequence[float] = DEFAULT_BETA_SWEEP,
    *,
    batch_size: int = D.EVAL_BATCH_SIZE,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    workers: int = D.WORKERS,
    max_pairs: int | None = None,
    progress: bool | str = D.PROGRESS,
    device: str | torch.device | None = None,
    progress_every_s: float = D.PROGRESS_EVERY_S,
) -> dict[str, Any]:
    """PCK as a function of ``beta_eval`` (paper Fig. 6 as data), features computed once a pair.

    Returns ``{"rows": [{"beta_eval", "per_image", "per_keypoint"}...], "best": row with the
    highest per-image PCK@0.1 (or the middle alpha), "n_pairs", dataset info, "beta_eff"}``.
    """
    betas = [resolve_beta_eval(model, b)[0] for b in betas]
    if not betas:
        raise ValueError("beta_sweep: give at least one beta_eval value")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    accs = [PCKAccumulator(alphas) for _ in betas]
    beta_effs: list[float] = []
    loader = pair_loader(dataset, batch_size, workers, max_pairs, pin_memory=device.type == "cuda")

    def score(pending):
        for batch, preds, beta_eff in _host_copy(pending):
            beta_effs.extend(beta_eff.double().tolist())
            for acc, pred in zip(accs, preds, strict=True):
                acc.update(pred, batch["trg_kps"], batch["threshold"], batch["valid"], batch.get("category"))
        pending.clear()

    pending: list = []
    for batch in _progress(loader, progress, "beta sweep", len(loader), progress_every_s):
        preds, beta_eff = predict_batch(model, batch, betas, device)
        pending.append((_meta(batch), preds, beta_eff))
        if len(pending) >= READ_EVERY_BATCHES:
            score(pending)
    score(pending)
    rows = []
    for acc, beta in zip(accs, betas, strict=True):
        rep = _json_report(acc.report())
        rows.append({"beta_eval": beta, "per_image": rep["per_image"], "per_keypoint": rep["per_keypoint"]})
    key = alpha_key(0.1 if 0.1 in alphas else alphas[len(alphas) // 2])
    best = max(rows, key=lambda r: r["per_image"][key])
    result = {"rows": rows, "best": {"alpha": key, **best}, "n_pairs": rows and accs[0].report()["n_pairs"]}
    result.update(_dataset_info(dataset))
    result.update(
        {
            "alphas": [float(a) for a in alphas],
            "beta_eff": _beta_stats(beta_effs),
            "model_default_beta_eval": float(model.temperature.default_beta_eval),
        }
    )
    return result


def eval_dataset(
    ev: EvalConfig,
    name: str,
    root: str | Path,
    *,
    split: str | None = None,
    resolution: int | str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
    """The dataset an evaluation reads: ``split`` and ``resolution`` default to the
    ``eval`` section's (``simsc evaluate`` and the DVC evaluate stage both build it here)."""
    from .data.records import parse_resolution
    from .data.registry import build_dataset

    res = parse_resolution(resolution if resolution is not None else ev.resolution)
    return build_dataset(name, root, split or ev.split, res, cache_dir=cache_dir)


def checkpoint_resolution(cfg: Any) -> int | str:
    """The resolution a checkpoint is evaluated at by default: its ``eval.resolution`` when the
    config sets one (not the schema's default), else the size it was trained at
    (``data.resolution``). A checkpoint of the DVC train stage never carries an ``eval`` section
    (the evaluate stage owns it), so this is its training resolution: a model trained at 160 px
    is evaluated at 160 px, not at the schema's 256."""
    if cfg.eval.resolution != D.RESOLUTION:
        return cfg.eval.resolution
    return cfg.data.resolution


def sweep_betas(ev: EvalConfig, betas: Sequence[float] | None = None) -> list[float]:
    """The beta_eval values of a sweep: ``betas`` if given, else the ``eval`` section's (when
    set and not empty), else :data:`DEFAULT_BETA_SWEEP`."""
    if betas is not None:
        return [float(b) for b in betas]
    return list(ev.beta_sweep) if ev.beta_sweep else list(DEFAULT_BETA_SWEEP)


def evaluate_to_files(
    model: SimSC,
    dataset: Dataset,
    report_path: str | os.PathLike,
    predictions_path: str | os.PathLike,
    *,
    beta_eval: float | None = None,
    batch_size: int = D.EVAL_BATCH_SIZE,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    workers: int = D.WORKERS,
    max_pairs: int | None = None,
    progress: bool | str = D.PROGRESS,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`evaluate`, then write its report (JSON, with the ``extra`` entries appended) to
    ``report_path`` and the per-pair predictions (JSON lines) to ``predictions_path``, each
    atomically. Returns the report. The one evaluation behind ``simsc evaluate`` and the DVC
    evaluate stage, so that both write the same numbers for the same model and data."""
    report = evaluate(
        model,
        dataset,
        beta_eval=beta_eval,
        batch_size=batch_size,
        alphas=alphas,
        workers=workers,
        max_pairs=max_pairs,
        predictions=predictions_path,
        progress=progress,
    )
    report.update(extra or {})
    atomic_write_json(report_path, report, indent=2)
    return report


#: Alias for package-level export (``simsc.evaluate_model``) without shadowing this module.
evaluate_model = evaluate
