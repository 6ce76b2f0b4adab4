import pytest
import torch

from simsc.backbones import BACKBONES, BackboneCheckpointError, build_backbone, measure_cell_origin, read_state_dict

#: Backbones whose build and forward take seconds on a CPU: their cases run in `make test`, not in
#: `make test-fast` (resnet18 keeps every check in the quick tier).
HEAVY = ("resnet34", "resnet50", "resnet101", "dino_vitb8", "ibot_vitb16")


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
    ],
)
def test_feature_shapes_follow_the_stride(name, channels, size, expected):
    bb = build_backbone(name, pretrained=False, finetune="none").eval()
    with torch.no_grad():
        f = bb(torch.rand(1, 3, *size))
    assert f.shape == (1, channels, *expected)
    assert bb.stride == {"resnet101": 16, "resnet18": 16, "dino_vitb8": 8, "ibot_vitb16": 16}[name]


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
    for size in (((128, 128), (96, 160)) if BACKBONES[name].kwargs else ((256, 256), (192, 320)))
]


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


@pytest.mark.slow
def test_cell_centres_of_the_two_conventions():
    # ResNet layer3: centred stride-2 convs -> pixel 16 u; ViT patch u covers [s u, s (u + 1)) -> (s - 1) / 2 + s u
    assert build_backbone("resnet18").cell_origin == 0.0
    assert build_backbone("vit_tiny_patch16_224").cell_origin == 7.5
    # an unregistered patchifying CNN (ConvNeXt stem 4x4/4, downsamplers 2x2/2) is measured and snapped
    assert build_backbone("convnext_atto", finetune="none").cell_origin == 7.5
    # an unregistered centred-conv CNN
    assert build_backbone("regnetx_002", finetune="none").cell_origin == 0.0
