"""Matching heads on top of the SimSC backbone, picked by name (``model.head``).

A head turns the backbone's feature levels of images A and B into the score maps of the
query keypoints, either directly (SFNet: correlations of adapted features) or by refining
the full 4D correlation (NCNet, CATs). The temperature takes the place of each original's
own fixed one, where the original applies it: the head's final scores are divided by
``beta_A beta_B`` (:meth:`MatchingHead.forward` receives ``beta_a``/``beta_b``), so
``fixed:0.02`` (SFNet, CATs) and ``fixed:1`` (NCNet) compute what the originals compute.
``none`` (no head) is SimSC as described in the paper's main text and is handled by
:class:`simsc.model.SimSC`.

Registry in the style of timm: ``@register_head("name")`` on a :class:`MatchingHead`
subclass, ``build_head(name, ...)`` to instantiate, :data:`HEADS` / :func:`list_heads`.
"""

from __future__ import annotations

from . import cats, ncnet, sfnet  # noqa: F401  (each module registers its head)
from .base import HEAD_PRESETS, MatchingHead, correlation_4d, sample_correlation, swap_ab
from .registry import (
    HEADS,
    build_head,
    head_default_temperature,
    head_level_offsets,
    list_heads,
    register_head,
)

__all__ = [
    "HEADS",
    "HEAD_PRESETS",
    "MatchingHead",
    "build_head",
    "correlation_4d",
    "head_default_temperature",
    "head_level_offsets",
    "list_heads",
    "register_head",
    "sample_correlation",
    "swap_ab",
]
