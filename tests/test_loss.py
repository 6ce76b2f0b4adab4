import math

import pytest
import torch

from simsc.loss import cross_entropy, gaussian_kernel_1d, gaussian_target, simsc_loss, temperature_regularizer


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
    t = gaussian_target(torch.rand(1, 2, 2) * 3, (4, 4))
    v = torch.ones(1, 2, dtype=torch.bool)
    out = simsc_loss(s, t, v, torch.tensor([0.05]), torch.tensor([0.02]), gamma=0.2, beta_thres=0.1)
    expected_reg = math.log(0.1 / 0.05) + math.log(0.1 / 0.02)
    assert out["reg"].item() == pytest.approx(expected_reg, rel=1e-5)
    assert out["loss"].item() == pytest.approx(out["ce"].item() + 0.2 * expected_reg, rel=1e-5)
    assert simsc_loss(s, t, v)["reg"].item() == 0.0
