"""Atomic file writes: a reader (or a crash) never sees a half-written file."""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable


def current_umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *, durable: bool = False) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, then ``os.replace`` it into place.

    The file gets the usual ``0o666 & ~umask`` permissions (``mkstemp`` would leave 0600).
    ``durable=True`` also fsyncs the file and its folder, for checkpoints that must survive
    a power loss, not just a killed process.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # a failed write() names no file; the user needs to know which
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy the file ``src`` to ``dst`` atomically (``dst`` is whole or absent)."""
    import shutil

    with open(src, "rb") as fin:
        return atomic_write(dst, lambda f: shutil.copyfileobj(fin, f))


def atomic_write_json(path: str | os.PathLike, obj: Any, **dumps_kwargs: Any) -> Path:
    """Write ``obj`` as JSON (UTF-8, trailing newline) atomically."""
    text = json.dumps(obj, **dumps_kwargs) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def yaml_load(text: str) -> Any:
    """Parse YAML as ``yaml.safe_load`` does, but read exponent floats without a dot
    (``2e-05``, YAML 1.2) as floats: that is how ``dvc exp run -S`` and ruamel write them,
    and PyYAML's YAML 1.1 resolver would return the string ``'2e-05'``."""
    import yaml

    return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass


@functools.lru_cache(maxsize=1)
def _yaml_loader():
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader
