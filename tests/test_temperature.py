import math

import pytest
import torch

from simsc.temperature import (
    MANUAL_BETA_EVAL,
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
    # GAP -> MLP -> sigmoid, by hand
    assert torch.allclose(beta, torch.sigmoid(g.mlp(feat.mean((2, 3)))).squeeze(-1))
    beta.sum().backward()
    assert feat.grad is None  # no gradient into the features (and so the backbone)
    assert g.mlp[0].weight.grad is not None


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
    assert not g.learnable and g.default_beta_eval == 1.0
    assert FixedTemperature(1.0).default_beta_eval == MANUAL_BETA_EVAL
    n = NoL2Temperature()
    assert not n.l2_normalize and torch.equal(n(f), torch.ones(2))
    assert math.isclose(MANUAL_BETA_EVAL, 0.02)
