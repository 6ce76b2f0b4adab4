"""Where and how a run executes: the device, seeds, threads, determinism, autocast and
``torch.compile`` with its eager fallback. Small and free of training logic, so the loop
(:mod:`simsc.engine.trainer`) reads as the loop."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import first_line
from . import distributed as ddp

#: ``train.amp`` -> the autocast dtype of the forward pass (``off``: none).
AMP_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}

#: Steps between two reads of the step records on accelerators (``train.log_every_steps: null``).
DEVICE_LOG_EVERY_STEPS = 25


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the data-order generator of one epoch."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2**63 - 1)


def resolve_device(name: str, what: str = "device") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda[:N]``, ``mps``: a device this
    host has, or ``ValueError`` naming ``what`` (the flag or config key) and what exists."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{what}: unknown device {name!r}; expected auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{what} {name}: CUDA is not available on this host (torch.cuda.is_available() is "
                "False); use cpu or auto"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"{what} {name}: this host has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"{what} {name}: MPS is not available on this host; use cpu or auto")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{what}: device type {dev.type!r} is not supported; expected auto, cpu, cuda[:N] or mps")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def run_settings(num_threads: int | None, deterministic: bool, device: str, world: int) -> Iterator[None]:
    """torch's thread count and deterministic mode for the run, restored afterwards. Ranks
    sharing one CPU split its cores when no thread count is given."""
    old_threads = torch.get_num_threads()
    old_det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    threads = num_threads
    if threads is None and world > 1 and device in ("cpu", "auto") and not torch.cuda.is_available():
        threads = ddp.threads_per_rank(int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det[0], warn_only=old_det[1])


def compile_backend(option: bool | str) -> str:
    """The torch.compile backend of a ``train.compile`` value (``true``: inductor)."""
    return "inductor" if option is True else str(option)


def compile_fallback(backend: str, exc: BaseException) -> None:
    """Warn that ``torch.compile`` failed and training runs eagerly."""
    import warnings

    reason = first_line(exc)
    warnings.warn(
        f"train.compile: torch.compile (backend {backend!r}) failed ({type(exc).__name__}: {reason[:300]}); "
        "training runs eagerly instead",
        RuntimeWarning,
        stacklevel=3,
    )


def maybe_compile(fn: Callable[..., Any], option: bool | str) -> Callable[..., Any]:
    """``fn`` compiled when ``train.compile`` asks for it; eager (with a warning) when the
    compiler cannot be set up, a ``ValueError`` for an unknown backend name."""
    if not option:
        return fn
    backend = compile_backend(option)
    try:
        return torch.compile(fn, backend=backend)
    except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to eager (a warning)
        if type(exc).__name__ == "InvalidBackend":  # a typo is the user's error, not a fallback
            raise ValueError(
                f"train.compile: unknown torch.compile backend {backend!r}; use true (inductor), "
                "false or a name from torch._dynamo.list_backends()"
            ) from None
        compile_fallback(backend, exc)  # a missing compiler fails later, on the first call
        return fn


def read_to_host(groups: Sequence[Mapping[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """The tensors of ``groups`` on the host, read in one transfer (one sync for all of them):
    each group back as name -> flat CPU tensor, in the dtype the values promote to."""
    flat = [t.detach().reshape(-1) for group in groups for t in group.values()]
    if not flat:
        return [{} for _ in groups]
    dtype = flat[0].dtype
    for t in flat:
        dtype = torch.promote_types(dtype, t.dtype)
    values = iter(torch.cat([t.to(dtype) for t in flat]).cpu().split([t.numel() for t in flat]))
    return [{name: next(values) for name in group} for group in groups]
