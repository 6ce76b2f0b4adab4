"""A guard that fails on host reads of tensor values: the calls that synchronise with a GPU.

On a CUDA device ``.item()``, ``bool(t)``, ``float(t)``, ``.tolist()``, ``nonzero()``,
boolean-mask indexing, ``masked_select``, ``unique`` or one-argument ``where`` wait for the
device (data-dependent values or shapes). On the CPU they cost nothing, so a CPU test cannot
time them; this guard makes them fail instead, so that a CPU test proves a code path free of
them. Tensors listed in ``allow`` (e.g. Adam's step counters, which torch keeps on the host
on purpose) may be read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch.overrides import TorchFunctionMode

_READS = {
    torch.Tensor.item,
    torch.Tensor.__bool__,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__index__,
    torch.Tensor.tolist,
    torch.Tensor.nonzero,
    torch.nonzero,
    torch.Tensor.numpy,
    torch.Tensor.masked_select,
    torch.masked_select,
    torch.Tensor.unique,
    torch.unique,
    torch.Tensor.is_nonzero,
    torch.is_nonzero,
    torch.equal,
    torch.Tensor.equal,
    torch.allclose,
    torch.Tensor.allclose,
    torch.Tensor.argwhere,
    torch.argwhere,
    torch.Tensor.nonzero_static,
}


class HostSyncError(AssertionError):
    """A guarded region read a tensor's value on the host."""


def _name(func) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


def _is_bool_mask(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class _Guard(TorchFunctionMode):
    """Raises on host reads; with ``count=True`` counts them instead (``self.reads``)."""

    def __init__(self, allow: set[int], count: bool = False) -> None:
        super().__init__()
        self.allow = allow
        self.count = count
        self.reads: dict[str, int] = {}

    def _hit(self, what: str) -> None:
        if not self.count:
            raise HostSyncError(f"host read of a tensor value: {what}")
        self.reads[what] = self.reads.get(what, 0) + 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = args[0] if args else None
        allowed = isinstance(first, torch.Tensor) and id(first) in self.allow
        if not allowed:
            if func in _READS:
                self._hit(_name(func))
            elif func is torch.where and len(args) + len(kwargs) == 1:
                self._hit("torch.where(condition) (data-dependent shape)")
            elif func is torch.Tensor.__getitem__ and len(args) > 1 and _is_bool_mask(args[1]):
                self._hit("boolean-mask indexing (data-dependent shape)")
            elif func is torch.Tensor.__setitem__ and len(args) > 1 and _is_bool_mask(args[1]):
                self._hit("boolean-mask assignment")
        return func(*args, **kwargs)


@contextlib.contextmanager
def no_host_sync(allow: Iterable[torch.Tensor] = ()) -> Iterator[None]:
    """Fail with :class:`HostSyncError` on any host read of a tensor value inside the block
    (and, on CUDA, on any synchronising CUDA call: ``torch.cuda.set_sync_debug_mode("error")``)."""
    cuda = torch.cuda.is_available()
    if cuda:
        old = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
    try:
        with _Guard({id(t) for t in allow}):
            yield
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode(old)


@contextlib.contextmanager
def count_host_reads(allow: Iterable[torch.Tensor] = ()) -> Iterator[dict[str, int]]:
    """Count (by call) the host reads inside the block instead of failing: for benchmarks."""
    guard = _Guard({id(t) for t in allow}, count=True)
    with guard:
        yield guard.reads


def optimizer_host_tensors(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Adam's ``step`` counters: host tensors (unless ``capturable``), read on purpose."""
    return [
        s["step"]
        for s in opt.state.values()
        if isinstance(s.get("step"), torch.Tensor) and s["step"].device.type == "cpu"
    ]
