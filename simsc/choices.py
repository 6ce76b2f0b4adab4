"""The names a configuration may choose from, without torch.

The schema (:mod:`simsc.config`) validates against these lists, so reading a YAML file never
imports torch or timm; the components that implement the names import them from here (one
home), and ``tests/test_choices.py`` checks that each list matches its implementation.
"""

from __future__ import annotations

import math

#: ``model.finetune``: which backbone weights train (:mod:`simsc.backbones`).
FINETUNE_MODES = ("none", "last_block", "all")
#: ``model.cell_centre``: where a feature cell's centre lies in the image (:mod:`simsc.coords`).
CELL_CENTRES = ("backbone", "patch")
#: ``model.ce_interpolation``: the cross-entropy's form (:data:`simsc.loss.CE_INTERPOLATIONS`).
CE_INTERPOLATION_NAMES = ("logprob", "prob")
#: ``model.reg_over_images``: how a pair's two temperature regularisers combine.
REG_OVER_IMAGES = ("sum", "mean")
#: ``model.head_preset``: the heads' sizes.
HEAD_PRESETS = ("paper", "small")
#: ``model.head`` names: the built-in heads; ``@register_head`` adds a user's head here too.
HEAD_NAMES: set[str] = {"cats", "ncnet", "sfnet"}
#: ``model.temperature``: the temperature variants (:func:`simsc.temperature.build_temperature`).
TEMPERATURES = ("mlp", "single", "fixed:<beta>", "no-l2")
#: Spellings of ``no-l2`` that are accepted.
NO_L2_ALIASES = ("no-l2", "no_l2", "nol2")


def parse_temperature(spec: str) -> tuple[str, float | None]:
    """``model.temperature`` as ``(kind, beta)``: kind is ``mlp``, ``single``, ``no-l2`` or
    ``fixed`` (with its finite ``beta > 0``); raises ``ValueError`` naming what is expected."""
    mode = str(spec).strip()
    if mode in ("mlp", "single"):
        return mode, None
    if mode in NO_L2_ALIASES:
        return "no-l2", None
    if mode.startswith("fixed:"):
        try:
            beta = float(mode.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"temperature {mode!r}: expected fixed:<beta> with a number, e.g. fixed:0.03") from None
        if not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"fixed temperature must be a finite number > 0, got {beta}")
        return "fixed", beta
    raise ValueError(f"unknown temperature {mode!r}: use one of {TEMPERATURES}")
