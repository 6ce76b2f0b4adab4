import pytest
import torch

from simsc.matching import (
    full_correlation,
    l2_normalize,
    normalize_and_scale,
    query_score_maps,
    sample_features,
    scale_by_temperature,
)


def test_l2_normalize_unit_norm_per_cell():
    f = l2_normalize(torch.randn(2, 7, 3, 4))
    assert torch.allclose(f.norm(dim=1), torch.ones(2, 3, 4), atol=1e-6)


def test_scaled_scores_are_cosine_over_effective_temperature():
    fa, fb = torch.randn(1, 8, 3, 3), torch.randn(1, 8, 4, 5)
    ba, bb = torch.tensor([0.2]), torch.tensor([0.3])
    corr = full_correlation(scale_by_temperature(l2_normalize(fa), ba), scale_by_temperature(l2_normalize(fb), bb))
    cos = torch.nn.functional.cosine_similarity(fa[0, :, 1, 2].view(8, 1, 1), fb[0], dim=0)
    assert torch.allclose(corr[0, 1 * 3 + 2].view(4, 5), cos / (0.2 * 0.3), atol=1e-5)


def test_fused_normalize_and_scale_equals_the_two_steps_with_gradients():
    f1 = torch.randn(2, 8, 3, 4, dtype=torch.float64, requires_grad=True)
    f2 = f1.detach().clone().requires_grad_(True)
    beta = torch.tensor([0.2, 0.7], dtype=torch.float64)
    a = scale_by_temperature(l2_normalize(f1), beta)
    b = normalize_and_scale(f2, beta)
    assert torch.allclose(a, b)
    w = torch.randn_like(a)
    (a * w).sum().backward()
    (b * w).sum().backward()
    assert torch.allclose(f1.grad, f2.grad)
    assert torch.allclose(normalize_and_scale(f2, beta, l2=False), f2 / beta.view(-1, 1, 1, 1))


def test_query_score_maps_equal_rows_of_the_full_correlation_at_cell_centres():
    fa, fb = l2_normalize(torch.randn(2, 16, 6, 7)), l2_normalize(torch.randn(2, 16, 5, 4))
    cells = torch.tensor([[[0, 0], [6, 5], [3, 2]], [[1, 4], [2, 2], [6, 0]]], dtype=torch.float32)  # (x, y)
    maps = query_score_maps(fa, fb, cells)
    full = full_correlation(fa, fb)
    for b in range(2):
        for n in range(3):
            x, y = cells[b, n].long().tolist()
            assert torch.allclose(maps[b, n].flatten(), full[b, y * 7 + x], atol=1e-5)


def test_query_score_maps_interpolate_rows_bilinearly_at_sub_cell_positions():
    fa, fb = l2_normalize(torch.randn(1, 16, 6, 7)), l2_normalize(torch.randn(1, 16, 5, 4))
    full = full_correlation(fa, fb)[0].view(6, 7, 20)
    x, y = 2.25, 3.6
    maps = query_score_maps(fa, fb, torch.tensor([[[x, y]]]))
    x0, y0, ax, ay = 2, 3, 0.25, 0.6
    expected = (
        (1 - ax) * (1 - ay) * full[y0, x0]
        + ax * (1 - ay) * full[y0, x0 + 1]
        + (1 - ax) * ay * full[y0 + 1, x0]
        + ax * ay * full[y0 + 1, x0 + 1]
    )
    assert torch.allclose(maps[0, 0].flatten(), expected, atol=1e-5)


def test_bad_input():
    with pytest.raises(ValueError, match=r"\[B, C, h, w\]"):
        l2_normalize(torch.randn(3, 4, 5))
    with pytest.raises(ValueError, match="> 0"):
        scale_by_temperature(torch.randn(1, 2, 3, 3), torch.tensor([0.0]))
    with pytest.raises(ValueError, match=r"uv must be \[B, N, 2\]"):
        sample_features(torch.randn(1, 2, 3, 3), torch.zeros(1, 3))


def _grid_sample_reference(feat, uv):
    """The previous implementation: grid_sample at the same cells, border padding."""
    h, w = feat.shape[-2:]
    grid = ((uv + 0.5) * uv.new_tensor([2.0 / w, 2.0 / h]) - 1.0).unsqueeze(2)
    out = torch.nn.functional.grid_sample(feat, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.squeeze(-1).transpose(1, 2)


def test_gather_sampling_equals_grid_sample_values_and_gradients_float64():
    g = torch.Generator().manual_seed(0)
    f1 = torch.randn(2, 5, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    f2 = f1.detach().clone().requires_grad_(True)
    uv = torch.rand(2, 9, 2, generator=g, dtype=torch.float64) * torch.tensor([8.0, 7.0], dtype=torch.float64) - 0.7
    uv[0, 0] = torch.tensor([6.0, 5.0], dtype=torch.float64)  # the last cell exactly
    uv[0, 1] = torch.tensor([-2.0, 9.0], dtype=torch.float64)  # beyond two borders
    uv[1, 0] = torch.tensor([3.0, 2.0], dtype=torch.float64)  # a cell centre
    a, b = sample_features(f1, uv), _grid_sample_reference(f2, uv)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    wts = torch.randn(a.shape, generator=g, dtype=torch.float64)
    (a * wts).sum().backward()
    (b * wts).sum().backward()
    torch.testing.assert_close(f1.grad, f2.grad, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda f: sample_features(f, uv), (f1.detach().requires_grad_(True),))
