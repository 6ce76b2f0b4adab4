"""Lazy package attributes (PEP 562), shared by the packages of simsc.

Each package keeps a ``_LAZY`` table (name -> the submodule that defines it) and gets its
module-level ``__getattr__`` / ``__dir__`` from :func:`lazy_attributes`, so that importing one
submodule does not run the whole package: each DVC stage's dependencies are the modules it
really imports (``pipeline/dvc_deps.py`` reads the tables).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(
    package: str, table: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: a name of ``table`` is imported from its
    submodule on first use and cached in the package's ``namespace``."""

    def __getattr__(name: str) -> Any:
        if name in table:
            value = getattr(importlib.import_module(f".{table[name]}", package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
