import pytest
import torch
import torch.nn.functional as F

from simsc import SimSC
from simsc.matching import query_score_maps


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SimSC("resnet18", "mlp", finetune="last_block")


def _batch(b=2, n=5, size=128):
    torch.manual_seed(1)
    return {
        "src_img": torch.rand(b, 3, size, size),
        "trg_img": torch.rand(b, 3, size, size),
        "src_kps": torch.rand(b, n, 2) * (size - 1),
        "trg_kps": torch.rand(b, n, 2) * (size - 1),
        "valid": torch.ones(b, n, dtype=torch.bool),
    }


def test_scores_are_cosine_over_beta_a_times_beta_b(model):
    model.eval()
    batch = _batch()
    out = model(batch["src_img"], batch["trg_img"])
    raw_a, raw_b = model.backbone(batch["src_img"]), model.backbone(batch["trg_img"])
    beta_a, beta_b = model.temperature(raw_a), model.temperature(raw_b)
    assert torch.allclose(out["beta_a"], beta_a) and torch.allclose(out["beta_b"], beta_b)
    cells = torch.tensor([[[2.0, 3.0]], [[5.0, 1.0]]])
    maps = query_score_maps(out["feat_a"], out["feat_b"], cells)
    for b in range(2):
        x, y = cells[b, 0].long().tolist()
        cos = F.cosine_similarity(raw_a[b, :, y, x].view(-1, 1, 1), raw_b[b], dim=0)
        assert torch.allclose(maps[b, 0], cos / (beta_a[b] * beta_b[b]), atol=1e-4)
    losses = model.loss(batch)
    assert torch.allclose(losses["beta_eff"], losses["beta_a"] * losses["beta_b"])


def test_temperature_gradient_never_reaches_the_backbone_but_ce_does(model):
    model.train()
    batch = _batch()
    with torch.no_grad():  # timm zero-inits the last BN of each block; undo it so every weight gets gradient
        for mod in model.backbone.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.fill_(1.0)
    model.zero_grad()
    out = model(batch["src_img"], batch["trg_img"])
    (out["beta_a"].sum() + out["beta_b"].sum()).backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.backbone.parameters())
    assert model.temperature.mlp[0].weight.grad.abs().sum() > 0
    model.zero_grad()
    model.loss(batch)["ce"].backward()
    grads = [p.grad for p in model.backbone.trainable_parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.backbone.parameters() if not p.requires_grad)


def test_regulariser_applies_to_learned_temperatures_only():
    batch = _batch()
    m = SimSC("resnet18", "mlp")
    with torch.no_grad():  # push beta far below beta_thres
        m.temperature.mlp[2].bias.fill_(-8.0)
    losses = m.loss(batch)
    expected = torch.clamp(torch.log(torch.tensor(0.1)) - torch.log(losses["beta_a"]), min=0).mean()
    expected = expected + torch.clamp(torch.log(torch.tensor(0.1)) - torch.log(losses["beta_b"]), min=0).mean()
    assert losses["reg"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert losses["loss"].item() == pytest.approx(losses["ce"].item() + 0.2 * expected.item(), rel=1e-5)
    assert SimSC("resnet18", "fixed:0.004").loss(batch)["reg"].item() == 0.0


def test_single_parameter_uses_beta_c_squared():
    m = SimSC("resnet18", "single")
    with torch.no_grad():
        m.temperature.beta_c.fill_(0.2)
    losses = m.loss(_batch())
    assert torch.allclose(losses["beta_eff"], torch.full((2,), 0.04))


def test_no_l2_keeps_feature_magnitudes():
    m = SimSC("resnet18", "no-l2").eval()
    img = torch.rand(1, 3, 64, 64)
    feat, beta = m.features(img)
    assert torch.equal(beta, torch.ones(1))
    assert torch.allclose(feat, m.backbone(img))


def test_padded_batch_gives_the_same_loss(model):
    model.eval()
    batch = _batch(b=1, n=4)
    padded = {k: v.clone() for k, v in batch.items()}
    padded["src_kps"] = torch.cat([batch["src_kps"], torch.full((1, 3, 2), 1e6)], 1)
    padded["trg_kps"] = torch.cat([batch["trg_kps"], torch.zeros(1, 3, 2)], 1)
    padded["valid"] = torch.cat([batch["valid"], torch.zeros(1, 3, dtype=torch.bool)], 1)
    a, b = model.loss(batch), model.loss(padded)
    assert a["loss"].item() == pytest.approx(b["loss"].item(), rel=1e-6)


def test_predict_recovers_a_translation_in_image_pixels():
    # B is A shifted by whole feature cells (32 px right, 16 px down): a convolutional backbone
    # is equivariant to that away from the borders, so the match of every interior cell centre
    # of A is the shifted point, and the coordinate mapping must put it back in pixels exactly.
    torch.manual_seed(0)
    m = SimSC("resnet18", "fixed:0.001", finetune="none").eval()
    big = torch.rand(1, 3, 320, 320)
    a, b = big[..., :256, :256], big[..., 16:272, 32:288]
    cells = torch.tensor([[[6.0, 5.0], [8.0, 9.0], [10.0, 7.0], [7.0, 12.0]]])
    src = m.to_image(cells)  # cell centres in pixels, at the backbone's declared origin
    pred = m.predict(a, b, src, beta_eval=1.0)
    assert torch.allclose(pred, src - torch.tensor([32.0, 16.0]), atol=0.5)


def test_predict_handles_different_sizes_and_default_beta_eval():
    m = SimSC("resnet18", "fixed:1", finetune="none").eval()
    assert m.temperature.default_beta_eval == 0.02
    pred = m.predict(torch.rand(1, 3, 100, 140), torch.rand(1, 3, 120, 90), torch.tensor([[[10.0, 20.0]]]))
    assert pred.shape == (1, 1, 2)
    assert bool(((pred >= -0.5) & (pred <= torch.tensor([89.5 + 6, 119.5 + 8]))).all())


def test_bad_input(model):
    batch = _batch()
    with pytest.raises(ValueError, match=r"src_kps must be \[B, N, 2\]"):
        model.predict(batch["src_img"], batch["trg_img"], batch["src_kps"][0])
    with pytest.raises(ValueError, match="empty keypoint set"):
        model.predict(batch["src_img"], batch["trg_img"], torch.zeros(2, 0, 2))
    nan = batch["src_kps"].clone()
    nan[0, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.loss({**batch, "src_kps": nan})
    # NaN in padded rows is fine
    valid = batch["valid"].clone()
    valid[0, 1] = False
    assert torch.isfinite(model.loss({**batch, "src_kps": nan, "valid": valid})["loss"])
    with pytest.raises(ValueError, match="no valid keypoint"):
        model.loss({**batch, "valid": torch.zeros_like(batch["valid"])})
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model.predict(torch.rand(3, 64, 64), batch["trg_img"], batch["src_kps"])


def test_loss_and_predict_use_the_backbones_cell_centres():
    # model.cell_centre="patch" puts ResNet cell u at 16 u + 7.5 instead of 16 u: every pixel <-> cell
    # mapping (queries, targets, predictions) moves by exactly 7.5 px, and nothing else changes.
    torch.manual_seed(0)
    m = SimSC("resnet18", "mlp", finetune="none").eval()
    assert m.cell_origin == 0.0 and m.to_image(torch.zeros(1, 1, 2)).abs().max() == 0
    batch = _batch(b=2, n=4, size=96)
    shift = torch.tensor([7.5, 7.5])
    moved = {**batch, "src_kps": batch["src_kps"] - shift, "trg_kps": batch["trg_kps"] - shift}
    with torch.no_grad():
        ref = m.loss(moved)
        m.cell_centre = "patch"
        assert m.cell_origin == 7.5
        patch = m.loss(batch)
        torch.testing.assert_close(patch["loss"], ref["loss"])
        pred_patch = m.predict(batch["src_img"], batch["trg_img"], batch["src_kps"])
        m.cell_centre = "backbone"
        pred_ref = m.predict(batch["src_img"], batch["trg_img"], batch["src_kps"] - shift) + shift
    torch.testing.assert_close(pred_patch, pred_ref)
    with pytest.raises(ValueError, match="cell_centre must be one of"):
        m.cell_centre = "corner"
