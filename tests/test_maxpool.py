"""Max pooling: the node's rules and file format, the reference against PyTorch, the lowering (where a max
pooling moves after the activation quantizer, and where it is refused)."""

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler import format as fmt
from compiler.agreement import compare
from compiler.capture import Unsupported
from compiler.graph import MaxPoolNode, ModelRuleError
from compiler.lower import compile_model
from compiler.reference import run
from lcq_train.plan import quantize_model

from helpers import images, randomize

sys.path.insert(0, str(Path(__file__).parent / "data"))
import compile_models as cm  # noqa: E402


@pytest.mark.parametrize("shape, window", [((3, 7, 7), (2, 2, 0)), ((2, 6, 5), (3, 2, 1)), ((1, 4, 4), (4, 3, 2)),
                                           ((2, 1, 1), (3, 1, 1)), ((2, 5, 3), (1, 1, 0))])
def test_reference_is_torch_max_pooling_of_codes(shape, window):
    """Zero padding of codes is PyTorch's -inf padding: every window holds an input position."""
    k, s, p = window
    node = MaxPoolNode("mp", "x", "y", k, s, p)
    codes = np.random.default_rng(sum(shape)).integers(0, 8, (4, *shape), dtype=np.uint8)
    want = F.max_pool2d(torch.from_numpy(codes.astype(np.float64)), k, s, p).numpy()
    got = node.apply(codes)
    assert got.dtype == np.uint8 and got.shape[1:] == node.out_shape(shape) and (got == want).all()
    # the minimum: PyTorch's max pooling of the negated codes, negated (its padding left out as well)
    least = MaxPoolNode("mp", "x", "y", k, s, p, minimum=True).apply(codes)
    assert least.dtype == np.uint8 and (least == -F.max_pool2d(-torch.from_numpy(codes.astype(np.float64)), k, s,
                                                                p).numpy()).all()


@pytest.mark.parametrize("field, value, says", [
    ("kernel", 0, "out of range; allowed 1..32"), ("stride", 17, "allowed 1..16"), ("padding", 2, "allowed 0..1"),
    ("kernel", True, "must be an integer"), ("name", "a b", "must be a name"),
])
def test_field_rules(field, value, says):
    node = MaxPoolNode("mp", "x", "y", 3, 2, 1)
    setattr(node, field, value)
    with pytest.raises(ModelRuleError, match=says):
        node.check_fields("here")


def _vgg(seed=3):
    torch.manual_seed(seed)
    return randomize(quantize_model(cm.MaxPoolVGG(10, 1), method="lcq", wbits=3, abits=3), 6, act_alpha=4.0)


@pytest.fixture(scope="module")
def vgg():
    net = _vgg()
    return net, compile_model(net, (1, 8, 8))


def test_vgg_lowers_each_max_pooling_after_its_quantizer(vgg):
    net, model = vgg
    ops = [(n.op, n.name if n.op != "input" else n.output, getattr(n, "input", None), n.output) for n in model.nodes]
    assert [o for o in ops if o[0] == "maxpool"] == [
        ("maxpool", "pool", "act_conv2.unpooled", "act_conv2"),
        ("maxpool", "overlap", "act_conv3.unpooled", "act_conv3"),
        ("maxpool", "max_pool", "act_conv4.unpooled", "act_conv4")]
    windows = [(n.kernel, n.stride, n.padding) for n in model.nodes if n.op == "maxpool"]
    assert windows == [(2, 2, 0), (3, 2, 1), (2, 1, 1)]
    assert [c.out_shape for c in model.convs] == [(8, 8, 8), (16, 4, 4), (32, 2, 2), (32, 3, 3), (10, 1, 1)]
    assert [c.stage.kind if c.stage else None for c in model.convs] == ["thresholds"] * 3 + [None, "requantize"]
    result = compare(model, net, images(64, (1, 8, 8), seed=4), np.zeros(64, dtype=np.int64))
    assert result.disagreements == 0 and all(m == 0 for _, m in result.codes.values())
    assert set(result.codes) == {"act_conv1", "act_conv2", "act_conv3", "act_conv4", "act_fc_1"}


def test_file_round_trip_and_field_checks(vgg, tmp_path):
    _, model = vgg
    path = tmp_path / "vgg.lcq"
    fmt.save(model, path)
    loaded = fmt.load(path)
    assert [vars(n) for n in loaded.nodes if n.op == "maxpool"] == [vars(n) for n in model.nodes if n.op == "maxpool"]
    x = images(8, (1, 8, 8), seed=5)
    want, got = run(model, x), run(loaded, x)
    assert all((want[k] == got[k]).all() for k in want)
    i = next(i for i, n in enumerate(model.nodes) if n.op == "maxpool")
    for edit, says in ((dict(padding=3), "field 'padding' = 3 is out of range"), (dict(kernel=9), "exceeds the padded"),
                       (dict(stride=1.0), "field 'stride' must be an integer"), (dict(extra=1), "unknown field"),
                       (dict(input="act_conv1.acc"), "is not defined"), (dict(input="conv5"), "is not defined")):
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        manifest = json.loads(bytes(arrays.pop("manifest.json")).decode())
        manifest["nodes"][i].update(edit)
        bad = tmp_path / "bad.lcq"
        fmt.write_members(bad, manifest, arrays)
        with pytest.raises(fmt.ModelFormatError, match=says):
            fmt.load(bad)


def test_graph_rules_of_max_pooling(vgg):
    """Its output shape follows from the input's (the next layer's in_shape must match); it reads codes."""
    _, model = vgg
    wrong = copy.deepcopy(model)
    next(n for n in wrong.nodes if n.op == "maxpool").stride = 1
    with pytest.raises(ModelRuleError, match=r"conv 'conv2'\): field 'in_shape' = \[8, 4, 4\] does not match .* "
                                             r"\[8, 7, 7\]"):
        wrong.validate()
    wrong = copy.deepcopy(model)
    wrong.nodes.append(MaxPoolNode("late", "logits", "late", 1, 1, 0))
    with pytest.raises(ModelRuleError, match=r"node 10 \(maxpool 'late'\): field 'input' tensor 'logits' must be "
                                             r"codes"):
        wrong.validate()


class _Net(nn.Module):
    def __init__(self, forward):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.fc = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.Linear(4, 10)
        self.body = forward

    def forward(self, x):
        return self.fc(torch.flatten(self.body(self, x), 1))


def _pooled_sum(m, y):
    """Max pooling of a conv's output and of another conv's, added: a residual addition of max-pooled values."""
    total = F.max_pool2d(y, 2) + F.max_pool2d(m.conv2(F.relu(y)), 2)
    return F.adaptive_avg_pool2d(F.relu(total), 1)


@pytest.mark.parametrize("body, says", [
    (lambda m, x: F.adaptive_avg_pool2d(F.relu(m.bn(F.max_pool2d(m.conv(x), 2))), 1),
     r"max_pool2d at .* is followed by global average pooling"),
    (lambda m, x: _pooled_sum(m, m.conv(x)), r"max_pool2d at .* is followed by a residual addition \(function "
                                             r"operator\.add"),
    (lambda m, x: F.max_pool2d(F.relu(m.conv(x)), 3, 3, 0, 1, True),
     r"ceil_mode True, return_indices False\) is not supported"),
    (lambda m, x: F.max_pool2d(F.relu(m.conv(x)), (2, 1)), r"needs a square kernel"),
    (lambda m, x: F.max_pool2d(F.relu(m.conv(x)), 2, dilation=2), r"dilation 2"),
    (lambda m, x: F.max_pool2d(F.relu(m.conv(x)), 9, 9), r"9x9 window, larger than its padded 8x8 input"),
    (lambda m, x: F.max_pool2d(x, 8), r"max pools the image, codes"),
])
def test_refusals_name_the_max_pooling(body, says):
    model = quantize_model(_Net(body), method="lcq", wbits=3, abits=3)
    with pytest.raises(Unsupported, match=says):
        compile_model(model, (1, 8, 8))


class _GlobalMax(nn.Module):
    """A conv, BN and ReLU, then the global maximum as ``how`` spells it, a linear classifier."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.conv, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.pool, self.fc = nn.AdaptiveMaxPool2d(1), nn.Linear(8, 10)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x)))
        if self.how == "AdaptiveMaxPool2d(1)":
            z = self.pool(y).flatten(1)
        elif self.how == "F.adaptive_max_pool2d(x, 1)":
            z = torch.flatten(F.adaptive_max_pool2d(y, 1), 1)
        elif self.how == ".amax((2, 3))":
            z = y.amax((2, 3))
        else:
            z = torch.amax(y, (-2, -1), keepdim=True).flatten(1)
        return self.fc(z)


@pytest.mark.parametrize("how", ["AdaptiveMaxPool2d(1)", "F.adaptive_max_pool2d(x, 1)", ".amax((2, 3))",
                                 "torch.amax(x, (-2, -1), keepdim=True)"])
def test_the_global_maximum_compiles_as_one_window_over_the_map(how):
    model = randomize(quantize_model(_GlobalMax(how), method="lcq", wbits=3, abits=3), seed=3)
    compiled = compile_model(model, (1, 8, 8))
    pools = [n for n in compiled.nodes if isinstance(n, MaxPoolNode)]
    assert [(n.kernel, n.stride, n.padding) for n in pools] == [(8, 1, 0)]
    result = compare(compiled, model, images(64, (1, 8, 8), seed=4), np.zeros(64, dtype=np.int64))
    assert result.disagreements == 0 and all(mismatched == 0 for _, mismatched in result.codes.values())


@pytest.mark.parametrize("shape, says", [((1, 8, 6), "takes the maximum of a 8x6 map; the max-pooling unit's windows "
                                                     "are square and at most 32 wide"),
                                         ((1, 40, 40), "takes the maximum of a 40x40 map")])
def test_a_global_maximum_the_unit_cannot_take_in_one_window_is_refused(shape, says):
    model = quantize_model(_GlobalMax("AdaptiveMaxPool2d(1)"), method="lcq", wbits=3, abits=3)
    with pytest.raises(Unsupported, match=rf"layer 'pool' \(AdaptiveMaxPool2d\) .*{says}"):
        compile_model(model, shape)

