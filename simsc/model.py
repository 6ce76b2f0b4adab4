"""The SimSC model: a backbone and a temperature module, optionally a matching head.

Data flow: pair batch -> :meth:`SimSC.features` (backbone, beta, L2 norm, scaling) ->
query score maps -> Gaussian targets -> loss (training) or kernel soft-argmax ->
image coordinates (:meth:`SimSC.predict`). With a matching head (``head="sfnet" | "ncnet" |
"cats"``, :mod:`simsc.heads`) the backbone's levels go to the head, which divides its
final scores by the temperature (where its original applies its own) and gives the query
score maps; the loss, the soft-argmax and the PCK path are the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from . import defaults as D
from .backbones import Backbone, build_backbone
from .coords import CELL_CENTRES, feature_to_image, image_to_feature, keypoint_mask, patch_centre_origin
from .loss import check_loss_forms, simsc_loss
from .matching import normalize_and_scale, query_score_maps
from .soft_argmax import kernel_soft_argmax
from .temperature import Temperature, build_temperature, effective_temperature

if TYPE_CHECKING:
    from .config import Config
    from .heads import MatchingHead


def _check_keypoints(kps: torch.Tensor, valid: torch.Tensor | None, name: str, values: bool = True) -> torch.Tensor:
    """Shape checks (metadata only, free) and, with ``values``, the NaN check, which reads a
    value on the host: a device sync when ``kps`` is on an accelerator."""
    if not isinstance(kps, torch.Tensor) or kps.dim() != 3 or kps.shape[-1] != 2:
        shape = tuple(kps.shape) if isinstance(kps, torch.Tensor) else type(kps).__name__
        raise ValueError(f"{name} must be [B, N, 2] (x, y) pixels, got {shape}")
    if kps.shape[1] == 0:
        raise ValueError(f"{name} is an empty keypoint set (N = 0)")
    valid = keypoint_mask(kps, valid, name)
    if values and bool((torch.isnan(kps).any(-1) & valid).any()):
        raise ValueError(f"{name} has NaN coordinates at valid keypoints; mark them invalid instead")
    return valid


def check_batch(batch: Mapping[str, torch.Tensor]) -> None:
    """Validate a training batch where it is cheap: on the CPU, before it moves to the device.

    Checks the keypoint shapes, NaN coordinates at valid keypoints and that the batch has a
    valid keypoint, with the messages :meth:`SimSC.loss` gives when it checks itself; the
    trainer calls this once per batch so that the loss on the device never reads values back.
    """
    valid = _check_keypoints(batch["src_kps"], batch.get("valid"), "src_kps")
    _check_keypoints(batch["trg_kps"], valid, "trg_kps")
    if not bool(valid.any()):
        raise ValueError("the batch has no valid keypoint (every row of 'valid' is False)")


def _checks_are_free(batch: Mapping[str, torch.Tensor]) -> bool:
    kps = batch.get("src_kps")
    return not isinstance(kps, torch.Tensor) or kps.device.type == "cpu"


class SimSC(nn.Module):
    """Backbone + temperature module with the paper's loss and inference.

    Args:
        backbone: a :class:`~simsc.backbones.Backbone` or a registered name.
        temperature: ``"mlp"``, ``"single"``, ``"fixed:<beta>"``, ``"no-l2"`` or a module.
        pretrained, finetune: passed to :func:`~simsc.backbones.build_backbone` for names.
        ns, nk: ground-truth region and Gaussian kernel sizes (paper: 3 and 5).
        sigma: kernel soft-argmax std in feature cells (paper: 7); ``None``: 7, or the head's
            own (SFNet localises with 5, :attr:`~simsc.heads.MatchingHead.default_sigma`).
        gamma, beta_thres: weight and threshold of the temperature regulariser (0.2, 0.1).
        ce_interpolation: ``"prob"`` (the paper's log of the interpolated probability) or
            ``"logprob"`` (the interpolated log-probability); see :mod:`simsc.loss`.
        reg_over_images: ``"sum"`` (``L_reg(beta_A) + L_reg(beta_B)``) or ``"mean"``.
        cell_centre: ``"backbone"`` (cell centres where the backbone declares them,
            :attr:`~simsc.backbones.Backbone.cell_origin`) or ``"patch"`` (the patch centre
            ``(s - 1) / 2`` for every backbone: the mapping before cell centres per backbone).
        head: ``"none"`` (SimSC) or a registered matching head (:func:`simsc.heads.list_heads`).
            ``temperature="default"`` then means the head's own training temperature.
        head_preset: ``"paper"`` or ``"small"`` head sizes. head_resolution: the square
            training size; heads with size-dependent layers (CATs' token length) are built
            for its feature grid.
    """

    def __init__(
        self,
        backbone: Backbone | str = D.BACKBONE,
        temperature: Temperature | str = D.TEMPERATURE,
        *,
        pretrained: bool | str = False,
        finetune: str = D.FINETUNE,
        ns: int = D.NS,
        nk: int = D.NK,
        sigma: float | None = None,
        gamma: float = D.GAMMA,
        beta_thres: float = D.BETA_THRES,
        ce_interpolation: str = D.CE_INTERPOLATION,
        reg_over_images: str = D.REG_OVER_IMAGES,
        cell_centre: str = D.CELL_CENTRE,
        head: MatchingHead | str = D.HEAD,
        head_preset: str = D.HEAD_PRESET,
        head_resolution: int = D.RESOLUTION,
    ) -> None:
        super().__init__()
        head_name = head if isinstance(head, str) else getattr(head, "name", "")
        if isinstance(backbone, str):
            offsets: tuple[int, ...] = (0,)
            if head_name != "none":
                from .heads import head_level_offsets

                offsets = head_level_offsets(head_name)
            backbone = build_backbone(backbone, pretrained=pretrained, finetune=finetune, level_offsets=offsets)
        self.backbone = backbone
        self.head: MatchingHead | None = None
        if isinstance(head, str) and head != "none":
            from .heads import build_head

            g = -(-int(head_resolution) // backbone.stride)
            # Built before the temperature module: a head starts from the same weights whether
            # the temperature is fixed or learned (the mlp's init would shift the RNG otherwise).
            head = build_head(head, backbone.level_channels, preset=head_preset, grid=(g, g))
        if not isinstance(head, str):
            self.head = head
        if temperature == "default":
            if head_name == "none":
                raise ValueError("temperature 'default' means a matching head's own temperature: set a head")
            from .heads import head_default_temperature

            temperature = head_default_temperature(head_name)
        if isinstance(temperature, str):
            temperature = build_temperature(temperature, backbone.out_channels)
        self.temperature = temperature
        if sigma is None:
            sigma = self.head.default_sigma if self.head is not None else D.SIGMA
        self.ns, self.nk, self.sigma = ns, nk, float(sigma)
        self.gamma, self.beta_thres = gamma, beta_thres
        check_loss_forms(ce_interpolation, reg_over_images)
        self.ce_interpolation, self.reg_over_images = ce_interpolation, reg_over_images
        self.cell_centre = cell_centre

    @property
    def stride(self) -> int:
        return self.backbone.stride

    @property
    def cell_centre(self) -> str:
        return self._cell_centre

    @cell_centre.setter
    def cell_centre(self, value: str) -> None:
        if value not in CELL_CENTRES:
            raise ValueError(f"cell_centre must be one of {CELL_CENTRES}, got {value!r}")
        self._cell_centre = value

    @property
    def cell_origin(self) -> float:
        """Pixel of cell 0's centre under the model's ``cell_centre`` rule."""
        if self.cell_centre == "patch":
            return patch_centre_origin(self.stride)
        return self.backbone.cell_origin

    def to_feature(self, xy: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Image pixels ``[B, N, 2]`` -> feature cells of this backbone (invalid rows set to 0)."""
        uv = image_to_feature(xy, self.stride, self.cell_origin)
        if valid is None:
            return uv
        # Padded rows may hold any value; zero them so they cannot produce NaN.
        return torch.where(valid.unsqueeze(-1), uv, uv.new_zeros(()))

    def to_image(self, uv: torch.Tensor) -> torch.Tensor:
        """Feature cells ``[B, N, 2]`` -> image pixels of this backbone."""
        return feature_to_image(uv, self.stride, self.cell_origin)

    def features(self, images: torch.Tensor, check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features, L2-normalised and divided by their partial temperature; and beta ``[B]``.
        ``check=False`` skips the ``beta > 0`` check (a host read)."""
        feat = self.backbone(images)
        beta = self.temperature(feat)
        return normalize_and_scale(feat, beta, l2=self.temperature.l2_normalize, check=check), beta

    def forward(self, src_img: torch.Tensor, trg_img: torch.Tensor, check: bool = True) -> dict[str, torch.Tensor]:
        if self.head is not None:
            return self._forward_head(src_img, trg_img, check)
        if src_img.shape[-2:] == trg_img.shape[-2:] and src_img.shape[0] == trg_img.shape[0]:
            # One backbone pass for both images: same cost, better kernel utilisation.
            feat, beta = self.features(torch.cat([src_img, trg_img]), check)
            feat_a, feat_b = feat.chunk(2)
            beta_a, beta_b = beta.chunk(2)
        else:
            feat_a, beta_a = self.features(src_img, check)
            feat_b, beta_b = self.features(trg_img, check)
        return {"feat_a": feat_a, "feat_b": feat_b, "beta_a": beta_a, "beta_b": beta_b}

    def _forward_head(self, src_img: torch.Tensor, trg_img: torch.Tensor, check: bool = True) -> dict:
        """Backbone levels -> temperature (from the main level) -> the head's state under ``"head"``."""
        bb, head = self.backbone, self.head
        if head is None:  # forward() takes this path only with a head
            raise RuntimeError("SimSC._forward_head: the model has no matching head")
        if src_img.shape[-2:] == trg_img.shape[-2:] and src_img.shape[0] == trg_img.shape[0]:
            levels = bb.forward_levels(torch.cat([src_img, trg_img]))
            beta_a, beta_b = self.temperature(levels[0]).chunk(2)
            levels_a, levels_b = map(list, zip(*(f.chunk(2) for f in levels), strict=True))
        else:
            levels_a, levels_b = bb.forward_levels(src_img), bb.forward_levels(trg_img)
            beta_a, beta_b = self.temperature(levels_a[0]), self.temperature(levels_b[0])
        l2 = self.temperature.l2_normalize
        return {
            # The main level as SimSC scales it: for visualisation and dtype/shape look-ups.
            "feat_a": normalize_and_scale(levels_a[0], beta_a, l2=l2, check=check),
            "feat_b": normalize_and_scale(levels_b[0], beta_b, l2=l2, check=check),
            "beta_a": beta_a,
            "beta_b": beta_b,
            "head": head(levels_a, levels_b, beta_a, beta_b, l2=l2),
        }

    def query_scores(self, out: Mapping, uv_a: torch.Tensor) -> torch.Tensor:
        """Score maps ``[B, N, h_B, w_B]`` of the queries ``uv_a`` (feature cells) from :meth:`forward`'s output."""
        if self.head is None:
            return query_score_maps(out["feat_a"], out["feat_b"], uv_a)
        return self.head.query_scores(out["head"], uv_a)

    def loss(self, batch: Mapping[str, torch.Tensor], *, check: bool | None = None) -> dict[str, torch.Tensor]:
        """Loss on a padded pair batch (keys ``src_img, trg_img, src_kps, trg_kps, valid``).

        Returns ``loss`` (to back-propagate), ``ce``, ``reg`` and detached ``beta_a``,
        ``beta_b``, ``beta_eff`` per pair.

        ``check``: the value checks (NaN keypoints, no valid keypoint, ``beta > 0``) read
        tensors on the host, a device sync each on accelerators. ``None`` (default) runs them
        when the batch is on the CPU, where they cost no sync; ``True`` always (debugging);
        ``False`` never: the trainer's path, which checks each batch on the CPU with
        :func:`check_batch` before moving it. Shape checks always run.
        """
        if check is None:
            check = _checks_are_free(batch)
        valid = _check_keypoints(batch["src_kps"], batch.get("valid"), "src_kps", check)
        _check_keypoints(batch["trg_kps"], valid, "trg_kps", check)
        out = self(batch["src_img"], batch["trg_img"], check)
        feat_a, feat_b = out["feat_a"], out["feat_b"]
        uv_a = self.to_feature(batch["src_kps"].to(feat_a.dtype), valid)
        uv_b = self.to_feature(batch["trg_kps"].to(feat_b.dtype), valid)
        scores = self.query_scores(out, uv_a)
        learned = self.temperature.learnable
        losses = simsc_loss(
            scores,
            uv_b,
            valid,
            out["beta_a"] if learned else None,
            out["beta_b"] if learned else None,
            gamma=self.gamma,
            beta_thres=self.beta_thres,
            ns=self.ns,
            nk=self.nk,
            ce_interpolation=self.ce_interpolation,
            reg_over_images=self.reg_over_images,
            check=check,
        )
        losses["beta_a"] = out["beta_a"].detach()
        losses["beta_b"] = out["beta_b"].detach()
        losses["beta_eff"] = effective_temperature(out["beta_a"], out["beta_b"]).detach()
        return losses

    def score_maps(
        self,
        src_img: torch.Tensor,
        trg_img: torch.Tensor,
        src_kps: torch.Tensor,
        valid: torch.Tensor,
        *,
        check: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Score maps ``[B, N, h_B, w_B]`` of the source keypoints (image pixels) under
        ``"scores"``, and the per-image ``beta_a`` / ``beta_b``: inference up to the
        soft-argmax, so that several ``beta_eval`` values can reuse one forward pass.
        ``check=False`` skips the ``beta > 0`` check (a host read: a device sync)."""
        out = self(src_img, trg_img, check)
        uv_a = self.to_feature(src_kps.to(out["feat_a"].dtype), valid)
        return {"scores": self.query_scores(out, uv_a), "beta_a": out["beta_a"], "beta_b": out["beta_b"]}

    def localise(self, scores: torch.Tensor, beta_eval: float, *, check: bool = True) -> torch.Tensor:
        """Kernel soft-argmax of score maps -> target image pixels ``[B, N, 2]``. ``check=False``
        skips the finiteness check of the scores (a host read)."""
        uv_b = kernel_soft_argmax(scores, sigma=self.sigma, beta=beta_eval, check=check)
        return self.to_image(uv_b)

    @torch.no_grad()
    def predict(
        self,
        src_img: torch.Tensor,
        trg_img: torch.Tensor,
        src_kps: torch.Tensor,
        valid: torch.Tensor | None = None,
        beta_eval: float | None = None,
    ) -> torch.Tensor:
        """Map source keypoints ``[B, N, 2]`` (image pixels) to target image pixels ``[B, N, 2]``.

        ``beta_eval=None`` uses the temperature's default: 1 for learned temperatures (the
        scores are already scaled), 0.02 for the no-temperature baseline ``fixed:1``.
        Invalid (padded) rows are returned as given by the sampler and should be ignored.
        The same computation as :func:`simsc.evaluate.evaluate` (:meth:`score_maps`, then
        :meth:`localise`), with the value checks on.
        """
        valid = _check_keypoints(src_kps, valid, "src_kps")
        beta_eval = self.temperature.default_beta_eval if beta_eval is None else float(beta_eval)
        scores = self.score_maps(src_img, trg_img, src_kps, valid)["scores"]
        return self.localise(scores, beta_eval)


def build_model(cfg: Config, pretrained: bool | str | None = None) -> SimSC:
    """The :class:`SimSC` model a config describes (``pretrained`` overrides ``model.pretrained``)."""
    m = cfg.model
    return SimSC(
        m.backbone,
        m.temperature,
        pretrained=m.pretrained if pretrained is None else pretrained,
        finetune=m.finetune,
        ns=m.ns,
        nk=m.nk,
        sigma=m.sigma,
        gamma=m.gamma,
        beta_thres=m.beta_thres,
        ce_interpolation=m.ce_interpolation,
        reg_over_images=m.reg_over_images,
        cell_centre=m.cell_centre,
        head=m.head,
        head_preset=m.head_preset,
        head_resolution=cfg.data.resolution,
    )
