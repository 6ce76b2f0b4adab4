"""DINOv2-B/14 by name: registration, offline pretrained weights, padded inputs.

Random weights at small sizes (ViT-B on two cores): the builds and forwards are marked slow,
the registry and the error path are quick.
"""

from __future__ import annotations

import pytest
import torch

from simsc import SimSC
from simsc.backbones import BACKBONES, BackboneCheckpointError, build_backbone
from simsc.coords import feature_to_image, image_to_feature
from simsc.pck import pck, theta_img

DINOV2 = {"dinov2_vitb14": "vit_base_patch14_dinov2", "dinov2_vitb14_reg4": "vit_base_patch14_reg4_dinov2"}


@pytest.mark.parametrize("name", DINOV2)
def test_dinov2_is_registered_with_its_tag_and_patch_centre(name):
    spec = BACKBONES[name]
    assert spec.arch == DINOV2[name] and spec.default_pretrained == f"{DINOV2[name]}.lvd142m"
    assert spec.cell_origin == 6.5  # (14 - 1) / 2: a token sits at its patch centre
    assert spec.hub is not None and spec.hub.repo_id == f"timm/{DINOV2[name]}.lvd142m"
    assert spec.hub.release.endswith(".pth") and spec.timm_vit_filter


@pytest.mark.parametrize("name", DINOV2)
@pytest.mark.parametrize("how", [True, "tag"])
def test_pretrained_dinov2_without_cached_weights_fails_at_once_naming_the_download(name, how, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    pretrained = True if how is True else BACKBONES[name].default_pretrained
    with pytest.raises(BackboneCheckpointError) as err:
        build_backbone(name, pretrained=pretrained)
    msg = str(err.value)
    assert f"huggingface-cli download timm/{DINOV2[name]}.lvd142m model.safetensors" in msg
    assert str(tmp_path) in msg and "model.pretrained=<path>" in msg and "dl.fbaipublicfiles.com" in msg


def _fake_hub_cache(root, repo_id: str, state: dict[str, torch.Tensor]) -> None:
    """The Hugging Face cache layout: refs/main names a snapshot that holds model.safetensors."""
    from safetensors.torch import save_file

    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"))


@pytest.mark.slow
def test_pretrained_dinov2_reads_the_cached_file_and_metas_release_layout(tmp_path, monkeypatch):
    import huggingface_hub.constants

    torch.manual_seed(0)
    ref = build_backbone("dinov2_vitb14_reg4", pretrained=False).model.state_dict()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _fake_hub_cache(tmp_path / "hub", BACKBONES["dinov2_vitb14_reg4"].hub.repo_id, ref)
    loaded = build_backbone("dinov2_vitb14_reg4", pretrained=True).model.state_dict()
    assert all(torch.equal(loaded[k], ref[k]) for k in ref)
    # Meta's release: a mask token, register_tokens instead of timm's reg_token, and a position for the
    # class token in pos_embed (timm folds it into cls_token: zero here, so the tokens stay equal)
    release = {("register_tokens" if k == "reg_token" else k): v for k, v in ref.items()}
    release["mask_token"] = torch.zeros(1, 768)
    release["pos_embed"] = torch.cat([torch.zeros(1, 1, 768), ref["pos_embed"]], 1)
    path = tmp_path / "dinov2_vitb14_reg4_pretrain.pth"
    torch.save(release, path)
    loaded = build_backbone("dinov2_vitb14_reg4", pretrained=path).model.state_dict()
    assert all(torch.equal(loaded[k], ref[k]) for k in ref)


@pytest.mark.slow
@pytest.mark.parametrize("name", DINOV2)
def test_padded_inputs_keep_the_cell_mapping_and_original_size_pck(name):
    """A 256 x 200 image (neither a multiple of 14) pads to 266 x 210, 19 x 15 cells. Matching the image
    with itself must put every keypoint back on its own cell, so the image -> cell -> image mapping
    (cell u at 6.5 + 14 u) holds up to the bottom/right edge, and PCK at the original size uses
    the original size's threshold (max(256, 200) = 256, not the padded 266)."""
    torch.manual_seed(0)
    model = SimSC(name, "fixed:1", finetune="none").eval()
    assert model.stride == 14 and model.cell_origin == 6.5
    h, w = 256, 200
    img = torch.rand(1, 3, h, w)
    with torch.no_grad():
        feat = model.backbone(img)
    assert feat.shape[-2:] == (19, 15)  # ceil(256 / 14), ceil(200 / 14)
    # keypoints on cell centres, up to the last ones inside the image (cell 13: x 188.5; cell 17: y 244.5)
    cells = torch.tensor([[0, 0], [7, 9], [13, 17], [13, 0], [0, 17]], dtype=torch.float32)  # (u, v) = (x, y)
    kps = feature_to_image(cells, 14, 6.5).unsqueeze(0)
    assert kps[0, 2].tolist() == [188.5, 244.5]
    assert torch.allclose(image_to_feature(kps, 14, 6.5)[0], cells)
    pred = model.predict(img, img, kps, beta_eval=1e-3)
    assert torch.allclose(pred, kps, atol=0.05), (pred - kps).abs().max()
    # off-centre keypoints, the image corners among them (x 199 is nearest to cell 14, centred at 202.5 in
    # the padding): the prediction is a cell centre at most half a cell diagonal (9.9 px) away
    g = torch.Generator().manual_seed(1)
    corners = torch.tensor([[[199.0, 255.0], [199.0, 0.0], [0.0, 255.0]]])
    kps = torch.cat([torch.rand(1, 12, 2, generator=g) * torch.tensor([w - 1.0, h - 1.0]), corners], 1)
    pred = model.predict(img, img, kps, beta_eval=1e-3)
    err = (pred - kps).norm(dim=-1)
    assert (err <= 7 * 2**0.5 + 0.05).all(), err
    thr = theta_img(torch.tensor([h]), torch.tensor([w]))
    assert float(thr) == 256.0
    assert pck(pred, kps, thr, alphas=(0.05,))[0.05] == 1.0  # 0.05 * 256 = 12.8 px > 9.9 px
