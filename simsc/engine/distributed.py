"""Data parallelism: one training run over several processes (``torch.distributed`` + DDP).

How a run of N ranks stays the run of one rank:

- **Data.** The engine draws each epoch's order as always (one permutation of the training
  split), cuts it into global batches of ``data.batch_size`` pairs and gives rank ``r`` the
  ``r``-th of N contiguous chunks of each global batch (:func:`chunk_bounds`: sizes differ by
  at most one). A rank whose chunk is empty (a last batch smaller than N) re-reads the batch's
  first pair with weight 0, so that it still joins the gradient all-reduce.
- **Loss.** Each rank weights its local terms by its share of the global batch
  (:func:`global_share`), so that DDP's average of the ranks' gradients is the gradient of the
  global batch's loss; the logged loss is the all-reduced global value.
- **Validation.** Each rank scores a contiguous shard of the validation pairs; the per-pair
  hit counts are gathered and reduced in the original order (PCK from summed counts, the same
  numbers as one rank).
- **Writes.** Only rank 0 touches the run folder (lock, ``metrics.jsonl``, checkpoints,
  summary) and calls the callbacks (except those with ``all_ranks = True``).

Processes are started by :func:`launch_local` (``train.devices: N`` on one machine: this process
is rank 0, N - 1 spawned children the others) or by Ray Train (``pipeline.sweep_trial``), which
sets up the process group itself. Backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..errors import RunFailedError

#: How long a rank waits for the others in one collective before it gives up (NCCL / gloo).
TIMEOUT_S = 600.0


class DistributedRunError(RunFailedError):
    """A rank of a multi-process run failed or died; the message names it (exit status 1)."""


class PeerFailed(RuntimeError):
    """Raised on the other ranks when rank 0 shares an error it raises itself (:func:`agree`)."""


def agree(error: BaseException | None) -> None:
    """Rank 0's check result on every rank: rank 0 raises ``error`` itself (when given), the
    others raise :class:`PeerFailed`, so that no rank waits for a peer that stopped."""
    rank, world = rank_world()
    if world == 1:
        if error is not None:
            raise error
        return
    message = broadcast_object(None if error is None else f"{type(error).__name__}: {error}")
    if rank == 0 and error is not None:
        raise error
    if message is not None:
        raise PeerFailed(f"rank 0 stopped the run: {message}")


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_rank() -> int:
    """This process's index among the ranks of its machine (``LOCAL_RANK``, set by the launchers)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def chunk_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous chunk of ``n`` items: the first
    ``n % world`` ranks get one item more than the others."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def local_batches(order: Sequence[int], batch_size: int, rank: int, world: int) -> list[tuple[list[int], int, int]]:
    """This rank's part of each global batch of ``order``: ``(indices, n_local, n_global)``.

    ``n_local == 0`` marks a rank left without a pair; its ``indices`` then hold the batch's
    first pair (a weight-0 stand-in, so that every rank runs every step)."""
    out = []
    for b in range(0, len(order), batch_size):
        batch = list(order[b : b + batch_size])
        start, stop = chunk_bounds(len(batch), rank, world)
        mine = batch[start:stop]
        out.append((mine or batch[:1], len(mine), len(batch)))
    return out


def global_share(n_local: int, n_global: Any, world: int) -> Any:
    """The factor on a rank's mean loss over ``n_local`` items that makes DDP's gradient average
    (a sum over ranks divided by ``world``) the gradient of the mean over all ``n_global``
    (``>= 1``: a count, or a device tensor of the all-reduced count, read without a host sync)."""
    return n_local * world / n_global


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over the ranks (``x`` itself outside a process group); no host sync."""
    if rank_world()[1] > 1:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_gather_padded(x: torch.Tensor, capacity: int, sizes: Sequence[int]) -> torch.Tensor:
    """Concatenate each rank's first ``sizes[r]`` rows of ``x`` in rank order (``x`` holds at
    most ``capacity`` rows; ranks pad to it so that the collective has one shape)."""
    _, world = rank_world()
    if world == 1:
        return x[: sizes[0]]
    padded = x.new_zeros((capacity, *x.shape[1:]))
    padded[: x.shape[0]] = x
    out = x.new_empty((world * capacity, *x.shape[1:]))
    dist.all_gather_single(out, padded)
    return torch.cat([out[r * capacity : r * capacity + sizes[r]] for r in range(world)])


def global_loss(
    out: dict[str, torch.Tensor], ce_pairs: int, n_local: int, n_global: int, gamma: float, world: int, batch_size: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Several ranks: the global batch's loss terms (what one rank with the whole batch logs)
    and this rank's loss to back-propagate, weighted by its share of each term's pairs so that
    DDP's gradient average is the gradient of the global loss. ``ce_pairs``: this rank's pairs
    with a valid keypoint (the cross-entropy's average), ``n_local``: all its pairs (the
    regulariser's)."""
    ce, reg = out["ce"], out["reg"]
    # One all-reduce (no host sync): the terms' sums over the ranks' pairs and the counts.
    local = torch.stack([ce.detach() * ce_pairs, reg.detach() * n_local]).float()
    counts = torch.tensor([ce_pairs, n_local], dtype=local.dtype, device=local.device)
    sums = all_reduce_sum(torch.cat([local, counts]))
    ce_total, n_total = sums[2].clamp_min(1), sums[3].clamp_min(1)
    backprop = ce * global_share(ce_pairs, ce_total, world) + gamma * reg * global_share(n_local, n_total, world)
    ce_g, reg_g = sums[0] / ce_total, sums[1] / n_total
    capacity = -(-batch_size // world)
    sizes = [b - a for a, b in (chunk_bounds(n_global, r, world) for r in range(world))]
    gathered = {
        k: all_gather_padded(out[k].detach()[:n_local].float(), capacity, sizes)
        for k in ("beta_a", "beta_b", "beta_eff")
    }
    return {"loss": ce_g + gamma * reg_g, "ce": ce_g, "reg": reg_g, **gathered}, backprop


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` outside a process group)."""
    _, world = rank_world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if rank_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def backend_for(device: torch.device | str) -> str:
    """NCCL for CUDA devices, gloo otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def rank_device(device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:<local rank>`` when the run is on CUDA."""
    if device.type == "cuda" and rank_world()[1] > 1:
        return torch.device("cuda", local_rank())
    return device


def threads_per_rank(devices: int) -> int:
    """CPU threads of one of ``devices`` ranks on this machine when ``train.num_threads`` is
    unset (torch's default, one per core in every process, oversubscribes the cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // devices)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_group(backend: str, init_method: str, rank: int, world: int) -> None:
    dist.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=world, timeout=timedelta(seconds=TIMEOUT_S)
    )


def _die_with_parent() -> None:
    """Linux: SIGTERM this child when the launching process dies (however it dies), so that no
    rank outlives its run waiting on a collective."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _child(
    fn: Callable[..., Any], args: tuple, rank: int, world: int, backend: str, init_method: str, errors: Any
) -> None:
    _die_with_parent()
    os.environ["LOCAL_RANK"] = str(rank)
    os.environ["LOCAL_WORLD_SIZE"] = str(world)
    try:
        init_group(backend, init_method, rank, world)
        fn(*args)
    except PeerFailed:
        raise SystemExit(0) from None  # rank 0 reports the error it shared
    except BaseException as exc:  # noqa: BLE001 - whatever stops a rank is reported to rank 0
        errors.put((rank, type(exc).__name__, str(exc)))
        raise SystemExit(1) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch_local(
    fn: Callable[..., Any], args: tuple, devices: int, backend: str, rank0: Callable[..., Any] | None = None
) -> Any:
    """Run ``fn(*args)`` on ``devices`` ranks of this machine and return rank 0's result.

    This process is rank 0 (so its callbacks, return value and exceptions are the caller's;
    ``rank0``, when given, replaces ``fn`` there); ranks 1..N-1 are spawned processes (``fn``
    and ``args`` must pickle). When a rank fails or dies the run stops: the others are
    terminated and :class:`DistributedRunError` names the rank (rank 0's own errors propagate
    unchanged, unless a child failed first)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    errors = ctx.SimpleQueue()
    children = [
        ctx.Process(target=_child, args=(fn, args, r, devices, backend, init_method, errors), name=f"simsc-rank{r}")
        for r in range(1, devices)
    ]
    for p in children:
        p.start()
    old_env = {k: os.environ.get(k) for k in ("LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    os.environ["LOCAL_RANK"], os.environ["LOCAL_WORLD_SIZE"] = "0", str(devices)
    try:
        init_group(backend, init_method, 0, devices)
        try:
            result = (rank0 or fn)(*args)
        except Exception as exc:
            # Rank 0's own errors (a bad config, a refused folder) are the caller's; a failed
            # collective means a peer failed or died first: name that one.
            if _peer_fault(exc):
                failed = _child_failure(children, errors, wait_s=5.0)
                if failed is not None:
                    raise DistributedRunError(failed) from exc
            raise
        for p in children:
            p.join()
        failed = _child_failure(children, errors, wait_s=0.0)
        if failed is not None:
            raise DistributedRunError(failed)
        return result
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for p in children:
            if p.is_alive():
                p.terminate()
        for p in children:
            p.join(timeout=30)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _peer_fault(exc: BaseException) -> bool:
    """Whether rank 0's exception is how a vanished peer shows (a failed collective)."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(w in text for w in ("gloo", "nccl", "connection", "peer"))


def _child_failure(children: Sequence[Any], errors: Any, wait_s: float) -> str | None:
    """A message for the first child rank that failed (its error) or died (its signal)."""
    import time

    deadline = time.monotonic() + wait_s
    # Rank 0 can notice a vanished peer before the peer's exit status is set.
    while time.monotonic() < deadline:
        if not errors.empty() or any(p.exitcode not in (None, 0) for p in children):
            break
        if all(p.exitcode is not None for p in children):
            break
        time.sleep(0.05)
    reported: dict[int, tuple[str, str]] = {}
    while not errors.empty():
        rank, kind, message = errors.get()
        reported.setdefault(rank, (kind, message))
    world = len(children) + 1
    if reported:
        rank = min(reported)
        kind, message = reported[rank]
        return f"rank {rank} of {world} failed: {kind}: {message}"
    for r, p in enumerate(children, start=1):
        code = p.exitcode
        if code not in (None, 0):
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
            return (
                f"rank {r} of {world} (pid {p.pid}) {how}; the run stopped (its last checkpoint is kept: "
                "continue with --resume)"
            )
    return None
