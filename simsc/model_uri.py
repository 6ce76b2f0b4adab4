"""Model URIs (``models:/NAME@champion``, ``runs:/ID/model``): a scheme -> resolver table.

The library knows no model registry. A package that does (the project's ``pipeline``, with
MLflow) registers a resolver for its URI schemes under the entry-point group
:data:`ENTRY_POINT_GROUP`, in its ``pyproject.toml``::

    [project.entry-points."simsc.model_uri"]
    models = "pipeline.tracking.models:fetch_checkpoint"

A resolver takes the URI and returns the local path of a simsc checkpoint. Code can also
call :func:`register` directly. There is no built-in default: without a resolver for its
scheme a URI is an error that says which package provides one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

ENTRY_POINT_GROUP = "simsc.model_uri"

Resolver = Callable[[str], "str | os.PathLike[str]"]
_RESOLVERS: dict[str, Resolver] = {}


class NoResolverError(ValueError):
    """No resolver is registered for the URI's scheme (the message says how to get one)."""


def scheme(uri: str) -> str | None:
    """``models`` for ``models:/x/1``; ``None`` for a plain path (``C:\\x`` included)."""
    head, sep, _ = uri.partition(":")
    return head if sep and len(head) > 1 and head.replace("-", "").replace("+", "").isalnum() else None


def register(name: str, resolver: Resolver) -> None:
    """Resolve URIs of scheme ``name`` with ``resolver`` (replaces an earlier one)."""
    _RESOLVERS[name] = resolver


def resolver_for(name: str) -> Resolver:
    """The resolver of scheme ``name``: registered by :func:`register`, else loaded from the
    entry point of that name in :data:`ENTRY_POINT_GROUP`."""
    if name in _RESOLVERS:
        return _RESOLVERS[name]
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        raise NoResolverError(
            f"no resolver for {name}: URIs (entry point group {ENTRY_POINT_GROUP!r}); MLflow URIs "
            "(models:/, runs:/) need the project installed with its pipeline extra: pip install -e '.[pipeline]'"
        )
    try:
        fn = found[0].load()
    except ImportError as exc:
        raise NoResolverError(
            f"the resolver of {name}: URIs ({found[0].value}) cannot be imported: {exc}; pip install -e '.[pipeline]'"
        ) from None
    _RESOLVERS[name] = fn
    return fn


def resolve(uri: str) -> Path:
    """The local checkpoint of model ``uri``; :class:`NoResolverError` for an unknown scheme."""
    name = scheme(uri)
    if name is None:
        raise NoResolverError(f"{uri!r} is not a model URI (expected scheme:..., e.g. models:/NAME@champion)")
    return Path(resolver_for(name)(uri))
