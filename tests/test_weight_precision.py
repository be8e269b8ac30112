"""A weight that float32 (as a model is trained and scored) and float64 (as it is compiled) quantize to different
codes is named (:mod:`compiler.precision`): a weight placed on a quantizer threshold to float32's precision."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from compiler.lower import compile_model
from compiler.precision import WeightCodeWarning, weight_code_differences
from helpers import randomize
from lcq_train.plan import quantize_model


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    return randomize(quantize_model(net, method="lcq", wbits=3, abits=3), seed=seed)


def _codes(layer: nn.Module, weight: torch.Tensor, dtype) -> torch.Tensor:
    return copy.deepcopy(layer.wq).to(dtype).codes(weight.to(dtype))


def _on_a_threshold(net: nn.Module) -> nn.Module:
    """``net`` with weight [0, 0, 0, 0] of layer '2' moved to a float32 value within a few units in the last place
    of where its float64 code changes, one whose float32 code differs (found by bisection, then a walk)."""
    layer = net.get_submodule("2")
    w, at = layer.weight.detach().clone(), (0, 0, 0, 0)

    def with_value(v: float) -> torch.Tensor:
        x = w.clone()
        x[at] = v
        return x

    def code64(v: float) -> int:
        return int(_codes(layer, with_value(v), torch.float64)[at])

    low = high = float(w[at])
    while code64(high) == code64(low):
        high += 1e-3
    while high - low > 1e-12:
        mid = (low + high) / 2
        low, high = (mid, high) if code64(mid) == code64(low) else (low, mid)
    v = np.float32(high)
    for v in [v] + [np.nextafter(v, np.float32(np.inf * sign)) for sign in (1, -1)]:
        x = with_value(float(v)).float()
        if (_codes(layer, x, torch.float32) != _codes(layer, x, torch.float64)).any():
            with torch.no_grad():
                layer.weight.copy_(x)
            return net
    pytest.fail("no float32 value next to the threshold quantizes differently in float32 and float64")


def test_a_weight_on_a_threshold_is_named_and_compiling_warns():
    net = _on_a_threshold(_net())
    assert weight_code_differences(net) == {"2": (1, 16)}
    assert weight_code_differences(copy.deepcopy(net).double()) == {}     # a float64 model is compiled as it is
    with pytest.warns(WeightCodeWarning, match=r"layer '2': 1 of its 16 weight codes differ between the model's own "
                                               r"precision .* and float64"):
        compile_model(net, (1, 8, 8))


def test_a_random_model_has_no_differing_codes():
    assert weight_code_differences(_net(1)) == {}
