"""Each matching head computes what its original computes: one hand-built case per rule.

SFNet (cvlab-yonsei/SFNet ``model.py``): residual adaptation blocks, their kernel sizes,
the x2 upsampling with aligned corners, the ReLU correlations' product normalised over the
target cells times 1 / temperature, sigma 5, BatchNorm per image side. CATs
(SunghwanHong/Cost-Aggregation-transformers ``models/cats.py``): the order of the two
sequential swapped passes, the mutual-NN filter before aggregation, the per-level x|y
positional embedding, ``align_corners=True`` resampling, LayerNorm eps 1e-6. NCNet
(ignacio-rocco/ncnet ``lib/model.py``): the bracketed mutual matching, exactly symmetric.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from simsc import SimSC
from simsc.config import load_config
from simsc.heads import build_head, swap_ab
from simsc.heads.cats import CATsHead, mutual_nn_filter, resize_grid
from simsc.heads.ncnet import mutual_matching
from simsc.heads.sfnet import ResidualAdaptation, SFNetHead, normalise_over_target, upsample_layer4


def _model(head: str, temperature: str = "mlp", **kw) -> SimSC:
    torch.manual_seed(0)
    return SimSC(
        "resnet18", temperature, finetune="last_block", head=head, head_preset="small", head_resolution=64, **kw
    )


# ----------------------------------------------------------------------------------------- SFNet


def _identity_block(block: ResidualAdaptation, gain: float) -> None:
    """conv = gain * identity (centre tap), BN the identity (eval mode, mean 0, var 1, eps 0)."""
    conv, bn = block.body[0], block.body[1]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        k = conv.kernel_size[0] // 2
        for c in range(conv.in_channels):
            conv.weight[c, c, k, k] = gain
    bn.eps = 0.0
    bn.eval()


def test_sfnet_adaptation_is_two_residual_blocks_in_sequence():
    head = SFNetHead((2, 3), preset="small")
    adapt3 = head.adapt[0]
    _identity_block(adapt3[0], 0.5)
    _identity_block(adapt3[1], 2.0)
    x = torch.tensor([1.0, -4.0]).view(1, 2, 1, 1).expand(1, 2, 3, 3).contiguous()
    f1 = x + F.relu(0.5 * x)  # x + B1(x)
    expected = f1 + F.relu(2.0 * f1)  # f1 + B2(f1), SFNet's two residual steps
    assert torch.allclose(adapt3(x), expected)
    # the form without B1(x) in the sum, x + B2(x + B1(x)), gives another value here
    assert not torch.allclose(adapt3(x), x + F.relu(2.0 * f1))


def test_sfnet_adaptation_kernels_are_5_on_layer3_and_3_on_layer4_at_the_input_width():
    for preset in ("paper", "small"):
        head = SFNetHead((8, 16), preset=preset)
        for level, (c, k) in enumerate(((8, 5), (16, 3))):
            for block in head.adapt[level]:
                conv = block.body[0]
                assert conv.weight.shape == (c, c, k, k) and conv.padding == (k // 2, k // 2)
                assert isinstance(block.body[1], torch.nn.BatchNorm2d) and isinstance(block.body[2], torch.nn.ReLU)


def test_sfnet_upsampling_is_scale_2_with_aligned_corners():
    f4 = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2)
    up = upsample_layer4(f4, (4, 4))[0, 0]
    # align_corners=True: the corners stay, the row 0 -> 1 ramp is in thirds (False would give 0.25 steps)
    assert torch.allclose(up[0], torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    assert torch.allclose(up[:, 0], torch.tensor([0.0, 2 / 3, 4 / 3, 2.0]))
    assert up[3, 3] == 3.0
    assert torch.equal(up, F.interpolate(f4, scale_factor=2, mode="bilinear", align_corners=True)[0, 0])
    # an odd layer3 grid (3 x 3 next to layer4's 2 x 2): the same map, its last row/column dropped
    assert torch.equal(upsample_layer4(f4, (3, 3))[0, 0], up[:3, :3])
    with pytest.raises(ValueError, match="not half the layer3 grid"):
        upsample_layer4(f4, (6, 4))


def test_sfnet_scores_are_normalised_over_the_target_cells():
    s = torch.tensor([3.0, 4.0, 0.0, 0.0, 1.0, 0.0]).view(1, 2, 1, 1, 3)  # two source cells, three target cells
    out = normalise_over_target(s)
    assert torch.allclose(out.view(2, 3), torch.tensor([[0.6, 0.8, 0.0], [0.0, 1.0, 0.0]]), atol=1e-6)
    # eps inside the root, as SFNet's L2normalize: sqrt(25 + 1e-6)
    assert out[0, 0, 0, 0, 0] == torch.tensor(3.0) / torch.tensor(25.0 + 1e-6).sqrt()


def _sfnet_reference(head: SFNetHead, levels_a, levels_b, inv_temp: float) -> torch.Tensor:
    """SFNet's forward written out as its model.py does it, on the head's own modules."""

    def norm(x):
        return x / ((x**2).sum(1, keepdim=True) + 1e-6) ** 0.5

    def side(levels):
        f3 = head.adapt[0](levels[0])
        f4 = F.interpolate(head.adapt[1](levels[1]), scale_factor=2, mode="bilinear", align_corners=True)
        return norm(f3), norm(f4)

    (a3, a4), (b3, b4) = side(levels_a), side(levels_b)
    b, c, h, w = a3.shape

    def corr(fa, fb):  # [B, target h*w, source h, source w], ReLU
        return F.relu(torch.bmm(fb.view(b, -1, h * w).transpose(1, 2), fa.view(b, -1, h * w))).view(b, h * w, h, w)

    scores = norm(corr(a3, b3) * corr(a4, b4))  # L2-normalised over the target (channel) dimension
    return (scores * inv_temp).view(b, h, w, h, w).permute(0, 3, 4, 1, 2)  # -> [B, hA, wA, hB, wB]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_sfnet_at_fixed_0_02_is_sfnets_forward(train):
    torch.manual_seed(0)
    head = SFNetHead((8, 16), preset="small").train(train)
    levels_a = [torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)]
    levels_b = [torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)]
    beta = torch.full((2,), 0.02**0.5)  # FixedTemperature's per-image share of 0.02
    got = head(levels_a, levels_b, beta, beta)["corr"]
    expected = _sfnet_reference(head, levels_a, levels_b, 50.0)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_sfnet_batchnorm_normalises_each_image_side_separately():
    torch.manual_seed(0)
    head = SFNetHead((8, 16), preset="small").train()
    levels_a = [torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)]
    levels_b = [torch.randn(2, 8, 4, 4) * 3 + 1, torch.randn(2, 16, 2, 2) * 3 + 1]
    one = torch.ones(2)
    got = head(levels_a, levels_b, one, one)["corr"]
    assert torch.allclose(got, _sfnet_reference(head, levels_a, levels_b, 1.0), rtol=1e-5, atol=1e-6)
    # one BatchNorm pass over both sides (what the head did before) differs
    both = head.embed([torch.cat([a, b]) for a, b in zip(levels_a, levels_b, strict=True)])
    assert not torch.allclose(both[0][:2], head.embed(levels_a)[0], atol=1e-3)


def test_sfnet_localises_with_sigma_5_and_the_others_with_simscs_7():
    assert _model("sfnet").sigma == 5.0
    assert _model("ncnet").sigma == 7.0 and _model("cats").sigma == 7.0
    assert SimSC("resnet18", "mlp").sigma == 7.0
    assert _model("sfnet", sigma=3.0).sigma == 3.0  # an explicit value wins
    from simsc.engine import build_model

    cfg = load_config({"model": {"backbone": "resnet18", "pretrained": False, "head": "sfnet", "head_preset": "small"}})
    assert cfg.model.sigma is None and build_model(cfg).sigma == 5.0


# ------------------------------------------------------------------------------------------ CATs


def test_cats_swapping_is_sequential_with_the_query_images_tokens_first():
    torch.manual_seed(0)
    head = CATsHead((8, 4, 16), preset="small", grid=(2, 3))
    n = 6
    corr = torch.randn(1, 3, n, n)
    app_a, app_b = torch.randn(1, 3, n, head.proj[0].out_features), torch.randn(1, 3, n, head.proj[0].out_features)
    calls = []
    aggregate = head._aggregate
    head._aggregate = lambda c, app, pos: calls.append(app) or aggregate(c, app, pos)  # type: ignore[method-assign]
    got = head.refine(corr, app_a, app_b)
    assert calls[0] is app_a and calls[1] is app_b  # A's cells are the tokens of the first pass
    pos = head.positional_embedding()
    first = aggregate(corr, app_a, pos) + corr  # [A, B]
    second = aggregate(first.transpose(-1, -2), app_b, pos) + corr.transpose(-1, -2)  # [B, A], fed by the first
    assert torch.allclose(got, second.mean(1).transpose(-1, -2), atol=1e-6)
    # neither two independent passes summed (the earlier head) nor the reverse order gives this
    parallel = aggregate(corr, app_a, pos) + aggregate(corr.transpose(-1, -2), app_b, pos).transpose(-1, -2)
    assert not torch.allclose(got, (parallel.mean(1) + corr.mean(1)), atol=1e-3)
    rev = aggregate(corr.transpose(-1, -2), app_b, pos) + corr.transpose(-1, -2)
    rev = aggregate(rev.transpose(-1, -2), app_a, pos) + corr
    assert not torch.allclose(got, rev.mean(1), atol=1e-3)


def test_cats_mutual_nn_filter_by_hand():
    c = torch.tensor([[1.0, 0.5], [0.25, 2.0]]).view(1, 1, 2, 2)  # A cells x B cells
    # c * ((c / max over B of its A row) * (c / max over A of its B column))
    expected = torch.tensor([[1.0, 0.5 * (0.5 / 1) * (0.5 / 2)], [0.25 * (0.25 / 2) * (0.25 / 1), 2.0]])
    assert torch.allclose(mutual_nn_filter(c)[0, 0], expected)
    # a zero maximum is replaced by 1e-30 (no NaN): a zero column stays zero
    z = torch.tensor([[0.0, -1.0], [0.0, -2.0]]).view(1, 1, 2, 2)
    out = mutual_nn_filter(z)
    assert torch.isfinite(out).all() and (out[..., 0] == 0).all()


def test_cats_filters_the_correlation_by_mutual_nn_before_aggregating():
    torch.manual_seed(0)
    head = CATsHead((8, 4, 16), preset="small", grid=(2, 2)).eval()
    levels_a = [torch.randn(1, 8, 2, 2), torch.randn(1, 4, 2, 2), torch.randn(1, 16, 2, 2)]
    levels_b = [torch.randn(1, 8, 2, 2), torch.randn(1, 4, 2, 2), torch.randn(1, 16, 2, 2)]
    seen = []
    refine = head.refine
    head.refine = lambda corr, *a: seen.append(corr) or refine(corr, *a)  # type: ignore[method-assign]
    head(levels_a, levels_b, torch.ones(1), torch.ones(1))
    unit = [
        (F.normalize(a, dim=1).flatten(2), F.normalize(b, dim=1).flatten(2))
        for a, b in zip(levels_a, levels_b, strict=True)
    ]
    cos = torch.stack([a.transpose(1, 2) @ b for a, b in unit], 1)
    assert torch.allclose(seen[0], mutual_nn_filter(cos), atol=1e-5)
    assert not torch.allclose(seen[0], cos, atol=1e-3)


def test_cats_positional_embedding_is_per_level_with_x_and_y_halves():
    head = CATsHead((8, 4, 16), preset="small", grid=(2, 3))
    e = head.out.in_features
    assert head.pos_x.shape == (1, 3, 1, 3, e // 2) and head.pos_y.shape == (1, 3, 2, 1, e // 2)
    pos = head.positional_embedding()
    assert pos.shape == (1, 3, 6, e)
    for lv in range(3):
        for i in range(2):
            for j in range(3):
                want = torch.cat([head.pos_x[0, lv, 0, j], head.pos_y[0, lv, i, 0]])
                assert torch.equal(pos[0, lv, i * 3 + j], want)
    assert not torch.equal(pos[0, 0], pos[0, 1])  # one per level


def test_cats_layernorm_eps_is_1e_6_and_token_width_splits_into_heads_and_halves():
    for preset in ("paper", "small"):
        head = build_head("cats", (256, 128, 512), preset=preset, grid=(5, 5))
        norms = [m for m in head.modules() if isinstance(m, torch.nn.LayerNorm)]
        assert norms and all(m.eps == 1e-6 for m in norms)
        e = head.out.in_features
        assert e % 2 == 0 and e % head.blocks[0].attn_cells.heads == 0
    # CATs' PF-Pascal sizes: 16 x 16 grid -> 256 + 128 = 384 wide tokens
    assert build_head("cats", (256, 128, 512), preset="paper", grid=(16, 16)).out.in_features == 384


def test_cats_resamples_with_aligned_corners():
    f = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2)
    up = resize_grid(f, (3, 3))[0, 0]
    assert torch.allclose(up, torch.tensor([[0.0, 0.5, 1.0], [1.0, 1.5, 2.0], [2.0, 2.5, 3.0]]))


def test_cats_at_fixed_0_02_divides_the_refined_correlation_by_0_02():
    torch.manual_seed(0)
    head = CATsHead((8, 4, 16), preset="small", grid=(2, 2)).eval()
    levels = [[torch.randn(1, c, 2, 2) for c in (8, 4, 16)] for _ in range(2)]
    one = torch.ones(1)
    beta = torch.full((1,), 0.02**0.5)
    assert torch.allclose(head(*levels, beta, beta)["corr"], head(*levels, one, one)["corr"] * 50, rtol=1e-5)


# ----------------------------------------------------------------------------------------- NCNet


def test_ncnet_mutual_matching_is_bracketed_and_exactly_symmetric():
    torch.manual_seed(0)
    corr = torch.rand(2, 5, 4, 3, 6) * 3
    assert torch.equal(mutual_matching(swap_ab(corr)), swap_ab(mutual_matching(corr)))
    b, ha, wa, hb, wb = corr.shape
    flat = corr.reshape(b, ha * wa, hb * wb)
    r_a = flat / (flat.max(dim=1, keepdim=True).values + 1e-5)
    r_b = flat / (flat.max(dim=2, keepdim=True).values + 1e-5)
    assert torch.equal(mutual_matching(corr), (flat * (r_a * r_b)).view_as(corr))


# ---------------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("preset", ["paper", "small"])
@pytest.mark.parametrize("name,channels", [("sfnet", (8, 16)), ("ncnet", (8,)), ("cats", (8, 4, 16))])
def test_both_presets_run_forward_and_backward(name, channels, preset):
    torch.manual_seed(0)
    head = build_head(name, channels, preset=preset, grid=(3, 3)).train()
    sizes = {8: (3, 3), 4: (6, 6), 16: (2, 2)}
    levels = [[torch.randn(2, c, *sizes[c], requires_grad=True) for c in channels] for _ in range(2)]
    beta = torch.full((2,), 0.5)
    uv = torch.tensor([[[0.5, 1.0], [2.0, 2.0]]]).expand(2, 2, 2)
    scores = head.query_scores(head(*levels, beta, beta), uv)
    assert scores.shape == (2, 2, 3, 3) and torch.isfinite(scores).all()
    scores.sum().backward()
    assert all(f.grad is not None for side in levels for f in side)
