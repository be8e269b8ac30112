"""Non-decreasing activations before a quantizer (compiler.curves): sigmoid, tanh, ELU, CELU, SELU, softplus,
softsign, hardtanh, hardsigmoid, clamp and the leaky ReLUs fold into the quantizer's thresholds, taken back through
them.

Each curve's inverse is the least input reaching a threshold (``f(v) >= t`` exactly where ``v >= f^-1(t)``, against
PyTorch's own function); a network with each of them between its layers, unsigned (sigmoid) and signed quantizers,
max pooling too, compiles with every code equal to PyTorch's; what cannot fold is refused with the reason (an average
pooling of a curve's output, a curve on the logits, a non-monotone activation). The trained LeNet-5 with tanh runs in
tests/test_compile_graph.py; the hardware has nothing new (the thresholds are integers as before).
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler.agreement import compare
from compiler.curves import SELU_ALPHA, SELU_SCALE, Curve, elu_curve, leaky_curve, softplus_curve
from compiler.lower import compile_model
from helpers import images, randomize
from lcq_train.plan import quantize_model

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
import compile_models as cm  # noqa: E402

# (curve, PyTorch's function, the curve's infimum and supremum: every input reaches a threshold at or below the
# one, none one above the other)
CURVES = [
    (Curve("sigmoid", "sigmoid"), torch.sigmoid, 0, 1),
    (Curve("tanh", "tanh"), torch.tanh, -1, 1),
    (elu_curve("elu", "elu", 0.7), lambda v: F.elu(v, 0.7), -0.7, np.inf),
    (elu_curve("celu", "celu", 0.7), lambda v: F.celu(v, 0.7), -0.7, np.inf),
    (elu_curve("elu", "selu", SELU_ALPHA, SELU_SCALE), F.selu, -SELU_ALPHA * SELU_SCALE, np.inf),
    (Curve("softsign", "softsign"), F.softsign, -1, 1),
    (softplus_curve("softplus", 1.5, 20.0), lambda v: F.softplus(v, 1.5), 0, np.inf),
    (Curve("hardtanh", "hardtanh", (-0.5, 0.75)), lambda v: F.hardtanh(v, -0.5, 0.75), -0.5, 0.75),
    (Curve("hardsigmoid", "hardsigmoid"), F.hardsigmoid, 0, 1),
    (leaky_curve("leaky", 0.1), lambda v: F.leaky_relu(v, 0.1), -np.inf, np.inf),
    (leaky_curve("relu", 0.0), torch.relu, 0, np.inf),
]


@pytest.mark.parametrize("curve, f, low, high", CURVES, ids=[c[0].name for c in CURVES])
def test_the_inverse_is_the_least_input_that_reaches_a_threshold(curve, f, low, high):
    """On a fine grid of inputs and thresholds across (and beyond) the curve's range: ``f(v) >= t`` iff ``v >=
    f^-1(t)`` but within rounding of the threshold; ``-inf`` where every input reaches it (at the infimum or
    below), ``+inf`` where none does (above the supremum)."""
    v = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    y = f(v).numpy()
    t = np.linspace(y.min() - 0.5, y.max() + 0.5, 97)
    inverse = curve.inverse(t[None, :])[0]
    reaches = y[:, None] >= t[None, :]
    back = v.numpy()[:, None] >= inverse[None, :]
    near = np.abs(v.numpy()[:, None] - inverse[None, :]) < 1e-9
    assert np.array_equal(reaches | near, back | near)
    edges = curve.inverse(np.array([[low - 1e-9, low, high + 1e-9]]))[0]
    assert np.isneginf(edges[:2]).all() or np.isinf(low)
    assert np.isposinf(edges[2]) or np.isinf(high)


class _Curved(nn.Module):
    """Conv, BN, then ``kind`` (a module or function) before every next layer, max pooled in between."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.modules_ = nn.ModuleDict({"Sigmoid": nn.Sigmoid(), "Tanh": nn.Tanh(), "ELU": nn.ELU(0.5),
                                       "CELU": nn.CELU(0.5), "SELU": nn.SELU(), "Softsign": nn.Softsign(),
                                       "Hardtanh": nn.Hardtanh(-0.5, 1.0), "Hardsigmoid": nn.Hardsigmoid(),
                                       "Softplus": nn.Softplus(2.0),
                                       "PReLU": nn.PReLU(8, 0.2)})
        self.fc = nn.Linear(8 * 2 * 2, 10)

    def act(self, x):
        k = self.kind
        if k in self.modules_:
            return self.modules_[k](x)
        return {"torch.tanh": torch.tanh, ".sigmoid()": lambda y: y.sigmoid(), "F.elu": lambda y: F.elu(y, 0.3),
                "F.softplus": lambda y: F.softplus(y, 1.0, 2.0),
                "clamp": lambda y: torch.clamp(y, -0.25, 0.75), ".clamp(max)": lambda y: y.clamp(max=0.5),
                "F.hardtanh": lambda y: F.hardtanh(y, -2.0, 0.5)}[k](x)

    def forward(self, x):
        x = F.max_pool2d(self.act(self.bn1(self.conv1(x))), 2)          # 8x8 -> 4x4
        x = F.max_pool2d(self.act(self.bn2(self.conv2(x))), 2)          # -> 2x2
        return self.fc(torch.flatten(x, 1))


KINDS = ["Sigmoid", "Tanh", "ELU", "CELU", "SELU", "Softsign", "Hardtanh", "Hardsigmoid", "PReLU", "Softplus",
         "torch.tanh",
         ".sigmoid()", "F.elu", "F.softplus", "clamp", ".clamp(max)", "F.hardtanh"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_curve_compiles_with_every_code_equal_to_pytorch(kind):
    torch.manual_seed(2)
    net = randomize(quantize_model(_Curved(kind), method="lcq", wbits=3, abits=3), seed=2, act_alpha=0.6)
    model = compile_model(net, (1, 8, 8))
    x = images(32, model.input.shape, seed=2)
    result = compare(model, net, x, np.zeros(len(x), dtype=np.int64))
    assert result.disagreements == 0
    assert set(result.codes) == {"act_conv1", "act_conv2", "act_fc"}
    assert all(mismatched == 0 for _, mismatched in result.codes.values())
    # the quantizers after the curve hold codes other than 0 (the thresholds are reached)
    signed = [m.signed for name, m in net.named_modules() if name in ("act_conv2", "act_fc")]
    assert signed == [kind not in ("Sigmoid", ".sigmoid()", "Hardsigmoid")] * 2     # (softplus: not known >= 0)


def test_a_threshold_in_softplus_step_is_refused():
    """PyTorch's softplus turns into x where beta * x > threshold, a step down there: a quantizer threshold inside
    it has no threshold on the input, and is refused."""
    curve = softplus_curve("nn.Softplus", 1.0, 6.0)
    inside = 6.0 + 0.5 * np.log1p(np.exp(-6.0))
    assert np.isfinite(curve.inverse(np.array([[5.9, 6.1]]))).all()
    with pytest.raises(ValueError, match=r"nn.Softplus: the quantizer after it has a threshold 6.00124 in the step "
                                         r"where softplus turns into x \(beta \* x > 6\)"):
        curve.inverse(np.array([[1.0, inside]]))


def test_without_the_curve_the_codes_differ():
    """The thresholds taken back through tanh, not tanh's input's: the same network compiled as if the curve were
    the identity disagrees with PyTorch."""
    torch.manual_seed(2)
    net = randomize(quantize_model(_Curved("Tanh"), method="lcq", wbits=3, abits=3), seed=2, act_alpha=0.6)
    x = images(32, (1, 8, 8), seed=2)
    identity = Curve("hardtanh", "identity", (-np.inf, np.inf))
    original = Curve.inverse
    try:
        Curve.inverse = lambda self, t: original(identity, t)
        model = compile_model(net, (1, 8, 8))
    finally:
        Curve.inverse = original
    assert compare(model, net, x, np.zeros(len(x), dtype=np.int64)).codes["act_conv2"][1] > 0


class _Refused(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind, self.conv, self.fc = kind, nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4, 10)
        self.wide = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        y = self.conv(x)
        if self.kind == "pooled":
            return self.wide(torch.flatten(F.avg_pool2d(torch.sigmoid(y), 3, 1, 1), 1))
        if self.kind == "logits":
            return torch.sigmoid(self.fc(torch.relu(y).mean((2, 3))))
        if self.kind == "twice":
            return self.fc(torch.tanh(torch.sigmoid(y)).amax((2, 3)))
        return self.fc(F.softshrink(y).amax((2, 3)))


@pytest.mark.parametrize("kind, says", [
    ("pooled", r"function torch.flatten .* flattens the average of 3x3 windows of an activation's \(or a max "
               r"pooling's\) codes .* where the windows tile the map .* read it with a 1 x 1 conv"),
    ("logits", r"applies torch.sigmoid to the logits: leave it off \(a non-decreasing function of each logit keeps "
               r"the top class"),
    ("twice", r"function torch.tanh .* is applied to codes, pooled values or the output of a ReLU, clip or another "
              r"activation; .* one activation between a layer and its quantizer"),
    ("softshrink", r"function torch.nn.functional.softshrink .* is not supported: use nn.ReLU, nn.LeakyReLU or "
                   r"another activation the quantizer after it takes its thresholds back through"),
])
def test_what_cannot_fold_is_refused_with_the_reason(kind, says):
    net = randomize(quantize_model(_Refused(kind), method="lcq", wbits=3, abits=3), seed=0)
    with pytest.raises(ValueError, match=says):
        compile_model(net, (1, 8, 8))


def test_lenet5_with_tanh_and_a_sigmoid_compiles_exactly():
    torch.manual_seed(4)
    net = randomize(quantize_model(cm.tanh_lenet(10, 1), method="lcq", wbits=3, abits=3), seed=4, act_alpha=0.6)
    model = compile_model(net, (1, 8, 8))
    assert sum(getattr(n, "minimum", False) for n in model.nodes) == 2
    x = images(32, model.input.shape, seed=4)
    result = compare(model, net, x, np.zeros(len(x), dtype=np.int64))
    assert result.disagreements == 0 and all(mismatched == 0 for _, mismatched in result.codes.values())


class _BNAfter(nn.Module):
    """A BN after the activation (Keras-style conv -> ReLU -> BN), after a max pooling, after tanh, after a join of
    ReLU'd parts."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.side = nn.Conv2d(8, 8, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(8 * 2 * 2 * (2 if kind == "join" else 1), 10)

    def forward(self, x):
        k = self.kind
        if k == "relu, BN, max pool":
            x = F.max_pool2d(self.bn1(F.relu(self.conv1(x))), 2)
        elif k == "relu, max pool, BN":
            x = self.bn1(F.max_pool2d(F.relu(self.conv1(x)), 2))
        else:
            x = F.max_pool2d(self.bn1(torch.tanh(self.conv1(x))), 2)
        if k == "join":
            x = F.relu(self.bn3(torch.cat([F.relu(self.conv2(x)), F.relu6(self.side(x))], 1)))
        else:
            x = self.bn2(torch.relu(self.conv2(x)))
        return self.fc(torch.flatten(F.max_pool2d(x, 2), 1))


@pytest.mark.parametrize("kind", ["relu, BN, max pool", "relu, max pool, BN", "tanh, BN", "join"])
def test_a_batch_norm_after_the_activation_folds_into_the_thresholds_after_it(kind):
    """``BN(f(v))`` is a curve of ``v``: non-decreasing where the BN's scale is >= 0, else (randomize gives some
    channels negative scales) mirrored on a negated input; every code equal to PyTorch's. A max pooling before the
    BN keeps its order only with scales >= 0."""
    torch.manual_seed(3)
    net = randomize(quantize_model(_BNAfter(kind), method="lcq", wbits=3, abits=3), seed=3, act_alpha=0.6)
    assert all((m.weight < 0).any() for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    if kind == "relu, max pool, BN":
        with torch.no_grad():
            net.bn1.weight.abs_()
    model = compile_model(net, (1, 8, 8))
    x = images(32, model.input.shape, seed=3)
    result = compare(model, net, x, np.zeros(len(x), dtype=np.int64))
    assert result.disagreements == 0 and all(mismatched == 0 for _, mismatched in result.codes.values())


def test_a_batch_norm_of_negative_scale_after_a_max_pooling_is_refused():
    torch.manual_seed(3)
    net = randomize(quantize_model(_BNAfter("relu, max pool, BN"), method="lcq", wbits=3, abits=3), seed=3)
    with torch.no_grad():
        net.bn1.weight.abs_()
        net.bn1.weight[2] = -0.5
    with pytest.raises(ValueError, match=r"layer 'bn1' \(BatchNorm2d\) .* follows a max pooling, and scales channel 2 "
                                         r"by -0.\d+ < 0, which would turn the maximum into a minimum: put the BN "
                                         r"before the max pooling"):
        compile_model(net, (1, 8, 8))
