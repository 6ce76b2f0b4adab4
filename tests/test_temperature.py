import math

import pytest
import torch

from simsc.backbones import build_backbone
from simsc.model import SimSC
from simsc.temperature import (
    FixedTemperature,
    MLPTemperature,
    NoL2Temperature,
    SingleTemperature,
    build_temperature,
    effective_temperature,
)


def test_registry_builds_each_variant():
    assert isinstance(build_temperature("mlp", 8), MLPTemperature)
    assert isinstance(build_temperature("single", 8), SingleTemperature)
    assert isinstance(build_temperature("fixed:0.03", 8), FixedTemperature)
    assert isinstance(build_temperature("no-l2", 8), NoL2Temperature)
    with pytest.raises(ValueError, match="unknown temperature"):
        build_temperature("softmax", 8)
    with pytest.raises(ValueError, match="fixed:<beta>"):
        build_temperature("fixed:abc", 8)
    for bad in ("fixed:0", "fixed:-1", "fixed:nan"):
        with pytest.raises(ValueError, match="> 0"):
            build_temperature(bad, 8)


def test_mlp_architecture_range_and_stop_gradient():
    g = MLPTemperature(16)
    layers = list(g.mlp)
    assert [type(m).__name__ for m in layers] == ["Linear", "ReLU", "Linear"]
    assert (layers[0].in_features, layers[0].out_features, layers[2].out_features) == (16, 16, 1)
    feat = torch.randn(3, 16, 4, 5, requires_grad=True)
    beta = g(feat)
    assert beta.shape == (3,) and bool(((beta > 0) & (beta < 1)).all())
    beta.sum().backward()
    assert feat.grad is None  # no gradient into the features (and so the backbone)
    assert g.mlp[0].weight.grad is not None


def test_mlp_forward_by_hand():
    """GAP -> Linear -> ReLU -> Linear -> sigmoid with set weights, expected values worked out on paper."""
    g = MLPTemperature(2)
    with torch.no_grad():
        g.mlp[0].weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0]]))
        g.mlp[0].bias.copy_(torch.tensor([0.0, -1.0]))
        g.mlp[2].weight.copy_(torch.tensor([[2.0, -3.0]]))
        g.mlp[2].bias.copy_(torch.tensor([0.5]))
    # channel means (GAP): pair 0 (1, 0.5), pair 1 (-1, 2); the maxima differ from the means
    feat = torch.tensor(
        [[[[0.0, 2.0], [1.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]], [[[-4.0, 0.0], [0.0, 0.0]], [[8.0, 0.0], [0.0, 0.0]]]]
    )
    # pair 0: hidden (1 - 0.5, 0.5 + 1 - 1) = (0.5, 0.5), out 1 - 1.5 + 0.5 = 0 -> sigmoid 0.5
    # pair 1: hidden (-1 - 2, -0.5 + 4 - 1) = (-3, 2.5) -> ReLU (0, 2.5), out -7.5 + 0.5 = -7 -> 1 / (1 + e^7)
    expected = torch.tensor([0.5, 1.0 / (1.0 + math.exp(7.0))])
    torch.testing.assert_close(g(feat), expected, rtol=1e-6, atol=0.0)


def test_single_gives_effective_beta_c_squared():
    g = SingleTemperature()
    with torch.no_grad():
        g.beta_c.fill_(0.3)
    f = torch.randn(2, 4, 2, 2)
    assert torch.allclose(effective_temperature(g(f), g(f)), torch.full((2,), 0.09))


def test_fixed_and_no_l2():
    f = torch.randn(2, 4, 2, 2)
    g = FixedTemperature(0.03)
    assert torch.allclose(effective_temperature(g(f), g(f)), torch.full((2,), 0.03))
    assert list(g.parameters()) == []  # nothing for the optimiser or L_reg
    assert torch.equal(NoL2Temperature()(f), torch.ones(2))


@pytest.fixture(scope="module")
def resnet18():
    return build_backbone("resnet18", pretrained=False, finetune="last_block").eval()


@pytest.mark.parametrize("mode,beta_eval", [("fixed:1", 0.02), ("fixed:0.03", 1.0), ("mlp", 1.0)])
def test_predictions_use_the_variant_evaluation_temperature(resnet18, mode, beta_eval):
    """Without beta_eval, the no-temperature baseline fixed:1 is evaluated at soft-argmax temperature 0.02 (paper
    supp. Tab. 1); a fixed or learned training temperature at 1, since its scores are already scaled."""
    m = SimSC(resnet18, mode).eval()
    g = torch.Generator().manual_seed(0)
    src, trg = torch.rand(1, 3, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    kps = torch.tensor([[[10.0, 20.0], [40.0, 33.0], [55.0, 5.0]]])
    default = m.predict(src, trg, kps)
    torch.testing.assert_close(default, m.predict(src, trg, kps, beta_eval=beta_eval), rtol=0.0, atol=0.0)
    other = 1.0 if beta_eval != 1.0 else 0.02
    assert (default - m.predict(src, trg, kps, beta_eval=other)).abs().max() > 0.1  # pixels: the choice matters
