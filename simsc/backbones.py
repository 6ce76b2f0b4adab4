"""Dense feature backbones built from timm models, picked by name.

``build_backbone(name, pretrained, finetune)`` returns a :class:`Backbone` that maps
``[B, 3, H, W]`` RGB images in ``[0, 1]`` to a ``[B, C, ceil(H/s), ceil(W/s)]`` map.
Images are normalised with the weights' mean/std and zero-padded at the bottom/right
to a multiple of the stride ``s``, so the coordinate convention of
:mod:`simsc.coords` holds exactly at any input size (256 x 256 or original sizes).

BatchNorm layers always run in eval mode (frozen running statistics): the paper's
batches are 8 pairs of one dataset, too few for stable batch statistics, and the
ImageNet statistics are what makes the pretrained features good. Their affine
parameters still train in the trainable blocks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import timm
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FINETUNE_MODES = ("none", "last_block", "all")


@dataclass(frozen=True)
class BackboneSpec:
    """How a named backbone maps onto a timm architecture."""

    arch: str  # timm architecture name
    feature_index: int | None  # index into forward_intermediates; None = pick automatically
    default_pretrained: str | None  # timm tag used for ``pretrained=True``
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    kwargs: Mapping[str, object] = field(default_factory=dict)


_VIT_KWARGS = {"dynamic_img_size": True}

BACKBONES: dict[str, BackboneSpec] = {
    # ResNets truncated after layer3 (index 3 of act1, layer1..layer4): stride 16.
    "resnet18": BackboneSpec("resnet18", 3, "resnet18.tv_in1k"),
    "resnet50": BackboneSpec("resnet50", 3, "resnet50.tv_in1k"),
    "resnet101": BackboneSpec("resnet101", 3, "resnet101.tv_in1k"),
    # ViTs: patch tokens of the last block (after the final LayerNorm) as a C x h x w map.
    "dino_vitb8": BackboneSpec("vit_base_patch8_224", None, "vit_base_patch8_224.dino", kwargs=_VIT_KWARGS),
    # timm ships no iBOT weights: pass the iBOT release checkpoint as a local path.
    "ibot_vitb16": BackboneSpec("vit_base_patch16_224", None, None, kwargs=_VIT_KWARGS),
}


class BackboneCheckpointError(ValueError):
    """A local checkpoint does not fit the backbone architecture."""


class Backbone(nn.Module):
    """A timm model used as a dense feature extractor at one intermediate output."""

    def __init__(self, name: str, model: nn.Module, feature_index: int, mean, std) -> None:
        super().__init__()
        self.name = name
        self.model = model
        self.feature_index = feature_index
        info = model.feature_info[feature_index]
        self.out_channels: int = int(info["num_chs"])
        self.stride: int = int(info["reduction"])
        self.feature_module: str = info["module"]
        self.is_vit = hasattr(model, "blocks") and hasattr(model, "patch_embed")
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: images must be [B, 3, H, W], got {tuple(images.shape)}")
        x = (images - self.mean) / self.std
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % self.stride, (-w) % self.stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        kwargs = {"norm": True} if self.is_vit else {}
        (feat,) = self.model.forward_intermediates(
            x, indices=[self.feature_index], intermediates_only=True, **kwargs
        )
        return feat

    def last_block(self) -> list[nn.Module]:
        """The modules trained by ``finetune='last_block'``.

        The last residual block of the output stage for CNNs (e.g. the last bottleneck of
        ``layer3``); the last transformer block plus the final norm for ViTs.
        """
        module = self.model.get_submodule(self.feature_module)
        if isinstance(module, (nn.Sequential, nn.ModuleList)) and len(module) > 0:
            module = module[-1]
        modules = [module]
        if self.is_vit and isinstance(getattr(self.model, "norm", None), nn.Module):
            modules.append(self.model.norm)
        return modules

    def set_finetune(self, mode: str) -> None:
        if mode not in FINETUNE_MODES:
            raise ValueError(f"finetune must be one of {FINETUNE_MODES}, got {mode!r}")
        self.finetune = mode
        for p in self.parameters():
            p.requires_grad_(mode == "all")
        if mode == "last_block":
            for m in self.last_block():
                for p in m.parameters():
                    p.requires_grad_(True)

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)


def _auto_feature_index(model: nn.Module) -> int:
    infos = model.feature_info
    if hasattr(model, "blocks") and hasattr(model, "patch_embed"):
        return len(infos) - 1
    for i, info in enumerate(infos):
        if info["reduction"] == 16:
            return i
    return len(infos) - 1


def _prune(model: nn.Module, feature_index: int) -> None:
    """Drop the layers after the feature output so they cost nothing and never train."""
    model.prune_intermediate_layers([feature_index], prune_norm=False, prune_head=True)
    # timm's ResNet keeps layer4 after pruning; replace the stages past the output ourselves.
    stage = model.feature_info[feature_index]["module"]
    if stage.startswith("layer") and stage[5:].isdigit():
        k = int(stage[5:]) + 1
        while hasattr(model, f"layer{k}"):
            setattr(model, f"layer{k}", nn.Identity())
            k += 1


def build_backbone(
    name: str,
    pretrained: bool | str | os.PathLike = False,
    finetune: str = "last_block",
) -> Backbone:
    """Build a dense feature backbone.

    Args:
        name: a registered name (``resnet18``, ``resnet50``, ``resnet101``, ``dino_vitb8``,
            ``ibot_vitb16``) or any timm architecture with ``forward_intermediates``.
        pretrained: ``False``; ``True`` (the registry's default timm tag); a timm pretrained
            tag such as ``"resnet101.tv_in1k"`` (downloaded by timm); or a path to a local
            checkpoint (plain state dict, wrapped under ``state_dict``/``model``/``teacher``,
            ``module.``/``backbone.`` prefixes, iBOT/DINO release layouts).
        finetune: ``"last_block"``, ``"all"`` or ``"none"`` (frozen).
    """
    spec = BACKBONES.get(name)
    if spec is None:
        arch = name.split(".")[0]
        if arch not in timm.list_models():
            raise ValueError(
                f"unknown backbone {name!r}: use one of {sorted(BACKBONES)} or a timm architecture name"
            )
        is_vit = arch.startswith(("vit_", "deit", "eva", "beit"))
        spec = BackboneSpec(arch, None, None, kwargs=_VIT_KWARGS if is_vit else {})

    local_path: Path | None = None
    tag: str | None = None
    if pretrained is True:
        if spec.default_pretrained is None:
            raise ValueError(f"backbone {name!r} has no timm pretrained tag: pass a local checkpoint path")
        tag = spec.default_pretrained
    elif pretrained in (False, None, "", "false", "False", "none"):
        pass
    elif isinstance(pretrained, (str, os.PathLike)):
        p = Path(pretrained).expanduser()
        if p.exists() or str(pretrained).endswith((".pth", ".pt", ".bin", ".ckpt", ".safetensors")) or os.sep in str(pretrained):
            if not p.is_file():
                raise FileNotFoundError(f"backbone checkpoint not found: {p}")
            local_path = p
        else:
            tag = str(pretrained)
            if tag.split(".")[0] != spec.arch:
                raise ValueError(
                    f"pretrained tag {tag!r} is for architecture {tag.split('.')[0]!r}, "
                    f"but backbone {name!r} is {spec.arch!r}"
                )
    else:
        raise TypeError(f"pretrained must be a bool, a timm tag or a path, got {pretrained!r}")

    model = timm.create_model(tag or spec.arch, pretrained=tag is not None, num_classes=0, **dict(spec.kwargs))
    if not hasattr(model, "forward_intermediates"):
        raise ValueError(f"timm model {spec.arch!r} has no forward_intermediates: it cannot give dense features")
    mean, std = spec.mean, spec.std
    if tag is not None:
        cfg = model.pretrained_cfg
        mean, std = tuple(cfg.get("mean", mean)), tuple(cfg.get("std", std))

    index = spec.feature_index if spec.feature_index is not None else _auto_feature_index(model)
    # Prune before loading: weights of the dropped stages (e.g. layer4) are then simply extra keys.
    _prune(model, index)
    if local_path is not None:
        load_backbone_checkpoint(model, local_path)
    backbone = Backbone(name, model, index, mean, std)
    backbone.set_finetune(finetune)
    return backbone


_WRAPPER_KEYS = ("state_dict", "model", "teacher")
_PREFIXES = ("module.", "backbone.", "model.")
# Keys of self-supervised releases / classifier heads that are not part of the feature extractor.
_IGNORED_PREFIXES = ("masked_embed", "head.", "fc.", "head_dist.", "pre_logits.")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely (``weights_only=True``) and unwrap it to a flat state dict."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-tensor payloads
        raise BackboneCheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    for _ in range(3):
        if isinstance(obj, Mapping) and not _is_state_dict(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                raise BackboneCheckpointError(
                    f"{path}: expected a state dict or one wrapped under {_WRAPPER_KEYS}, "
                    f"found keys {sorted(obj)[:10]}"
                )
            obj = inner
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        raise BackboneCheckpointError(f"{path}: no state dict of tensors found")
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        changed = True
        while changed:
            changed = False
            for pre in _PREFIXES:
                if k.startswith(pre):
                    k, changed = k[len(pre):], True
        out[k] = v
    return out


def _is_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_backbone_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a local checkpoint into a timm model; every model weight must be present and fit."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    mis_shaped = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or mis_shaped:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:20])}" + (" ..." if len(missing) > 20 else ""))
        if mis_shaped:
            parts.append(f"mis-shaped keys ({len(mis_shaped)}): {'; '.join(mis_shaped[:20])}")
        raise BackboneCheckpointError(f"checkpoint {path} does not fit {type(model).__name__}: " + " | ".join(parts))
    extra = [k for k in state if k not in own]
    unknown = [k for k in extra if not k.startswith(_IGNORED_PREFIXES)]
    if unknown:
        log.info("checkpoint %s: ignoring %d keys not in the model: %s", path, len(unknown), unknown[:10])
    model.load_state_dict({k: state[k] for k in own}, strict=True)
