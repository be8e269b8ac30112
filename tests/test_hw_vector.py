"""The vector unit (hw/vector.py) in Amaranth's simulator on a value and a code memory, bit-exact
against compiler.reference.execute; its parameters (hw/vector_params.py) and words (hw/vector_words.py)."""

import copy
import dataclasses
from dataclasses import replace
import functools
import gc
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("amaranth", reason="hardware tests need amaranth: pip install -e '.[hw]'")

from amaranth import Cat, Elaboratable, Module, Mux, signed  # noqa: E402
from amaranth.back import verilog  # noqa: E402
from amaranth.hdl import UnusedElaboratable  # noqa: E402
from amaranth.lib.memory import Memory  # noqa: E402
from amaranth.sim import Simulator  # noqa: E402

from compiler import reference  # noqa: E402
from compiler.format import load  # noqa: E402
from compiler.graph import (ActivateNode, AddNode, AvgPoolNode, MaxPoolNode, PoolNode, SubsampleNode,  # noqa: E402
                            TensorInfo, Thresholds, signed_bits)
import hw.column_memory  # noqa: E402
from hw.delay import delayed  # noqa: E402
from hw.thresholds import ThresholdUnit  # noqa: E402
from hw.vector import VectorUnit  # noqa: E402
from hw.network_params import NetworkParams  # noqa: E402
from hw.progression import progression_bits  # noqa: E402
from hw.vector_params import (ACTIVATE, ADD, ADD_RELU, AVGPOOL, MAX_POOL_SHIFT, MAXPOOL, MINPOOL, POOL,  # noqa: E402
                              POOL_DRAIN, POOL_OFFSET_SHIFT, POOL_PIECE_LATENCY, SUBSAMPLE, THRESHOLD_LATENCY,
                              VectorParams, maxpool_bits, pool_progressions, pool_shift, pool_sum_bound, subsample_bits)
from hw.vector_words import (ACT_THRESHOLDS, POOL_CONSTANTS, POOL_THRESHOLDS, activate_words,  # noqa: E402
                             constant_beats, op_registers, pool_constant_beats, pool_constant_words,
                             pool_threshold_words)

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

DATA = Path(__file__).parent / "data"
RESNET, DIGITS = "cifar10-resnet20-lcq-w3a3.lcq", "digits-cnn-lcq-w3a3.lcq"
LANE_BITS = 8                     # the models' widest codes (input and pooled codes)


@functools.lru_cache(maxsize=None)
def model(name: str):
    return load(DATA / name)


def node_of(m, name: str):
    return next(n for n in m.nodes if getattr(n, "name", None) == name)


def value_bits(m) -> int:
    """The value memory's width for ``m``: its widest value tensor."""
    info = m.validate()
    return max(signed_bits(t.bound) for t in info.values() if t.bits is None)


def params_for(m, lanes: int, value_depth: int, code_depth: int) -> VectorParams:
    return VectorParams.for_model(m, lanes, LANE_BITS, value_bits(m), value_depth, code_depth)


# ---------------------------------------------------------------- harness


class Harness(Elaboratable):
    """The unit on a value memory (one read, one write port) and a code memory (one read port, a
    write port with an enable per lane), as the network core wires them: whole-word writes."""

    def __init__(self, params: VectorParams, values: list[int], codes: list[int]):
        self.params, self.dut = params, VectorUnit(params)
        self.values = Memory(shape=signed(params.value_bits), depth=params.value_depth, init=values)
        self.codes = Memory(shape=params.lanes * params.lane_bits, depth=params.code_depth, init=codes)

    def elaborate(self, platform):
        m, p, dut = Module(), self.params, self.dut
        m.submodules.dut, m.submodules.values, m.submodules.codes = dut, self.values, self.codes
        read, write = self.values.read_port(), self.values.write_port()
        code, code_read = self.codes.write_port(granularity=p.lane_bits), self.codes.read_port()
        # The value read as late as the network core's memory gives it (its address registered on the ECP5).
        read_data = delayed(m, read.data, hw.column_memory.value_read_latency(platform) - 1, "value_read_late")
        m.d.comb += [read.addr.eq(dut.val_read_addr), dut.val_read_data.eq(read_data),
                     write.en.eq(dut.val_write_en), write.addr.eq(dut.val_write_addr),
                     write.data.eq(dut.val_write_data),
                     code.en.eq(Mux(dut.code_write_en, dut.code_write_lanes, 0)),
                     code.addr.eq(dut.code_write_addr), code.data.eq(dut.code_write_word),
                     code_read.addr.eq(dut.code_read_addr), dut.code_read_data.eq(code_read.data)]
        return m


def simulate(params, beats, values, codes, ops, interfere=False):
    """Load ``beats``, then run each op (a dict of op registers) from ``start`` until ``busy`` falls.
    ``interfere``: while busy, pulse ``start`` again and drive junk loads (both must be ignored).
    Returns the final value and code memories and each op's busy cycles."""
    h = Harness(params, values, codes)
    dut, out = h.dut, {}
    rng = np.random.default_rng(1)

    # A beat's fields set at once: a testbench's each set settles the design (a third of a long load's time).
    load = Cat(dut.load_data, dut.load_addr, dut.load_target)
    at = (0, params.load_data_bits, params.load_data_bits + params.load_addr_bits)

    async def bench(ctx):
        ctx.set(dut.load_en, 1)
        for target, addr, data in beats:
            ctx.set(load, data | addr << at[1] | target << at[2])
            await ctx.tick()
        ctx.set(dut.load_en, 0)
        cycles = []
        for regs in ops:
            for name, value in regs.items():
                ctx.set(getattr(dut, name), value)
            ctx.set(dut.start, 1)
            assert not ctx.get(dut.busy)
            await ctx.tick()
            ctx.set(dut.start, 0)
            n = 0
            while ctx.get(dut.busy):
                if interfere:
                    ctx.set(dut.start, int(rng.integers(2)))
                    ctx.set(dut.load_en, 1)
                    ctx.set(dut.load_target, int(rng.integers(3)))
                    ctx.set(dut.load_addr, int(rng.integers(min(600, 1 << params.load_addr_bits))))
                    ctx.set(dut.load_data, int(rng.integers(1 << min(params.load_data_bits, 62))))
                n += 1
                assert n <= 10 * params.register_cycles(regs) + 10
                await ctx.tick()
            ctx.set(dut.start, 0)
            ctx.set(dut.load_en, 0)
            cycles.append(n)
        out["values"] = [ctx.get(h.values.data[i]) for i in range(params.value_depth)]
        out["codes"] = [ctx.get(h.codes.data[i]) for i in range(params.code_depth)]
        out["cycles"] = cycles

    sim = Simulator(h)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return out["values"], out["codes"], out["cycles"]


def registers(params, node, shape, inputs, output, slot=0):
    """:func:`op_registers` for ``node`` with its input tensors at ``inputs`` and its output at ``output``."""
    names = list(node.inputs) if isinstance(node, AddNode) else [node.input]
    return op_registers(params, node, shape, {**dict(zip(names, inputs)), node.output: output}, {node.name: slot})


# ---------------------------------------------------------------- memory images and the spec


def junk(params, rng):
    """Random memory images: every value word any ``value_bits`` value, every code word any bits."""
    half = 1 << (params.value_bits - 1)
    values = [int(v) for v in rng.integers(-half, half, params.value_depth, dtype=np.int64)]
    codes = [int(rng.integers(1 << 62)) & ((1 << params.lanes * params.lane_bits) - 1)
             for _ in range(params.code_depth)]
    return values, codes


def put_values(values: list[int], base: int, x: np.ndarray) -> None:
    values[base:base + x.size] = [int(v) for v in x.reshape(-1)]


def expected(params, node, regs, values, codes):
    """The memories after op ``regs`` runs ``node``: its input read from ``values`` (the op's
    ``channels`` of the node's, the rest zero), ``compiler.reference.execute`` on it, the op's
    channels written into copies of the memories."""
    values, codes = list(values), list(codes)
    if isinstance(node, MaxPoolNode):
        return values, expected_maxpool(params, node, regs, codes)
    if isinstance(node, SubsampleNode):
        c, h, w = regs["channels"], regs["height"], regs["width"]
        x = np.array(values[regs["src_a"]:regs["src_a"] + c * h * w], dtype=np.int64).reshape(1, c, h, w)
        put_values(values, regs["dst"], node.apply(x))
        return values, codes
    if isinstance(node, AddNode) and "b_channels" in regs:      # operand b over some channels of the sum
        k, n_pos, kb = regs["channels"], regs["positions"], regs["b_channels"]
        a = np.array(values[regs["src_a"]:regs["src_a"] + k * n_pos], dtype=np.int64).reshape(1, k, n_pos, 1)
        b = np.array(values[regs["src_b"]:regs["src_b"] + kb * n_pos], dtype=np.int64).reshape(1, kb, n_pos, 1)
        put_values(values, regs["dst"], replace(node, b_offset=regs["b_first"]).apply(a, b))
        return values, codes
    k, n_pos = regs["channels"], regs["positions"]
    inputs = [node.input] if not isinstance(node, AddNode) else list(node.inputs)
    channels = k if isinstance(node, AddNode) else len(node.stage.thresholds)
    side = (regs["height"], regs["width"]) if isinstance(node, AvgPoolNode) else (n_pos, 1)
    first = regs["src_a"]
    if isinstance(node, AvgPoolNode):       # (src_a: the first window's corner, padding rows and columns before)
        first = (first + node.padding * (regs["width"] + 1)) % (1 << params.value_addr_bits)
    t = {}
    for name, base in zip(inputs, (first, regs["src_b"])):
        x = np.zeros((1, channels, *side), dtype=np.int64)
        x[0, :k] = np.array(values[base:base + k * n_pos], dtype=np.int64).reshape(k, *side)
        t[name] = x
    reference.execute(node, t, None)
    y = t[node.output][0, :k].reshape(k, -1)
    if isinstance(node, AddNode):
        put_values(values, regs["dst"], y)
        return values, codes
    lanes, lane_bits = params.lanes, params.lane_bits
    for ch in range(k):
        for pos in range(y.shape[1]):
            addr = regs["dst"] + (ch // lanes) * y.shape[1] + pos
            shift = (ch % lanes) * lane_bits
            codes[addr] = codes[addr] & ~(((1 << lane_bits) - 1) << shift) | int(y[ch, pos]) << shift
    return values, codes


def expected_maxpool(params, node, regs, codes):
    """The code memory after max-pool op ``regs`` runs ``node``: its input tensor read from ``codes``
    at the base ``regs`` imply, ``compiler.reference.execute``, the output's lanes written."""
    codes, lanes, b = list(codes), params.lanes, params.lane_bits
    c, h, w = regs["channels"], regs["height"], regs["width"]
    base = (regs["src_a"] + node.padding * (w + 1)) % (1 << params.code_addr_bits)
    x = np.zeros((1, c, h, w), dtype=np.uint8)
    for ch in range(c):
        for pos in range(h * w):
            x[0, ch, pos // w, pos % w] = codes[base + (ch // lanes) * h * w + pos] >> (ch % lanes) * b & (1 << b) - 1
    t = {node.input: x}
    reference.execute(node, t, None)
    y = t[node.output][0]
    positions = y.shape[1] * y.shape[2]
    for ch in range(c):
        for pos in range(positions):
            addr, shift = regs["dst"] + (ch // lanes) * positions + pos, (ch % lanes) * b
            codes[addr] = codes[addr] & ~(((1 << b) - 1) << shift) | int(y[ch].reshape(-1)[pos]) << shift
    return codes


def check(params, beats, ops, values, codes, interfere=False):
    """Run ``ops`` (``(node, regs)``) in one simulation; compare every word of both memories and
    each op's busy cycles with the spec."""
    got_values, got_codes, cycles = simulate(params, beats, values, codes, [r for _, r in ops], interfere)
    for node, regs in ops:
        values, codes = expected(params, node, regs, values, codes)
    assert got_values == values
    assert got_codes == codes
    latency = hw.column_memory.value_read_latency(None)        # 1; 2 where a test builds the ECP5's form
    assert cycles == [params.register_cycles(r, latency) for _, r in ops]
    return values, codes


def activate_inputs(rng, stage: Thresholds, bound: int, shape) -> np.ndarray:
    """Values ``|x| <= bound``: uniform, the extremes, and a threshold of their channel +-1."""
    c, h, w = shape
    x = rng.integers(-bound, bound + 1, (c, h * w), dtype=np.int64)
    for ch in range(c):
        for pos in range(h * w):
            kind = rng.integers(5)
            if kind == 0:
                x[ch, pos] = rng.choice([-bound, bound, 0])
            elif kind >= 2:
                x[ch, pos] = np.clip(rng.choice(stage.thresholds[ch]) + rng.integers(-1, 2), -bound, bound)
    return x.reshape(shape)


def pool_inputs(rng, node: PoolNode, bound: int, shape) -> np.ndarray:
    """Values ``|x| <= bound`` whose channel sums fall near a random threshold (most channels) or
    anywhere (the rest, mostly saturating)."""
    c, h, w = shape
    n, f = h * w, node.frac_bits
    x = rng.integers(-bound, bound + 1, (c, n), dtype=np.int64)
    for ch in range(c):
        t = node.stage.thresholds[ch]
        if node.sign[ch] == 0 or rng.random() < 0.2:
            continue
        j = int(rng.integers(1, len(t) - 1))
        center = (int(t[j]) // n * int(node.sign[ch]) + int(node.offset[ch])) >> f
        spread = max(1, (int(t[j + 1]) - int(t[j - 1])) >> (f + 1)) // max(1, int(np.sqrt(n)))
        x[ch] = np.clip(center + rng.integers(-spread, spread + 1, n), -bound, bound)
    return x.reshape(shape)


def hit_thresholds(m, node: PoolNode, x: np.ndarray, bound: int, how: str = "replace") -> int:
    """Make each channel's sum of ``x`` one of its thresholds (the nearest, kept in order and in
    range): ``>=`` against ``>`` shows. ``how``: "replace" that threshold by the sum (the channel's
    thresholds no longer an arithmetic progression: the unit falls back to its table), or "shift"
    all the channel's thresholds by the difference (``B`` by a multiple of ``2^k``: still the
    arithmetic form), where they stay in range. Changes ``node`` of ``m`` (a copy) and checks
    ``m``; returns how many channels hit."""
    sums = node.sums(x[None])[0, :, 0, 0]
    limit = PoolNode.sum_limit(x.shape[1] * x.shape[2], bound, node.frac_bits)
    t = node.stage.thresholds
    hits = 0
    for ch, total in enumerate(sums.tolist()):
        if abs(total) > limit:
            continue
        j = np.abs(t[ch] - total).argmin()
        if how == "replace":
            t[ch, j] = total
            t[ch] = np.sort(t[ch])
        elif np.abs(t[ch] + (total - t[ch, j])).max() <= limit:
            t[ch] += total - t[ch, j]
        else:
            continue
        hits += 1
    m.validate()
    return hits


def unary_case(m, node_name, lanes, positions_shape, seed, params=None, hit=None, inputs=None):
    """An activate or pool node of ``m`` on random inputs (or ``inputs``): ``(params, beats, ops, values, codes)``;
    ``hit``: :func:`hit_thresholds` first (pool), "replace" or "shift"."""
    node = node_of(m, node_name)
    info = m.validate()
    c, h, w = info[node.input].shape
    if positions_shape is not None:
        h, w = positions_shape
    src, dst = 11, 5
    out_words = -(-c // lanes) * (h * w if isinstance(node, ActivateNode) else 1)
    rng = np.random.default_rng(seed)
    bound = info[node.input].bound
    make = activate_inputs if isinstance(node, ActivateNode) else pool_inputs
    x = make(rng, node if isinstance(node, PoolNode) else node.stage, bound, (c, h, w)) if inputs is None else inputs
    if hit:
        assert hit_thresholds(m, node, x, bound, hit) > c // 2
    params = params or params_for(m, lanes, src + c * h * w + 7, dst + out_words + 4)
    values, codes = junk(params, rng)
    put_values(values, src, x)
    beats, slots = constant_beats(params, m)
    targets = (ACT_THRESHOLDS,) if isinstance(node, ActivateNode) else (POOL_CONSTANTS, POOL_THRESHOLDS)
    beats = [b for b in beats if b[0] in targets]          # the other node kind's are not needed
    regs = registers(params, node, (c, h, w), (src,), dst, slots[node.name])
    return params, beats, [(node, regs)], values, codes


def descending_resnet():
    """ResNet-20 with half of blocks.0.act1's channels descending (thresholds reversed: still valid)."""
    m = copy.deepcopy(model(RESNET))
    stage = node_of(m, "blocks.0.act1").stage
    flip = np.arange(len(stage.thresholds)) % 2 == 1
    stage.descending = flip.copy()
    stage.thresholds = np.where(flip[:, None], stage.thresholds[:, ::-1], stage.thresholds)
    m.validate()
    return m


def signed_pool_digits():
    """The digits CNN with pool channels of every kind: sign -1, sign 0 (offset 0), relu off (offset 0)."""
    m = copy.deepcopy(model(DIGITS))
    node = node_of(m, "act_fc")
    kind = np.arange(len(node.sign)) % 4
    node.sign = np.where(kind == 1, -1, np.where(kind == 2, 0, 1)).astype(np.int64)
    node.relu = kind != 3
    node.offset = np.where((kind == 2) | (kind == 3), 0, node.offset).astype(np.int64)
    m.validate()
    return m


# ---------------------------------------------------------------- ops against the spec


@pytest.mark.parametrize("node_name, lanes, positions", [
    ("blocks.0.act1", 1, (4, 5)),
    ("blocks.4.act1", 3, (3, 3)),      # 32 channels: not a multiple of 3
    ("blocks.8.act1", 8, (2, 3)),
])
def test_activate_resnet(node_name, lanes, positions):
    params, beats, ops, values, codes = unary_case(model(RESNET), node_name, lanes, positions, seed=lanes)
    after_values, after_codes = check(params, beats, ops, values, codes)
    assert after_values == values and after_codes != codes
    regs = ops[0][1]
    made = expected(params, *ops[0], values, [0] * len(codes))[1]
    words = made[regs["dst"]:regs["dst"] + -(-regs["channels"] // lanes) * regs["positions"]]
    assert {(w >> (lane * LANE_BITS)) & 7 for w in words for lane in range(lanes)} == set(range(8))


@pytest.mark.parametrize("op", ["activate", "add", "pool", "pool_table"])
def test_value_ops_in_the_ecp5_form(op, ecp5_form):
    """The ops that read values as built for the ECP5 (:func:`helpers.build_as_for_the_ecp5`: the values read
    two cycles after their address, as the value memory gives them there; ACTIVATE's thresholds' word
    registered and the value a cycle after its slot): the same results, in the cycles ``op_cycles`` states
    for that latency."""
    if op == "activate":
        check(*unary_case(model(RESNET), "blocks.4.act1", 3, (3, 3), seed=3))
    elif op == "add":
        params, ops, values, codes = add_case(3, "blocks.3.add", "a", seed=4)
        check(params, [], ops, values, codes)
    else:
        case = unary_case(copy.deepcopy(model(DIGITS)), "act_fc", 3, None, seed=3,
                          hit="replace" if op == "pool_table" else "shift")
        assert case[0].pool_form == ("table" if op == "pool_table" else "arithmetic")
        check(*case)


def test_activate_descending_and_padded():
    """Descending channels, and a unit with wider codes than the model's (never-passed thresholds)."""
    m = descending_resnet()
    base = params_for(m, 3, 400, 200)
    wide = VectorParams(**{**base.describe(), "act_code_bits": 4, "act_threshold_bits": base.value_bits + 1})
    for params in (base, wide):
        check(*unary_case(m, "blocks.0.act1", 3, (2, 5), seed=7, params=params))


@functools.lru_cache(maxsize=None)
def darknet():
    """tests/data/compile_models.py's TinyDarknet, LCQ W3/A3 with random parameters: its linear layer reads a
    signed 8-bit activation, two 7-bit halves (uniform: searched), the convs 2-bit halves (listed)."""
    import torch
    from helpers import randomize

    sys.path.insert(0, str(DATA))
    import compile_models as cm

    from compiler.lower import compile_model
    from lcq_train.plan import quantize_model

    torch.manual_seed(5)
    net = randomize(quantize_model(cm.tiny_darknet(10, 1), method="lcq", wbits=3, abits=3), seed=5, act_alpha=0.3)
    return compile_model(net, (1, 8, 8))


@pytest.mark.parametrize("node_name, ecp5", [("act_fc.positive", False), ("act_fc.negative", False),
                                             ("act_fc.negative", True), ("act_features_4.negative.unpooled", False)])
def test_activate_searches_wide_codes(node_name, ecp5, request):
    """A unit whose activate thresholds search the wide nodes (``act_progression``: progression words, a binary
    search of ``act_code_bits`` stages) and list the narrow ones: every code equal to the reference, ascending and
    descending channels, in ``op_cycles`` (the search's cycles more)."""
    if ecp5:
        request.getfixturevalue("ecp5_form")
    m = darknet()
    params = params_for(m, 3, 400, 200)
    assert params.act_progression is not None and params.act_progression.table_code_bits == 2
    assert params.act_code_bits == 7 and params.act_search_cycles == 7
    assert [name for name, *_ in params.memories()] == ["act_thresholds"]       # one word a slot
    case = unary_case(m, node_name, 3, (1, 2) if node_name.startswith("act_fc") else (3, 3), seed=11, params=params)
    check(*case)
    assert params.register_cycles(case[2][0][1]) == params.op_cycles(ACTIVATE, 16 if "fc" in node_name else 8,
                                                                     2 if "fc" in node_name else 9)


def add_case(lanes, node_name, dst_is, seed, relu=False):
    m = model(RESNET)
    node = dataclasses.replace(node_of(m, node_name), relu=relu)
    info = m.validate()
    c, h, w = (info[node.inputs[0]].shape[0], 3, 4)
    n = c * h * w
    bases = {"a": 3, "b": 3 + n + 2, "other": 3 + 2 * n + 5}
    params = params_for(m, lanes, 3 + 3 * n + 9, 8)
    rng = np.random.default_rng(seed)
    values, codes = junk(params, rng)
    for key, name in zip("ab", node.inputs):
        bound = info[name].bound
        put_values(values, bases[key], rng.integers(-bound, bound + 1, n, dtype=np.int64))
        values[bases[key]] = bound                      # the largest sum
    regs = registers(params, node, (c, h, w), (bases["a"], bases["b"]), bases[dst_is])
    return params, [(node, regs)], values, codes


@pytest.mark.parametrize("node_name, dst_is, relu", [("blocks.0.add", "other", False), ("blocks.3.add", "a", False),
                                                     ("blocks.7.add", "b", False), ("blocks.3.add", "other", True),
                                                     ("blocks.7.add", "a", True)])
def test_add_resnet(node_name, dst_is, relu):
    """ADD, and ADD_RELU (an addition with a ReLU: negative sums written as 0)."""
    params, ops, values, codes = add_case(3, node_name, dst_is, seed=len(node_name), relu=relu)
    assert ops[0][1]["op"] == (ADD_RELU if relu else ADD)
    after_values, after_codes = check(params, [], ops, values, codes)
    assert after_codes == codes and after_values != values
    written = after_values[ops[0][1]["dst"]:][:ops[0][1]["channels"] * ops[0][1]["positions"]]
    assert (min(written) == 0) if relu else (min(written) < 0)


@pytest.mark.parametrize("hit", [None, "shift"])
def test_pool_resnet(hit):
    """The whole global pooling of ResNet-20 (64 channels of 8 x 8), 3 lanes, thresholds in the
    arithmetic form; ``hit``: sums equal to thresholds."""
    m = copy.deepcopy(model(RESNET)) if hit else model(RESNET)
    params, beats, ops, values, codes = unary_case(m, "act_fc", 3, None, seed=3, hit=hit)
    assert params.pool_form == "arithmetic" and not any(b[0] == POOL_THRESHOLDS for b in beats)
    check(params, beats, ops, values, codes)
    pooled = expected(params, *ops[0], values, [0] * len(codes))[1]
    dst = ops[0][1]["dst"]
    assert len({(w >> (lane * LANE_BITS)) & 255 for w in pooled[dst:dst + 22] for lane in range(3)}) > 20


@pytest.mark.parametrize("shape, hit, ecp5", [((1, 1), None, False), ((1, 3), "shift", False), ((1, 2), None, True)])
def test_pool_constants_outlast_the_values(shape, hit, ecp5, request):
    """ResNet-20's global pooling over ``shape``'s few positions: its channels' constants (9 pieces, 10 with
    the thresholds moved onto sums; the first value read after the first) are still being read after the last
    value, and the search waits for them; the results exact, in the cycles ``op_cycles`` states. ``ecp5``: the
    unit as built for the ECP5."""
    if ecp5:
        request.getfixturevalue("ecp5_form")
    m = copy.deepcopy(model(RESNET)) if hit else model(RESNET)
    params, beats, ops, values, codes = unary_case(m, "act_fc", 3, shape, seed=5, hit=hit)
    assert (params.pool_pieces, params.pool_lead_pieces) == (10 if hit else 9, 1)
    assert params.pool_lead_pieces + shape[0] * shape[1] + POOL_DRAIN < params.pool_pieces + POOL_PIECE_LATENCY
    check(params, beats, ops, values, codes)


def carry_at_the_first_compare(m, seed: int) -> np.ndarray:
    """Inputs of the digits CNN's act_fc (in ``m``, changed), and in each channel the threshold of the search's
    first candidate (index ``2^(b-1) - 1``) set to its sum (not a progression: the table form), where the sum
    reaches it only with the carry that its last value's low half sends into the sum's high half
    (:meth:`hw.vector.VectorUnit._sum`: the last of the sum to arrive) and that carry reaches the first compare's
    low halves: a search that compared a cycle too early would not take the candidate."""
    node = node_of(m, "act_fc")
    info = m.validate()
    c, h, w = info[node.input].shape
    n, bound, t = h * w, info[node.input].bound, node.stage.thresholds
    low_bits = params_for(m, 1, 10, 10).pool_sum_bits // 2
    mid, half = t.shape[1] // 2, 1 << low_bits
    rng = np.random.default_rng(seed)
    x = np.zeros((c, n), dtype=np.int64)
    for ch in range(c):
        sign, offset = int(node.sign[ch]), int(node.offset[ch])
        for _ in range(100):
            aim = int(rng.integers(t[ch, mid - 1], t[ch, mid + 1]))         # a sum between the neighbours
            center = (aim // n * sign + offset) >> node.frac_bits
            x[ch] = np.clip(center + rng.integers(-64, 65, n), -bound, bound)
            last = np.clip(center + np.arange(-256, 257), -bound, bound)
            u = sign * ((last << node.frac_bits) - offset)
            u = np.maximum(0, u) if node.relu[ch] else u
            head = int(node.terms(x[None, :, :, None])[0, ch, :-1].sum())
            total = head + u
            hits = ((t[ch, mid - 1] < total) & (total < t[ch, mid + 1]) & ((total >> low_bits) & 1 == 1)
                    & (head % half + u % half >= half))
            if hits.any():
                k = int(np.argmax(hits))
                x[ch, -1], t[ch, mid] = last[k], total[k]
                break
        else:
            raise AssertionError(f"channel {ch}: no inputs found")
    m.validate()
    x = x.reshape(c, h, w)
    assert (node.sums(x[None])[0, :, 0, 0] == t[:, mid]).all()
    return x


@pytest.mark.parametrize("ecp5", [False, True])
def test_pool_sum_complete_at_the_first_compare(ecp5, request):
    """The search's first compare reads the complete sum (:data:`~hw.vector_params.POOL_DRAIN`): every channel's
    sum equals its first candidate's threshold only with its last value's carry (:func:`carry_at_the_first_compare`),
    so that each code's top bit is 1. ``ecp5``: the unit as built for the ECP5 (its values, and so its sum, a cycle
    later; its drain a cycle longer)."""
    if ecp5:
        request.getfixturevalue("ecp5_form")
    m = copy.deepcopy(model(DIGITS))
    x = carry_at_the_first_compare(m, seed=7)
    case = unary_case(m, "act_fc", 4, None, seed=7, inputs=x)
    params = case[0]
    assert params.pool_form == "table" and params.pool_code_bits == 8
    width = max(params.pool_sum_bits, params.pool_threshold_bits) + 1      # VectorUnit._at_least's
    assert width // 2 > params.pool_sum_bits // 2         # the first compare's low halves hold the carried bit
    check(*case)


def exact_pool_digits():
    """The digits CNN with every pool channel's thresholds an exact progression of integers (the
    arithmetic form at shift 0: ``B + c * S`` is the threshold itself, so ``s * 2^k == B + c * S``
    where a sum equals one)."""
    m = copy.deepcopy(model(DIGITS))
    t = node_of(m, "act_fc").stage.thresholds
    t[:] = t[:, :1] + np.arange(t.shape[1])[None, :] * ((t[:, -1:] - t[:, :1]) // (t.shape[1] - 1))
    m.validate()
    return m


@pytest.mark.parametrize("lanes, variant, hit, form, shift", [(1, None, None, "arithmetic", 14),
                                                             (8, "signed", "shift", "arithmetic", 14),
                                                             (5, "exact", "shift", "arithmetic", 0),
                                                             (8, "signed", "replace", "table", 0),
                                                             (3, None, "replace", "table", 0)])
def test_pool_digits(lanes, variant, hit, form, shift):
    """The digits CNN's pooling of raw accumulators; ``variant``: "signed" signs -1 and 0, ReLU
    off, "exact" integer progressions; ``hit``: sums equal to thresholds, by shifting a channel's
    progression (the arithmetic form) or by replacing one threshold (not a progression: the unit
    falls back to the table form)."""
    m = {"signed": signed_pool_digits, "exact": exact_pool_digits}.get(variant, lambda: copy.deepcopy(model(DIGITS)))()
    case = unary_case(m, "act_fc", lanes, None, seed=lanes, hit=hit)
    params, beats = case[:2]
    assert (params.pool_form, params.pool_shift) == (form, shift)
    assert any(b[0] == POOL_THRESHOLDS for b in beats) == (form == "table")
    check(*case)


# ---------------------------------------------------------------- average pooling


def _avgpool_model(net_class: str, seed: int, parameter_seed: int):
    """A network of tests/data/compile_models.py (random parameters from ``parameter_seed``, compiled) and its
    tensors on 3 images."""
    import sys

    import torch
    from helpers import images, randomize

    from compiler.lower import compile_model
    from lcq_train.plan import quantize_model

    sys.path.insert(0, str(DATA))
    import compile_models as cm

    torch.manual_seed(seed)
    net = randomize(quantize_model(getattr(cm, net_class)(10, 1), method="lcq", wbits=3, abits=3), parameter_seed,
                    act_alpha=0.2)
    m = compile_model(net, (1, 8, 8))
    return m, reference.run(m, images(3, (1, 8, 8), seed=5))


@pytest.fixture(scope="module")
def avgpool_model():
    """AvgPoolNet: 2 x 2 windows at stride 2, overlapping 3 x 3 ones at stride 1."""
    return _avgpool_model("AvgPoolNet", 3, 8)


@pytest.fixture(scope="module")
def padded_avgpool_model():
    """PaddedAvgPool: 3 x 3 windows at stride 1 and 2, padding 1; terms outside the map (constant and
    always-active channels) in act_conv3.0."""
    return _avgpool_model("PaddedAvgPool", 4, 6)


@pytest.mark.parametrize("model, node_name, lanes, image, ecp5, wide", [
    ("avgpool_model", "act_conv2", 1, 0, False, False), ("avgpool_model", "act_conv2", 4, 1, False, False),
    ("avgpool_model", "act_conv3", 3, 0, False, False), ("avgpool_model", "act_conv3", 1, 2, True, False),
    ("avgpool_model", "act_conv3", 3, 0, False, True), ("avgpool_model", "act_conv2", 4, 1, True, True),
    ("padded_avgpool_model", "act_pool_conv", 4, 0, False, False),
    ("padded_avgpool_model", "act_conv3.0", 1, 1, False, False),
    ("padded_avgpool_model", "act_conv3.0", 3, 2, True, True)])
def test_avgpool(model, node_name, lanes, image, ecp5, wide, request):
    """AVGPOOL (2 x 2 windows at stride 2; overlapping 3 x 3 ones at stride 1; 3 x 3 ones padded by 1 at stride 1
    and 2, positions outside the map their channel's term) of an image's values, on junk memories, every word of
    both against the reference; busy lasts ``op_cycles``. ``ecp5``: the unit as built for the ECP5
    (:func:`helpers.build_as_for_the_ecp5`), its values read two cycles after their address. ``wide``: the offsets
    as wide as they may be, so that a window's first value waits for a piece of its constants (``pool_lead_pieces``
    1, the CONSTANTS state) and reads the last two that the sum uses beside its first two."""
    if ecp5:
        request.getfixturevalue("ecp5_form")
    m, t = request.getfixturevalue(model)
    node = node_of(m, node_name)
    assert isinstance(node, AvgPoolNode)
    x = t[node.input][image]
    c, h, w = x.shape
    _, ho, wo = node.out_shape(x.shape)
    src, dst = 7 + node.padding, 3
    params = params_for(m, lanes, src + c * h * w + 5, dst + -(-c // lanes) * ho * wo + 4)
    if wide:
        params = replace(params, pool_offset_bits=params.value_bits + params.max_frac_bits)
    assert AVGPOOL in params.ops
    assert bool(params.pool_outside_bits) == bool(node.padding) and params.pool_lead_pieces >= int(wide)
    if not node.padding:     # (the terms outside the map widen the sum's constants: a lead piece or more)
        assert params.pool_lead_pieces == int(wide)
    values, codes = junk(params, np.random.default_rng(lanes))
    put_values(values, src, x)
    beats, slots = constant_beats(params, m)
    beats = [b for b in beats if b[0] in (POOL_CONSTANTS, POOL_THRESHOLDS)]
    regs = registers(params, node, x.shape, (src,), dst, slots[node.name])
    check(params, beats, [(node, regs)], values, codes)
    assert len(np.unique(t[node.output][image])) >= 3            # the codes the windows give differ


# ---------------------------------------------------------------- max pooling


@pytest.mark.parametrize("lanes, shape, window", [
    (1, (2, 5, 5), (2, 2, 0)),            # one lane: one channel per word
    (3, (7, 6, 5), (3, 2, 1)),            # a partial last group: lanes beyond channel 6 stay as they were
    (4, (4, 3, 3), (3, 1, 1)),            # stride 1, "same" padding
    (2, (3, 4, 7), (4, 3, 2)),            # even kernel, padding kernel // 2, non-square input
    (2, (5, 6, 6), (6, 1, 0)),            # the global maximum: one window, the whole map
])
def test_maxpool(lanes, shape, window):
    """MAXPOOL on junk memories (inputs any code; words and lanes outside the output untouched), the
    input just below the output and, in a second op, far above it; busy lasts ``op_cycles``."""
    run_pooling(MaxPoolNode("mp", "x", "y", *window), lanes, shape)


@pytest.mark.parametrize("lanes, shape, window", [
    (3, (7, 6, 5), (3, 2, 1)),            # padded windows: the positions outside the input left out
    (2, (5, 6, 6), (6, 1, 0)),            # the global minimum
])
def test_minpool(lanes, shape, window):
    """MINPOOL (a unit with ``minpool``): each window's smallest code, MAXPOOL's walk; a MAXPOOL op of the same
    unit still takes the largest."""
    node = MaxPoolNode("mp", "x", "y", *window, minimum=True)
    params = run_pooling(node, lanes, shape)
    assert MINPOOL in params.ops and MINPOOL not in replace(params, minpool=False).ops
    run_pooling(MaxPoolNode("mp", "x", "y", *window), lanes, shape, minpool=True)


def run_pooling(node, lanes, shape, minpool=None):
    """``node`` run twice by a unit of ``lanes`` lanes (and MINPOOL hardware where ``minpool``, by default
    where ``node`` takes the minimum) on junk memories: the input just below the output, then far above it;
    returns the unit's params."""
    c, h, w = shape
    _, ho, wo = node.out_shape(shape)
    groups = -(-c // lanes)
    depth = groups * (h * w + ho * wo) + 40
    params = VectorParams(lanes=lanes, lane_bits=3, value_bits=8, value_depth=4, code_depth=depth,
                          maxpool_bits=maxpool_bits(node, shape), minpool=node.minimum if minpool is None else minpool)
    assert MAXPOOL in params.ops
    values, codes = junk(params, np.random.default_rng(sum(shape) + lanes))
    ops = [(node, op_registers(params, node, shape, {"x": 0, "y": groups * h * w})),
           (node, op_registers(params, node, shape, {"x": depth - groups * h * w, "y": 1}))]
    check(params, [], ops, values, codes, interfere=True)
    return params


@pytest.mark.parametrize("shape, stride", [
    ((4, 8, 8), 2),                     # akamaster's option A: 32 x 32 -> 16 x 16, scaled down
    ((3, 7, 5), 3),                     # odd sides: ceil(7 / 3) x ceil(5 / 3)
])
def test_subsample(shape, stride):
    """SUBSAMPLE on junk memories: every stride-th row and column of each channel, written in order; the input just
    below the output, far above it, and under it (in place: the output at the input's base)."""
    node = SubsampleNode("sub", "x", "y", stride)
    c, h, w = shape
    words_in, words_out = c * h * w, math.prod(node.out_shape(shape))
    depth = words_in + words_out + 30
    params = VectorParams(lanes=2, lane_bits=3, value_bits=9, value_depth=depth, code_depth=4,
                          subsample_bits=subsample_bits(node, shape))
    assert SUBSAMPLE in params.ops and SUBSAMPLE not in replace(params, subsample_bits=0).ops
    values, codes = junk(params, np.random.default_rng(sum(shape) + stride))
    ops = [(node, op_registers(params, node, shape, {"x": 0, "y": words_in})),
           (node, op_registers(params, node, shape, {"x": depth - words_in, "y": 1})),
           (node, op_registers(params, node, shape, {"x": 5, "y": 5}))]
    check(params, [], ops, values, codes, interfere=True)


@pytest.mark.parametrize("relu", [False, True])
def test_add_of_an_operand_over_some_channels(relu):
    """ADD (ADD_RELU) with ``narrow_adds``: operand b (3 channels) adds to channels 2..4 of a's 7, the others are
    a's (an option-A shortcut's zero channels); the sum in place over a; a whole add after it on the same unit."""
    node, whole = AddNode("add", ("a", "b"), "y", relu=relu, b_offset=2), AddNode("add", ("a", "b"), "y", relu=relu)
    shape, positions = (7, 3, 3), 9
    params = VectorParams(lanes=2, lane_bits=3, value_bits=9, value_depth=250, code_depth=4, narrow_adds=True)
    rng = np.random.default_rng(7 + relu)
    values, codes = junk(params, rng)
    for base, words in ((10, 63), (100, 63)):           # operands that sum within the 9-bit words
        put_values(values, base, rng.integers(-63, 64, words))
    ops = [(node, op_registers(params, node, shape, {"a": 10, "b": 100, "y": 10}, b_channels=3)),
           (whole, op_registers(params, whole, shape, {"a": 100, "b": 10, "y": 170}))]
    assert (ops[0][1]["b_first"], ops[0][1]["b_channels"], ops[1][1]["b_channels"]) == (2, 3, 7)
    assert params.register_cycles(ops[0][1]) == 2 * 7 * positions + 4
    check(params, [], ops, values, codes, interfere=True)
    with pytest.raises(ValueError, match="no narrow ADD hardware"):
        op_registers(replace(params, narrow_adds=False), node, shape, {"a": 10, "b": 100, "y": 10}, b_channels=3)
    with pytest.raises(ValueError, match="does not fit the sum's 7"):
        op_registers(params, node, shape, {"a": 10, "b": 100, "y": 10}, b_channels=6)
    with pytest.raises(ValueError, match="narrow_adds must be true or false, and true only with ADD hardware"):
        replace(params, adds=False)


def test_subsample_registers_and_errors():
    node = SubsampleNode("sub", "x", "y", 2)
    params = VectorParams(lanes=4, lane_bits=2, value_bits=8, value_depth=500, code_depth=4,
                          subsample_bits=subsample_bits(node, (8, 6, 6)))
    regs = op_registers(params, node, (8, 6, 6), {"x": 3, "y": 300})
    assert (regs["channels"], regs["positions"], regs["row_step"]) == (8, 36, 12)
    assert params.register_cycles(regs) == 8 * 9 + 4 == params.op_cycles(SUBSAMPLE, 8, 9)
    for bases, says in (({"x": 0, "y": 450}, "takes 72 words"), ({"x": 0, "y": -1}, "at -1"),
                        ({"x": 3, "y": 200}, "overlaps input 'x' without starting at its base"),
                        ({"x": 0}, "no address")):
        with pytest.raises(ValueError, match=says):
            op_registers(params, node, (8, 6, 6), bases)
    with pytest.raises(ValueError, match="subsample_bits=3"):
        op_registers(params, node, (2, 9, 9), {"x": 0, "y": 300})
    with pytest.raises(ValueError, match="no subsample hardware"):
        op_registers(replace(params, subsample_bits=0), node, (8, 6, 6), {"x": 3, "y": 300})


def test_maxpool_registers_and_errors():
    node = MaxPoolNode("mp", "x", "y", 3, 2, 1)
    params = VectorParams(lanes=4, lane_bits=2, value_bits=8, value_depth=4, code_depth=100, maxpool_bits=3)
    regs = op_registers(params, node, (6, 5, 5), {"x": 3, "y": 60})
    assert regs["src_a"] == (3 - 6) % 128 and regs["row_step"] == 10
    assert (regs["out_height"], regs["out_width"]) == (3, 3)
    assert params.register_cycles(regs) == 2 * 9 * 9 + 3 == params.op_cycles(MAXPOOL, 6, 9, 9)
    for bases, says in (({"x": 0, "y": 49}, "overlaps"), ({"x": 60, "y": 0}, "takes 50 words"),
                        ({"x": 0}, "no address")):
        with pytest.raises(ValueError, match=says):
            op_registers(params, node, (6, 5, 5), bases)
    with pytest.raises(ValueError, match="maxpool_bits=3"):
        op_registers(params, node, (6, 8, 3), {"x": 0, "y": 60})
    with pytest.raises(ValueError, match="no max-pool hardware"):
        op_registers(replace(params, maxpool_bits=0), node, (6, 5, 5), {"x": 0, "y": 60})
    with pytest.raises(ValueError, match="no min-pool hardware"):
        op_registers(params, replace(node, minimum=True), (6, 5, 5), {"x": 0, "y": 60})
    assert op_registers(replace(params, minpool=True), replace(node, minimum=True), (6, 5, 5),
                        {"x": 3, "y": 60}) == {**regs, "op": MINPOOL}
    with pytest.raises(ValueError, match="minpool must be true or false, and true only with max-pool hardware"):
        replace(params, maxpool_bits=0, minpool=True)


# ---------------------------------------------------------------- cycles, ops in sequence


def test_cycles_and_sequence():
    """Ops back to back on one image (each reading what the last wrote), with ``start`` pulses and
    junk loads while busy (ignored): busy lasts exactly ``op_cycles``, results equal the spec."""
    m = model(RESNET)
    assert ThresholdUnit.LATENCY == THRESHOLD_LATENCY
    params = params_for(m, 3, 64, 24)
    beats, slots = constant_beats(params, m)
    pool_slots = 2                                   # the pool runs on channels 0 and 1 only
    beats = [b for b in beats if b[0] == ACT_THRESHOLDS
             or (b[0] == POOL_CONSTANTS and b[1] >> params.pool_piece_index_bits < pool_slots)
             or (b[0] == POOL_THRESHOLDS and b[1] >> params.pool_code_bits < pool_slots)]
    rng = np.random.default_rng(5)
    values, codes = junk(params, rng)
    info = m.validate()
    act, add, pool = node_of(m, "blocks.1.act1"), node_of(m, "blocks.1.add"), node_of(m, "act_fc")
    small = min(info[name].bound for name in add.inputs)
    put_values(values, 0, rng.integers(-small // 4, small // 4, 40, dtype=np.int64))

    def regs(node, shape, inputs, dst):
        return node, registers(params, node, shape, inputs, dst, slots.get(node.name, 0))

    ops = [regs(add, (1, 1, 1), (0, 1), 2),           # N = 1
           regs(add, (2, 1, 3), (0, 10), 0),          # dst == src_a
           regs(act, (1, 1, 1), (0,), 0),             # the node's first channel only
           regs(act, (16, 1, 2), (4,), 3),
           regs(pool, (1, 1, 1), (20,), 20),
           regs(pool, (2, 2, 3), (20,), 21)]
    check(params, beats, ops, values, codes, interfere=True)


def test_missing_hardware_is_ignored():
    """A unit without activate and max-pool hardware (digits CNN) ignores ACTIVATE and MAXPOOL starts."""
    params = params_for(model(DIGITS), 2, 8, 8)
    assert params.ops == (ADD, POOL, ADD_RELU)
    dut = VectorUnit(params)
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def bench(ctx):
        for op in (ACTIVATE, MAXPOOL):
            ctx.set(dut.op, op)
            ctx.set(dut.channels, 1)
            ctx.set(dut.positions, 1)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            for _ in range(4):
                assert not ctx.get(dut.busy)
                await ctx.tick()

    sim.add_testbench(bench)
    sim.run()


def test_verilog():
    """The ResNet-20 unit converts to Verilog with the documented ports."""
    params = params_for(model(RESNET), 8, 1 << 15, 1 << 12)
    text = verilog.convert(VectorUnit(params), name="vector")
    for port in ("start", "busy", "val_read_addr", "code_write_lane", "load_data"):
        assert port in text


# ---------------------------------------------------------------- parameters and words


def test_params_sizing():
    m = model(RESNET)
    p = params_for(m, 8, 100, 50)
    info = m.validate()
    pool = node_of(m, "act_fc")
    assert (p.act_code_bits, p.act_slots, p.pool_slots, p.pool_code_bits, p.max_frac_bits) == (3, 288, 64, 8, 8)
    assert p.act_threshold_bits == max(signed_bits(int(np.abs(n.stage.thresholds).max()))
                                       for n in m.nodes if isinstance(n, ActivateNode))
    assert p.pool_sum_bits == signed_bits(pool_sum_bound(pool, info[pool.input].shape, info[pool.input].bound))
    assert p.pool_offset_bits == signed_bits(int(np.abs(pool.offset).max()))
    assert VectorParams.from_dict(p.describe()) == p
    written_before = {k: v for k, v in p.describe().items() if k != "minpool"}     # (before MINPOOL: none)
    assert VectorParams.from_dict(written_before) == p and not p.minpool
    assert (p.pool_form, p.pool_shift, p.pool_threshold_bits, p.pool_threshold_depth) == ("arithmetic", 14, 0, 0)
    assert p.pool_constant_bits == POOL_OFFSET_SHIFT + p.pool_offset_bits + p.pool_base_bits + p.pool_step_bits
    assert [name for name, *_ in p.memories()] == ["act_thresholds", "pool_constants"]
    assert p.pool_pieces == 9 and p.pool_piece_index_bits == 4          # 136 bits in 16-bit pieces
    assert ("pool_constants", 16, 64 * 16, 1) in p.memories()
    assert max(depth for _, _, depth, _ in p.memories()) < 1 << 14        # no 16384-deep threshold table
    assert p.target_bits[2] == 0
    d = params_for(model(DIGITS), 1, 10, 10)
    assert (d.act_code_bits, d.act_slots, d.act_word_bits) == (0, 0, 0)
    # A channel: the constants' lead pieces, the values (the other pieces read beside them), the drain, the search.
    assert (p.pool_lead_pieces, d.pool_pieces, d.pool_lead_pieces) == (1, 7, 0)
    assert p.op_cycles(POOL, 64, 64) == 64 * (1 + 64 + 5 + 5 * 8) + 2 == 7042
    assert d.op_cycles(POOL, 64, 16) == 64 * (16 + 5 + 5 * 8) + 2
    assert p.op_cycles(POOL, 64, 1) == 64 * (9 + 2 + 5 * 8) + 2          # the last piece after the drain


def test_padding_never_passed():
    """The padded words of a narrower activate node give the node's codes on every value in range."""
    m = model(RESNET)
    node, bound = node_of(m, "blocks.0.act1"), m.validate()["conv1"].bound
    base = params_for(m, 1, 10, 10)
    wide = VectorParams(**{**base.describe(), "act_code_bits": 5, "act_threshold_bits": base.value_bits + 1})
    words = activate_words(wide, node, bound)
    tb, s = wide.act_threshold_bits, 31
    t = np.array([[((w >> (i * tb)) & ((1 << tb) - 1)) for i in range(s)] for w in words], dtype=object)
    t = np.where(t >= 1 << (tb - 1), t - (1 << tb), t).astype(np.int64)
    x = np.array([-bound, -1, 0, 1, bound] + list(node.stage.thresholds.reshape(-1)), dtype=np.int64)
    x = x[None, None, :].repeat(16, axis=1)
    assert np.array_equal(Thresholds(t, np.zeros(16, bool), 5).apply(x), node.stage.apply(x))


@pytest.mark.parametrize("change, message", [
    ({"lanes": 0}, "lanes must be an integer in 1..256"),
    ({"value_bits": 65}, "value_bits must be an integer in 2..64"),
    ({"act_code_bits": 0}, "act_threshold_bits must be an integer in 0..0"),
    ({"act_code_bits": 9}, "act_code_bits must be an integer in 0..8"),
    ({"lane_bits": 2}, "act_code_bits must be an integer in 1..2"),
    ({"act_threshold_bits": 40}, "act_threshold_bits must be an integer in 2..36"),
    ({"pool_slots": 0}, "pool_code_bits must be an integer in 0..0"),
    ({"max_frac_bits": 25}, "max_frac_bits must be an integer in 0..24"),
    ({"pool_offset_bits": 0}, "pool_offset_bits must be an integer in 1..43"),
    ({"code_depth": True}, "code_depth must be an integer"),
    ({"pool_form": "linear"}, "pool_form must be one of 'arithmetic', 'table'"),
    ({"pool_threshold_bits": 40}, "pool_threshold_bits must be an integer in 0..0"),
    ({"pool_shift": MAX_POOL_SHIFT + 1}, "pool_shift must be an integer in 0..32"),
    ({"pool_step_bits": 0}, "pool_step_bits must be an integer in 1..128"),
    ({"pool_form": "table"}, "pool_threshold_bits must be an integer in 2..65"),
    ({"pool_form": "table", "pool_threshold_bits": 43}, "pool_shift must be an integer in 0..0"),
])
def test_params_errors(change, message):
    base = params_for(model(RESNET), 3, 100, 100).describe()
    with pytest.raises(ValueError, match=message):
        VectorParams(**{**base, **change})


def test_sizing_and_beat_errors():
    m, digits = model(RESNET), model(DIGITS)
    with pytest.raises(ValueError, match="value_bits=20 cannot hold .* need 35 bits"):
        VectorParams.for_model(m, 3, LANE_BITS, 20, 10, 10)
    with pytest.raises(ValueError, match=r"lane_bits=3 cannot hold the 8-bit codes of pool node 'act_fc' \(the "
                                         r"model's widest activate or pool codes\): pass lane_bits=8 or more"):
        VectorParams.for_model(m, 3, 3, 35, 10, 10)
    with pytest.raises(ValueError, match="keys"):
        VectorParams.from_dict({"lanes": 1})
    with pytest.raises(ValueError, match="blocks.0.act1.*no activate hardware.*VectorParams.for_model"):
        constant_beats(params_for(digits, 3, 10, 10), m)
    base = params_for(m, 3, 10, 10).describe()
    table = {**base, "pool_form": "table", "pool_shift": 0, "pool_base_bits": 0, "pool_step_bits": 0}
    with pytest.raises(ValueError, match="act_fc.*thresholds need 44 bits"):
        constant_beats(VectorParams(**{**table, "pool_threshold_bits": 30}), m)
    with pytest.raises(ValueError, match="act_fc.*B' need 49 bits \\(pool_base_bits=40\\).*S need 49 bits"):
        constant_beats(VectorParams(**{**base, "pool_base_bits": 40, "pool_step_bits": 40}), m)
    with pytest.raises(ValueError, match=r"act_fc.*not ceil\(\(B \+ c \* S\) / 2\^12\) in every channel"):
        constant_beats(VectorParams(**{**base, "pool_shift": 12}), m)
    few = VectorParams(**{**params_for(m, 3, 10, 10).describe(), "act_slots": 100})
    with pytest.raises(ValueError, match="blocks.5.act1.*needs slots 96..127, the unit has 100"):
        constant_beats(few, m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(TypeError, match="params must be a VectorParams"):
            VectorUnit({"lanes": 1})
        gc.collect()                                             # the half-built unit, while ignored


def test_op_register_errors():
    m = model(RESNET)
    p = params_for(m, 3, 100, 40)
    act, add, pool = node_of(m, "blocks.0.act1"), node_of(m, "blocks.0.add"), node_of(m, "act_fc")
    assert registers(p, add, (2, 3, 4), (0, 24), 0) == {
        "op": ADD, "src_a": 0, "src_b": 24, "dst": 0, "channels": 2, "positions": 12, "slot_base": 0,
        "frac_bits": 0}
    assert registers(p, pool, (4, 2, 2), (10,), 38)["frac_bits"] == 8
    cases = [
        (lambda: registers(p, add, (2, 3, 4), (0, 24), 12),
         "output 'blocks.0.out' at 12 overlaps input 'blocks.0.conv2' at 0 without starting there"),
        (lambda: registers(p, add, (2, 3, 4), (0, 80), 30), "input 'conv1' at 80 takes 24 words of the value"),
        (lambda: op_registers(p, add, (2, 3, 4), {"conv1": 0, "blocks.0.out": 9}), "no address for tensor "
                                                                                  "'blocks.0.conv2'"),
        (lambda: registers(p, act, (16, 2, 2), (0,), 30), "output 'blocks.0.act1' at 30 takes 24 words of the code"),
        (lambda: registers(p, act, (16, 1, 1), (0,), 0, 280), "slots 280.. for 16 channels do not fit"),
        (lambda: op_registers(p, act, (16, 1, 1), {"conv1": 0, "blocks.0.act1": 0}), "no first slot"),
        (lambda: registers(p, act, (16, 0, 1), (0,), 0), "shape must be 3 positive integers"),
        (lambda: registers(p, act, (17, 1, 1), (0,), 0), "shape has 17 channels, the node's constants 16"),
        (lambda: registers(p, m.nodes[1], (3, 1, 1), (0,), 0), "runs activate, add, pool, average-pool and max-pool "
                                                               "nodes"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    no_act = params_for(model(DIGITS), 3, 100, 40)
    with pytest.raises(ValueError, match="no activate hardware"):
        registers(no_act, act, (16, 1, 1), (0,), 0)


def test_pool_thresholds_must_ascend():
    m = copy.deepcopy(model(DIGITS))
    node = node_of(m, "act_fc")
    node.stage.thresholds[3, :2] = node.stage.thresholds[3, 1::-1] + np.array([0, -1])
    info = TensorInfo((64, 4, 4), None, 9326880)
    assert pool_shift(node, info, 8) is None                       # no progression descends
    p = VectorParams(**{**params_for(model(DIGITS), 1, 10, 10).describe(), "pool_form": "table",
                        "pool_threshold_bits": 40, "pool_shift": 0, "pool_base_bits": 0, "pool_step_bits": 0})
    with pytest.raises(ValueError, match="non-decreasing.*binary search"):
        pool_threshold_words(p, node, info)
    with pytest.raises(ValueError, match="arithmetic form.*no threshold table"):
        pool_threshold_words(params_for(model(DIGITS), 1, 10, 10), node, info)


# ---------------------------------------------------------------- the arithmetic form


def ceil_shift(x: int, k: int) -> int:
    return -(-x // (1 << k))


@pytest.mark.parametrize("name, shift", [(DIGITS, 14), (RESNET, 14)])
def test_pool_arithmetic_fit(name, shift):
    """The smallest shift of each model's pool node; its (B, S) reproduce every threshold
    exactly, and so do the B', S of the POOL_CONSTANTS words; one bit less shift has none."""
    m = model(name)
    info = m.validate()
    node = node_of(m, "act_fc")
    assert pool_shift(node, info[node.input], 8) == shift
    assert pool_progressions(node, info[node.input], 8, shift - 1) is None
    p = params_for(m, 4, 10, 10)
    assert (p.pool_form, p.pool_shift) == ("arithmetic", shift)
    fits = pool_progressions(node, info[node.input], 8, shift)
    words = pool_constant_words(p, node, info[node.input])
    for row, (b, s), word in zip(node.stage.thresholds.tolist(), fits, words):
        assert s >= 0 and [ceil_shift(b + c * s, shift) for c in range(255)] == row
        base = (word >> p.pool_base_shift) & ((1 << p.pool_base_bits) - 1)
        base -= (base >> (p.pool_base_bits - 1)) << p.pool_base_bits
        step = word >> p.pool_step_shift
        assert step == s and base == b - s and step < 1 << p.pool_step_bits
        assert [ceil_shift(base + (c + 1) * step, shift) for c in range(255)] == row
    assert pool_progressions(node, info[node.input], 8, shift + 3) is not None


def narrow_pool_node(spread: bool):
    """The digits CNN's pool node (a copy) with 3-bit codes, and its input: every 36th threshold of
    each channel, or (``spread``) a progression over the whole range of sums, whose continuation
    passes every sum. (Its model would need a 3-bit last layer: the node runs alone.)"""
    node = copy.deepcopy(node_of(model(DIGITS), "act_fc"))
    info = model(DIGITS).validate()[node.input]
    t = node.stage.thresholds[:, ::36][:, :7].copy()
    if spread:
        limit = PoolNode.sum_limit(info.shape[1] * info.shape[2], info.bound, node.frac_bits)
        t = np.ceil(np.linspace(200 - limit, limit - 200, 7)).astype(np.int64)[None, :].repeat(len(t), axis=0)
        t += np.arange(len(t))[:, None] * 3 - 96
    node.stage = Thresholds(t, node.stage.descending, 3)
    node.stage.check_arrays("test", info.shape[0], limit if spread else 1 << 62, ascending_only=True)
    return node, info


def test_narrow_pool_node_padding():
    """A unit with wider pooled codes than the node's: the padding indices of the progression must
    lie above every sum. Thresholds from inside the range cannot (no arithmetic form at 5 bits: the
    table's padding); a progression over the whole range can, and runs bit-exact."""
    node, info = narrow_pool_node(spread=False)
    assert pool_shift(node, info, 3) is not None and pool_shift(node, info, 5) is None
    node, info = narrow_pool_node(spread=True)
    never = pool_sum_bound(node, info.shape, info.bound) + 1
    k = pool_shift(node, info, 5)
    fits = pool_progressions(node, info, 5, k)
    for row, (b, s) in zip(node.stage.thresholds.tolist(), fits):
        assert [ceil_shift(b + c * s, k) for c in range(7)] == row
        assert ceil_shift(b + 7 * s, k) >= never
    widths = progression_bits(fits)
    c, h, w = info.shape
    src, dst = 3, 2
    params = VectorParams(**{**params_for(model(DIGITS), 2, src + c * h * w + 5, dst + c // 2 + 3).describe(),
                             "pool_code_bits": 5, "pool_shift": k, "pool_base_bits": widths[0],
                             "pool_step_bits": widths[1]})
    rng = np.random.default_rng(4)
    values, codes = junk(params, rng)
    x = pool_inputs(rng, node, info.bound, info.shape)
    x[::5] = info.bound * np.sign(node.sign[::5])[:, None, None]      # the largest sums
    put_values(values, src, x)
    beats = pool_constant_beats(params, 0, pool_constant_words(params, node, info))
    regs = registers(params, node, info.shape, (src,), dst)
    check(params, beats, [(node, regs)], values, codes)
    got = expected(params, node, regs, values, [0] * len(codes))[1][dst:dst + c // 2]
    pooled = {(word >> (lane * LANE_BITS)) & 255 for word in got for lane in range(2)}
    assert len(pooled) >= 4 and max(pooled) == 7


def test_network_memory_bits():
    """The whole-network core's memories: no pool threshold table for either model."""
    # 64 channels, their words (3 + 24 + 35 + 35 and 3 + 34 + 47 + 47 bits) in 16-bit pieces at 8 and 16 a slot
    for name, constants in ((DIGITS, 64 * 8 * 16), (RESNET, 64 * 16 * 16)):
        bits = NetworkParams.for_model(model(name), 8, 8).memory_bits()
        assert "vector pool_thresholds" not in bits and bits["vector pool_constants"] == constants
