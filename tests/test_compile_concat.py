"""Channel concatenation (``torch.cat(parts, 1)``): compiled into a concat node of codes that agrees with PyTorch
code for code, the file rules of that node, and the concatenations the compiler refuses."""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler.agreement import compare, unmatched_codes
from compiler.capture import Unsupported
from compiler.format import ModelFormatError, load, save, write_members
from compiler.graph import ConcatNode, ModelRuleError, PoolNode
from compiler.lower import compile_model
from compiler.network import NetworkPlanError, plan_network
from compiler.reference import run
from hw.network_params import NetworkParams, pairs_pay
from lcq_train.plan import quantize_model

from helpers import images, members, randomize, sim_in_verilator

sys.path.insert(0, str(Path(__file__).parent / "data"))
import compile_models as cm  # noqa: E402


class SharedPart(nn.Module):
    """A part that another layer reads too (DenseNet-style: a block's input joined to its output), clipped parts
    (ReLU6), the join along dimension -3, and the concatenation averaged globally."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(10, 8, 3, padding=1, stride=2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        z = torch.relu(self.bn2(self.conv2(y)))
        joined = F.relu6(torch.cat((y, z), dim=-3))                   # (the channels, counted from the end)
        return self.fc(torch.relu(self.conv3(joined)).mean((2, 3)))


class TwoReaders(nn.Module):
    """A concatenation that two quantizers read (one after a max pooling), and a join of globally pooled vectors
    before the classifier."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 3, padding=1)
        self.c1, self.c2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        p = torch.relu(self.c1(F.max_pool2d(y, 2))).mean((2, 3))
        q = torch.relu(self.c2(y)).mean((2, 3))
        return self.fc(torch.cat([p, q], 1))


class SizedJoin(nn.Module):
    """A join whose size a reshape reads: max pooled and flattened into a linear layer by
    ``x.view(x.size(0), -1)`` (LeNet's spelling), or averaged globally and flattened by ``x.reshape(x.shape[0], -1)``
    (the spelling of torchvision-style Inception and DenseNet heads)."""

    def __init__(self, pooled=False):
        super().__init__()
        self.pooled = pooled
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(8 if pooled else 8 * 4 * 4, 10)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        if self.pooled:
            y = F.adaptive_avg_pool2d(y, 1)
            return self.fc(y.reshape(y.shape[0], -1))
        y = F.max_pool2d(y, 2)
        return self.fc(y.view(y.size(0), -1))


class DenseLike(nn.Module):
    """DenseNet-style: each layer reads the BN and ReLU of the join of all earlier features (their raw conv outputs,
    each BN's channels split between the parts), the second join nested on the first, global average pooling."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv1, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn3 = nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        f0 = self.stem(x)
        j1 = torch.cat([f0, self.conv1(torch.relu(self.bn1(f0)))], 1)
        j2 = torch.cat([j1, self.conv2(torch.relu(self.bn2(j1)))], 1)
        return self.fc(torch.relu(self.bn3(j2)).mean((2, 3)))


def _quantized(net, seed=0):
    torch.manual_seed(seed)
    return randomize(quantize_model(net, method="lcq", wbits=3, abits=3), seed=seed)


@pytest.fixture(scope="module")
def squeeze():
    model = _quantized(cm.squeeze_net(10, 1))
    return model, compile_model(model, (1, 8, 8))


def _concats(compiled):
    return [n for n in compiled.nodes if isinstance(n, ConcatNode)]


def test_fire_modules_compile_to_concat_nodes_of_codes(squeeze):
    _, compiled = squeeze
    first, second = _concats(compiled)
    assert (first.name, second.name) == ("fire1.cat", "fire2.cat")
    tensors = compiled.validate()
    # the first is max pooled into the next quantizer's codes; the second's parts are each pooled globally
    assert tensors[first.output].shape == (16, 8, 8) and [tensors[p].shape for p in first.inputs] == [(8, 8, 8)] * 2
    readers = [n for n in compiled.nodes if getattr(n, "input", None) == first.output]
    assert [type(n).__name__ for n in readers] == ["MaxPoolNode"]
    assert all(isinstance(n, PoolNode) for n in compiled.nodes if n.output in second.inputs)
    assert tensors[second.output].shape == (32, 1, 1)


@pytest.mark.parametrize("which", ["squeeze_net", "shared_part", "two_readers", "sized_join", "sized_pooled_join",
                                   "dense_like"])
def test_concatenations_agree_with_pytorch_code_for_code(squeeze, which):
    net = {"shared_part": SharedPart, "two_readers": TwoReaders, "sized_join": SizedJoin,
           "sized_pooled_join": lambda: SizedJoin(pooled=True), "dense_like": DenseLike}.get(which)
    model, compiled = squeeze if net is None else (_quantized(net(), seed=1), None)
    compiled = compiled or compile_model(model, (1, 8, 8))
    x = images(64, (1, 8, 8), seed=3)
    result = compare(compiled, model, x, np.zeros(64, dtype=np.int64))
    assert result.disagreements == 0
    assert result.codes and all(mismatched == 0 for _, mismatched in result.codes.values())
    # every codes tensor is compared, or read on the way to one that is (the parts, the unpooled concatenation)
    assert unmatched_codes(compiled, model) == []


def test_a_concatenation_round_trips_through_the_file(squeeze, tmp_path):
    _, compiled = squeeze
    save(compiled, tmp_path / "m.lcq")
    loaded = load(tmp_path / "m.lcq")
    assert [(n.name, tuple(n.inputs), n.output) for n in _concats(loaded)] == \
        [(n.name, tuple(n.inputs), n.output) for n in _concats(compiled)]
    x = images(8, (1, 8, 8), seed=5)
    np.testing.assert_array_equal(run(loaded, x)["logits"], run(compiled, x)["logits"])


def _with_concat(compiled, index, **changes):
    nodes = list(compiled.nodes)
    i = nodes.index(_concats(compiled)[index])
    nodes[i] = dataclasses.replace(nodes[i], **changes)
    return dataclasses.replace(compiled, nodes=nodes)


def test_concat_node_rules(squeeze):
    _, compiled = squeeze
    first, second = _concats(compiled)
    value = next(n.input for n in compiled.nodes if isinstance(n, PoolNode))       # a raw accumulator
    cases = [
        (0, (first.inputs[0],), "must be 2..64 tensor names"),
        (0, (first.inputs[0], first.inputs[0]), "names a tensor twice"),
        (0, ("nowhere", first.inputs[1]), "tensor 'nowhere' is not defined by an earlier node"),
        (1, (second.inputs[0], value), f"tensor '{value}' must be codes"),
        (1, (second.inputs[0], first.inputs[0]), "is a 8x8 map; inputs\\[0\\] is 1x1"),
        (0, (first.inputs[0], compiled.input.output), "holds 8-bit codes, inputs\\[0\\] 3-bit"),
    ]
    for index, inputs, message in cases:
        with pytest.raises(ModelRuleError, match=message):
            _with_concat(compiled, index, inputs=inputs).validate()


def test_a_concat_node_of_another_shape_in_a_file_is_refused(squeeze, tmp_path):
    _, compiled = squeeze
    save(compiled, tmp_path / "m.lcq")
    manifest, arrays = members(tmp_path / "m.lcq")
    node = next(n for n in manifest["nodes"] if n["op"] == "concat")
    node["inputs"] = "fire1.expand1"
    write_members(tmp_path / "bad.lcq", manifest, arrays)
    with pytest.raises(ModelFormatError, match=r"concat 'fire1\.cat'.*inputs.*must be 2\.\.64 tensor names"):
        load(tmp_path / "bad.lcq")


class _Cat(nn.Module):
    """Two conv branches on the image, joined as ``how`` says."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 if how != "image" else 5, 10)

    def forward(self, x):
        a, b = torch.relu(self.a(x)), torch.relu(self.b(x))
        if self.how == "width":
            y = torch.cat([a, b], 2)
        elif self.how == "image":
            y = torch.cat([x, a], 1)
        elif self.how == "twice":
            y = torch.cat([a, a], 1)[:, :4]
        elif self.how == "sizes":
            y = torch.cat([a, F.max_pool2d(b, 2)], 1)
        elif self.how == "bn":
            y = torch.relu(self.bn(torch.cat([a, b], 1)))
        else:                                                       # add
            y = torch.cat([a, b], 1) + torch.cat([b, a], 1)
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize("how, message", [
    ("width", r"torch\.cat at .*test_compile_concat\.py:\d+ .*joins along dimension 2; the accelerator joins along "
              r"the channels only: torch\.cat\(parts, 1\)"),
    ("image", r"joins the input image \(part 0\); a concatenation joins the outputs of conv"),
    ("twice", r"joins one layer's output twice"),
    ("sizes", r"joins maps of sizes \[\(4, 4\), \(8, 8\)\]"),
    ("add", r"reads a channel concatenation"),
])
def test_concatenations_the_accelerator_cannot_run_are_refused(how, message):
    model = quantize_model(_Cat(how), method="lcq", wbits=3, abits=3).eval()
    with pytest.raises(Unsupported, match=message):
        compile_model(model, (1, 8, 8))


def test_a_join_of_one_part_is_the_part():
    class One(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4, 10)

        def forward(self, x):
            return self.fc(F.max_pool2d(torch.cat([torch.relu(self.a(x))], 1), 2).amax((2, 3)))

    model = _quantized(One())
    compiled = compile_model(model, (1, 8, 8))
    assert _concats(compiled) == []
    result = compare(compiled, model, images(32, (1, 8, 8), seed=3), np.zeros(32, dtype=np.int64))
    assert result.disagreements == 0 and all(mismatched == 0 for _, mismatched in result.codes.values())


# --------------------------------------------------------------------------- on the chip


def test_each_part_is_placed_at_its_first_channels_word_of_the_concatenation(squeeze):
    _, compiled = squeeze
    first, second = _concats(compiled)
    plan = plan_network(compiled, lanes=4)
    assert not [s for s in plan.steps if s.name in (first.name, second.name)]       # no step of their own
    for node in (first, second):
        whole, channel = plan.tensors[node.output], 0
        for part in node.inputs:
            t = plan.tensors[part]
            c, h, w = t.shape
            assert t.within == node.output and t.base == whole.base + channel // 4 * h * w
            channel += c
        # the region is alive from its first part's write to its last reader
        assert whole.first == min(plan.tensors[p].first for p in node.inputs) and whole.last > whole.first


class SharedPartLast(SharedPart):
    """SharedPart joining its parts the other way round: the block's input, which conv2 reads too, comes second."""

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        z = torch.relu(self.bn2(self.conv2(y)))
        return self.fc(torch.relu(self.conv3(F.relu6(torch.cat((z, y), 1)))).mean((2, 3)))


def test_a_part_a_conv_writes_starts_inside_a_word(squeeze):
    """At 16 lanes the fire modules' second parts start at channel 8: their convs write them from lane 8 of the
    join's words on (TensorPlan.lane, register dst_lane)."""
    _, compiled = squeeze
    plan = plan_network(compiled, lanes=16)
    first, _ = _concats(compiled)
    whole, part = plan.tensors[first.output], plan.tensors[first.inputs[1]]
    assert (part.within, part.base, part.lane) == (first.output, whole.base, 8)
    assert plan.tensors[first.inputs[0]].lane == 0


def test_a_part_another_layer_reads_is_refused_inside_a_word_naming_the_rows_that_fit():
    """SharedPartLast's second part (the block's input, 4 channels after 6) is read by conv2 as well, which takes a
    tensor from lane 0 of its words: at 4 lanes it would start at lane 2."""
    compiled = compile_model(_quantized(SharedPartLast()), (1, 8, 8))
    assert plan_network(compiled, lanes=2)
    with pytest.raises(NetworkPlanError, match=r"part 1 .* starts at channel 6, inside a word of 4 codes; on the chip "
                                               r"a part starts a word, but for one that a conv writes and only its "
                                               r"concatenation reads: build with rows \(code lanes\) dividing every "
                                               r"part's first channel \(1, 2, 3, 6 would\)"):
        plan_network(compiled, lanes=4)


def test_pairs_are_written_only_where_every_part_starts_at_an_even_word():
    """Two 16-channel parts, each pooled globally: at 16 lanes the second starts at word 1, so a core that writes
    positions in pairs (every tensor at an even word) cannot place it; on a 16 x 16 array, where pairs would pay,
    NetworkParams goes without them."""
    compiled = compile_model(_quantized(_PooledParts()), (1, 16, 16))
    assert plan_network(compiled, lanes=16, align=1)
    with pytest.raises(NetworkPlanError, match="at an odd word: positions are written in pairs"):
        plan_network(compiled, lanes=16, align=2)
    engine = NetworkParams.for_model(compiled, 16, 16, write_pairs=False).engine
    assert pairs_pay(compiled, engine)
    assert not NetworkParams.for_model(compiled, 16, 16).engine.write_pairs


class _PooledParts(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.a, self.b = nn.Conv2d(16, 16, 1), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        return self.fc(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1).mean((2, 3)))


@pytest.mark.sim
@pytest.mark.parametrize("net", [SharedPart, SizedJoin])
def test_parts_that_start_inside_a_word_run_bit_exact_in_verilator(net, tmp_path, capsys):
    """On a 3 x 3 core the second part of SharedPart and of SizedJoin starts at channel 4, lane 1 of a word (the
    join then max pooled and flattened into a linear layer): its conv writes it from that lane on; every step's
    tensor, each part's codes and the logits equal the integer reference in Verilator."""
    compiled = compile_model(_quantized(net(), seed=1), (1, 8, 8))
    assert any(t.lane for t in plan_network(compiled, lanes=3).tensors.values())
    # the engine has register dst_lane only where a part starts inside a word
    assert NetworkParams.for_model(compiled, 3, 3).engine.lane_starts
    assert not NetworkParams.for_model(compiled, 2, 2).engine.lane_starts
    result = sim_in_verilator(compiled, tmp_path, capsys, images=2, rows=3, cols=3)
    assert result["mismatches"] == 0 and result["images"] == 2


@pytest.mark.sim
# the layer engine only with -m slow: its host joins the parts in the integer reference, which the agreement tests run
@pytest.mark.parametrize("mode", ["network", pytest.param("layers", marks=pytest.mark.slow)])
def test_fire_modules_run_bit_exact_in_verilator(squeeze, mode, tmp_path, capsys):
    """A random SqueezeNet-style model on a 2 x 2 array in Verilator: on the whole-network core every step's tensor,
    the max pooling of the first concatenation and the logits equal the integer reference; on the layer engine
    each convolution's output (the host joins the parts)."""
    result = sim_in_verilator(squeeze[1], tmp_path, capsys, images=2, rows=2, cols=2, mode=mode)
    assert result["mismatches"] == 0 and result["images"] == 2
