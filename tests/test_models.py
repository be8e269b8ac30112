"""Models, the quantization plan, and quantizer modules."""

import pytest
import torch

from lcq_train.layers import QAct, QConv2d
from lcq_train.models import MODELS, build_model
from lcq_train.plan import QuantPlan, apply_plan, layer_bits, parse_layer_bits, quantizer_parameters
from lcq_train.quantizer import Quantizer, QuantSpec

SHAPES = {"cnn": [(1, 8, 8), (1, 28, 28), (3, 32, 32)], "resnet20": [(3, 32, 32)], "resnet56": [(3, 32, 32)]}


@pytest.mark.parametrize("name", MODELS)
def test_models_forward_shapes(name):
    for shape in SHAPES[name]:
        model = build_model(name, shape, 10)
        assert model(torch.rand(2, *shape)).shape == (2, 10)


def test_resnet_sizes_match_the_paper():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 0.26e6 < count(build_model("resnet20", (3, 32, 32), 10)) < 0.29e6
    assert 0.84e6 < count(build_model("resnet56", (3, 32, 32), 10)) < 0.87e6
    assert len(build_model("resnet20", (3, 32, 32), 10).quant_layers()) == 1 + 18 + 2 + 1


def test_resnet_rejects_wrong_input_size():
    with pytest.raises(ValueError, match="32x32 inputs, not 28x28; use --model cnn"):
        build_model("resnet20", (1, 28, 28), 10)


@pytest.mark.parametrize("name,shape", [("cnn", (1, 28, 28)), ("resnet20", (3, 32, 32))])
@pytest.mark.parametrize("bits", [2, 3])
def test_every_learnable_parameter_gets_a_gradient(name, shape, bits):
    torch.manual_seed(0)
    model = apply_plan(build_model(name, shape, 10), QuantPlan("lcq", bits, bits))
    torch.nn.functional.cross_entropy(model(torch.rand(8, *shape)), torch.arange(8)).backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
            assert p.grad.abs().sum() > 0, pname


def test_plan_puts_edges_at_8_bits_and_ternary_weights_uniform():
    model = apply_plan(build_model("resnet20", (3, 32, 32), 10), QuantPlan("lcq", 2, 3))
    assert model.conv1.wq.method == "uniform" and model.conv1.wq.spec.bits == 8
    assert model.fc.wq.method == "uniform" and model.fc.wq.spec.bits == 8
    assert model.act_fc.method == "uniform" and model.act_fc.spec.bits == 8
    assert model.act_in.spec.bits == 8 and not model.act_in.alpha.requires_grad and model.act_in.alpha == 1.0
    inner = model.blocks[3].conv1
    assert inner.wq.method == "uniform" and inner.wq.spec.bits == 2  # 2-bit weights: uniform
    assert model.blocks[3].act1.method == "lcq" and model.blocks[3].act1.spec.bits == 3
    assert model.blocks[3].act1.alpha.item() == 8.0 and inner.wq.alpha.item() == 3.0


def test_input_quantizer_maps_pixels_to_their_uint8_codes():
    model = apply_plan(build_model("cnn", (1, 8, 8), 10), QuantPlan("lcq", 3, 3))
    pixels = torch.arange(256, dtype=torch.float32) / 255
    torch.testing.assert_close(model.act_in(pixels) * 255, torch.arange(256, dtype=torch.float32), atol=1e-4, rtol=0)


def test_per_layer_bits_and_errors():
    model = build_model("resnet20", (3, 32, 32), 10)
    plan = QuantPlan("lcq", 3, 3, layer_bits=parse_layer_bits(["blocks.0.conv1=4/4", "fc=8/8"]))
    bits = layer_bits(model, plan)
    assert bits["blocks.0.conv1"] == (4, 4) and bits["blocks.0.conv2"] == (3, 3) and bits["conv1"] == (8, 8)
    apply_plan(model, plan)
    assert model.blocks[0].conv1.wq.spec.bits == 4 and model.blocks[0].act1.spec.bits == 4
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['nope'\]"):
        layer_bits(model, QuantPlan("lcq", 3, 3, layer_bits={"nope": (3, 3)}))
    with pytest.raises(ValueError, match="same activation bits"):
        apply_plan(build_model("resnet20", (3, 32, 32), 10),
                   QuantPlan("lcq", 3, 3, layer_bits={"blocks.3.conv1": (3, 4)}))
    with pytest.raises(ValueError, match="NAME=W/A"):
        parse_layer_bits(["conv1:4"])
    with pytest.raises(ValueError, match="--wbits must be an integer in 2..8"):
        QuantPlan("lcq", 9, 3)
    with pytest.raises(ValueError, match="method must be one of"):
        QuantPlan("apot", 3, 3)


def test_plan_round_trips_through_dict():
    plan = QuantPlan("uniform", 4, 3, outer_bits=None, layer_bits={"conv1": (8, 8)})
    assert QuantPlan.from_dict(plan.to_dict()) == plan


def test_limited_weight_normalization():
    torch.manual_seed(0)
    q = Quantizer(QuantSpec("lcq", 3, 8, 16, alpha=3.0), signed=True, weight_norm=True)
    w = (torch.randn(32, 16, 3, 3) * 0.1 + 0.02).requires_grad_()
    y = q(w)
    mu, sigma = w.detach().mean(), w.detach().std()
    torch.testing.assert_close(y, sigma * q.quantize((w.detach() - mu) / sigma))
    y.sum().backward()
    inside = ((w.detach() - mu) / sigma).abs() < 3.0
    torch.testing.assert_close(w.grad, inside.float())  # mu, sigma detached: straight-through only


def test_quantized_layers_are_identity_until_configured():
    conv = QConv2d(3, 4, 3, padding=1)
    x = torch.randn(1, 3, 5, 5)
    torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(x, conv.weight, padding=1))
    assert list(QAct().parameters()) == []


def test_quantizer_parameters_lists_alpha_and_theta():
    model = apply_plan(build_model("cnn", (1, 8, 8), 10), QuantPlan("lcq", 3, 3))
    params = quantizer_parameters(model)
    # Learnable: weight alpha of 4 layers, theta of the 2 inner ones; activation alpha of 3 (input fixed), theta of 2.
    assert len(params) == 4 + 2 + 3 + 2
