"""Average pooling with no ReLU before it: of a residual stream (kuangliu's PreActResNet head), a conv's or a BN's
output, into an unsigned or a signed quantizer, with a BN and a ReLU after the pooling; and the average pooling of
a 1 x 1 conv's output folded into the conv (DenseNet's transition).

:func:`compiler.stages.pool_constants` with ``relu=False`` sums the sign-corrected values themselves; the integer
reference follows PyTorch code for code, and what cannot be computed by one pooling is refused, naming the fix.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler.agreement import compare
from compiler.capture import Unsupported
from compiler.graph import PoolNode
from compiler.lower import compile_model
from compiler.stages import pool_constants
from helpers import images, randomize
from lcq_train.plan import quantize_model

SHAPE = (1, 8, 8)


def _mismatches(net: nn.Module, seed: int, n: int = 24) -> tuple[object, int]:
    """``net`` quantized LCQ W3/A3 (random parameters from ``seed``), compiled for 1 x 8 x 8; returns the compiled
    model and the number of top classes and activation codes that differ from PyTorch on ``n`` random images."""
    torch.manual_seed(seed)
    model = randomize(quantize_model(net, method="lcq", wbits=3, abits=3), seed=seed)
    compiled = compile_model(model, SHAPE)
    result = compare(compiled, model, images(n, SHAPE, seed=seed + 1), np.zeros(n, dtype=np.int64))
    return compiled, result.disagreements + sum(m for _, m in result.codes.values())


@pytest.mark.parametrize("seed", range(4))
def test_the_pool_constants_of_a_linear_average_give_the_quantizers_codes(seed):
    """Each channel's code of ``mean(gain * x + offset)``, ``gain`` of either sign or 0, counted against the
    thresholds in floating point, equals the pool node's on its integer sum."""
    rng = np.random.default_rng(seed)
    c, positions, bound, frac = 12, 9, 200, 6
    gain = rng.uniform(-0.05, 0.05, c) * (rng.random(c) > 0.2)          # some channels 0
    offset = rng.uniform(-2.0, 2.0, c)
    t = np.sort(rng.uniform(0.05, 3.0, 7))
    sign, relu, off, stage, cap, _ = pool_constants(gain, offset, t, positions, frac, bound, 3, relu=False)
    assert cap is None and not off.any() and not relu[sign != 0].any()      # (relu is the format's where sign is 0)
    node = PoolNode("p", "x", "p", sign, relu, off, frac, stage)
    x = rng.integers(-bound, bound + 1, (50, c, 3, 3))
    codes = stage.apply(node.sums(x))[:, :, 0, 0]
    mean = gain * x.mean(axis=(2, 3)) + offset
    expected = (mean[:, :, None] >= t[None, None, :]).sum(axis=2)
    assert np.array_equal(codes, expected)


def test_a_clip_needs_the_relu_before_the_pooling():
    with pytest.raises(ValueError, match="a pooling without a ReLU before it takes no clip"):
        pool_constants(np.ones(2), np.zeros(2), np.array([0.5]), 4, 6, 10, 2, cap=6.0, relu=False)


class _Head(nn.Module):
    """A residual block whose sum (or a conv's output: ``residual`` False) the head averages, then ``after``
    (BN, ReLU, ...) before the classifier."""

    def __init__(self, residual=True, after=None, pool="global"):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.shortcut, self.bn = nn.Conv2d(1, 8, 1), nn.BatchNorm2d(8)
        self.residual, self.after, self.pool = residual, after or nn.Identity(), pool
        self.fc = nn.Linear(8 * (16 if pool == "window" else 1), 10)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        out = self.conv2(y) + self.shortcut(x) if self.residual else self.bn(self.conv2(y))
        out = F.avg_pool2d(out, 2) if self.pool == "window" else out.mean((2, 3), keepdim=True)
        return self.fc(torch.flatten(self.after(out), 1))


@pytest.mark.parametrize("make, pools, signed", [
    (lambda: _Head(), 2, True),
    (lambda: _Head(residual=False), 2, True),
    (lambda: _Head(pool="window"), 2, True),
    (lambda: _Head(after=nn.Sequential(nn.BatchNorm2d(8), nn.ReLU())), 1, False),
    (lambda: _Head(after=nn.Sequential(nn.ReLU(), nn.ReLU())), 1, False),
    (lambda: _Head(residual=False, pool="window", after=nn.Sequential(nn.BatchNorm2d(8), nn.ReLU6())), None, None),
], ids=["sum, global, signed", "conv + BN, global, signed", "sum, 2x2, signed", "sum, global, BN, ReLU",
        "ReLU twice", "conv + BN, 2x2, BN, ReLU6"])
def test_an_average_without_a_relu_before_it_is_exact(make, pools, signed):
    """The pooled values into the classifier's quantizer: signed (two pool nodes, the classifier reading both
    halves) where nothing rectifies them, unsigned after a BN and a ReLU; a ReLU6 after the pooling is refused
    (its clip would act on the average, the pool node clips each position)."""
    if pools is None:
        with pytest.raises(Unsupported, match=r"clips the image, codes or a pooled tensor"):
            _mismatches(make(), 0)
        return
    for seed in range(3):
        compiled, wrong = _mismatches(make(), seed)
        assert wrong == 0
        pooling = [n for n in compiled.nodes if n.op in ("pool", "avgpool")]
        assert len(pooling) == pools and not any(n.relu[n.sign != 0].any() for n in pooling)
        assert compiled.convs[-1].signed_input == signed


class _Transition(nn.Module):
    """DenseNet's transition, a 1 x 1 conv (``bn``: + BN) then an average pooling of ``k`` at stride ``s``, then
    BN, ReLU, a conv and the classifier."""

    def __init__(self, k=2, s=2, bn=False, kernel=1):
        super().__init__()
        self.conv0 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv = nn.Conv2d(6, 8, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.k, self.s = k, s
        self.bn2, self.conv2, self.fc = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 10)

    def forward(self, x):
        out = F.avg_pool2d(self.bn(self.conv(torch.relu(self.conv0(x)))), self.k, self.s)
        return self.fc(torch.relu(self.conv2(torch.relu(self.bn2(out)))).mean((2, 3)))


@pytest.mark.parametrize("k, s, bn", [(2, 2, False), (2, 2, True), (3, 2, False), (4, 4, True)])
def test_a_1x1_convs_average_pooling_is_a_kxk_conv(k, s, bn):
    """No pooling node: the conv is k x k at stride s, every tap the 1 x 1 weights, its scale 1 / k^2, and the
    codes are PyTorch's."""
    for seed in range(2):
        compiled, wrong = _mismatches(_Transition(k, s, bn), seed)
        assert wrong == 0
        conv = next(n for n in compiled.convs if n.name == "conv")
        side = (8 - k) // s + 1
        assert (conv.kernel, conv.stride, conv.padding, conv.out_shape) == (k, s, 0, (8, side, side))
        assert all(np.array_equal(conv.weight_codes[:, :, y, x], conv.weight_codes[:, :, 0, 0])
                   for y in range(k) for x in range(k))
        assert not any(n.op == "avgpool" for n in compiled.nodes)


class _PooledTwice(_Transition):
    def forward(self, x):
        out = F.avg_pool2d(F.avg_pool2d(self.conv(torch.relu(self.conv0(x))), 2), 2)
        return self.fc(torch.relu(self.conv2(torch.relu(self.bn2(out)))).mean((2, 3)))


def test_a_1x1_convs_second_average_pooling_pools_the_widened_convs_output():
    compiled, wrong = _mismatches(_PooledTwice(), 4)
    assert wrong == 0
    assert next(n for n in compiled.convs if n.name == "conv").kernel == 2
    assert [n.op for n in compiled.nodes].count("avgpool") == 1


def test_a_wider_convs_average_pooling_stays_a_pooling():
    """A 3 x 3 conv's taps would overlap once widened: the pooling is an AVGPOOL node of its values."""
    compiled, wrong = _mismatches(_Transition(kernel=3), 3)
    assert wrong == 0
    assert next(n for n in compiled.convs if n.name == "conv").kernel == 3
    assert [n.op for n in compiled.nodes].count("avgpool") == 1


class _Shared(nn.Module):
    """A 1 x 1 conv's raw output read by the average pooling and by a max pooling."""

    def __init__(self):
        super().__init__()
        self.conv0, self.conv = nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(6, 8, 1)
        self.conv2, self.conv3 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = self.conv(torch.relu(self.conv0(x)))
        a = torch.relu(self.conv2(torch.relu(F.avg_pool2d(y, 2))))
        b = torch.relu(self.conv3(F.max_pool2d(torch.relu(y), 2)))
        return self.fc(torch.cat([a, b], 1).mean((2, 3)))


def test_a_1x1_conv_read_elsewhere_keeps_its_size():
    compiled, wrong = _mismatches(_Shared(), 1)
    assert wrong == 0
    assert next(n for n in compiled.convs if n.name == "conv").kernel == 1


class _Refused(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.conv3, self.fc = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 10)

    def forward(self, x):
        y = self.conv1(x)
        if self.how == "relu twice":
            out = torch.relu(F.avg_pool2d(torch.relu(y), 2))
        else:                   # "added": an average pooling's output into a residual addition
            out = F.avg_pool2d(y, 2) + F.avg_pool2d(self.conv2(torch.relu(y)), 2)
        return self.fc(torch.relu(self.conv3(torch.relu(out))).mean((2, 3)))


@pytest.mark.parametrize("how, says", [
    ("relu twice", r"function torch\.relu .* is applied to the raw image or after a ReLU and a pooling; ReLU the "
                   r"layer's output once, before or after the pooling"),
    ("added", r"function operator\.add .* does not add two different outputs of conv or linear layers, BNs, "
              r"additions"),
])
def test_what_one_pooling_cannot_compute_is_refused(how, says):
    torch.manual_seed(0)
    model = quantize_model(_Refused(how), method="lcq", wbits=3, abits=3)
    with pytest.raises(Unsupported, match=says):
        compile_model(model, SHAPE)

