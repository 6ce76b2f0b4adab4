import math

import pytest
import torch

from simsc import kernel_soft_argmax


def gaussian_bump(h, w, x0, y0, std):
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return torch.exp(-((xs - x0) ** 2 + (ys - y0) ** 2) / (2 * std**2))


def test_recovers_planted_peak():
    scores = torch.zeros(2, 3, 16, 20)
    peaks = [(3, 5), (19, 0), (0, 15)]  # (x, y) incl. borders
    for n, (x, y) in enumerate(peaks):
        scores[:, n, y, x] = 1.0
    out = kernel_soft_argmax(scores, beta=0.01)
    assert out.shape == (2, 3, 2)
    assert torch.allclose(out, torch.tensor(peaks, dtype=torch.float32).expand(2, 3, 2), atol=1e-3)


@pytest.mark.parametrize("fx", [0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9])
@pytest.mark.parametrize("fy", [0.0, 0.3, 0.5, 0.7])
def test_recovers_sub_pixel_peak_between_cells(fx, fy):
    # A smooth score bump (std 2 cells) at a sub-cell offset: the softmax at beta = 1/14
    # is wide enough to interpolate between cells, and the sigma=7 kernel centred at the
    # integer argmax biases the result by less than 0.05 cell at every offset.
    x0, y0 = 12 + fx, 14 + fy
    scores = gaussian_bump(28, 32, x0, y0, std=2.0).view(1, 1, 28, 32)
    out = kernel_soft_argmax(scores, sigma=7.0, beta=1 / 14)
    err = (out[0, 0] - torch.tensor([x0, y0], dtype=out.dtype)).abs().max().item()
    assert err < 0.05


def test_kernel_suppresses_a_distant_second_mode():
    # Without the kernel a second, slightly weaker mode would drag the mean half-way.
    scores = (gaussian_bump(32, 32, 5.0, 5.0, 1.5) + 0.98 * gaussian_bump(32, 32, 27.0, 27.0, 1.5)).view(1, 1, 32, 32)
    out = kernel_soft_argmax(scores, sigma=3.0, beta=0.02)
    assert torch.allclose(out[0, 0], torch.tensor([5.0, 5.0], dtype=out.dtype), atol=0.1)
    plain = torch.softmax(scores.flatten() / 0.02, 0).view(32, 32)
    plain_x = (plain.sum(0) * torch.arange(32)).sum()
    assert plain_x > 10  # the naive soft-argmax is pulled away


def test_equals_hand_computed_expectation():
    # 1 x 3 map, sigma huge (kernel ~ 1), beta 1: x = sum softmax(s) * [0, 1, 2]
    s = torch.tensor([0.0, 1.0, 2.0]).view(1, 1, 1, 3)
    out = kernel_soft_argmax(s, sigma=1e6, beta=1.0)
    e = [math.exp(v) for v in (0.0, 1.0, 2.0)]
    assert out[0, 0, 0].item() == pytest.approx((e[1] + 2 * e[2]) / sum(e), abs=1e-5)
    assert out[0, 0, 1].item() == pytest.approx(0.0, abs=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match=r"\[B, N, h, w\]"):
        kernel_soft_argmax(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="beta must be > 0"):
        kernel_soft_argmax(torch.zeros(1, 1, 4, 4), beta=0.0)
    with pytest.raises(ValueError, match="NaN"):
        kernel_soft_argmax(torch.full((1, 1, 4, 4), float("nan")))
    assert kernel_soft_argmax(torch.zeros(2, 0, 4, 4)).shape == (2, 0, 2)
