import torch

from simsc.coords import feature_to_image, image_to_feature, normalize_for_grid_sample, rescale_box, rescale_points


def test_cell_centres_map_to_pixel_centres_of_their_block():
    # Stride 16: cell 0 covers pixels 0..15, whose centre is x = 7.5.
    uv = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    assert torch.allclose(feature_to_image(uv, 16), torch.tensor([[7.5, 7.5], [23.5, 39.5]]))


def test_image_feature_round_trip():
    xy = torch.rand(10, 2) * 500
    assert torch.allclose(feature_to_image(image_to_feature(xy, 8), 8), xy, atol=1e-4)


def test_rescale_points_about_pixel_edges():
    # 500 x 333 (W x H) -> 256 x 256: x' = (x + 0.5) * 256 / 500 - 0.5
    xy = torch.tensor([[212.0, 153.0], [-0.5, -0.5], [499.5, 332.5]])
    out = rescale_points(xy, (333, 500), (256, 256))
    assert torch.allclose(out[0], torch.tensor([(212.5 * 256 / 500) - 0.5, (153.5 * 256 / 333) - 0.5]))
    # image edges map to image edges
    assert torch.allclose(out[1], torch.tensor([-0.5, -0.5]))
    assert torch.allclose(out[2], torch.tensor([255.5, 255.5]))


def test_rescale_box_keeps_width_ratio():
    box = torch.tensor([36.0, 92.0, 500.0, 200.0])
    out = rescale_box(box, (332, 500), (256, 256))
    assert torch.isclose(out[2] - out[0], torch.tensor((500 - 36) * 256 / 500))
    assert torch.isclose(out[3] - out[1], torch.tensor((200 - 92) * 256 / 332))


def test_grid_sample_normalisation_matches_feature_cells():
    # Sampling a stride-4 map at the image position of cell (2, 3) returns that cell exactly.
    feat = torch.arange(6 * 5, dtype=torch.float32).view(1, 1, 6, 5)
    xy = feature_to_image(torch.tensor([[3.0, 2.0]]), 4)
    grid = normalize_for_grid_sample(xy, (24, 20)).view(1, 1, 1, 2)
    val = torch.nn.functional.grid_sample(feat, grid, align_corners=False)
    assert val.item() == feat[0, 0, 2, 3].item()


def test_cell_origin_moves_the_grid_and_round_trips():
    # ResNet layer3 convention: cell u centred on pixel 16 u (origin 0); patch convention: 16 u + 7.5
    uv = torch.tensor([[0.0, 0.0], [3.0, 2.0]])
    assert torch.equal(feature_to_image(uv, 16, origin=0.0), torch.tensor([[0.0, 0.0], [48.0, 32.0]]))
    assert torch.equal(feature_to_image(uv, 16), feature_to_image(uv, 16, origin=7.5))
    xy = torch.rand(10, 2) * 500
    for origin in (0.0, 3.5, 7.5):
        assert torch.allclose(feature_to_image(image_to_feature(xy, 16, origin), 16, origin), xy, atol=1e-4)
    # reading a cell found with one convention back with the other moves the point by the origin difference
    x = torch.tensor([[100.0, 100.0]])
    shift = feature_to_image(image_to_feature(x, 16, 0.0), 16, 7.5) - x
    assert torch.allclose(shift, torch.tensor([[7.5, 7.5]]))
