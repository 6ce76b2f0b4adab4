import math

import pytest
import torch

from simsc.loss import (
    cross_entropy,
    cross_entropy_logprob,
    cross_entropy_prob,
    gaussian_kernel_1d,
    gaussian_point_weights,
    gaussian_target,
    simsc_loss,
    temperature_regularizer,
)


def test_kernel_taps_hand_computed():
    # ns=3 central taps of a 5-tap Gaussian with std floor(5/2)=2: exp(-1/8), 1, exp(-1/8)
    e = math.exp(-1 / 8)
    expected = torch.tensor([e, 1.0, e]) / (1 + 2 * e)
    assert torch.allclose(gaussian_kernel_1d(3, 5), expected)


def test_target_at_integer_cell_is_the_ns_by_ns_gaussian():
    t = gaussian_target(torch.tensor([[[5.0, 4.0]]]), (10, 12))
    taps = gaussian_kernel_1d(3, 5)
    expected = torch.zeros(10, 12)
    expected[3:6, 4:7] = taps[:, None] * taps[None, :]
    assert torch.allclose(t[0, 0], expected, atol=1e-7)


@pytest.mark.parametrize("uv", [(5.3, 4.7), (7.5, 3.5), (2.01, 6.99), (9.9, 8.2)])
def test_target_sums_to_one_and_its_mean_is_the_sub_pixel_location(uv):
    h, w = 12, 14
    t = gaussian_target(torch.tensor([[uv]]), (h, w))[0, 0]
    assert t.sum().item() == pytest.approx(1.0, abs=1e-6)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=t.dtype), torch.arange(w, dtype=t.dtype), indexing="ij")
    assert (t * xs).sum().item() == pytest.approx(uv[0], abs=1e-3)
    assert (t * ys).sum().item() == pytest.approx(uv[1], abs=1e-3)
    # support: the ns x ns region splatted onto the 4 bilinear neighbours -> at most 4 x 4 cells
    assert (t > 0).sum() <= 16
    assert (t > 0).any(dim=0).sum() <= 4


def test_target_clipped_at_the_border_is_renormalised():
    t = gaussian_target(torch.tensor([[[0.0, 0.0], [-5.0, -5.0]]]), (8, 8))
    assert t[0, 0].sum().item() == pytest.approx(1.0, abs=1e-6)
    assert t[0, 0, 0, 0] > t[0, 0, 1, 1]
    assert t[0, 1].sum().item() == 0.0  # entirely off the map


def test_cross_entropy_hand_computed_and_equal_to_torch_soft_target_ce():
    scores = torch.zeros(1, 1, 3, 4)
    target = torch.zeros(1, 1, 3, 4)
    target[0, 0, 1, 2] = 1.0
    # uniform scores: CE = log(h * w)
    assert cross_entropy(scores, target, torch.ones(1, 1, dtype=torch.bool)).item() == pytest.approx(math.log(12))
    s = torch.randn(2, 3, 5, 6)
    t = gaussian_target(torch.rand(2, 3, 2) * 4 + 0.5, (5, 6))
    ours = cross_entropy(s, t, torch.ones(2, 3, dtype=torch.bool))
    ref = torch.nn.functional.cross_entropy(s.reshape(-1, 30), t.reshape(-1, 30))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def test_cross_entropy_ignores_padded_queries_and_averages_per_pair():
    s = torch.randn(2, 4, 5, 5)
    t = gaussian_target(torch.rand(2, 4, 2) * 4, (5, 5))
    valid = torch.tensor([[True, True, False, False], [True, True, True, True]])
    base = cross_entropy(s, t, valid)
    s2 = s.clone()
    s2[0, 2:] = 1e4 * torch.randn(2, 5, 5)  # garbage in the padding
    assert cross_entropy(s2, t, valid).item() == pytest.approx(base.item())
    per_query = -(t.flatten(2) * torch.log_softmax(s.flatten(2), -1)).sum(-1)
    expected = (per_query[0, :2].mean() + per_query[1].mean()) / 2
    assert base.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="no valid keypoint"):
        cross_entropy(s, t, torch.zeros(2, 4, dtype=torch.bool))


def test_regularizer_zero_above_threshold_and_slope_minus_one_over_beta_below():
    beta = torch.tensor([0.5, 0.1, 0.05, 0.01], requires_grad=True)
    reg = temperature_regularizer(beta, beta_thres=0.1)
    assert torch.allclose(reg, torch.tensor([0.0, 0.0, math.log(2), math.log(10)]), atol=1e-6)
    reg.sum().backward()
    assert beta.grad[0].item() == 0.0
    assert beta.grad[2].item() == pytest.approx(-1 / 0.05)
    assert beta.grad[3].item() == pytest.approx(-1 / 0.01)
    with pytest.raises(ValueError, match="beta must be > 0"):
        temperature_regularizer(torch.tensor([0.0]))


def test_total_loss_is_ce_plus_gamma_reg():
    s = torch.randn(1, 2, 4, 4)
    uv = torch.rand(1, 2, 2) * 3
    v = torch.ones(1, 2, dtype=torch.bool)
    out = simsc_loss(s, uv, v, torch.tensor([0.05]), torch.tensor([0.02]), gamma=0.2, beta_thres=0.1)
    expected_reg = math.log(0.1 / 0.05) + math.log(0.1 / 0.02)
    assert out["reg"].item() == pytest.approx(expected_reg, rel=1e-5)
    assert out["loss"].item() == pytest.approx(out["ce"].item() + 0.2 * expected_reg, rel=1e-5)
    assert out["ce"].item() == pytest.approx(cross_entropy_prob(s, uv, v).item())  # the default form
    assert simsc_loss(s, uv, v)["reg"].item() == 0.0
    # reg_over_images="mean": Eq. 7's one L_reg as the average over the pair's two images
    mean = simsc_loss(s, uv, v, torch.tensor([0.05]), torch.tensor([0.02]), reg_over_images="mean")
    assert mean["reg"].item() == pytest.approx(expected_reg / 2, rel=1e-5)
    logprob = simsc_loss(s, uv, v, ce_interpolation="logprob")["ce"]
    assert logprob.item() == pytest.approx(cross_entropy_logprob(s, uv, v).item())
    with pytest.raises(ValueError, match="ce_interpolation must be one of"):
        simsc_loss(s, uv, v, ce_interpolation="splat")
    with pytest.raises(ValueError, match="reg_over_images must be one of"):
        simsc_loss(s, uv, v, reg_over_images="max")


# --- the two sub-pixel forms of the cross-entropy ---------------------------------------


def reference_ce_prob(scores, uv_b, ns=3, nk=5):
    """From scratch, one query at a time: -sum_ij w_ij log(bilinear(softmax(M), x_B + (j, i))),
    with the documented border rule (in-map corners renormalised; points with none dropped)."""
    b, n, h, w = scores.shape
    e = math.exp(-1 / (2 * (nk // 2) ** 2))
    taps = {-1: e, 0: 1.0, 1: e} if ns == 3 else None
    out = torch.zeros(b, n, dtype=torch.float64)
    for bi in range(b):
        for q in range(n):
            prob = torch.softmax(scores[bi, q].double().flatten(), 0).view(h, w)
            num, den = 0.0, 0.0
            for i in (-1, 0, 1):
                for j in (-1, 0, 1):
                    x, y = float(uv_b[bi, q, 0]) + j, float(uv_b[bi, q, 1]) + i
                    x0, y0 = math.floor(x), math.floor(y)
                    corners = [
                        (yy, xx, (1 - abs(y - yy)) * (1 - abs(x - xx))) for yy in (y0, y0 + 1) for xx in (x0, x0 + 1)
                    ]
                    wx = sum((1 - abs(x - xx)) for xx in (x0, x0 + 1) if 0 <= xx < w)
                    wy = sum((1 - abs(y - yy)) for yy in (y0, y0 + 1) if 0 <= yy < h)
                    if wx <= 0 or wy <= 0:
                        continue  # no corner on the map: the point is dropped
                    p = sum(c * float(prob[yy, xx]) for yy, xx, c in corners if 0 <= yy < h and 0 <= xx < w)
                    weight = taps[i] * taps[j]
                    num += weight * math.log(p / (wx * wy))
                    den += weight
            out[bi, q] = -num / den
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prob_form_equals_a_from_scratch_reference_at_sub_pixel_targets(seed):
    g = torch.Generator().manual_seed(seed)
    h, w = 6, 7
    scores = torch.randn(2, 4, h, w, generator=g, dtype=torch.float64) * 3
    # interior, near-border and between-border-and-edge targets
    uv = torch.rand(2, 4, 2, generator=g, dtype=torch.float64) * torch.tensor([w, h], dtype=torch.float64) - 0.5
    uv[0, 0] = torch.tensor([-0.4, 5.3], dtype=torch.float64)
    uv[1, 3] = torch.tensor([6.45, -0.2], dtype=torch.float64)
    valid = torch.ones(2, 4, dtype=torch.bool)
    ref = reference_ce_prob(scores, uv).mean()
    assert cross_entropy_prob(scores, uv, valid).item() == pytest.approx(ref.item(), abs=1e-5)


def test_both_forms_agree_at_integer_targets_border_included():
    g = torch.Generator().manual_seed(3)
    h, w = 5, 6
    scores = torch.randn(1, 5, h, w, generator=g) * 4
    uv = torch.tensor([[[2.0, 2.0], [0.0, 0.0], [5.0, 4.0], [0.0, 3.0], [4.0, 1.0]]])
    valid = torch.ones(1, 5, dtype=torch.bool)
    for q in range(5):
        one = (scores[:, q : q + 1], uv[:, q : q + 1], valid[:, q : q + 1])
        assert cross_entropy_prob(*one).item() == pytest.approx(cross_entropy_logprob(*one).item(), rel=1e-5)
    # at a cell centre the prob form is the plain weighted log-likelihood of the ns x ns cells
    logp = torch.log_softmax(scores[0, 0].flatten(), 0).view(h, w)
    expected = -(gaussian_point_weights() * logp[1:4, 1:4]).sum()
    assert cross_entropy_prob(*(t[:, :1] for t in (scores, uv, valid))).item() == pytest.approx(
        expected.item(), rel=1e-5
    )


def test_prob_form_is_below_logprob_between_cells_jensen():
    # log of an average >= average of logs, so -log(bilinear p) <= -bilinear(log p), equal only at cell centres
    g = torch.Generator().manual_seed(4)
    scores = torch.randn(3, 6, 8, 8, generator=g) * 5
    uv = torch.rand(3, 6, 2, generator=g) * 5 + 1.2
    valid = torch.ones(3, 6, dtype=torch.bool)
    for q in range(6):
        one = (scores[:, q : q + 1], uv[:, q : q + 1], valid[:, q : q + 1])
        assert cross_entropy_prob(*one).item() < cross_entropy_logprob(*one).item()


def test_prob_form_gradcheck_float64():
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    uv = torch.tensor(
        [[[1.3, 2.6], [-0.3, 0.4], [4.2, 3.1]], [[2.5, 1.5], [0.0, 3.0], [3.7, -0.45]]], dtype=torch.float64
    )
    valid = torch.tensor([[True, True, True], [True, False, True]])

    # float64 scores are computed in float64 end to end (lower precisions in float32)
    assert torch.autograd.gradcheck(lambda s: cross_entropy_prob(s, uv, valid), (scores,), eps=1e-6, atol=1e-6)
    # and the float32 path's gradient matches the float64 one
    s32 = scores.detach().float().requires_grad_(True)
    cross_entropy_prob(s32, uv.float(), valid).backward()
    s64 = scores.detach().clone().requires_grad_(True)
    cross_entropy_prob(s64, uv, valid).backward()
    torch.testing.assert_close(s32.grad.double(), s64.grad, rtol=1e-4, atol=1e-6)


def test_prob_form_stays_finite_when_the_target_probability_underflows():
    scores = torch.zeros(1, 1, 6, 6)
    scores[0, 0, 0, 0] = 1e4  # all mass on one far cell: exp(-1e4) underflows at the target
    scores.requires_grad_(True)
    uv = torch.tensor([[[3.4, 3.6]]])
    ce = cross_entropy_prob(scores, uv, torch.ones(1, 1, dtype=torch.bool))
    assert torch.isfinite(ce) and ce.item() > 1e3
    ce.backward()
    assert torch.isfinite(scores.grad).all()
    # the gradient still pulls the mass from the wrong cell towards the target
    assert scores.grad[0, 0, 0, 0] > 0 and scores.grad[0, 0, 3, 3] < 0


def test_prob_form_drops_points_off_the_map_and_ignores_queries_entirely_off():
    g = torch.Generator().manual_seed(6)
    scores = torch.randn(1, 2, 5, 5, generator=g)
    valid = torch.ones(1, 2, dtype=torch.bool)
    # a target a full cell outside: its only in-map points are the x = 0 column
    off = torch.tensor([[[-1.0, 2.0], [2.0, 2.0]]])
    logp = torch.log_softmax(scores[0, 0].flatten(), 0).view(5, 5)
    taps = gaussian_kernel_1d()
    expected = -(taps * logp[1:4, 0]).sum() / taps.sum()
    got = cross_entropy_prob(scores[:, :1], off[:, :1], valid[:, :1])
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # entirely off the map: ignored, the batch loss is the other query's
    far = torch.tensor([[[-3.0, 2.0], [2.0, 2.0]]])
    assert cross_entropy_prob(scores, far, valid).item() == pytest.approx(
        cross_entropy_prob(scores[:, 1:], far[:, 1:], valid[:, 1:]).item(), rel=1e-6
    )
    with pytest.raises(ValueError, match="no valid keypoint"):
        cross_entropy_prob(scores[:, :1], far[:, :1], valid[:, :1])
