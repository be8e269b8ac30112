"""The network plan (compiler.network): steps, tensor liveness, the code and value memories, refusals.

Liveness and non-overlap are checked against the step list independently of the plan's own
``first``/``last``: for every pair of tensors of one memory that are alive at one step (written at
or before it, read at or after it; the logits to the end), their address ranges must be disjoint.
Random graphs are valid compiled models built node by node (convs with every output stage,
activations, residual additions of any two value tensors of one shape, pooling, max pooling of codes,
concatenations of codes of one map size and width, nested ones too).
"""

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from compiler.format import load
from compiler.graph import (ActivateNode, AddNode, CompiledModel, ConcatNode, ConvNode, InputNode, MaxPoolNode,
                            ModelRuleError, PoolNode, Requantize, Thresholds, act_scale, mac_kind, signed_bits)
from compiler.network import MAX_LANES, NetworkPlanError, code_address, plan_network, value_address
from lcq.cli import main

DATA = Path(__file__).parent / "data"
DIGITS = DATA / "digits-cnn-lcq-w3a3.lcq"
RESNET = DATA / "cifar10-resnet20-lcq-w3a3.lcq"


@pytest.fixture(scope="module")
def digits():
    return load(DIGITS)


@pytest.fixture(scope="module")
def resnet():
    return load(RESNET)


# --------------------------------------------------------------------------- hand-made graphs


def _levels(s: int, top: int) -> np.ndarray:
    return np.round(np.linspace(0, top, s + 1)).astype(np.int64)


def _thresholds(channels: int, bits: int) -> Thresholds:
    return Thresholds(np.zeros((channels, act_scale(bits)), np.int64), np.zeros(channels, bool), bits)


def _conv(name, input, output, in_shape, channels, abits, stage="codes", bits=3, kernel=1, stride=1, kind="conv"):
    """A valid ConvNode: ``stage`` "codes" (thresholds to ``bits``-bit codes), "requantize" or "raw"."""
    c, h, w = in_shape
    pad = kernel // 2
    out = (channels, (h + 2 * pad - kernel) // stride + 1, (w + 2 * pad - kernel) // stride + 1)
    if stage == "codes":
        st, out_scale = _thresholds(channels, bits), None
    elif stage == "requantize":
        st = Requantize(np.full(channels, 1 << 23, np.int64), np.full(channels, 1 << 23, np.int64),
                        np.full(channels, 24, np.int64))
        out_scale = 1.0
    else:
        st, out_scale = None, 1.0
    return ConvNode(name=name, input=input, output=output, kind=kind, in_shape=tuple(in_shape), out_shape=out,
                    kernel=kernel, stride=stride, padding=pad, wbits=3, abits=abits, outer_wbits=8, outer_abits=8,
                    mac=mac_kind(3, abits, 1024), weight_codes=np.zeros((channels, c, kernel, kernel), np.int8),
                    w_levels=_levels(3, 127), a_levels=_levels(act_scale(abits), 255), scale=1.0, stage=st,
                    out_scale=out_scale)


def _pool(name, input, channels):
    return PoolNode(name, input, name, np.ones(channels, np.int64), np.ones(channels, bool),
                    np.zeros(channels, np.int64), 0, _thresholds(channels, 8))


def _input(shape, bits=8):
    table = np.minimum(np.arange(256) // 8, act_scale(bits)).astype(np.uint8)
    return InputNode("act_in", tuple(shape), table, bits)


def _model(nodes, classes):
    """The model of ``nodes``; every value tensor (sums, convs without thresholds) has scale 1."""
    values = {n.output: 1.0 for n in nodes
              if isinstance(n, AddNode) or (isinstance(n, ConvNode) and not isinstance(n.stage, Thresholds))}
    return CompiledModel(nodes, nodes[-1].output, classes, scales=values)


def random_model(rnd: random.Random) -> CompiledModel:
    """A random valid compiled model: a DAG of convs, activations, additions, pooling, max pooling and
    concatenations on small maps."""
    side = rnd.randint(1, 6)
    shape = (rnd.randint(1, 5), side, side)
    nodes = [_input(shape, rnd.choice((3, 8)))]
    codes = {"act_in": (shape, nodes[0].bits)}      # name -> (shape, bits)
    values = {}                                      # name -> shape
    unread = set()                                   # outputs no node reads yet: picked first, most often
    joined = set()                                   # parts of a concatenation (none is a part twice)

    def pick(names):
        fresh = [n for n in names if n in unread]
        return rnd.choice(fresh if fresh and rnd.random() < 0.8 else list(names))

    for i in range(rnd.randint(1, 24)):
        ops = ["conv", "maxpool"] + (["activate", "pool"] if values else [])
        by_shape = {}
        for name, s in values.items():
            by_shape.setdefault(s, []).append(name)
        ops += ["add"] * 2 * bool(values)
        sides = {s[1:] for s, _ in codes.values()}
        ops += ["residual"] * 2 * any(s[1:] in sides for s in values.values())
        kinds = {}
        for n, (s, bits) in codes.items():
            if n not in joined:
                kinds.setdefault((s[1:], bits), []).append(n)
        ops += ["concat"] * 2 * any(len(names) > 1 for names in kinds.values())
        op = rnd.choice(ops)
        name = f"n{i}"
        if op == "conv":
            src = pick(list(codes))
            s, bits = codes[src]
            k = rnd.choice((1, 3)) if min(s[1:]) >= 2 else 1
            stage = rnd.choice(("codes", "requantize", "raw"))
            node = _conv(name, src, name, s, rnd.randint(1, 20), bits, stage, rnd.choice((2, 3, 4)), k,
                         rnd.choice((1, 2)) if min(s[1:]) >= 2 else 1)
            if stage == "codes":
                codes[name] = (node.out_shape, node.stage.bits)
            else:
                values[name] = node.out_shape
        elif op == "maxpool":
            src = pick(list(codes))
            s, bits = codes[src]
            k = rnd.randint(1, min(3, min(s[1:]) + 2))
            pad = rnd.randint(max(0, (k - min(s[1:]) + 1) // 2), k // 2)
            node = MaxPoolNode(name, src, name, k, rnd.randint(1, 2), pad)
            codes[name] = (node.out_shape(s), bits)
        elif op == "concat":
            group = rnd.choice([names for names in kinds.values() if len(names) > 1])
            parts = rnd.sample(group, rnd.randint(2, min(3, len(group))))
            node = ConcatNode(name, tuple(parts), name)
            joined.update(parts)
            (_, h, w), bits = codes[parts[0]]
            codes[name] = ((sum(codes[p][0][0] for p in parts), h, w), bits)
        elif op == "activate":
            src = rnd.choice(list(values))           # often an older stream: not fusable
            node = ActivateNode(name, src, name, _thresholds(values[src][0], rnd.choice((2, 3))))
            codes[name] = (values[src], node.stage.bits)
        elif op == "pool":
            src = pick(list(values))
            node = _pool(name, src, values[src][0])
            codes[name] = ((values[src][0], 1, 1), 8)
        elif op == "residual":
            # a conv of codes with the spatial size of a value tensor, then their sum (often fusable)
            stream = pick([v for v, s in values.items() if s[1:] in sides])
            c, h, w = values[stream]
            src = pick([n for n, (s, _) in codes.items() if s[1:] == (h, w)])
            stage = rnd.choice(("requantize", "raw"))
            conv = _conv(name + "c", src, name + "c", codes[src][0], c, codes[src][1], stage,
                         kernel=rnd.choice((1, 3)) if min(h, w) >= 2 else 1)
            nodes.append(conv)
            unread.discard(src)
            values[conv.output] = conv.out_shape
            pair = [conv.output, stream]
            rnd.shuffle(pair)
            node = AddNode(name, tuple(pair), name)
            values[name] = values[stream]
        else:
            group = rnd.choice(list(by_shape.values()))
            node = AddNode(name, (pick(group), pick(group)), name)
            values[name] = values[node.inputs[0]]
        nodes.append(node)
        unread.difference_update(node_inputs(node))
        unread.add(node.output)
    flat = [n for n, (s, _) in codes.items() if s[1:] == (1, 1)]
    if not flat:
        if not values:
            s, bits = codes[list(codes)[-1]]
            nodes.append(_conv("last_raw", list(codes)[-1], "last_raw", s, 4, bits, "raw"))
            values["last_raw"] = nodes[-1].out_shape
        src = rnd.choice(list(values))
        nodes.append(_pool("pooled", src, values[src][0]))
        codes["pooled"] = ((values[src][0], 1, 1), 8)
        flat = ["pooled"]
    src = pick(flat)
    classes = rnd.randint(1, 10)
    nodes.append(_conv("fc", src, "logits", codes[src][0], classes, codes[src][1], "requantize", kind="linear"))
    model = _model(_needed(nodes), classes)
    model.validate()
    return model


def _needed(nodes: list) -> list:
    """``nodes`` less those the last one does not depend on (a compiled model holds no others)."""
    read, kept = {nodes[-1].output}, []
    for node in reversed(nodes):
        if node.output in read:
            kept.append(node)
            read.update(node_inputs(node))
    return kept[::-1]


# --------------------------------------------------------------------------- independent checks


def node_inputs(node) -> list[str]:
    return list(node.inputs) if isinstance(node, (AddNode, ConcatNode)) else [] if isinstance(node, InputNode) \
        else [node.input]


def part_offsets(model: CompiledModel, lanes: int, align: int = 1) -> dict[str, tuple[str, int, int]] | None:
    """{part: (its concatenation, the word of its first channel there, that channel's lane)}, or None where a part
    would start inside a word of ``lanes`` codes and is not written by a conv and read by its concatenation only
    (or would start at an odd word with ``align`` 2), which the chip cannot place."""
    info, out = model.validate(arrays=False), {}
    for n in model.nodes:
        if isinstance(n, ConcatNode):
            first = 0
            for part in n.inputs:
                _, h, w = info[part].shape
                writer = next(m for m in model.nodes if m.output == part)
                readers = [m for m in model.nodes if part in node_inputs(m)]
                conv_only = isinstance(writer, ConvNode) and all(isinstance(m, ConcatNode) for m in readers)
                if (first % lanes and not conv_only) or (first // lanes * h * w) % align:
                    return None
                out[part] = (n.output, first // lanes * h * w, first % lanes)
                first += info[part].shape[0]
    return out


def fusable_adds(model: CompiledModel) -> dict[int, str]:
    """{index of an addition: the conv output it consumes} for each addition that the rule of
    compiler.network fuses into the conv right before it, found from the model alone."""
    readers = {}
    for i, n in enumerate(model.nodes):
        for name in node_inputs(n):
            readers.setdefault(name, []).append(i)
    info = model.validate(arrays=False)
    out = {}
    for i, n in enumerate(model.nodes):
        conv = model.nodes[i - 1] if i else None
        narrow = isinstance(n, AddNode) and info[n.inputs[0]].shape != info[n.inputs[1]].shape
        if not isinstance(n, AddNode) or not isinstance(conv, ConvNode) or isinstance(conv.stage, Thresholds) \
                or (narrow and conv.output != n.inputs[0]):     # (an option-A shortcut's b: its own base)
            continue
        others = [x for x in n.inputs if x != conv.output]
        if (conv.output in n.inputs and len(others) == 1 and readers[conv.output] == [i]
                and model.logits not in (conv.output, others[0]) and max(readers[others[0]]) == i):
            out[i] = conv.output
    return out


def fusable_activations(model: CompiledModel, adds: dict[int, str]) -> dict[int, int]:
    """{index of an activation: index of the conv step it is fused into}: the activation reads the values
    that the step right before it writes (a conv's without thresholds, or its fused addition's sum)."""
    out = {}
    for i, n in enumerate(model.nodes):
        if not isinstance(n, ActivateNode) or i == 0:
            continue
        step = i - 2 if i - 1 in adds else i - 1
        conv, values = model.nodes[step], model.nodes[i - 1].output
        if isinstance(conv, ConvNode) and not isinstance(conv.stage, Thresholds) and n.input == values:
            out[i] = step
    return out


def check_plan(model: CompiledModel, plan) -> None:
    """Every rule of the plan, recomputed from the model: fused additions and activations, liveness, word
    counts, widths, non-overlap of the stored tensors."""
    info = model.validate()
    fused = fusable_adds(model)
    activations = fusable_activations(model, fused)
    concats = {i for i, n in enumerate(model.nodes) if isinstance(n, ConcatNode)}
    assert [s.index for s in plan.steps] == [i for i in range(len(model.nodes)) if i not in fused
                                             and i not in activations and i not in concats]
    assert list(plan.tensors) == [n.output for n in model.nodes]
    step_of = {i: activations.get(i, i - 1 if i in fused else i) for i in range(len(model.nodes))}
    defined = {}
    for i, n in enumerate(model.nodes):         # a concatenation: when its first part is written
        defined[n.output] = min(defined[p] for p in n.inputs) if i in concats else step_of[i]
    readers = {}
    steps = {s.index: s for s in plan.steps}
    for i, n in enumerate(model.nodes):
        ins = [x for x in node_inputs(n) if x != fused.get(i)]
        if i in concats:                        # no step: its parts are written in place
            continue
        if i in fused:
            conv = model.nodes[i - 1]
            assert steps[i - 1].inputs == (conv.input, ins[0]) and steps[i - 1].fused_add == n.name
            assert steps[i - 1].output == n.output and steps[i - 1].kind == "conv"
        elif i in activations:
            step = steps[activations[i]]
            assert step.kind == "conv" and step.fused_activate == n.name and step.activated == n.output
            assert step.outputs == (n.input, n.output)
        elif i + 1 not in fused:
            assert list(steps[i].inputs) == ins and steps[i].output == n.output and steps[i].kind == n.op
            assert steps[i].fused_add is None
        if i in steps and not any(step == i for step in activations.values()):
            assert steps[i].fused_activate is None and steps[i].activated is None
        for name in ins:
            readers.setdefault(name, []).append(step_of[i])
    end = plan.steps[-1].index
    live = {name: (defined[name], end if name == model.logits else max(readers.get(name, [defined[name]])))
            for name in defined}
    lanes = plan.lanes
    offsets = part_offsets(model, lanes)

    def holders(name):                          # (holder, words from its base) of every region holding ``name``
        out, words = {}, 0
        while name in offsets:
            name, w, _ = offsets[name]
            words += w
            out[name] = words
        return out

    for name, t in plan.tensors.items():
        assert (t.within, t.lane) == offsets.get(name, (None, 0, 0))[::2]
        c, h, w = info[name].shape
        assert (t.first, t.last) == live[name] and t.shape == (c, h, w)
        assert t.stored == (name not in fused.values())
        if info[name].bits is None:
            assert t.kind == "values" and t.words == c * h * w and t.bits == signed_bits(info[name].bound)
        else:
            assert t.kind == "codes" and t.bits == info[name].bits
            assert t.words == math.ceil((t.lane + c) / lanes) * h * w
        assert 0 <= t.base and t.base + t.words <= plan.memories[t.kind].depth
    for memory in ("codes", "values"):
        bits = max(t.bits for t in plan.tensors.values() if t.kind == memory)
        held = [t for t in plan.tensors.values() if t.kind == memory and t.stored]
        assert plan.memories[memory].width == (lanes * bits if memory == "codes" else bits)
        assert plan.memories[memory].depth == max(t.base + t.words for t in held)
        for i, a in enumerate(held):
            la = live[a.name]
            for b in held[i + 1:]:
                lb = live[b.name]
                if a.in_place == b.name or b.in_place == a.name:  # a sum over an operand read for the last time
                    assert a.base == b.base and (la[1] == lb[0] or lb[1] == la[0]), (memory, a, b)
                elif b.name in holders(a.name) or a.name in holders(b.name):      # a part in its concatenation
                    part, whole = (a, b) if b.name in holders(a.name) else (b, a)
                    assert part.base == whole.base + holders(part.name)[whole.name] and part.end <= whole.end
                elif a.within is not None and a.within == b.within:      # parts of one concatenation: its channels
                    first = {t.name: (t.base - plan.tensors[t.within].base) // (t.shape[1] * t.shape[2]) * lanes
                             + t.lane for t in (a, b)}
                    assert first[a.name] + a.shape[0] <= first[b.name] or first[b.name] + b.shape[0] <= first[a.name]
                elif la[0] <= lb[1] and lb[0] <= la[1]:     # alive at one step
                    assert a.base + a.words <= b.base or b.base + b.words <= a.base, (memory, a, b)
        def alive(t, s):
            return live[t.name][0] <= s <= live[t.name][1]
        peak = max(sum(t.words for t in held if alive(t, s) and not (t.in_place and alive(plan.tensors[t.in_place], s))
                       and not any(alive(plan.tensors[h], s) for h in holders(t.name))) for s in range(end + 1))
        assert plan.memories[memory].peak_live_words == peak <= plan.memories[memory].depth
    for i, name in fused.items():       # a sum in its operand's place, but an option-A shortcut's
        narrow = info[model.nodes[i].inputs[1]].shape != info[model.nodes[i].output].shape
        assert (plan.tensors[model.nodes[i].output].in_place is None) == narrow
    assert plan.total_bits == sum(m.depth * m.width for m in plan.memories.values())
    json.dumps(plan.describe())


# --------------------------------------------------------------------------- the test models


@pytest.mark.parametrize("lanes", [1, 3, 8, 16, MAX_LANES])
def test_plans_of_the_test_models_keep_every_rule(digits, resnet, lanes):
    for model in (digits, resnet):
        check_plan(model, plan_network(model, lanes))


def test_digits_plan(digits):
    plan = plan_network(digits)
    assert [s.kind for s in plan.steps] == ["input", "conv", "conv", "conv", "pool", "conv"]
    assert {n: t.kind for n, t in plan.tensors.items()} == {
        "act_in": "codes", "act1": "codes", "act2": "codes", "conv2": "values", "act_fc": "codes", "logits": "values"}
    # act1 (16x8x8) and act2 (32x4x4) alive together at conv1: 1024 + 512 words; conv2's raw 25-bit accumulators
    # feed the pool; the logits need 30 bits. The input and pooled codes are 8 bits wide.
    assert (plan.memories["codes"].depth, plan.memories["codes"].width) == (1536, 8)
    assert (plan.memories["values"].depth, plan.memories["values"].width) == (1024, 30)
    assert plan.total_bits == 1536 * 8 + 1024 * 30
    plan8 = plan_network(digits, 8)
    assert (plan8.memories["codes"].depth, plan8.memories["codes"].width) == (2 * 64 + 64, 64)
    buffers = plan.buffers()
    assert buffers["accumulators"]["tensors"] == ["conv2"] and buffers["residual"]["tensors"] == []
    assert buffers["pooled"]["tensors"] == ["act_fc"] and buffers["logits"]["bits"] == 10 * 30


def test_resnet20_plan(resnet):
    plan = plan_network(resnet)
    # every block's addition is fused into the conv before it (conv2, or the strided shortcut, which then
    # adds into conv2's map), and so is every activation into the conv writing its values (the stem, or a
    # block's last conv with its addition): 42 nodes, 24 steps
    assert len(resnet.nodes) == 42 and len(plan.steps) == 24
    fused = [s for s in plan.steps if s.fused_add]
    assert [s.name for s in fused] == [f"blocks.{b}.{'shortcut' if b in (3, 6) else 'conv2'}" for b in range(9)]
    assert fused[0].inputs == ("blocks.0.act2", "conv1") and fused[0].output == "blocks.0.out"
    assert fused[3].inputs == ("blocks.3.act1", "blocks.3.conv2")
    activating = [s for s in plan.steps if s.fused_activate]
    assert [s.name for s in activating] == ["conv1"] + [s.name for s in fused[:-1]]
    assert [s.activated for s in activating] == [f"blocks.{b}.act1" for b in range(9)]
    assert activating[0].outputs == ("conv1", "blocks.0.act1") and plan.tensors["blocks.0.act1"].first == 1
    assert not any(s.kind == "activate" for s in plan.steps)
    # so the residual stream is one map of 16x32x32 values, written in place block after block
    assert (plan.memories["values"].depth, plan.memories["values"].peak_live_words) == (16384, 16384)
    assert plan.tensors["blocks.0.out"].in_place == "conv1" and not plan.tensors["blocks.0.conv2"].stored
    assert plan.tensors["blocks.0.out"].base == plan.tensors["conv1"].base
    assert (plan.memories["codes"].depth, plan.memories["codes"].width) == (2 * 16384, 8)
    widths = {t.bits for t in plan.tensors.values() if t.kind == "values"}
    assert plan.memories["values"].width == max(widths) == 35
    buffers = plan.buffers()
    assert len(buffers["residual"]["tensors"]) == 12 and buffers["residual"]["bits"] == 16384 * 35
    assert buffers["activations"]["words"] == 2 * 16384 and buffers["accumulators"]["tensors"] == []
    plan8 = plan_network(resnet, 8)
    assert (plan8.memories["codes"].depth, plan8.memories["codes"].width) == (2 * 2048, 64)
    assert plan8.memories["values"].to_dict() == plan.memories["values"].to_dict()


def test_option_a_resnet20_plan():
    """akamaster's ResNet-20 (random parameters): each strided block's shortcut subsampled in place over the stream,
    which dies there, and added in the write-back of the block's last conv like every other addition (its operand
    covers the middle channels, read at its own base, apart from the sum's); the values peak at one 16 x 32 x 32
    map, as the built-in ResNet-20's (a stored copy would add 8,192)."""
    import sys

    import torch

    from compiler.lower import compile_model
    from helpers import randomize
    from lcq_train.plan import quantize_model
    sys.path.insert(0, str(DATA))
    import tutorial_models as tm

    torch.manual_seed(0)
    model = compile_model(randomize(quantize_model(tm.resnet20(), method="lcq", wbits=3, abits=3), 0), (3, 32, 32))
    plan = plan_network(model, 8)
    check_plan(model, plan)
    shortcuts = [n for n in model.nodes if n.op == "subsample"]
    assert [plan.tensors[n.output].in_place for n in shortcuts] == ["layer1.2.out", "layer2.2.out"]
    assert not [s for s in plan.steps if s.kind in ("add", "activate")]
    narrow = [s for s in plan.steps if s.fused_add and plan.tensors[s.inputs[1]].shape != plan.tensors[s.output].shape]
    assert [s.fused_add for s in narrow] == ["layer2.0.add", "layer3.0.add"] and all(s.fused_activate for s in narrow)
    assert sum(bool(s.fused_add) for s in plan.steps) == 9
    assert (plan.memories["values"].depth, plan.memories["values"].peak_live_words) == (16384, 16384)


def test_values_width_is_the_widest_exact_bound(resnet, digits):
    for model in (resnet, digits):
        info = model.validate()
        plan = plan_network(model)
        assert plan.memories["values"].width == max(signed_bits(t.bound) for t in info.values() if t.bits is None)
        assert plan.memories["codes"].width == max(t.bits for t in info.values() if t.bits is not None)


def test_addresses_fill_each_region_exactly():
    for shape, lanes in (((5, 3, 4), 2), ((16, 2, 2), 8), ((3, 1, 1), 4), ((7, 2, 3), 1)):
        c, h, w = shape
        base = 100
        words = math.ceil(c / lanes) * h * w
        seen = {code_address(base, shape, lanes, ch, y, x) for ch in range(c) for y in range(h) for x in range(w)}
        assert len(seen) == c * h * w and all(base <= word < base + words and 0 <= lane < lanes for word, lane in seen)
        vals = {value_address(base, shape, ch, y, x) for ch in range(c) for y in range(h) for x in range(w)}
        assert vals == set(range(base, base + c * h * w))


# --------------------------------------------------------------------------- random graphs


def test_random_graphs_keep_every_rule():
    rnd = random.Random(12)
    kinds, fused, activations, kept, joined, refused = set(), 0, 0, 0, 0, 0
    for _ in range(250):
        model = random_model(rnd)
        kinds |= {n.op for n in model.nodes}
        adds = fusable_adds(model)
        fused += len(adds)
        activations += len(fusable_activations(model, adds))
        kept += sum(n.op == "activate" for n in model.nodes) - len(fusable_activations(model, adds))
        for lanes in (1, rnd.randint(2, 9)):
            if part_offsets(model, lanes) is None:
                with pytest.raises(NetworkPlanError, match="on the chip a part starts a word"):
                    plan_network(model, lanes)
                refused += 1
            else:
                check_plan(model, plan_network(model, lanes))
                joined += sum(n.op == "concat" for n in model.nodes)
    assert kinds == {"input", "conv", "activate", "add", "pool", "maxpool", "concat"} and fused >= 80
    assert activations >= 40 and kept >= 20 and joined >= 100 and refused >= 50, (activations, kept, joined, refused)


def test_random_parts_that_a_conv_writes_start_inside_words():
    """Random graphs whose concatenations join a part that a conv writes and only the concatenation reads, planned
    with lanes that put its first channel inside a word: every rule kept (the part's lane and words too)."""
    rnd, planned = random.Random(5), 0
    for _ in range(3000):
        model = random_model(rnd)
        info = model.validate(arrays=False)
        for n in (n for n in model.nodes if isinstance(n, ConcatNode)):
            first = [sum(info[p].shape[0] for p in n.inputs[:k]) for k in range(1, len(n.inputs))]
            for start, part in zip(first, n.inputs[1:]):
                writer = next(m for m in model.nodes if m.output == part)
                if not isinstance(writer, ConvNode) or any(part in node_inputs(m) for m in model.nodes
                                                           if not isinstance(m, ConcatNode)):
                    continue
                lanes = next((k for k in range(2, 10) if start % k), None)
                if lanes is None or part_offsets(model, lanes) is None:
                    continue
                plan = plan_network(model, lanes)
                check_plan(model, plan)
                assert plan.tensors[part].lane == start % lanes
                planned += 1
        if planned >= 12:
            break
    assert planned >= 12


# --------------------------------------------------------------------------- refusals


def _bad(kind):
    nodes = [_input((2, 4, 4))]
    if kind == "conv of values":
        nodes += [_conv("c0", "act_in", "v0", (2, 4, 4), 3, 8, "raw"), _conv("c1", "v0", "v1", (3, 4, 4), 3, 8, "raw")]
    elif kind == "pool of codes":
        nodes += [_conv("c0", "act_in", "a0", (2, 4, 4), 3, 8, "codes"), _pool("p0", "a0", 3)]
    elif kind == "add of codes":
        nodes += [_conv("c0", "act_in", "a0", (2, 4, 4), 3, 8, "codes"), AddNode("s0", ("a0", "a0"), "s0")]
    elif kind == "activate of codes":
        nodes += [ActivateNode("t0", "act_in", "t0", _thresholds(2, 3))]
    elif kind == "maxpool of values":
        nodes += [_conv("c0", "act_in", "v0", (2, 4, 4), 3, 8, "raw"), MaxPoolNode("m0", "v0", "m0", 4, 1, 0)]
    nodes.append(_conv("fc", nodes[-1].output, "logits", (3, 1, 1), 2, 8, "requantize", kind="linear"))
    return CompiledModel(nodes, "logits", 2, scales={"logits": 1.0})


@pytest.mark.parametrize("kind, node, says", [
    ("conv of values", "node 2 (conv 'c1')", "reads values 'v0', but a conv step reads activation codes"),
    ("pool of codes", "node 2 (pool 'p0')", "reads codes 'a0', but a pool step sums values"),
    ("add of codes", "node 2 (add 's0')", "reads codes 'a0', but an add step sums two value tensors"),
    ("activate of codes", "node 1 (activate 't0')", "reads codes 'act_in', but an activate step turns values"),
    ("maxpool of values", "node 2 (maxpool 'm0')", "reads values 'v0', but a maxpool step takes maxima of codes"),
])
def test_graphs_the_hardware_cannot_run_are_refused(kind, node, says):
    with pytest.raises(NetworkPlanError) as e:
        plan_network(_bad(kind))
    assert str(e.value).startswith(node + ": ") and says in str(e.value)
    assert isinstance(e.value, ValueError) and e.value.where == node


def test_other_broken_rules_are_the_models_own_errors(digits):
    import copy
    model = copy.deepcopy(digits)
    model.nodes[2].stride = 0
    with pytest.raises(ModelRuleError, match=r"node 2 \(conv 'conv1'\): field 'stride'"):
        plan_network(model)


@pytest.mark.parametrize("lanes", [0, -1, MAX_LANES + 1, 2.0, True, "8"])
def test_lanes_out_of_range(digits, lanes):
    with pytest.raises(ValueError, match=rf"lanes must be an integer in 1..{MAX_LANES}"):
        plan_network(digits, lanes)


# --------------------------------------------------------------------------- lcq report


def test_report_json_has_the_network_plan(capsys, resnet):
    assert main(["report", str(RESNET), "--json", "--lanes", "8"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["network"] == json.loads(json.dumps(plan_network(resnet, 8).describe()))
    assert rep["network"]["lanes"] == 8 and rep["total_bytes"] == 103_096       # the layer report is unchanged
    assert main(["report", str(DIGITS), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["network"]["lanes"] == 1


def test_report_table_lists_buffers_memories_and_the_total(capsys):
    assert main(["report", str(DIGITS)]) == 0
    out = capsys.readouterr().out
    assert "| layer | kind |" in out and "| buffer | memory |" in out and "| memory | depth (words) |" in out
    assert "| codes | 1,536 | 8 | 1,536 | 12,288 | 1.5 |" in out
    assert "| values | 1,024 | 30 | 1,024 | 30,720 | 3.8 |" in out
    assert "total on-chip data memory: 43,008 bits = 5.4 KB" in out


@pytest.mark.parametrize("lanes", ["0", "257", "x"])
def test_report_refuses_lanes_out_of_range(capsys, lanes):
    with pytest.raises(SystemExit) as e:
        main(["report", str(DIGITS), "--lanes", lanes])
    assert e.value.code == 2
    assert f"argument --lanes: must be an integer in 1..256, not '{lanes}'" in capsys.readouterr().err
