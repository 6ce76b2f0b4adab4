"""Files: atomic writes (a reader, or a crash, never sees a half-written file) and the one
YAML reader of the project (configs, ``params.yaml``, parameter sets, sweep specs), with the
overlay composition they share (``defaults:`` lists, deep merges)."""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import IO, Any


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


def unwritable(folder: str | os.PathLike) -> str | None:
    """Why files cannot be written in ``folder`` (made if missing), or ``None`` when they can:
    decided by creating (and removing) a temporary file there, which also holds for root,
    whom permission bits do not stop, and for a read-only mount."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".probe.", suffix=".tmp", dir=folder)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    os.unlink(tmp)
    return None


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: :func:`os.path.samefile` when both exist (hard and
    symbolic links included), else the same absolute path once ``..`` and links are resolved."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


PathArgs = Collection[tuple[str, "str | os.PathLike | None"]]


def refuse_overwriting_inputs(inputs: PathArgs, outputs: PathArgs) -> None:
    """Raise ``ValueError`` when an output path is an input file or another output, before
    any work: the write would replace the input (a checkpoint by a report) or one output
    another. ``inputs`` / ``outputs`` are ``(flag or key, path or None)`` pairs."""
    ins = [("input", name, p) for name, p in inputs if p is not None]
    outs = [("output", name, p) for name, p in outputs if p is not None]
    for i, (_, name, out) in enumerate(outs):
        for what, other, path in ins + outs[:i]:
            if same_file(out, path):
                raise ValueError(
                    f"{name} {out} is the same file as the {what} {other} {path}: writing it would replace "
                    f"that file; choose another path"
                )


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

    return yaml.load(text, Loader=_yaml_loader())


#: The most nodes a YAML document may expand to through its aliases (``*name``): configs have
#: hundreds; a few hundred bytes of nested aliases ("billion laughs") expand to billions.
YAML_MAX_NODES = 100_000


def _check_alias_expansion(node: Any, limit: int) -> None:
    """Refuse a composed YAML graph whose expansion (aliases repeated) exceeds ``limit`` nodes,
    counted on the graph itself (each node once), before any of it is constructed."""
    import yaml

    sizes: dict[int, int] = {}

    def size(n: Any) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        sizes[key] = 1  # a node that contains itself (a recursive alias) counts once
        if isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(c) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in n.value)
        else:
            total = 1
        sizes[key] = min(total, limit + 1)
        return sizes[key]

    if node is not None and size(node) > limit:
        raise yaml.composer.ComposerError(
            None,
            None,
            f"the document expands to more than {limit} nodes through its aliases (*name); refused "
            "(nested aliases that multiply a few lines into millions of values)",
            node.start_mark,
        )


@functools.lru_cache(maxsize=1)
def _yaml_loader():
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        def compose_document(self):
            node = super().compose_document()
            _check_alias_expansion(node, YAML_MAX_NODES)
            return node

        def construct_mapping(self, node, deep=False):
            # A repeated key would silently keep one value: refuse it, naming both lines.
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, Any] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                        continue
                    key = self.construct_object(key_node)
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None,
                            None,
                            f"found duplicate key {key!r} (first at line {seen[key].line + 1})",
                            key_node.start_mark,
                        )
                    seen[key] = key_node.start_mark
            return super().construct_mapping(node, deep=deep)

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def read_yaml_mapping(
    path: str | os.PathLike,
    *,
    what: str = "YAML file",
    contents: str = "a mapping",
    error: Callable[[str], Exception] = ValueError,
    hint: str = "",
) -> dict[str, Any]:
    """The mapping a YAML file holds (an empty file is ``{}``).

    Every failure raises ``error(message)`` with a message that starts with ``what`` and names
    the file: not found (``hint`` appended), unreadable, not UTF-8, invalid YAML, or not a mapping
    (``contents`` says what was expected).
    """
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} not found: {p}{hint}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{what} {p}: not UTF-8 text (byte {exc.start}: {exc.reason}); expected YAML") from None
    except OSError as exc:
        raise error(f"{what} {p}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{what} {p}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{what} {p}: expected {contents}, got {type(data).__name__}")
    return data
