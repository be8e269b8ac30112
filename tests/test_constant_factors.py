"""Constant factors (``x * c``, ``c * x``, ``x / c``: residual scaling, LayerScale, SkipInit, scaled activations)
fold into the layer before them, or into the thresholds of the quantizer after them: every code equal to
PyTorch's; a factor the accelerator cannot fold is refused naming the fix."""

import operator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler.agreement import compare
from compiler.capture import Unsupported
from compiler.lower import CompileOptions, compile_model
from lcq_train.layers import QAct
from lcq_train.plan import quantize_model

from helpers import images, randomize

SPELLINGS = {
    "mul": lambda x, c: x * c,
    "rmul": lambda x, c: c * x,
    "div": lambda x, c: x / (1 / c),
    "torch.mul": lambda x, c: torch.mul(x, c),
    "torch.div": lambda x, c: torch.div(x, 1 / c),
    "method-mul": lambda x, c: x.mul(c),
    "method-div": lambda x, c: x.div(1 / c),
    "in-place": lambda x, c: x.mul_(c),
}


class Scaled(nn.Module):
    """Conv, BN and ReLU stages with a factor ``c`` (spelled by ``scale(x, c)``) at ``where``: on a BN's output
    before its ReLU ("bn"), after a ReLU before a conv's quantizer ("relu"), after a ReLU before the global average
    pooling ("pool"), after a max pooling ("maxpool"), on a residual branch (Inception-ResNet's scaling, "branch"),
    on a sum before its ReLU ("sum")."""

    def __init__(self, where: str, scale, c):
        super().__init__()
        self.where, self.scale, self.c = where, scale, c
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3, self.bn3 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv4, self.bn4 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def at(self, where: str, x):
        return self.scale(x, self.c) if where == self.where else x

    def forward(self, x):
        x = F.relu(self.at("bn", self.bn1(self.conv1(x))))
        x = self.at("maxpool", F.max_pool2d(self.at("relu", F.relu(self.conv2(x))), 2))
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.relu(self.at("sum", x + self.at("branch", self.bn4(self.conv4(x)))))
        return self.fc(self.at("pool", x).mean((2, 3)))


# A stream fine enough for the randomized branches (a branch scaled far below the stream, as by LayerScale's
# small factors, rounds together otherwise, and the compiler says so: tests/test_numeric_edges.py).
FINE_STREAM = CompileOptions(residual_frac_bits=12)


def mismatches(net: nn.Module, seed: int) -> int:
    """Codes and top classes of the compiled ``net`` that differ from PyTorch's on 30 random images."""
    compiled = compile_model(net, (1, 8, 8), FINE_STREAM)
    result = compare(compiled, net, images(30, (1, 8, 8), seed=seed), np.zeros(30, dtype=np.int64))
    assert sum(n for n, _ in result.codes.values()) > 0
    return result.disagreements + sum(m for _, m in result.codes.values())


def quantized(net: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return randomize(quantize_model(net, method="lcq", wbits=3, abits=3), seed + 1)


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("where", ["bn", "relu", "pool", "maxpool", "branch", "sum"])
def test_a_number_factor_compiles_exactly_wherever_it_stands(where, spelling):
    net = quantized(Scaled(where, SPELLINGS[spelling], 0.37), 3)
    assert mismatches(net, 4) == 0


@pytest.mark.parametrize("where,c", [("bn", -1.5), ("relu", -0.5), ("branch", -2.0)])
def test_a_negative_factor_compiles_exactly(where, c):
    """On values a negative factor is a negative gain; after a ReLU it mirrors the ReLU (lcq_train quantizes the
    product signed), the quantizer's two halves taking their thresholds back through it."""
    net = quantized(Scaled(where, SPELLINGS["mul"], c), 5)
    signed = [name for name, m in net.named_modules() if isinstance(m, QAct) and m.signed]
    assert signed == (["act_conv3"] if where == "relu" else [])
    assert mismatches(net, 6) == 0


def test_a_factor_after_a_relu_keeps_its_quantizer_unsigned():
    """lcq_train's plan: a ReLU's output times or divided by a positive number cannot be negative."""
    for spelling in SPELLINGS:
        net = quantize_model(Scaled("relu", SPELLINGS[spelling], 0.5), method="lcq", wbits=3, abits=3)
        assert not net.act_conv3.signed, spelling


class LayerScale(nn.Module):
    """A residual block whose branch a learned per-channel factor scales (CaiT's and ConvNeXt's LayerScale, shape
    (C, 1, 1) or (1, C, 1, 1), or one value: SkipInit), then a parameter factor after a ReLU, read by a conv (its
    quantizer signed: the parameter's sign is training's to choose) and, where ``pool``, the pooled features times
    a buffer."""

    def __init__(self, shape):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv, self.bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        gamma = torch.linspace(0.5, 1.5, int(np.prod(shape)))
        gamma[0] = -0.8 if gamma.numel() > 1 else 0.8            # (a branch scaled to ~0 needs a finer stream)
        self.gamma = nn.Parameter(gamma.reshape(shape))
        self.head = nn.Conv2d(8, 8, 3, padding=1)
        self.register_buffer("temperature", torch.tensor([2.0]))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(x + self.gamma * self.bn(self.conv(x)))
        x = self.head(x.mul(self.gamma))
        return self.fc(x.mean((2, 3)) / self.temperature)


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1, 1), (1,), ()], ids=["C11", "1C11", "one", "scalar"])
def test_parameter_and_buffer_factors_compile_exactly(shape):
    net = quantized(LayerScale(shape), 7)
    compiled = compile_model(net, (1, 8, 8), FINE_STREAM)
    assert [n.op for n in compiled.nodes].count("activate") >= 2         # act_head: the signed halves
    assert mismatches(net, 8) == 0


class Joined(nn.Module):
    """A per-channel factor on a concatenation of two branches (each part its own channels of it) before a ReLU, or
    a number after it (commuting with it and the global max pooling after)."""

    def __init__(self, after_relu: bool):
        super().__init__()
        self.after_relu = after_relu
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 6, 1)
        self.register_buffer("factor", torch.linspace(0.2, 2.0, 10).reshape(1, 10, 1, 1))
        self.fc = nn.Linear(10, 10)

    def forward(self, x):
        x = torch.cat([self.a(x), self.b(x)], 1)
        x = F.relu(x) * 1.5 if self.after_relu else F.relu(x * self.factor)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1) if not self.after_relu else x.amax((2, 3)))


@pytest.mark.parametrize("after_relu", [False, True])
def test_a_factor_on_a_concatenation_scales_each_part_by_its_channels(after_relu):
    net = quantized(Joined(after_relu), 9)
    assert mismatches(net, 10) == 0


class CurveThenPool(nn.Module):
    """An activation the quantizer takes its thresholds back through (sigmoid, LeakyReLU), a factor (a number, or a
    parameter), then the global average pooling: lcq_train's plan puts the quantizer before the pooling, after the
    factor, as it does right after such an activation (the compiler's curve ends in the factor)."""

    def __init__(self, curve, factor, spelling=SPELLINGS["mul"]):
        super().__init__()
        self.curve, self.factor, self.spelling = curve, factor, spelling
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, 8).reshape(8, 1, 1))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.curve(self.conv2(F.relu(self.conv1(x))))
        x = self.spelling(x, self.gamma if self.factor == "parameter" else 2.0)
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("spelling", ["mul", "rmul", "torch.mul", "method-mul", "in-place"])
@pytest.mark.parametrize("factor", ["number", "parameter"])
@pytest.mark.parametrize("curve", [torch.sigmoid, lambda x: F.leaky_relu(x, 0.1)], ids=["sigmoid", "leaky"])
def test_a_factor_between_an_activation_and_its_pooling_compiles_exactly(curve, factor, spelling):
    net = quantized(CurveThenPool(curve, factor, SPELLINGS[spelling]), 11)
    assert "mean" in [n.target for n in net.graph.nodes if n.op == "call_method"]
    pooled = next(n for n in net.graph.nodes if n.target == "mean")
    assert pooled.args[0].op == "call_module" and pooled.args[0].target == "act_fc"       # (codes pooled)
    assert mismatches(net, 12) == 0


@pytest.mark.parametrize("spelling", ["div", "torch.div", "method-div"])
def test_a_divisor_between_an_activation_and_its_pooling_compiles_exactly(spelling):
    """(A division by a parameter would divide by 1 / gamma: the spellings above by numbers.)"""
    net = quantized(CurveThenPool(torch.sigmoid, "number", SPELLINGS[spelling]), 13)
    pooled = next(n for n in net.graph.nodes if n.target == "mean")
    assert pooled.args[0].op == "call_module" and pooled.args[0].target == "act_fc"
    assert mismatches(net, 14) == 0



class Refused(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.ones(8, 1, 1))
        self.zero = nn.Parameter(torch.zeros(1))
        self.row = nn.Parameter(torch.ones(1, 8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        h = F.relu(self.conv(x))
        if self.how == "computed":
            h = h * self.gamma.abs()
        elif self.how == "product":
            h = h * F.relu(self.conv(x) - 1)
        elif self.how == "reciprocal":
            h = 2 / h
        elif self.how == "by-zero":
            h = h / self.zero
        elif self.how == "shape":
            h = h * self.row
        elif self.how == "rounding":
            h = torch.div(h, 2, rounding_mode="floor")
        y = self.fc(h.mean((2, 3)))
        return y * 0.5 if self.how == "logits" else y


@pytest.mark.parametrize("how,pattern", [
    ("computed", r"parameter or buffer 'gamma' .* is read outside a layer"),
    ("logits", r"function operator\.mul at .* scales the logits of the last layer 'fc': leave the factor out \(a "
               r"positive one keeps the top class; a temperature belongs in the loss\), or fold it into that layer's "
               r"weights and bias"),
    ("reciprocal", r"function operator\.truediv at .* is not supported: the accelerator multiplies a tensor only by "
                   r"a constant"),
    ("by-zero", r"function operator\.truediv at .* divides by 'zero', which no stage folds \(a factor is finite, a "
                r"divisor not 0\): retrain with another value, or restore the checkpoint from a copy"),
    ("shape", r"function operator\.mul at .* multiplies by 'row' of shape \(1, 8\); a factor has one value, or one "
              r"a channel: shape \(C, 1, 1\) or \(1, C, 1, 1\)"),
    ("rounding", r"function torch\.div.* is not supported"),
])
def test_a_factor_the_accelerator_cannot_fold_is_refused_by_name(how, pattern):
    net = quantize_model(Refused(how), method="lcq", wbits=3, abits=3).eval()
    with pytest.raises(Unsupported, match=pattern):
        compile_model(net, (1, 8, 8))


def test_scaling_the_image_is_refused_as_a_normalization():
    class Normalized(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(F.relu(self.conv(x * 2.0)).mean((2, 3)))

    net = quantize_model(Normalized(), method="lcq", wbits=3, abits=3).eval()
    with pytest.raises(Unsupported, match=r"normalizes the input image"):
        compile_model(net, (1, 8, 8))


def test_the_spellings_are_the_functions_the_compiler_reads():
    """fx records ``x * c`` as operator.mul and ``x / c`` as operator.truediv: the table above spells each."""
    traced = torch.fx.symbolic_trace(Scaled("bn", SPELLINGS["div"], 2.0))
    assert operator.truediv in {n.target for n in traced.graph.nodes}
