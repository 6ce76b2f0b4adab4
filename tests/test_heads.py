"""Matching heads (supp. Sec. 5): registry, shapes, gradients, where the temperature acts,
NCNet's symmetry and 4D convolution, a tiny overfit, exact checkpoint resume. Each head's
rules against its original: ``tests/test_heads_faithful.py``.

Every parametrised check runs over every registered head (``small`` preset, ResNet-18,
random init: no weights are downloaded).
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from simsc import SimSC
from simsc.backbones import build_backbone
from simsc.config import ConfigError, load_config
from simsc.engine import Callback, Trainer, load_model, param_groups
from simsc.engine.toy import ToyTranslationPairs
from simsc.heads import (
    HEADS,
    MatchingHead,
    build_head,
    correlation_4d,
    list_heads,
    register_head,
    sample_correlation,
    swap_ab,
)
from simsc.heads.ncnet import Conv4d, mutual_matching

ALL_HEADS = list_heads()


def test_registry_has_the_three_heads_and_rejects_unknown_and_duplicate_names():
    assert ALL_HEADS == ["cats", "ncnet", "sfnet"]
    with pytest.raises(ValueError, match="unknown matching head 'superglue'"):
        build_head("superglue", (256,))
    with pytest.raises(ValueError, match="preset must be one of"):
        build_head("ncnet", (256,), preset="huge")
    with pytest.raises(ValueError, match="already registered"):
        register_head("ncnet")(type("Other", (MatchingHead,), {}))
    with pytest.raises(ValueError, match="reads 2 backbone levels"):
        build_head("sfnet", (256,))


def _model(head: str, temperature: str = "mlp", finetune: str = "last_block", resolution: int = 64, **kw) -> SimSC:
    torch.manual_seed(0)
    return SimSC(
        "resnet18", temperature, finetune=finetune, head=head, head_preset="small", head_resolution=resolution, **kw
    )


def _batch(b=2, n=5, size=(64, 64), size_b=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    hb, wb = size_b or size
    return {
        "src_img": torch.rand(b, 3, *size, generator=g),
        "trg_img": torch.rand(b, 3, hb, wb, generator=g),
        "src_kps": torch.rand(b, n, 2, generator=g) * (torch.tensor([size[1], size[0]]) - 1),
        "trg_kps": torch.rand(b, n, 2, generator=g) * (torch.tensor([wb, hb]) - 1),
        "valid": torch.ones(b, n, dtype=torch.bool),
    }


def test_backbone_exposes_extra_levels_and_keeps_the_main_output():
    bb = build_backbone("resnet18", finetune="last_block", level_offsets=(0, -1, 1)).eval()
    assert bb.level_channels == (256, 128, 512) and bb.level_strides == (16, 8, 32)
    x = torch.rand(1, 3, 80, 112)
    levels = bb.forward_levels(x)
    assert [tuple(f.shape[-2:]) for f in levels] == [(5, 7), (10, 14), (3, 4)]
    assert torch.equal(levels[0], bb(x))
    # ``last_block`` is the deepest level's last block (layer4 here), the only trainable part
    trainable = {n.split(".")[0] + "." + n.split(".")[1] for n, p in bb.model.named_parameters() if p.requires_grad}
    assert trainable == {"layer4.1"}
    with pytest.raises(ValueError, match="level offsets \\[3\\] fall outside"):
        build_backbone("resnet18", level_offsets=(0, 3))


@pytest.mark.parametrize("head", ALL_HEADS)
@pytest.mark.parametrize("sizes", [((64, 64), (64, 64)), ((64, 96), (80, 48))], ids=["square", "non-square"])
def test_output_shapes(head, sizes):
    size_a, size_b = sizes
    model = _model(head).eval()
    batch = _batch(size=size_a, size_b=size_b)
    out = model(batch["src_img"], batch["trg_img"])
    uv_a = model.to_feature(batch["src_kps"])
    scores = model.query_scores(out, uv_a)
    cells_b = tuple(-(-s // 16) for s in size_b)
    assert scores.shape == (2, 5, *cells_b) and torch.isfinite(scores).all()
    assert out["beta_a"].shape == (2,) and out["feat_a"].shape[-2:] == tuple(-(-s // 16) for s in size_a)
    pred = model.predict(batch["src_img"], batch["trg_img"], batch["src_kps"])
    assert pred.shape == (2, 5, 2) and torch.isfinite(pred).all()
    if size_a == size_b:
        losses = model.train().loss(batch)
        assert torch.isfinite(losses["loss"]) and losses["loss"].dim() == 0


def _unzero_batchnorm(model: SimSC) -> None:
    """timm zero-inits the last BN of each residual block; undo it so every weight gets gradient."""
    with torch.no_grad():
        for mod in model.backbone.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.fill_(1.0)


@pytest.mark.parametrize("head", ALL_HEADS)
@pytest.mark.parametrize("finetune", ["last_block", "none"])
def test_gradients_reach_head_temperature_and_finetuned_backbone(head, finetune):
    model = _model(head, finetune=finetune).train()
    _unzero_batchnorm(model)
    model.loss(_batch())["loss"].backward()
    for name, p in model.head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.temperature.mlp[0].weight.grad.abs().sum() > 0
    trainable = list(model.backbone.trainable_parameters())
    assert bool(trainable) == (finetune != "none")
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    assert all(p.grad is None for p in model.backbone.parameters() if not p.requires_grad)


def test_default_temperatures_are_the_heads_own():
    for head, name, beta_eval in (
        ("sfnet", "fixed:0.02", 1.0),
        ("cats", "fixed:0.02", 1.0),
        ("ncnet", "fixed:1", 0.02),
    ):
        model = _model(head, temperature="default")
        assert model.temperature.name == name and model.temperature.default_beta_eval == beta_eval
    with pytest.raises(ValueError, match="set a head"):
        SimSC("resnet18", "default")


def _same_weights(head: str, temperature: str, ref: SimSC) -> SimSC:
    model = _model(head, temperature=temperature)
    model.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("temperature.")}, strict=False)
    return model.eval()


@pytest.mark.parametrize("head", ALL_HEADS)
def test_heads_consume_the_cosine_correlation_and_divide_their_scores_by_beta_a_beta_b(head):
    """The temperature replaces each original's own: the head sees the unscaled cosine
    correlation and its final scores are divided by ``beta_A beta_B``."""
    ref = _model(head, temperature="fixed:1").eval()
    model = _same_weights(head, "mlp", ref)
    batch = _batch()
    uv = ref.to_feature(batch["src_kps"])
    out = model(batch["src_img"], batch["trg_img"])
    unscaled = ref.query_scores(ref(batch["src_img"], batch["trg_img"]), uv)
    expected = unscaled / (out["beta_a"] * out["beta_b"]).view(-1, 1, 1, 1)
    assert torch.allclose(model.query_scores(out, uv), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out["beta_a"] * out["beta_b"], torch.ones(()))  # the check is not vacuous


@pytest.mark.parametrize("head", ["ncnet", "cats"])
def test_refining_heads_consume_the_cosine_correlation(head):
    """The correlation the head refines is the cosine of the backbone features (CATs: mutual-NN filtered)."""
    from simsc.heads.cats import mutual_nn_filter

    model = _model(head, temperature="mlp").eval()
    seen = []
    refine = model.head.refine
    model.head.refine = lambda corr, *a: seen.append(corr) or refine(corr, *a)
    batch = _batch()
    model(batch["src_img"], batch["trg_img"])
    raw_a, raw_b = model.backbone(batch["src_img"]), model.backbone(batch["trg_img"])
    cos = correlation_4d(F.normalize(raw_a, dim=1), F.normalize(raw_b, dim=1))
    if head == "ncnet":
        corr = seen[0]
    else:  # CATs: level 0 = layer3, already on the 4 x 4 grid at 64 px
        corr, cos = seen[0][:, 0], mutual_nn_filter(cos.flatten(3).flatten(1, 2))
    assert torch.allclose(corr.reshape(cos.shape), cos, rtol=1e-4, atol=1e-5)


def test_mutual_matching_by_hand():
    corr = torch.tensor([[1.0, 0.5], [0.25, 2.0]]).view(1, 1, 2, 1, 2)  # A cells x B cells
    # c * (c / max over A of its B column) * (c / max over B of its A row)
    expected = torch.tensor([[1 * 1 * 1, 0.5 * (0.5 / 2) * (0.5 / 1)], [0.25 * (0.25 / 1) * (0.25 / 2), 2 * 1 * 1]])
    assert torch.allclose(mutual_matching(corr, eps=0).view(2, 2), expected)


def test_conv4d_matches_a_direct_sum_over_the_kernel():
    torch.manual_seed(0)
    conv = Conv4d(2, 3, 3)
    x = torch.randn(2, 2, 3, 4, 3, 2)
    xp = F.pad(x, (1, 1) * 4)
    expected = torch.zeros(2, 3, 3, 4, 3, 2)
    for di, dj, dk, dl in itertools.product(range(3), repeat=4):
        patch = xp[:, :, di : di + 3, dj : dj + 4, dk : dk + 3, dl : dl + 2]
        expected += torch.einsum("oc,bcijkl->boijkl", conv.weight[:, :, di, dj, dk, dl], patch)
    expected += conv.bias.view(1, -1, 1, 1, 1, 1)
    assert torch.allclose(conv(x), expected, atol=1e-5)


@pytest.mark.parametrize("preset", ["small", "paper"])
def test_ncnet_consensus_is_symmetric_under_swapping_a_and_b(preset):
    torch.manual_seed(0)
    head = build_head("ncnet", (256,), preset=preset)
    corr = torch.rand(2, 3, 4, 5, 2)  # non-square, different grids for A and B
    # NCNet brackets its mutual matching c * (r_A * r_B): the symmetry is exact, not to rounding
    assert torch.equal(head.refine(swap_ab(corr)), swap_ab(head.refine(corr)))
    # and through the whole model: (B, A) gives the swapped correlation
    model = _model("ncnet").eval()
    batch = _batch(size=(64, 48), size_b=(48, 80))
    ab = model(batch["src_img"], batch["trg_img"])["head"]["corr"]
    ba = model(batch["trg_img"], batch["src_img"])["head"]["corr"]
    assert torch.allclose(ba, swap_ab(ab), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("head", ALL_HEADS)
def test_the_head_starts_from_the_same_weights_whatever_the_temperature(head):
    a = _model(head, temperature="default").head.state_dict()
    b = _model(head, temperature="mlp").head.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("preset", ["small", "paper"])
def test_ncnet_consensus_is_not_dead_at_initialisation(preset):
    """One output channel after a ReLU: a random init would be all zero for about half the seeds."""
    for seed in range(6):
        torch.manual_seed(seed)
        head = build_head("ncnet", (256,), preset=preset)
        corr = torch.rand(1, 4, 4, 4, 4)
        assert (head.refine(corr) > 0).float().mean() > 0.5, seed


def test_sample_correlation_reads_rows_at_cell_centres_and_interpolates_between():
    corr = torch.randn(1, 3, 4, 2, 5)
    uv = torch.tensor([[[2.0, 1.0], [0.5, 0.0]]])
    rows = sample_correlation(corr, uv)
    assert torch.equal(rows[0, 0], corr[0, 1, 2])
    assert torch.allclose(rows[0, 1], (corr[0, 0, 0] + corr[0, 0, 1]) / 2)


def _flipped_pairs(n=2, size=96):
    """Translated texture pairs with the target mirrored: random features do not match them."""
    ds = ToyTranslationPairs(n, size, max_shift=20, grid=4, seed=3)
    items = [ds[i] for i in range(n)]
    batch = {k: torch.stack([it[k] for it in items]) for k in ("src_img", "trg_img", "src_kps", "trg_kps", "valid")}
    batch["trg_img"] = batch["trg_img"].flip(-1)
    batch["trg_kps"][..., 0] = size - 1 - batch["trg_kps"][..., 0]
    return batch


def _pck(model: SimSC, batch, alpha=0.1, size=96) -> float:
    model.eval()
    pred = model.predict(batch["src_img"], batch["trg_img"], batch["src_kps"])
    model.train()
    return float(((pred - batch["trg_kps"]).norm(dim=-1) <= alpha * size).float().mean())


@pytest.mark.parametrize("head", ALL_HEADS)
def test_tiny_overfit_drives_pck_well_above_untrained(head):
    batch = _flipped_pairs()
    model = _model(head, finetune="all", resolution=96).train()
    untrained = _pck(model, batch)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(40):
        loss = model.loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained = _pck(model, batch)
    assert untrained <= 0.25 and trained >= 0.8, (untrained, trained)


def test_config_fields_and_parameter_group():
    cfg = load_config(
        {
            "model": {"head": "cats", "temperature": "default", "backbone": "resnet18", "pretrained": False},
            "train": {"lr_head": 3e-4},
        }
    )
    assert cfg.resolved_lr_head() == 3e-4
    from simsc.engine import build_model

    groups = {g["name"]: g for g in param_groups(build_model(cfg), cfg)}
    assert groups["head"]["lr"] == 3e-4 and len(groups["head"]["params"]) > 0
    with pytest.raises(ConfigError, match="model.head: must be 'none' or one of"):
        load_config({"model": {"head": "dino"}})
    with pytest.raises(ConfigError, match="model.temperature: 'default' is a matching head"):
        load_config({"model": {"temperature": "default"}})
    with pytest.raises(ConfigError, match="model.head_preset"):
        load_config({"model": {"head": "ncnet", "head_preset": "tiny"}})
    with pytest.raises(ConfigError, match="train.lr_head"):
        load_config({"train": {"lr_head": -1}})


class _Interrupt(Exception):
    pass


class _StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step(self, metrics):
        if metrics["step"] == self.step:
            raise _Interrupt


def _head_config(out_dir, head):
    return {
        "model": {
            "backbone": "resnet18",
            "pretrained": False,
            "finetune": "last_block",
            "temperature": "mlp",
            "head": head,
            "head_preset": "small",
        },
        "data": {"batch_size": 2, "resolution": 64},
        "train": {
            "epochs": 1,
            "max_steps": 5,
            "lr_backbone": 1e-3,
            "lr_head": 1e-3,
            "out_dir": str(out_dir),
            "progress": False,
            "val_max_pairs": 2,
            "checkpoint_every_steps": 2,
            "num_threads": 1,
            "device": "cpu",
        },
    }


@pytest.mark.parametrize("head", ALL_HEADS)
def test_checkpoint_saves_and_resumes_the_head_exactly(tmp_path, head):
    trn, val = ToyTranslationPairs(10, 64, seed=0), ToyTranslationPairs(2, 64, seed=1, split="val")
    Trainer(_head_config(tmp_path / "ref", head), train_dataset=trn, val_dataset=val).fit()
    run = tmp_path / "run"
    with pytest.raises(_Interrupt):  # dies at step 3: last.pt is from step 2
        Trainer(_head_config(run, head), callbacks=[_StopAt(3)], train_dataset=trn, val_dataset=val).fit()
    summary = Trainer(_head_config(run, head), train_dataset=trn, val_dataset=val).fit(resume=True)
    assert summary["resumed_from_step"] == 2 and summary["step"] == 5
    ref = torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", weights_only=True)["model"]
    got = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert got.keys() == ref.keys() and any(k.startswith("head.") for k in got)
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    model, cfg, _ = load_model(run / "checkpoints" / "last.pt")
    assert cfg.model.head == head and type(model.head) is HEADS[head]
    assert all(torch.equal(v, got[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("head", ["sfnet", "ncnet"])
def test_a_checkpoint_of_the_earlier_heads_is_refused_with_a_clear_error(tmp_path, head):
    """The earlier heads stored no ``head.layout_version`` (and SFNet/CATs other layers): refused, not misread."""
    from simsc.engine import CheckpointError
    from simsc.engine.checkpoint import atomic_save, load_checkpoint

    trn, val = ToyTranslationPairs(4, 64, seed=0), ToyTranslationPairs(2, 64, seed=1, split="val")
    cfg = _head_config(tmp_path / "run", head)
    cfg["train"]["max_steps"] = 1
    Trainer(cfg, train_dataset=trn, val_dataset=val).fit()
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(path)
    del ckpt["model"]["head.layout_version"]
    ckpt.pop("digest", None)
    atomic_save(ckpt, path)
    with pytest.raises(CheckpointError, match=f"(?s)the '{head}' head changed.*retrain it.*head.layout_version"):
        load_model(path)


def test_report_tab2_section_lays_out_ours_beside_the_paper(tmp_path):
    import json

    import yaml

    from pipeline.report import PAPER_NUMBERS, heads_tab2_section, paper_reference

    numbers = yaml.safe_load(PAPER_NUMBERS.read_text())
    cell = {"0.05": {"mean": 12.34, "std": 1.0}, "0.1": {"mean": 45.6, "std": 0.25}}
    results = {
        "setup": {
            "data": "/x/data/embedded",
            "backbone": "resnet18",
            "resolution": 160,
            "steps": 50,
            "seeds": [0, 1],
            "heads": ["ncnet"],
        },
        "summary": {"default|ncnet": cell},
    }
    path = tmp_path / "heads.json"
    path.write_text(json.dumps(results))
    text = "\n".join(heads_tab2_section(path, numbers))
    assert "| default temperature, beta_eval 0.02 | 12.3 ± 1.0 / 45.6 ± 0.2 | 80.0 / 92.9 |" in text
    assert "| + SimSC, beta_eval = learned | - | 82.8 / 93.2 |" in text
    assert "not PF-Pascal" in text
    # a head run is not matched to a paper row of SimSC without a head
    cfg = {
        "model": {"backbone": "resnet101", "temperature": "mlp", "finetune": "last_block", "pretrained": True},
        "data": {"dataset": "pfpascal"},
    }
    assert paper_reference(cfg, "pfpascal", "256", numbers)[0] == "SimSC-ResNet101"
    cfg["model"]["head"] = "sfnet"
    assert paper_reference(cfg, "pfpascal", "256", numbers) is None
