"""What the optimiser trains: Adam's parameter groups, and the layers whose gradients are logged."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config import Config
from ..model import SimSC


def param_groups(model: SimSC, cfg: Config) -> list[dict[str, Any]]:
    """Adam parameter groups: trainable backbone weights at ``lr_backbone``, temperature
    parameters at ``lr_temperature``; empty groups are left out."""
    groups = []
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    if backbone:
        groups.append({"name": "backbone", "params": backbone, "lr": cfg.resolved_lr_backbone()})
    temperature = [p for p in model.temperature.parameters() if p.requires_grad]
    if temperature:
        groups.append({"name": "temperature", "params": temperature, "lr": cfg.resolved_lr_temperature()})
    head = [p for p in model.head.parameters() if p.requires_grad] if model.head is not None else []
    if head:
        groups.append({"name": "head", "params": head, "lr": cfg.resolved_lr_head()})
    if not groups:
        raise ValueError(
            f"nothing to train: model.finetune={cfg.model.finetune!r} and temperature "
            f"{cfg.model.temperature!r} has no parameters"
        )
    return groups


def grad_layers(model: SimSC) -> list[tuple[str, nn.Conv2d | nn.Linear]]:
    """Conv / linear layers of the last backbone block, named relative to the timm model."""
    names = {id(m): n for n, m in model.backbone.model.named_modules()}
    out: list[tuple[str, nn.Conv2d | nn.Linear]] = []
    for block in model.backbone.last_block():
        for m in block.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                out.append((names.get(id(m), type(m).__name__), m))
    return out
