"""Lazy package attributes (PEP 562), shared by the packages of simsc.

Each package keeps a ``_LAZY`` table (submodule -> the names it defines) and gets its
module-level ``__getattr__`` / ``__dir__`` / ``__all__`` from :func:`lazy_attributes`, so that
importing one submodule does not run the whole package: each DVC stage's dependencies are the
modules it really imports (``pipeline/dvc_deps.py`` reads the tables).
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_homes(table: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """``name -> submodule`` of a ``_LAZY`` table (``submodule -> names``); a name listed
    under two submodules is a ValueError."""
    homes: dict[str, str] = {}
    for module, names in table.items():
        for name in names:
            if homes.setdefault(name, module) != module:
                raise ValueError(f"lazy name {name!r} listed under both {homes[name]!r} and {module!r}")
    return homes


def lazy_attributes(
    package: str, table: Mapping[str, Iterable[str]], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``: a name of ``table`` is imported from
    its submodule on first use and cached in the package's ``namespace``; ``__all__`` is
    every name of the table, sorted."""
    homes = lazy_homes(table)

    def __getattr__(name: str) -> Any:
        if name in homes:
            value = getattr(importlib.import_module(f".{homes[name]}", package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(homes))

    _keep_exports_over_submodules(package, {name for name, module in homes.items() if name == module})
    return __getattr__, __dir__, sorted(homes)


def _keep_exports_over_submodules(package: str, names: set[str]) -> None:
    """A name exported from the submodule of the same name (``simsc.pck`` -> ``pck``) stays
    the export: importing a submodule makes the import system bind it on its package, which
    would turn ``from simsc import pck`` into the module once any code imported ``simsc.pck``
    first. ``from simsc.pck import ...`` reads ``sys.modules`` and is unaffected."""
    if not names:
        return
    module = sys.modules[package]

    class LazyPackage(type(module)):  # type: ignore[misc]
        def __setattr__(self, name: str, value: Any) -> None:
            if name in names and isinstance(value, types.ModuleType) and value.__name__ == f"{package}.{name}":
                value = getattr(value, name)
            super().__setattr__(name, value)

    module.__class__ = LazyPackage
