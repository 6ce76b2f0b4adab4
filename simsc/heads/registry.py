"""The head registry: ``@register_head(name)`` and look-ups by name. Kept apart from the
package's ``__init__`` so that head modules import it without importing the package that
imports them (no import cycle)."""

from __future__ import annotations

from collections.abc import Callable

from ..choices import HEAD_NAMES
from .base import HEAD_PRESETS, MatchingHead

HEADS: dict[str, type[MatchingHead]] = {}


def register_head(name: str) -> Callable[[type[MatchingHead]], type[MatchingHead]]:
    """Class decorator: make a :class:`MatchingHead` subclass buildable as ``model.head: name``."""

    def deco(cls: type[MatchingHead]) -> type[MatchingHead]:
        if name in HEADS and HEADS[name] is not cls:
            raise ValueError(f"matching head {name!r} is already registered ({HEADS[name].__name__})")
        cls.name = name
        HEADS[name] = cls
        HEAD_NAMES.add(name)  # the schema accepts it as model.head from now on
        return cls

    return deco


def list_heads() -> list[str]:
    """Registered head names (``none`` is not a head but the default SimSC path)."""
    return sorted(HEADS)


def build_head(
    name: str,
    level_channels: tuple[int, ...],
    *,
    preset: str = "paper",
    grid: tuple[int, int] | None = None,
) -> MatchingHead:
    """Instantiate the head ``name`` for a backbone whose levels have ``level_channels``.

    ``preset``: ``paper`` (the original papers' sizes) or ``small`` (fewer channels / blocks
    for CPU toy runs). ``grid``: the feature grid ``(h, w)`` at the training resolution, used
    by heads with size-dependent layers (CATs).
    """
    if name not in HEADS:
        raise ValueError(f"unknown matching head {name!r}: use 'none' or one of {list_heads()}")
    if preset not in HEAD_PRESETS:
        raise ValueError(f"head preset must be one of {HEAD_PRESETS}, got {preset!r}")
    return HEADS[name](tuple(level_channels), preset=preset, grid=grid)


def head_level_offsets(name: str) -> tuple[int, ...]:
    """Backbone levels the head ``name`` reads, as offsets from the main level (see build_backbone)."""
    if name not in HEADS:
        raise ValueError(f"unknown matching head {name!r}: use 'none' or one of {list_heads()}")
    return HEADS[name].level_offsets


def head_default_temperature(name: str) -> str:
    """The temperature the head's paper trains with, as a ``model.temperature`` string."""
    if name not in HEADS:
        raise ValueError(f"unknown matching head {name!r}: use 'none' or one of {list_heads()}")
    return HEADS[name].default_temperature
