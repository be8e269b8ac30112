"""A weight that training leaves on a quantizer threshold keeps the code its own precision (float32, as it was
trained and scored) gives it, in float64 (the compiler, lcq eval's PyTorch model) too
(:mod:`lcq_train.weight_codes`): a weight placed on a threshold to float32's precision."""

import copy
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from compiler.agreement import compare
from compiler.lower import compile_model
from helpers import randomize
from lcq_train.plan import quantize_model
from lcq_train.quantizer import Quantizer, QuantSpec
from lcq_train.weight_codes import MARGIN, UnsettledWeightWarning, settle_weight_codes


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


def test_a_weight_on_a_threshold_keeps_its_float32_code_in_float64():
    net = _on_a_threshold(_net())
    layer = net.get_submodule("2")
    before = layer.weight.detach().clone()
    trained = _codes(layer, before, torch.float32)
    assert not torch.equal(trained, _codes(layer, before, torch.float64))
    assert settle_weight_codes(net) == {"2": 1}
    after = layer.weight.detach()
    assert int((after != before).sum()) == 1 and after[0, 0, 0, 0] != before[0, 0, 0, 0]
    assert torch.equal(_codes(layer, after, torch.float32), trained)
    assert torch.equal(_codes(layer, after, torch.float64), trained)
    moved = float(after[0, 0, 0, 0] - before[0, 0, 0, 0]) / float(before.std() * layer.wq.alpha.detach())
    assert MARGIN < abs(moved) <= 3 * MARGIN + 1e-6      # clear of the threshold by a margin, and by no more than 3
    assert settle_weight_codes(net) == {}                # settled once is settled


def test_a_weight_near_a_threshold_moves_for_the_trainer_not_for_the_compiler():
    """Within the margin of a threshold but on the side float64 gives it too: only_differing (the compiler's
    setting) leaves it, the trainer's moves it clear."""
    net = _on_a_threshold(_net())
    layer = net.get_submodule("2")
    on = layer.weight.detach().clone()
    settle_weight_codes(net)
    with torch.no_grad():
        layer.weight.copy_(on + 0.3 * (layer.weight - on))        # 0.3 of the way out from the threshold
    near = layer.weight.detach().clone()
    assert torch.equal(_codes(layer, near, torch.float32), _codes(layer, near, torch.float64))
    assert settle_weight_codes(net, only_differing=True) == {} and torch.equal(layer.weight.detach(), near)
    assert settle_weight_codes(net) == {"2": 1}


def test_compile_and_agreement_take_the_code_the_model_was_trained_with():
    net = _on_a_threshold(_net())
    trained = _codes(net.get_submodule("2"), net.get_submodule("2").weight.detach(), torch.float32)
    unchanged = copy.deepcopy(net.state_dict())
    compiled = compile_model(net, (1, 8, 8))
    assert all(torch.equal(unchanged[k], v) for k, v in net.state_dict().items())    # compiles a copy
    conv = next(n for n in compiled.nodes if getattr(n, "name", None) == "2")
    assert np.array_equal(conv.weight_codes.reshape(trained.shape), trained.numpy())
    images = np.random.default_rng(0).integers(0, 256, (16, 1, 8, 8), dtype=np.uint8)
    result = compare(compiled, net, images, np.zeros(16, dtype=np.int64))
    assert result.disagreements == 0 and all(m == 0 for _, m in result.codes.values())


def test_a_model_with_no_weight_near_a_threshold_is_left_as_it_is():
    net = _net(1)
    weights = copy.deepcopy(net.state_dict())
    assert settle_weight_codes(net) == {}
    assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items())


class _Layer(nn.Module):
    def __init__(self, weight: torch.Tensor, wq: Quantizer):
        super().__init__()
        self.weight, self.wq = nn.Parameter(weight), wq


def test_weights_in_an_interval_narrower_than_the_margin_stay_and_are_named():
    """8-bit LCQ codes of K = 1024 intervals, all in one (theta): 127 thresholds in 1/1024 of the clip range, 7.7e-6
    apart; weights there cannot be two margins clear of every threshold."""
    wq = Quantizer(QuantSpec("lcq", bits=8, outer_bits=8, K=1024, alpha=1.0), signed=True, weight_norm=None)
    with torch.no_grad():
        wq.theta[512] = 30.0
    weight = torch.cat([torch.linspace(0.5 + 1e-4, 0.5 + 9e-4, 9), torch.tensor([0.1, -0.3])])
    layer = _Layer(weight.clone(), wq)
    with pytest.warns(UnsettledWeightWarning, match=r"layer '': 9 weights stay within 1e-05 of a quantizer threshold"):
        assert settle_weight_codes(layer) == {}
    assert torch.equal(layer.weight.detach(), weight)


def test_moves_that_would_change_another_code_are_not_made():
    """A margin of a fifth of the clip range: the moves shift mu_w and sigma_w so far that other weights change
    codes; every weight stays, named."""
    net = _net(2)
    weights = copy.deepcopy(net.state_dict())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert settle_weight_codes(net, margin=0.2) == {}
    said = [str(w.message) for w in seen if w.category is UnsettledWeightWarning]
    assert any(re.match(r"layer '2': \d+ weights stay within 0.2 of a quantizer threshold", m) for m in said), said
    assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items())


def test_the_trainer_saves_settled_weights(tmp_path):
    """After the last epoch the trainer settles the weights (its row says how many moved) before it scores and
    saves them: the checkpoint's weights have one code in float32 and float64."""
    from compiler.lower import load_model
    from lcq_train.plan import QuantPlan
    from lcq_train.train import TrainConfig, train

    metrics = train(TrainConfig(dataset="digits", plan=QuantPlan("lcq", 3, 3), epochs=2, out=str(tmp_path),
                                progress=False))
    first, last = metrics["epochs"]
    assert "settled_weights" not in first and isinstance(last["settled_weights"], int)
    model, _ = load_model(tmp_path / "checkpoint.pt")
    assert settle_weight_codes(model) == {}
    for name, layer in model.named_modules():
        if hasattr(layer, "wq"):
            assert torch.equal(_codes(layer, layer.weight, torch.float32), _codes(layer, layer.weight, torch.float64))


def test_a_layer_without_a_weight_scale_is_left_to_the_compiler():
    """All weights equal (sigma_w = 0) or a clip of 0: no code is defined, nothing moves and nothing is said here
    (compile_model names the problem: test_numeric_edges)."""
    net = _net(3)
    with torch.no_grad():
        net.get_submodule("2").weight.fill_(0.3)
        net.get_submodule("6").wq.alpha.fill_(0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert settle_weight_codes(net) == {}
