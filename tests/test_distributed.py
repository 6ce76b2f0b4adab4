"""Data-parallel training on CPU (gloo, real processes): an N-rank run is the 1-rank run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from simsc.engine import load_checkpoint, train
from simsc.engine.distributed import chunk_bounds, global_share, local_batches
from simsc.engine.toy import ToyTranslationPairs
from tests.test_train import tiny_config

REPO = Path(__file__).resolve().parents[1]


def test_chunks_cover_the_batch_in_order_and_differ_by_at_most_one():
    for n in range(0, 12):
        for world in (1, 2, 3, 5):
            bounds = [chunk_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
            sizes = [b - a for a, b in bounds]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_local_batches_split_each_global_batch_and_stand_in_with_weight_zero():
    order = [7, 3, 9, 1, 4, 0, 2]  # batch 3: [7 3 9] [1 4 0] [2]
    r0 = local_batches(order, 3, 0, 2)
    r1 = local_batches(order, 3, 1, 2)
    assert r0 == [([7, 3], 2, 3), ([1, 4], 2, 3), ([2], 1, 1)]
    # rank 1 has no pair of the last batch: it re-reads the batch's first pair, weight 0
    assert r1 == [([9], 1, 3), ([0], 1, 3), ([2], 0, 1)]
    assert [global_share(n, g, 2) for _, n, g in r1] == [2 / 3, 2 / 3, 0.0]
    # the shares' weights sum to the world size: DDP's average is the global mean
    for (_, a, g), (_, b, _) in zip(r0, r1, strict=True):
        assert global_share(a, g, 2) + global_share(b, g, 2) == pytest.approx(2.0)


def _config(out_dir, devices, **train):
    """:func:`tests.test_train.tiny_config` for one epoch on ``devices`` ranks, one thread each,
    validated on every pair."""
    return tiny_config(out_dir, **{"epochs": 1, "val_max_pairs": None, "devices": devices, "num_threads": 1, **train})


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_weights(a: Path, b: Path) -> None:
    """The two checkpoints hold the same weights up to the order of the gradient sums.

    Adam divides each gradient by its own running RMS, so an element whose gradient is ~0 moves
    by up to ``lr`` on rounding noise alone (seen: 329 of 2.9M elements, in one conv, differing by
    1.3e-4 at lr 1e-3, with every logged loss equal to 1e-5). A wrong share or average moves
    every element: the check is on the whole net and on how many elements differ."""
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert wa.keys() == wb.keys()
    diff_sq = norm_sq = 0.0
    off = total = 0
    for k in wa:
        a_k = wa[k].double()
        d = a_k - wb[k].double()
        diff_sq += float((d**2).sum())
        norm_sq += float((a_k**2).sum())
        off += int((d.abs() > 1e-6).sum())
        total += d.numel()
    rel = (diff_sq / norm_sq) ** 0.5
    print(f"weights: relative difference {rel:.3g}, {off} of {total} elements off by > 1e-6")
    assert rel < 5e-5
    assert off / total < 1e-3


@pytest.fixture(scope="module")
def toy():
    # 19 pairs, batch 4: 5 steps, the last a batch of 3 (2 + 1 pairs on two ranks); 5 val pairs
    return ToyTranslationPairs(19, 64, seed=0), ToyTranslationPairs(5, 64, seed=1, split="val")


@pytest.mark.slow
def test_two_ranks_of_two_pairs_equal_one_rank_of_four(tmp_path, toy):
    trn, val = toy
    one, two = tmp_path / "one", tmp_path / "two"
    train(_config(one, 1), train_dataset=trn, val_dataset=val)
    summary = train(_config(two, 2), train_dataset=trn, val_dataset=val)
    a, b = _records(one), _records(two)
    steps_a = [r for r in a if r["type"] == "step"]
    steps_b = [r for r in b if r["type"] == "step"]
    assert [r["step"] for r in steps_b] == [1, 2, 3, 4, 5]
    for ra, rb in zip(steps_a, steps_b, strict=True):
        for key in ("loss", "ce", "reg", "beta_a_mean", "beta_b_mean", "beta_eff_mean", "beta_a_std"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-7), (rb["step"], key)
    _assert_same_weights(one / "checkpoints" / "last.pt", two / "checkpoints" / "last.pt")
    # validation on 5 pairs (3 + 2 on two ranks): the same numbers, from summed counts
    ea = next(r for r in a if r["type"] == "epoch")
    eb = next(r for r in b if r["type"] == "epoch")
    assert eb["val"]["n_pairs"] == 5
    assert eb["val"]["per_image"] == pytest.approx(ea["val"]["per_image"], abs=1e-9)
    assert eb["val"]["per_keypoint"] == pytest.approx(ea["val"]["per_keypoint"], abs=1e-9)
    # rank 0 alone wrote the run folder: the files of a one-rank run, nothing else
    files = sorted(str(p.relative_to(two)) for p in two.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(one)) for p in one.rglob("*") if p.is_file())
    assert summary["step"] == 5 and (two / "summary.json").exists()
    assert torch.get_num_threads() >= 1  # the caller's thread setting is restored (no crash on exit)


@pytest.mark.slow
def test_a_two_rank_checkpoint_resumes_on_one_rank(tmp_path, toy):
    """The rule: the data order is global (it does not depend on the rank count), so a run
    checkpointed on N ranks resumes on M: the same pairs at every step, the same numbers up to
    the order of the gradient sums (bit-exact only on the same N)."""
    trn, val = toy
    ref, run = tmp_path / "ref", tmp_path / "run"
    train(_config(ref, 2), train_dataset=trn, val_dataset=val)
    train(_config(run, 2, max_steps=3, checkpoint_every_steps=1), train_dataset=trn, val_dataset=val)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 3
    summary = train(_config(run, 1), train_dataset=trn, val_dataset=val, resume=True)
    assert summary["resumed_from_step"] == 3 and summary["step"] == 5
    steps = [r["step"] for r in _records(run) if r["type"] == "step"]
    assert steps == [1, 2, 3, 4, 5]
    _assert_same_weights(ref / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")


#: The CLI runs of these tests: a tiny random-init resnet18 on 2 CPU ranks, a checkpoint a step.
CLI_SETTINGS = (
    "data.dataset=embedded",
    "data.resolution=64",
    "data.batch_size=4",
    "model.backbone=resnet18",
    "model.pretrained=false",
    "model.finetune=all",
    "train.device=cpu",
    "train.devices=2",
    "train.val_max_pairs=2",
    "train.checkpoint_every_steps=1",
    "train.num_threads=1",
)


def _cli(out: Path, data: Path, *extra: str) -> list[str]:
    sets = [arg for kv in (f"data.root={data}", *CLI_SETTINGS) for arg in ("--set", kv)]
    return [sys.executable, "-m", "simsc.cli", "train", "--out", str(out), *sets, "--quiet", *extra]


@pytest.mark.slow
def test_killed_rank_stops_the_run_cleanly_and_resume_is_bit_exact(tmp_path, tiny_embedded):
    import psutil

    env = dict(os.environ, PYTHONPATH=str(REPO))
    ref, run = tmp_path / "ref", tmp_path / "run"
    steps = ["--set", "train.epochs=6"]  # 8 pairs, batch 4: 2 steps an epoch, 12 steps
    done = subprocess.run(_cli(ref, tiny_embedded, *steps), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(_cli(run, tiny_embedded, *steps), env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            last = run / "checkpoints" / "last.pt"
            if last.exists() and load_checkpoint(last)["step"] >= 3:
                break
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(0.1)
        # rank 1 is the launcher's spawned child (the multiprocessing resource tracker is not)
        ranks = [c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        assert len(ranks) == 1, [c.cmdline() for c in psutil.Process(proc.pid).children()]
        os.kill(ranks[0].pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, stderr[-3000:]  # the run ran and failed: exit 1, not a user error
    lines = [ln for ln in stderr.splitlines() if "error:" in ln]
    print(f"after killing rank 1: exit {proc.returncode}, {lines[-1] if lines else stderr[-500:]}")
    assert lines and "rank 1 of 2" in lines[-1] and "SIGKILL" in lines[-1], stderr[-3000:]
    assert not list(run.rglob("*.tmp")) and not list(run.rglob(".*.tmp*"))
    stopped_at = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert 3 <= stopped_at < 12

    resumed = subprocess.run(
        _cli(run, tiny_embedded, *steps, "--resume"), env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout)
    assert summary["resumed_from_step"] == stopped_at and summary["step"] == 12
    wa = load_checkpoint(ref / "checkpoints" / "last.pt")["model"]
    wb = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resume of a 2-rank run is not bit-exact"
    recs = _records(run)
    assert [r["step"] for r in recs if r["type"] == "step"] == list(range(1, 13))
    assert [r["loss"] for r in recs if r["type"] == "step"] == [r["loss"] for r in _records(ref) if r["type"] == "step"]


@pytest.mark.slow
def test_divergence_on_two_ranks_is_reported_by_rank_0_and_keeps_the_good_checkpoint(tmp_path, toy, capfd):
    from simsc.engine import TrainingDivergedError

    trn, val = toy
    cfg = _config(tmp_path, 2, lr_backbone=1e6, lr_temperature=1e6, checkpoint_every_steps=1, progress="log")
    with pytest.raises(TrainingDivergedError) as e:
        train(cfg, train_dataset=trn, val_dataset=val)
    err = e.value
    # the betas of the whole global batch (4 pairs), gathered from both ranks
    assert len(err.beta_a) == 4 and f"step {err.step}" in str(err)
    ck = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ck["step"] == err.step - 1
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["type"] == "diverged" and lines[-1]["step"] == err.step
    # one progress stream: rank 0's (the other rank prints nothing)
    progress = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("train: step ")]
    assert progress and len({ln.split(",")[0] for ln in progress}) == len(progress), progress


@pytest.mark.slow
def test_the_dvc_train_stage_reads_train_devices_from_params_yaml(tmp_path, tiny_embedded):
    import yaml

    params = {
        "model": {"backbone": "resnet18", "pretrained": False, "finetune": "all"},
        "data": {"dataset": "embedded", "root": str(tiny_embedded), "resolution": 64, "batch_size": 4},
        "train": {"epochs": 1, "devices": 2, "device": "cpu", "num_threads": 1, "out_dir": "runs/ddp"},
        "tracking": {"enabled": False},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.stage_train", "--params", "params.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["config"]["train"]["devices"] == 2
    assert [r["step"] for r in _records(run) if r["type"] == "step"] == [1, 2]
    assert (tmp_path / "reports" / "train" / "metrics.json").exists()


@pytest.mark.slow
def test_a_refused_run_folder_stops_every_rank_with_rank_0s_error(tmp_path, toy):
    from simsc.engine.run_folder import RunFolderError

    trn, val = toy
    train(_config(tmp_path, 1, max_steps=1), train_dataset=trn, val_dataset=val)
    t0 = time.monotonic()
    with pytest.raises(RunFolderError, match="already holds a run"):
        train(_config(tmp_path, 2, max_steps=1), train_dataset=trn, val_dataset=val)
    assert time.monotonic() - t0 < 60  # no rank waits for a peer that stopped


@pytest.mark.slow
@pytest.mark.parametrize("head", ["ncnet", "cats"])
def test_heads_without_batchnorm_train_the_same_on_two_ranks(tmp_path, head):
    trn, val = ToyTranslationPairs(8, 64, seed=0), ToyTranslationPairs(3, 64, seed=1, split="val")
    runs = {}
    for devices in (1, 2):
        cfg = _config(tmp_path / str(devices), devices, max_steps=2)
        cfg["model"].update(head=head, head_preset="small")
        train(cfg, train_dataset=trn, val_dataset=val)
        runs[devices] = [r["loss"] for r in _records(tmp_path / str(devices)) if r["type"] == "step"]
    assert runs[2] == pytest.approx(runs[1], rel=1e-5)
    one, two = (tmp_path / d / "checkpoints" / "last.pt" for d in ("1", "2"))
    _assert_same_weights(one, two)


def _evaluate_rank(out: str) -> None:
    """One rank of the sharded evaluation test: 5 pairs over the ranks, the report and the
    per-pair predictions (gathered in the pairs' order) written by rank 0."""
    import torch.distributed as dist

    from simsc.evaluate import evaluate
    from simsc.model import SimSC

    torch.manual_seed(0)
    model = SimSC("resnet18", "mlp", pretrained=False).eval()
    val = ToyTranslationPairs(5, 64, seed=1, split="val")
    rows: list = []
    rank, world = dist.get_rank(), dist.get_world_size()
    rep = evaluate(model, val, batch_size=2, predictions=rows, progress=False, shard=(rank, world))
    if rank == 0:
        Path(out).write_text(json.dumps({"report": rep, "rows": rows}))


@pytest.mark.slow
def test_sharded_evaluation_equals_one_process_with_its_predictions(tmp_path):
    from simsc.engine.distributed import launch_local
    from simsc.evaluate import evaluate
    from simsc.model import SimSC

    torch.manual_seed(0)
    model = SimSC("resnet18", "mlp", pretrained=False).eval()
    rows: list = []
    val = ToyTranslationPairs(5, 64, seed=1, split="val")
    one = evaluate(model, val, batch_size=2, predictions=rows, progress=False)
    launch_local(_evaluate_rank, (str(tmp_path / "two.json"),), 2, "gloo")
    two = json.loads((tmp_path / "two.json").read_text())
    for key in ("per_image", "per_keypoint", "per_category", "n_pairs", "n_keypoints"):
        assert two["report"][key] == json.loads(json.dumps(one[key])), key
    assert [r["pair_id"] for r in two["rows"]] == [r["pair_id"] for r in rows]
    assert [r["pred"] for r in two["rows"]] == [r["pred"] for r in rows]
