"""Match pictures: grid points, the side-by-side drawing, predictions on image files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from simsc.model import SimSC
from simsc.visualize import (
    RIGHT,
    WRONG,
    draw_judged_matches,
    draw_matches,
    grid_points,
    match_colors,
    predict_matches,
    save_match_picture,
)


def test_grid_points_are_interior_and_row_major():
    pts = grid_points(100, 200, n=5)
    assert pts.shape == (25, 2)
    assert float(pts[:, 0].min()) > 0 and float(pts[:, 0].max()) < 199
    assert float(pts[:, 1].min()) > 0 and float(pts[:, 1].max()) < 99
    assert torch.equal(pts[:5, 1], pts[0, 1].expand(5))  # first row shares y
    assert pts[1, 0] > pts[0, 0]
    with pytest.raises(ValueError):
        grid_points(10, 10, n=0)


def test_match_colors_are_distinct():
    cols = match_colors(25)
    assert len(set(cols)) == 25 and all(0 <= c <= 255 for col in cols for c in col)


def test_draw_matches_side_by_side_with_coloured_lines():
    a = np.full((40, 60, 3), 128, np.uint8)
    b = np.full((50, 30, 3), 128, np.uint8)
    pic = draw_matches(a, b, [[10, 20]], [[15, 25]], colors=[(255, 0, 0)], radius=2, line_width=3)
    assert pic.size == (90, 50)
    arr = np.asarray(pic)
    assert (arr[45, 10] == 0).all()  # below image A: black padding
    # midpoint of the line from (10, 20) to (60 + 15, 25)
    assert tuple(arr[22, 42]) == (255, 0, 0)
    assert tuple(arr[5, 5]) == (128, 128, 128)
    scaled = draw_matches(a, b, [[10, 20]], [[15, 25]], height=100)
    assert scaled.size == (150 + 60, 100)
    with pytest.raises(ValueError, match="as many points"):
        draw_matches(a, b, [[1, 2]], [[1, 2], [3, 4]])


def test_judged_matches_colour_by_the_pck_criterion():
    """alpha 0.1 of a 100 px threshold is 10 px: a prediction 9.9 px off is right (green),
    10.1 px off is wrong (red), exactly 10 px is right (PCK counts <=); the true point of each is
    a white ring and a white line joins it to the prediction."""
    a = np.full((60, 60, 3), 100, np.uint8)
    b = np.full((60, 80, 3), 100, np.uint8)
    src = [[10, 10], [10, 30], [10, 50]]
    gt = [[20, 10], [20, 30], [20, 50]]
    pred = [[29.9, 10], [30.1, 30], [30, 50]]
    pic, right = draw_judged_matches(a, b, src, pred, gt, threshold=100.0, alpha=0.1)
    assert right.tolist() == [True, False, True]
    arr = np.asarray(pic)
    assert tuple(arr[10, 25]) == RIGHT  # on the A -> B line of the first match (x 10 -> 60 + 29.9)
    assert tuple(arr[30, 25]) == WRONG
    assert tuple(arr[10, 60 + 25]) == (255, 255, 255)  # the white line from prediction to truth
    ring = arr[30 - 6, 60 + 20]  # the top of the ring around the true point (radius 4 + 2)
    assert tuple(ring) == (255, 255, 255)
    # the same verdicts as PCK itself
    from simsc.pck import pck

    got = pck(torch.tensor([pred]), torch.tensor([gt]), torch.tensor([100.0]), alphas=(0.1,))
    assert got[0.1] == pytest.approx(2 / 3)


def test_judged_matches_follow_scaling():
    a = np.full((40, 40, 3), 0, np.uint8)
    pic, right = draw_judged_matches(a, a, [[5, 5]], [[30, 30]], [[10, 10]], threshold=40.0, height=80)
    assert pic.size == (160, 80) and right.tolist() == [False]
    arr = np.asarray(pic)
    assert tuple(arr[60, 80 + 60]) == WRONG  # the predicted point (30, 30) scaled x2 in B
    with pytest.raises(ValueError, match="true point per prediction"):
        draw_matches(a, a, [[1, 1]], [[1, 1]], gt_b=[[1, 1], [2, 2]])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SimSC("resnet18", "fixed:1", pretrained=False, finetune="none").eval()


def test_predict_matches_on_identical_images(model):
    rng = np.random.default_rng(0)
    img = (rng.random((80, 120, 3)) * 255).astype(np.uint8)
    img = np.asarray(Image.fromarray(img).resize((30, 20)).resize((120, 80), Image.BILINEAR))
    # ResNet layer3 cell centres (pixel 16 u: the backbone's cell_origin is 0) of identical
    # images map onto themselves
    cells = model.to_image(torch.tensor([[1.0, 1.0], [2.0, 3.0], [6.0, 4.0]]))
    assert torch.equal(cells, torch.tensor([[16.0, 16.0], [32.0, 48.0], [96.0, 64.0]]))
    pa, pb = predict_matches(model, img, img, resolution="original", beta_eval=1e-4, points=cells)
    assert torch.allclose(pa, pb, atol=1e-3)
    pa, pb = predict_matches(model, img, img, resolution=64)
    assert pa.shape == pb.shape == (25, 2)
    assert float(pb[:, 0].min()) >= -0.5 and float(pb[:, 0].max()) <= 119.5
    with pytest.raises(ValueError, match="outside the source image"):
        predict_matches(model, img, img, points=[[500, 5]])


def test_save_match_picture_png(model, tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray((rng.random((56, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / "b.png")
    res = save_match_picture(
        model, tmp_path / "a.jpg", tmp_path / "b.png", tmp_path / "out" / "m.png", resolution=64, grid=3
    )
    pic = Image.open(tmp_path / "out" / "m.png")
    assert pic.format == "PNG" and pic.size == (64 + 40, 56) and res["size"] == [104, 56]
    assert len(res["points_a"]) == 9
