"""Semantic mutation campaign on the compiled-model file: one change at a time, digest rewritten.

Each mutation edits the parsed contents of a committed model (a manifest field, a node, the graph,
one array element) and writes it back with :func:`compiler.format.write_members`, which records the
matching digest, so that only the rules can catch it. Reading the file must then either refuse it
with a :class:`~compiler.format.ModelFormatError` naming the file and the field (quickly, without a
traceback from deep inside), or give a model whose consequences (the integer reference's logits on
10 images, ``lcq report`` with the network plan, the whole-network core's parameters
:meth:`hw.network_params.NetworkParams.for_model`) equal the unmodified model's. The named cases
come first, then seeded random ones (``slow``: many more of them).
"""

import copy
import json
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from compiler import format as fmt
from compiler.reference import run
from compiler.report import report
from hw.network_params import NetworkParams

from helpers import SharedFeatures, members

DATA = Path(__file__).parent / "data"
# nodes: 0 input act_in, 1 conv0 (8-bit multiply, thresholds -> act1), 2 conv1 (W3/A3 lut -> act2),
# 3 conv2 (lut, raw accumulator conv2), 4 pool act_fc, 5 fc (linear, requantize -> logits)
DIGITS = DATA / "digits-cnn-lcq-w3a3.lcq"
# 0 input, 1 conv1 (requantize), 2 activate blocks.0.act1, 3/4 convs, 5 add blocks.0.add, ..., 40 pool, 41 fc
RESNET = DATA / "cifar10-resnet20-lcq-w3a3.lcq"
HARMLESS = "harmless"     # expected outcome: loads, and every consequence equals the unmodified model's


# --------------------------------------------------------------------------- edits


def renumber(m, a, order):
    """The nodes become ``[nodes[i] for i in order]`` (an index may repeat: a copy), their arrays renumbered."""
    old_nodes, old_arrays = m["nodes"], dict(a)
    a.clear()

    def move(x, j):
        if isinstance(x, dict):
            if set(x) == {"array", "dtype", "shape"}:
                key = f"nodes/{j}/" + x["array"].split("/", 2)[2]
                a[key] = old_arrays[x["array"]].copy()
                x["array"] = key
            else:
                for v in x.values():
                    move(v, j)

    m["nodes"] = []
    for j, i in enumerate(order):
        node = copy.deepcopy(old_nodes[i])
        move(node, j)
        m["nodes"].append(node)


def insert_copy(i, at, **fields):
    """A copy of node ``i`` inserted at ``at`` with ``fields`` changed (its value output given a scale)."""
    def edit(m, a):
        renumber(m, a, [*range(at), i, *range(at, len(m["nodes"]))])
        m["nodes"][at].update(fields)
        source = m["nodes"][i if i < at else i + 1]["output"]
        if source in m["scales"]:
            m["scales"][m["nodes"][at]["output"]] = m["scales"][source]
    return edit


def swap(i, j):
    def edit(m, a):
        order = list(range(len(m["nodes"])))
        order[i], order[j] = order[j], order[i]
        renumber(m, a, order)
    return edit


def setf(node, in_stage=False, **fields):
    def edit(m, a):
        (m["nodes"][node]["stage"] if in_stage else m["nodes"][node]).update(fields)
    return edit


def seti(key, index, value):
    def edit(m, a):
        a[key] = a[key].copy()
        a[key][index] = value
    return edit


def setref(node, field, **ref):
    return lambda m, a: m["nodes"][node][field].update(ref)


def top(**fields):
    return lambda m, a: m.update(fields)


def src(**fields):
    return lambda m, a: m["source"].update(fields)


def rename(old, new):
    """Tensor ``old`` renamed ``new`` everywhere (a consistent rename: the same model)."""
    def edit(m, a):
        for n in m["nodes"]:
            for k in ("input", "output"):
                if n.get(k) == old:
                    n[k] = new
            if "inputs" in n:
                n["inputs"] = [new if x == old else x for x in n["inputs"]]
        if old in m["scales"]:
            m["scales"][new] = m["scales"].pop(old)
        if m["logits"] == old:
            m["logits"] = new
    return edit


def both(*edits):
    def edit(m, a):
        for e in edits:
            e(m, a)
    return edit


def resized(key, array):
    """Array ``key`` replaced by ``array`` and its reference declaring it."""
    def edit(m, a):
        a[key] = array
        ref = _ref(m, key)
        ref["dtype"], ref["shape"] = array.dtype.name, list(array.shape)
    return edit


def _ref(m, key):
    _, i, *path = key.split("/")
    d = m["nodes"][int(i)]
    for p in path:
        d = d[p]
    return d


def _lut_of(i):
    """The node's LUT recomputed from its (edited) level tables, so that only the level rule can object."""
    def edit(m, a):
        lut = np.outer(a[f"nodes/{i}/w_levels"][1:].astype(np.int64), a[f"nodes/{i}/a_levels"][1:])
        a[f"nodes/{i}/lut"] = lut.astype(a[f"nodes/{i}/lut"].dtype)
    return edit



def _uniform_weights(i):
    """Node ``i``'s weight levels the uniform quantizer's (its LUT to match, where it has one)."""
    def edit(m, a):
        levels = a[f"nodes/{i}/w_levels"]
        s, top = len(levels) - 1, int(levels[-1])
        a[f"nodes/{i}/w_levels"] = np.round(np.arange(s + 1) / s * top).astype(levels.dtype)
        if f"nodes/{i}/lut" in a:
            _lut_of(i)(m, a)
    return edit


MUTATIONS = {
    # graph: names, producers, order, cycles
    "duplicate node name": (DIGITS, setf(3, name="conv1"), [r"node 3 \(conv 'conv1'\)", r"field 'name' 'conv1' is the "
                                                                                      r"name of an earlier node"]),
    "node named as the input tensor": (DIGITS, setf(1, name="act_in"), [r"node 1 .*'name' 'act_in'"]),
    "reads a tensor never produced": (DIGITS, setf(2, input="ghost"), [r"node 2 .*'input' tensor 'ghost' is not "
                                                                       r"defined by an earlier node"]),
    "reads its own output (cycle)": (DIGITS, setf(2, input="act2"), [r"node 2 .*'input' tensor 'act2' is not defined"]),
    "reads a later tensor (cycle)": (DIGITS, setf(1, input="act2"), [r"node 1 .*'input' tensor 'act2' is not defined"]),
    "two nodes swapped": (DIGITS, swap(2, 3), [r"node 2 \(conv 'conv2'\).*'input' tensor 'act2' is not defined"]),
    "input node not first": (DIGITS, swap(0, 1), [r"node 0 .*'op' the input node comes first"]),
    "tensor produced twice": (DIGITS, setf(3, output="act1"), [r"node 3 .*'output' tensor 'act1' is already defined"]),
    "an addition of undefined scale": (RESNET, both(insert_copy(5, 6, name="blocks.0.addb", output="blocks.0.outb"),
                                                    lambda m, a: m["scales"].pop("blocks.0.outb")),
                                       [r"node 6 \(add 'blocks\.0\.addb'\)", r"scales\['blocks\.0\.outb'\]"]),
    "one node only": (DIGITS, lambda m, a: (m.update(nodes=m["nodes"][:1]),
                                            [a.pop(k) for k in list(a) if not k.startswith("nodes/0/")]),
                      [r"'nodes' must be a list of 2\.\.4096 nodes"]),
    "logits not the last node's": (DIGITS, top(logits="act_fc"), [r"'logits' = 'act_fc'; must be the value tensor"]),
    # a node whose output nothing reads (the compiler keeps only what the logits depend on)
    "unused pool": (DIGITS, insert_copy(4, 5, name="act_fc2", output="act_fc2"),
                    [r"node 5 \(pool 'act_fc2'\)", r"'output' tensor 'act_fc2' is read by no later node"]),
    "unused conv accumulator": (DIGITS, insert_copy(3, 4, name="conv2b", output="conv2b"),
                                [r"node 4 \(conv 'conv2b'\).*'output' tensor 'conv2b' is read by no later node"]),
    "unused conv codes": (DIGITS, insert_copy(2, 3, name="conv1b", output="act2b"),
                          [r"node 3 \(conv 'conv1b'\).*'output' tensor 'act2b' is read by no later node"]),
    "unused activate": (RESNET, insert_copy(2, 3, name="blocks.0.act1b", output="blocks.0.act1b"),
                        [r"node 3 \(activate 'blocks\.0\.act1b'\).*'output' tensor 'blocks\.0\.act1b' is read by no"]),
    "unused addition": (RESNET, insert_copy(5, 6, name="blocks.0.addb", output="blocks.0.outb"),
                        [r"node 6 \(add 'blocks\.0\.addb'\).*'output' tensor 'blocks\.0\.outb' is read by no"]),
    "addition of a tensor to itself": (RESNET, setf(5, inputs=["conv1", "conv1"]),
                                       [r"node 4 \(conv 'blocks\.0\.conv2'\).*'output' tensor 'blocks\.0\.conv2' is "
                                        r"read by no later node"]),
    # a tensor named as a layer's accumulator, "<layer>.acc", which the integer reference writes beside it
    "a residual stream named as a later layer's accumulator": (
        RESNET, rename("conv1", "blocks.0.conv1.acc"),
        [r"node 1 \(conv 'conv1'\)", r"'output' tensor 'blocks\.0\.conv1\.acc' is named as the accumulator of "
         r"node 3 \(conv 'blocks\.0\.conv1'\)"]),
    "codes named as an earlier layer's accumulator": (
        DIGITS, rename("act2", "conv0.acc"),
        [r"node 2 \(conv 'conv1'\).*'output' tensor 'conv0\.acc' is named as the accumulator of node 1"]),
    # consistent renames and descriptive fields: the same model
    "code tensor renamed": (DIGITS, rename("act2", "act2b"), HARMLESS),
    "value tensor renamed": (DIGITS, rename("conv2", "conv2b"), HARMLESS),
    "logits renamed": (DIGITS, rename("logits", "out"), HARMLESS),
    "node named as another node's output": (DIGITS, setf(1, name="act2"), HARMLESS),
    "fc as a 1x1 conv": (DIGITS, setf(5, kind="conv"), HARMLESS),
    "addition operands swapped": (RESNET, setf(5, inputs=["conv1", "blocks.0.conv2"]), HARMLESS),
    "projection addition operands swapped": (RESNET, setf(18, inputs=["blocks.3.shortcut", "blocks.3.conv2"]),
                                             HARMLESS),
    "layer scale 1e308": (DIGITS, setf(2, scale=1e308), HARMLESS),
    "layer scale subnormal": (DIGITS, setf(2, scale=5e-324), HARMLESS),
    "source.test_top1 negative": (DIGITS, src(test_top1=-5.0), HARMLESS),
    "source empty": (DIGITS, top(source={}), HARMLESS),
    # shapes off by one
    "in_shape side + 1": (DIGITS, setf(2, in_shape=[16, 9, 8]), [r"node 2 .*'out_shape' = \[32, 4, 4\] does not"]),
    "out_shape channels + 1": (DIGITS, setf(2, out_shape=[33, 4, 4]),
                               [r"node 3 .*'in_shape' = \[32, 4, 4\] does not match its input tensor 'act2'"]),
    "out_shape side - 1": (DIGITS, setf(2, out_shape=[32, 4, 3]), [r"node 2 .*'out_shape' = \[32, 4, 3\]"]),
    "input side + 1": (DIGITS, setf(0, shape=[1, 9, 8]), [r"node 1 .*'in_shape' = \[1, 8, 8\] does not match"]),
    "input channels 3": (DIGITS, setf(0, shape=[3, 8, 8]), [r"node 1 .*'in_shape'"]),
    "input side 2^14": (DIGITS, setf(0, shape=[1, 16384, 16384]), [r"node 1 .*'in_shape'"]),
    # geometry 0 or negative
    "kernel 0": (DIGITS, setf(2, kernel=0), [r"node 2 .*'kernel' = 0 is out of range; allowed 1\.\.32"]),
    "kernel -3": (DIGITS, setf(2, kernel=-3), [r"'kernel' = -3 is out of range"]),
    "kernel 3.0": (DIGITS, setf(2, kernel=3.0), [r"'kernel' must be an integer in 1\.\.32, not 3\.0"]),
    "stride -2": (DIGITS, setf(2, stride=-2), [r"'stride' = -2 is out of range; allowed 1\.\.16"]),
    "padding -1": (DIGITS, setf(2, padding=-1), [r"'padding' = -1 is out of range; allowed 0\.\.1"]),
    "avgpool kernel 0": (DIGITS, setf(4, op="avgpool", kernel=0, stride=1),
                         [r"node 4 \(avgpool 'act_fc'\).*'kernel' = 0 is out of range"]),
    "linear with a 3x3 input": (DIGITS, setf(2, kind="linear"), [r"node 2 .*'kind' 'linear' needs kernel 1"]),
    # bit widths outside 2..8 (outer 2..16)
    "wbits 9": (DIGITS, setf(2, wbits=9), [r"node 2 .*'wbits' = 9 is out of range; allowed 2\.\.8"]),
    "wbits 1": (DIGITS, setf(2, wbits=1), [r"'wbits' = 1 is out of range"]),
    "abits 1": (DIGITS, setf(2, abits=1), [r"'abits' = 1 is out of range"]),
    "input bits 9": (DIGITS, setf(0, bits=9), [r"node 0 .*'bits' = 9 is out of range"]),
    "stage bits 1": (DIGITS, setf(2, in_stage=True, bits=1), [r"'stage\.bits' = 1 is out of range"]),
    "stage bits 2, next layer reads 3": (DIGITS, setf(2, in_stage=True, bits=2),
                                         [r"node 3 .*'abits' = 3 differs from the 2-bit codes"]),
    "outer_abits 1": (DIGITS, setf(2, outer_abits=1), [r"'outer_abits' = 1 is out of range; allowed 2\.\.16"]),
    "frac_bits true": (DIGITS, setf(4, frac_bits=True), [r"node 4 .*'frac_bits' must be an integer"]),
    # level tables, LUT, thresholds
    "w_levels one entry longer": (DIGITS, resized("nodes/2/w_levels", np.array([0, 10, 50, 127, 127], np.int32)),
                                  [r"node 2 .*'w_levels' is declared 'int32' \[5\], the layer needs int32 \[4\]"]),
    "a_levels flat": (DIGITS, seti("nodes/2/a_levels", 1, 0), [r"node 2 .*'lut': LUT contents differ"]),
    "a_levels decreasing, LUT to match": (DIGITS, both(seti("nodes/2/a_levels", 1, 250), _lut_of(2)),
                                          [r"node 2 .*'a_levels' must be non-decreasing"]),
    "LUT entry + 1": (DIGITS, seti("nodes/2/lut", (1, 2), 1), [r"node 2 .*'lut': LUT contents differ"]),
    "LUT as uint32": (DIGITS, resized("nodes/2/lut", np.zeros((3, 7), np.uint32)), [r"node 2 .*'lut'"]),
    "thresholds reversed": (DIGITS, lambda m, a: a.update({"nodes/2/stage/thresholds":
                                                           a["nodes/2/stage/thresholds"][:, ::-1].copy()}),
                            [r"node 2 .*'stage\.thresholds' \[0, :\] must be non-decreasing"]),
    "descending all set": (DIGITS, lambda m, a: a.update({"nodes/2/stage/descending":
                                                          np.ones(32, np.uint8)}),
                           [r"'stage\.thresholds' \[0, :\] must be non-increasing"]),
    "threshold one past the bound": (DIGITS, seti("nodes/2/stage/thresholds", (0, 6), 4663442),
                                     [r"'stage\.thresholds' \[0, 6\] = 4663442 is out of range"]),
    "input table 255 -> 8": (DIGITS, seti("nodes/0/table", 255, 8), [r"node 0 .*'table' must be non-decreasing"]),
    "input table 100 -> 101": (DIGITS, seti("nodes/0/table", 100, 101), [r"node 0 .*'table' \[100\] = 101, not "
                                                                          r"100: source\.plan quantizes the input"]),
    "pool signs all 0": (DIGITS, lambda m, a: a.update({"nodes/4/sign": np.zeros(64, np.int8)}),
                         [r"node 4 .*'offset' \[0\] = \d+: must be 0 where sign is 0"]),
    # arrays against their references and headers
    "thresholds stored as int32": (DIGITS, lambda m, a: a.update({"nodes/2/stage/thresholds":
                                                                  a["nodes/2/stage/thresholds"].astype(np.int32)}),
                                   [r"member 'nodes/2/stage/thresholds\.npy' holds 1024 bytes, not an \.npy of <i8"]),
    "thresholds declared int32": (DIGITS, resized("nodes/2/stage/thresholds", np.zeros((32, 7), np.int32)),
                                  [r"'stage\.thresholds' is declared 'int32' \[32, 7\], the layer needs int64"]),
    "thresholds flattened": (DIGITS, lambda m, a: a.update({"nodes/2/stage/thresholds":
                                                            a["nodes/2/stage/thresholds"].reshape(-1)}),
                             [r"array 'nodes/2/stage/thresholds' is <i8 \[224\], the manifest says <i8 \[32, 7\]"]),
    "weights declared int8": (DIGITS, resized("nodes/2/weights", np.zeros(1728, np.int8)),
                              [r"'weights' is declared 'int8' \[1728\], the layer needs uint8"]),
    "array declared 2^40 long": (DIGITS, setref(2, "w_levels", shape=[2**40]),
                                 [r"'w_levels' is declared 'int32' \[1099511627776\]"]),
    "dtype spelled '<i4'": (DIGITS, setref(2, "w_levels", dtype="<i4"), [r"'w_levels' is declared '<i4' \[4\]"]),
    "shape a string": (DIGITS, setref(2, "w_levels", shape="[4]"), [r"'w_levels' must be a reference"]),
    "reference with an extra key": (DIGITS, setref(2, "w_levels", extra=1), [r"'w_levels' must be a reference"]),
    # integers written as floats: equal in value, but not what the writer writes
    "acc_bits 24.0": (DIGITS, setf(2, acc_bits=24.0), [r"node 2 .*'acc_bits' = 24\.0; the levels and the reduction "
                                                       r"give 24"]),
    "lut_bits 15.0": (DIGITS, setf(2, lut_bits=15.0), [r"node 2 .*'lut_bits' = 15\.0; the LUT needs 15"]),
    "array shape [4.0]": (DIGITS, setref(2, "w_levels", shape=[4.0]),
                          [r"node 2 .*'w_levels' is declared 'int32' \[4\.0\], the layer needs int32 \[4\]"]),
    # extra, missing and odd fields; versions
    "unknown top-level field": (DIGITS, top(extra=1), [r"manifest: unknown field 'extra'"]),
    "unknown stage field": (DIGITS, setf(2, in_stage=True, extra=1), [r"node 2 .* stage: unknown field 'extra'"]),
    "unknown source field": (DIGITS, src(extra=1), [r"'source' has unknown entries"]),
    "requantize relu 1": (DIGITS, setf(5, in_stage=True, relu=1), [r"'relu' = 1; it is written only as true"]),
    "add relu false": (RESNET, setf(5, relu=False), [r"node 5 \(add 'blocks\.0\.add'\).*'relu' = False"]),
    "add of three": (RESNET, setf(5, inputs=["conv1"] * 3), [r"'inputs' must be two tensor names"]),
    "activate with a requantize stage": (RESNET, setf(2, stage={"kind": "requantize"}),
                                         [r"node 2 .* stage: field 'multiplier' is missing"]),
    "conv without its stage": (DIGITS, setf(2, stage=None), [r"node 2 .*'out_scale' = None; a raw accumulator's"]),
    "a threshold layer with an out_scale": (DIGITS, setf(2, out_scale=1.0), [r"'out_scale' = 1\.0; codes have no"]),
    "non-ASCII name": (DIGITS, setf(3, name="c\u00e9"), [r"'name' must be a name of 1\.\.256 letters"]),
    "name null": (DIGITS, setf(2, name=None), [r"node 2 \(conv None\).*'name' must be a name"]),
    "num_classes 0": (DIGITS, top(num_classes=0), [r"'num_classes' = 0 is out of range"]),
    "num_classes 10.0": (DIGITS, top(num_classes=10.0), [r"'num_classes' must be an integer"]),
    "scale of a code tensor": (DIGITS, lambda m, a: m["scales"].update(act1=1.0), [r"'scales' names 'act1'"]),
    "negative scale": (DIGITS, lambda m, a: m["scales"].update(conv2=-1.0), [r"scales\['conv2'\]\" must be a finite"]),
    "max_lut_entries 0": (DIGITS, lambda m, a: m["source"]["options"].update(max_lut_entries=0),
                          [r"'source\.options\.max_lut_entries' = 0 is out of range"]),
    "pool_frac_bits 8.0": (DIGITS, lambda m, a: m["source"]["options"].update(pool_frac_bits=8.0),
                           [r"'source\.options\.pool_frac_bits' must be an integer"]),
    "source.sha256 upper case": (DIGITS, src(sha256="A" * 64), [r"'source\.sha256' must be 64 hex digits"]),
    "source.dataset unknown": (DIGITS, src(dataset="imagenet"),
                               [r"'source\.dataset' must name the dataset the checkpoint was trained on, one of "
                                r"digits, mnist, fashion-mnist, cifar10, folder; not 'imagenet'"]),
    "source.dataset of another image shape": (RESNET, src(dataset="mnist"),
                                              [r"'source\.dataset' = 'mnist', but the input node's shape is \[3, 32, "
                                               r"32\], not \[1, 28, 28\], the image shape of its dataset mnist"]),
    "source.plan unknown method": (DIGITS, lambda m, a: m["source"]["plan"].update(method="apot"),
                                   [r"'source\.plan\.method' must be one of 'uniform', 'lcq', not 'apot'"]),
    "source.plan fp": (DIGITS, lambda m, a: m["source"]["plan"].update(method="fp"),
                       [r"'source\.plan\.method' must be one of 'uniform', 'lcq', not 'fp'"]),
    "source.plan wbits 9": (DIGITS, lambda m, a: m["source"]["plan"].update(wbits=9),
                            [r"'source\.plan\.wbits' = 9 is out of range; allowed 2\.\.8"]),
    "source.plan without abits": (DIGITS, lambda m, a: m["source"]["plan"].pop("abits"),
                                  [r"'source\.plan\.abits' is missing"]),
    "source.plan extra key": (DIGITS, lambda m, a: m["source"]["plan"].update(extra=1),
                              [r"'source\.plan' has unknown entries \[\"'extra'\"\]; its keys "
                                                               r"are method, wbits"]),
    "source.plan outer bits below wbits": (DIGITS, lambda m, a: m["source"]["plan"].update(outer_bits=[2, 8]),
                                           [r"'source\.plan\.outer_bits' = \[2, 8\]: b'_w 2 is narrower than"]),
    "source.plan without outer bits": (DIGITS, lambda m, a: m["source"]["plan"].update(outer_bits=None),
                                       [r"'source\.plan\.outer_bits' must be"]),
    "source.plan alpha_w 0": (DIGITS, lambda m, a: m["source"]["plan"].update(alpha_w=0.0),
                              [r"'source\.plan\.alpha_w' must be a number > 0 and <= 1e\+06, not 0\.0"]),
    "source.plan layer bits of three": (DIGITS, lambda m, a: m["source"]["plan"].update(
                                            layer_bits={"conv1": [3, 3, 8]}),
                                        [r"\"source\.plan\.layer_bits\['conv1'\]\" must be \[wbits, abits\]"]),
    "source.plan weight_norm unknown": (DIGITS, lambda m, a: m["source"]["plan"].update(weight_norm="l2"),
                                        [r"'source\.plan\.weight_norm' must be one of 'lwn', 'standardize'"]),
    # the plan against the nodes it describes (DIGITS: conv0 and fc the 8-bit edge layers, conv1 and conv2 W3/A3,
    # every outer width 8; RESNET: conv1 and fc at 8 bits, the shortcuts blocks.3/6.shortcut)
    "source.plan W2/A2 of W3/A3 nodes": (DIGITS, lambda m, a: m["source"]["plan"].update(wbits=2, abits=2),
                                         [r"'source\.plan\.wbits' = 2, but node 2 \(conv 'conv1'\) has 3-bit "
                                          r"weights"]),
    "source.plan abits of other nodes": (DIGITS, lambda m, a: m["source"]["plan"].update(abits=4),
                                         [r"'source\.plan\.abits' = 4, but node 2 \(conv 'conv1'\) reads 3-bit"]),
    "source.plan edge bits of other nodes": (DIGITS, lambda m, a: m["source"]["plan"].update(edge_bits=4),
                                             [r"'source\.plan\.edge_bits' = 4, but node 1 \(conv 'conv0'\) has "
                                              r"8-bit weights"]),
    "source.plan outer bits of other nodes": (DIGITS, lambda m, a: m["source"]["plan"].update(outer_bits=[8, 10]),
                                              [r"'source\.plan\.outer_bits' = \[8, 10\], but node 1 \(conv "
                                               r"'conv0'\) has b'_a 8"]),
    "source.plan layer bits of another layer's": (DIGITS, lambda m, a: m["source"]["plan"].update(
                                                      layer_bits={"conv1": [4, 4]}),
                                                  [r"\"source\.plan\.layer_bits\['conv1'\]\" = \[4, 4\], but node 2 "
                                                   r"\(conv 'conv1'\) has 3-bit weights"]),
    "source.plan layer outer widths of other nodes": (RESNET, lambda m, a: m["source"]["plan"].update(
                                                          layer_bits={"blocks.3.shortcut": [3, 3, 6, 8]}),
                                                      [r"\"source\.plan\.layer_bits\['blocks\.3\.shortcut'\]\" = "
                                                       r"\[3, 3, 6, 8\], but node \d+ \(conv 'blocks\.3\.shortcut'\) "
                                                       r"has b'_w 8"]),
    # an entry for a layer the logits do not depend on (a training-only head): the compiler leaves it out
    "source.plan layer bits naming no node": (DIGITS, lambda m, a: m["source"]["plan"].update(
                                                  layer_bits={"aux": [4, 4]}), HARMLESS),
    "source.plan layer bits as the nodes have them": (DIGITS, lambda m, a: m["source"]["plan"].update(
                                                          layer_bits={"conv0": [8, 8], "conv1": [3, 3, 8, 8]}),
                                                      HARMLESS),
    "source.plan layer bits of the shortcut as it has them": (RESNET, lambda m, a: m["source"]["plan"].update(
                                                                  layer_bits={"blocks.6.shortcut": [3, 3]}), HARMLESS),
    # level tables the plan makes uniform must be the uniform quantizer's, round(s' * k / s) (DIGITS: conv1 and conv2
    # LCQ, conv0 and fc the 8-bit edge layers, uniform under every method, conv0 reading the image's uniform codes)
    "source.plan uniform over LCQ levels": (DIGITS, lambda m, a: m["source"]["plan"].update(method="uniform"),
                                            [r"'source\.plan\.method' = 'uniform', but node 2 \(conv 'conv1'\) has "
                                             r"non-uniform weight levels w_levels \[0, 42, 84, 127\] \(\[2\] = 84, "
                                             r"not 85\); the plan's method 'uniform' makes them uniform: "
                                             r"round\(s'_w \* k / s_w\) = \[0, 42, 85, 127\]"]),
    "source.plan uniform over LCQ activation levels": (DIGITS, both(
                                                           lambda m, a: m["source"]["plan"].update(method="uniform"),
                                                           _uniform_weights(2), _uniform_weights(3)),
                                                       [r"'source\.plan\.method' = 'uniform', but node 2 \(conv "
                                                        r"'conv1'\) has non-uniform activation levels a_levels \[0, "
                                                        r"31, 63, 100, .*\(\[1\] = 31, not 36\); .* round\(s'_a \* j "
                                                        r"/ s_a\) = \[0, 36, 73, 109, 146, 182, 219, 255\]"]),
    "source.plan uniform over the ResNet's LCQ levels": (RESNET, lambda m, a: m["source"]["plan"].update(
                                                             method="uniform"),
                                                         [r"'source\.plan\.method' = 'uniform', but node \d+ \(conv "
                                                          r"'blocks\.0\.conv1'\) has non-uniform weight levels"]),
    "source.plan K 1 over LCQ levels": (DIGITS, lambda m, a: m["source"]["plan"].update(K=1),
                                        [r"'source\.plan\.K' = 1, but node 2 \(conv 'conv1'\) has non-uniform weight "
                                         r"levels .*one compander interval"]),
    "source.plan K 4 over LCQ levels": (DIGITS, lambda m, a: m["source"]["plan"].update(K=4), HARMLESS),
    "first layer's weight levels not uniform": (DIGITS, seti("nodes/1/w_levels", 64, 65),
                                                [r"'source\.plan\.method' = 'lcq', but node 1 \(conv 'conv0'\) has "
                                                 r"non-uniform weight levels .*\(\[64\] = 65, not 64\); the first and "
                                                 r"last layers' quantizers are uniform under every method"]),
    "last layer's weight levels not uniform": (DIGITS, seti("nodes/5/w_levels", 3, 2),
                                               [r"'source\.plan\.method' = 'lcq', but node 5 \(conv 'fc'\) has "
                                                r"non-uniform weight levels .*\(\[3\] = 2, not 3\)"]),
    "image's levels not uniform": (DIGITS, seti("nodes/1/a_levels", 100, 101),
                                   [r"node 1 \(conv 'conv0'\): field 'a_levels' = \[0, 1, 2, .*\(\[100\] = 101, not "
                                    r"100\); it reads the input image, whose quantizer is uniform under every plan"]),
    "version 3": (DIGITS, top(version=3), [r"format version 3; this lcq reads version 2: update lcq"]),
    "version 2.5": (DIGITS, top(version=2.5), [r"format version 2\.5; this lcq reads version 2"]),
    "version true": (DIGITS, top(version=True), [r"format version True"]),
    "another format": (DIGITS, top(format="lcq-compiled-model2"), [r"not an lcq-compiled-model file"]),
}


# --------------------------------------------------------------------------- consequences


def consequences(model, shape) -> dict:
    """What a user gets from ``model``: logits of 10 seeded images of ``shape``, ``lcq report`` with the network
    plan (layer names and kinds left out: a rename changes them and nothing else), the whole-network core's
    parameters. A failure is recorded as its type and message."""
    x = np.random.default_rng(10).integers(0, 256, (10, *shape), dtype=np.uint8)

    def rep():
        r = report(model, lanes=4)
        for row in r["layers"]:
            del row["name"], row["kind"]
        return json.dumps(r["layers"]) + json.dumps({k: v for k, v in r.items() if k not in ("layers", "network")})

    out = {}
    for name, f in (("logits", lambda: run(model, x)[model.logits].tolist()), ("report", rep),
                    ("network", lambda: NetworkParams.for_model(model, 2, 4))):
        try:
            out[name] = f()
        except Exception as e:    # recorded, then compared: the unmodified model raises none
            out[name] = f"{type(e).__name__}: {e}"
    return out


_ORIGINAL = {}


def original(path):
    if path not in _ORIGINAL:
        model = fmt.load(path)
        _ORIGINAL[path] = (model.input.shape, consequences(model, model.input.shape))
    return _ORIGINAL[path]


def outcome(path, edit, tmp_path) -> tuple[str, str | dict]:
    """("refused", message) or ("loaded", consequences) of ``path`` edited by ``edit``, digest rewritten."""
    manifest, arrays = members(path)
    edit(manifest, arrays)
    out = tmp_path / "mutated.lcq"
    fmt.write_members(out, manifest, arrays)
    t0 = time.perf_counter()
    try:
        model = fmt.load(out)
    except fmt.ModelFormatError as e:
        assert time.perf_counter() - t0 < 2.0
        message = str(e)
        assert str(out) in message and "Traceback" not in message
        return "refused", message.replace(str(out), "FILE")
    return "loaded", consequences(model, original(path)[0])


def named(message: str) -> bool:
    """A refusal names what is wrong: a field (of a node, a stage, the manifest), an array or member, the version."""
    return bool(re.search(r"field ['\"]|array '|member '|format version|unknown field|not an lcq-compiled-model",
                          message))


@pytest.mark.parametrize("shape", [[1, 8, 8], [1, 28, 28], [3, 32, 32], [3, 8, 8], [1, 10, 12], [3, 256, 256],
                                   [3, 257, 8], [2, 8, 8], [1, 0, 8], [True, 8, 8], [1, 8], "1x8x8", [1.0, 8, 8]])
def test_the_datasets_and_image_shapes_a_model_file_may_name_are_the_trainers(shape):
    """``source.dataset`` and the input's shape are checked by the compiler's own rule (the host reads model files
    without the trainer); it must be the trainer's, the rule that wrote the fields."""
    from compiler import graph
    from lcq_train import dataset_rules as trainer

    assert tuple(graph.DATASET_SHAPES) == trainer.DATASETS and graph.FOLDER_MAX_SIDE == trainer.FOLDER_MAX_SIDE
    assert {k: v for k, v in graph.DATASET_SHAPES.items() if v is not None} == trainer.IMAGE_SHAPES
    for name in trainer.DATASETS:
        assert graph.image_shape_problem(name, shape) == trainer.image_shape_problem(name, shape), (name, shape)


@pytest.mark.parametrize("names", [["a", "b"], ["a"], [], ["a", "a", "b"], ["cat", "dog", ""], ["x" * 255, "y"],
                                   ["x" * 256, "y"], ["a\x07", "b"], ["a\u200bb", "c"], ["a", 3], ["a", None],
                                   [str(i) for i in range(1 << 16)], [str(i) for i in range((1 << 16) + 1)]],
                         ids=lambda names: f"{len(names)} names" if len(names) > 8 else repr(names))
def test_the_class_names_a_model_file_may_record_are_the_trainers(names):
    from compiler import graph
    from lcq_train import dataset_rules as trainer

    assert graph.MAX_CLASSES == trainer.MAX_CLASSES and graph.MAX_CLASS_NAME == trainer.MAX_NAME_CHARS
    assert graph.class_names_problem(names) == trainer.class_names_problem(names)


def test_the_plans_a_model_file_may_hold_are_the_trainers():
    """``source.plan`` is checked by the compiler's own rule (the host reads model files without the trainer): it
    must accept what :meth:`QuantPlan.to_dict` writes of a plan the compiler compiles (a method other than "fp",
    outer widths) and nothing else. The rule's constants are QuantPlan's, and on 3000 plans (the committed ones,
    then one to three fields each set to a value off by a little or of another type) the two agree."""
    import dataclasses
    import random

    from compiler.graph import (OUTER_BITS, PLAN_ADDED, PLAN_BITS, PLAN_CLIP, PLAN_FIELDS, PLAN_K, PLAN_METHODS,
                                PLAN_WEIGHT_NORMS, ModelRuleError, check_plan)
    from lcq_train.plan import QuantPlan
    from lcq_train.quantizer import BITS, CLIP, INTERVALS, MAX_OUTER_BITS, METHODS, WEIGHT_NORMS

    assert PLAN_FIELDS == tuple(f.name for f in dataclasses.fields(QuantPlan))
    assert PLAN_ADDED == {"weight_norm": QuantPlan().weight_norm}
    assert PLAN_METHODS == tuple(m for m in METHODS if m != "fp") and PLAN_WEIGHT_NORMS == WEIGHT_NORMS
    assert PLAN_BITS == (BITS.lo, BITS.hi) and OUTER_BITS == (BITS.lo, MAX_OUTER_BITS)
    assert PLAN_K == (INTERVALS.lo, INTERVALS.hi) and (0.0, PLAN_CLIP) == (CLIP.lo, CLIP.hi) and CLIP.lo_open

    def trainer(d) -> bool:
        if any(k not in d for k in PLAN_FIELDS if k not in PLAN_ADDED):
            return False
        try:
            plan = QuantPlan.from_dict(copy.deepcopy(d))
        except (ValueError, TypeError):
            return False
        return plan.method != "fp" and plan.outer_bits is not None

    def compiler(d) -> bool:
        try:
            check_plan(copy.deepcopy(d))
        except ModelRuleError:
            return False
        return True

    bases = [members(path)[0]["source"]["plan"] for path in (DIGITS, RESNET)]
    bases.append(QuantPlan("uniform", 4, 2, (6, 4), layer_bits={"conv0": (8, 8, 8, 8), "fc": [5, 4]}).to_dict())
    values = [None, True, 0, 1, 2, 3, 4, 7, 8, 9, 16, 17, -1, 2.0, 1e6, 1e7, 0.5, float("nan"), "lcq", "uniform",
              "fp", "lwn", "standardize", "x", [], [8], [8, 8], [2, 8], [8, 2], [4, 6], [3, 3, 8], [8, 8, 8, 8],
              [3, 3, 2, 8], {}, {"conv1": [3, 3]}, {"conv1": [9, 3]}, {"conv1": [3, 3, 6, 4]}, {"conv1": [4, 4, 3, 3]},
              {"conv1": (3,)}, {"conv1": "3/3"}]
    rng = random.Random(0)
    seen = set()
    for i in range(3000):
        d = copy.deepcopy(bases[i % len(bases)])
        for _ in range(0 if i < len(bases) else rng.randint(1, 3)):
            key = rng.choice([*PLAN_FIELDS, "extra"])
            if rng.random() < 0.1:
                d.pop(key, None)
            else:
                d[key] = copy.deepcopy(rng.choice(values))
        assert compiler(d) == trainer(d), d
        seen.add(trainer(d))
    assert seen == {True, False}


def test_the_widths_a_plan_gives_each_layer_are_the_trainers():
    """The loader holds each conv node to the widths ``source.plan`` gives its layer by the compiler's own rule
    (:func:`compiler.graph.plan_layer_widths`; the host reads model files without the trainer). On the layers of
    built-in and traced models and 600 random plans the trainer accepts, it gives what the trainer installs
    (:func:`lcq_train.plan.layer_bits` and ``outer_widths``, the input image's quantizer at 8 bits)."""
    import random
    import sys

    from compiler.graph import plan_layer_widths
    from lcq_train.models.cnn import SmallCNN
    from lcq_train.models.resnet import PreActResNet
    from lcq_train.plan import INPUT_BITS, QuantPlan, _image, layer_bits, outer_widths, quantize_model

    sys.path.insert(0, str(DATA))
    import compile_models as cm

    models = [SmallCNN((1, 8, 8), 10), PreActResNet(8, 10, 3), quantize_model(cm.TorchvisionResNet(10, 1), method="fp"),
              quantize_model(cm.MobileNet(10, 1), method="fp")]
    rng = random.Random(1)
    checked = 0
    for i in range(600):
        model = models[i % len(models)]
        pairs = model.quant_layers()
        bits = lambda: rng.randint(2, 8)  # noqa: E731
        outer = rng.choice([8, 16, (8, 10), (rng.randint(2, 16), rng.randint(2, 16))])
        own = {name: rng.choice([(bits(), bits()), (bits(), bits(), rng.randint(8, 16), rng.randint(8, 16))])
               for name, _ in rng.sample(pairs, rng.randint(0, 3))}
        try:
            plan = QuantPlan(rng.choice(["lcq", "uniform"]), bits(), bits(), outer, K=rng.choice([1, 16]),
                             edge_bits=bits(), layer_bits=own)
            want_bits, want_outer = layer_bits(model, plan), outer_widths(model, plan)
        except ValueError:
            continue
        image = _image(model, pairs)
        want = {name: (want_bits[name][0], INPUT_BITS if act == image else want_bits[name][1], *want_outer[name])
                for name, act in pairs}
        assert plan_layer_widths(plan.to_dict(), pairs, image) == want, plan
        checked += 1
    assert checked > 300, checked


def test_the_quantizers_a_plan_makes_uniform_are_the_trainers():
    """The loader holds the level tables of the quantizers ``source.plan`` makes uniform to the uniform quantizer's
    (:func:`compiler.graph.plan_uniform_quantizers` and ``uniform_levels``; the host reads model files without the
    trainer). On the layers of built-in and traced models and 400 random plans the trainer accepts, it names exactly
    the weight and activation quantizers the trainer installs uniform or with K = 1 (an LCQ quantizer whose levels,
    whatever its theta, are the uniform quantizer's), and its uniform table is the trainer's."""
    import random
    import sys

    import torch

    from compiler.graph import plan_uniform_quantizers, uniform_levels
    from lcq_train.models.cnn import SmallCNN
    from lcq_train.models.resnet import PreActResNet
    from lcq_train.plan import QuantPlan, _image, _install, quantize_model
    from lcq_train.quant import level_table

    for bits in range(2, 9):
        for outer in range(bits, 17):
            for signed in (True, False):
                want = uniform_levels(bits, outer, signed)
                assert np.array_equal(level_table(None, bits, outer, signed).numpy(), want), (bits, outer, signed)
                theta = torch.randn(1, dtype=torch.float64) * 5       # K = 1 under lcq: f is the identity
                assert np.array_equal(level_table(theta, bits, outer, signed).numpy(), want), (bits, outer, signed)

    sys.path.insert(0, str(DATA))
    import compile_models as cm

    models = [SmallCNN((1, 8, 8), 10), PreActResNet(8, 10, 3), quantize_model(cm.TorchvisionResNet(10, 1), method="fp"),
              quantize_model(SharedFeatures(), method="fp")]
    rng = random.Random(2)
    checked, kinds = 0, set()
    for i in range(400):
        model = copy.deepcopy(models[i % len(models)])
        pairs = model.quant_layers()
        bits = lambda: rng.choice([2, 2, 3, 4, 8])  # noqa: E731
        own = {name: (bits(), bits()) for name, _ in rng.sample(pairs, rng.randint(0, 3))}
        try:
            plan = QuantPlan(rng.choice(["lcq", "lcq", "uniform"]), bits(), bits(), 8, K=rng.choice([1, 16, 16]),
                             edge_bits=bits(), layer_bits=own)
            _install(model, plan)
        except ValueError:
            continue
        modules = dict(model.named_modules())
        uniform = lambda q: q.method == "uniform" or q.spec.K == 1  # noqa: E731
        want = {name: (uniform(modules[name].wq), uniform(modules[act])) for name, act in pairs}
        got = plan_uniform_quantizers(plan.to_dict(), pairs, _image(model, pairs))
        assert {name: (w is not None, a is not None) for name, (w, a) in got.items()} == want, plan
        kinds |= {(w, a) for w, a in want.values()}
        checked += 1
    assert checked > 200 and kinds == {(True, True), (True, False), (False, False)}, (checked, kinds)


@pytest.mark.parametrize("name", MUTATIONS)
def test_mutation(name, tmp_path):
    path, edit, expect = MUTATIONS[name]
    kind, result = outcome(path, edit, tmp_path)
    if expect == HARMLESS:
        assert kind == "loaded", result
        assert result == original(path)[1], {k: str(v)[:200] for k, v in result.items()}
    else:
        assert kind == "refused", f"loaded: {str(result)[:300]}"
        assert named(result), result
        for pattern in expect:
            assert re.search(pattern, result), (pattern, result)


# --------------------------------------------------------------------------- seeded random mutations


def _scalars(d, path=()):
    """Paths to every scalar (and list of scalars) of a manifest, array references' keys left out."""
    if isinstance(d, dict):
        for k, v in d.items():
            if k == "array" or k == fmt.DIGEST_FIELD:
                continue
            yield from _scalars(v, (*path, k))
    elif isinstance(d, list) and any(isinstance(v, (dict, list)) for v in d):
        for i, v in enumerate(d):
            yield from _scalars(v, (*path, i))
    else:
        yield path


def _perturb(value, rng):
    """A value like ``value`` but off: by one, zero, negated, huge, another type."""
    if isinstance(value, bool):
        options = [not value, 1, 0, None]
    elif isinstance(value, int):
        options = [value + 1, value - 1, 0, -value, 2**40, -2**63, float(value), str(value), True, None, [value]]
    elif isinstance(value, float):
        options = [value * 2, -value, 0.0, 1e308, 5e-324, int(value) if value.is_integer() else round(value), None]
    elif isinstance(value, str):
        options = ["", value + "x", "x" * 300, "act1", "conv2", "logits", "\u00e9", None, 1]
    elif isinstance(value, list):
        options = [[], value[:-1], [*value, value[-1] if value else 0], [v + 1 if isinstance(v, int) else v
                                                                          for v in value], None]
    else:
        options = [0, "x", {}]
    return options[int(rng.integers(len(options)))]


def _set(d, path, value):
    for p in path[:-1]:
        d = d[p]
    d[path[-1]] = value


def _get(d, path):
    for p in path:
        d = d[p]
    return d


def random_field_edit(manifest, rng):
    paths = list(_scalars(manifest))
    path = paths[int(rng.integers(len(paths)))]
    value = _perturb(_get(manifest, path), rng)
    return "/".join(map(str, path)), lambda m, a: _set(m, path, copy.deepcopy(value)), value


def random_array_edit(arrays, rng):
    key = sorted(arrays)[int(rng.integers(len(arrays)))]
    a = arrays[key]
    i = np.unravel_index(int(rng.integers(a.size)), a.shape) if a.size else ()
    info = np.iinfo(a.dtype)
    value = [int(a[i]) + 1, int(a[i]) - 1, 0, info.max, info.min][int(rng.integers(5))]
    value = min(max(value, info.min), info.max)
    return f"{key}{list(i)}", seti(key, i, value), value


# Fields whose value is descriptive (not a consequence): a change of them may load.
DESCRIPTIVE = re.compile(r"^(source/(test_top1|epoch|model|checkpoint|plan/.*)|nodes/\d+/(scale|out_scale)|scales/.*)$")


def campaign(path, seeds, tmp_path):
    manifest, arrays = members(path)
    findings = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        where, edit, value = (random_field_edit(manifest, rng) if rng.random() < 0.7
                              else random_array_edit(arrays, rng))
        kind, result = outcome(path, edit, tmp_path)
        if kind == "refused":
            if not named(result):
                findings.append((seed, where, value, "refused without naming the field", result))
        elif "/" in where.split("[")[0] and where.startswith("nodes/") and "[" in where:    # an array element
            failed = {k: v for k, v in result.items() if isinstance(v, str) and re.match(r"\w+Error: ", v)}
            if failed:
                findings.append((seed, where, value, "loaded, then failed", failed))
        elif result != original(path)[1] and not DESCRIPTIVE.match(where):
            findings.append((seed, where, value, "loaded with other consequences", result))
    assert not findings, "\n".join(map(str, findings))


def test_random_mutations_of_the_digits_model(tmp_path):
    """150 seeded mutations of one field or one array element each (~10 s)."""
    campaign(DIGITS, range(150), tmp_path)


@pytest.mark.slow
def test_random_mutations_of_both_models_at_length(tmp_path):
    campaign(DIGITS, range(150, 2000), tmp_path)
    campaign(RESNET, range(300), tmp_path)


# --------------------------------------------------------------------------- the manifest's text


def _with_manifest_text(path, text: bytes, tmp_path):
    """``path`` with its manifest replaced by ``text`` (bytes as they are), the zip written as the writer does."""
    manifest, arrays = members(path)
    out = tmp_path / "text.lcq"
    fmt.write_members(out, manifest, arrays)
    with zipfile.ZipFile(out) as z:
        entries = [(i.filename, z.read(i)) for i in z.infolist()]
    blob = fmt._npy(np.frombuffer(text, np.uint8))
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            z.writestr(name, blob if name == "manifest.json.npy" else data)
    return out


def _text(path) -> str:
    manifest, _ = members(path)
    return json.dumps(manifest, indent=1)


TEXT_CASES = {
    "a byte that is not UTF-8": (lambda t: t.encode().replace(b'"conv1"', b'"conv\xff"', 1),
                                 r"manifest\.json is not valid JSON \(.*utf-8"),
    "a UTF-8 byte order mark": (lambda t: b"\xef\xbb\xbf" + t.encode(), r"manifest\.json is not valid JSON"),
    "UTF-16": (lambda t: t.encode("utf-16"), r"manifest\.json is not valid JSON"),
    "NaN scale": (lambda t: re.sub(r'"conv2": [0-9.e-]+', '"conv2": NaN', t, count=1).encode(),
                  r"NaN is not a JSON number"),
    "Infinity scale": (lambda t: re.sub(r'"conv2": [0-9.e-]+', '"conv2": Infinity', t, count=1).encode(),
                       r"Infinity is not a JSON number"),
    "scale 1e999": (lambda t: re.sub(r'"conv2": [0-9.e-]+', '"conv2": 1e999', t, count=1).encode(),
                    r"1e999 is beyond a float"),
    "plan nested 100000 deep": (lambda t: t.replace('"plan": {', '"plan": {"x": ' + "[" * 100000 + "]" * 100000
                                                    + ", ", 1).encode(), r"manifest\.json is not valid JSON"),
    "an integer of 5000 digits": (lambda t: t.replace('"epoch": 30', '"epoch": ' + "9" * 5000, 1).encode(),
                                  r"manifest\.json is not valid JSON"),
    "a key twice": (lambda t: t.replace('"nodes": [', '"logits": "x", "nodes": [', 1).encode(),
                    r"key 'logits' appears twice"),
    "the manifest a list": (lambda t: b"[" + t.encode() + b"]", r"not an lcq-compiled-model file"),
}


@pytest.mark.parametrize("name", TEXT_CASES)
def test_manifest_text(name, tmp_path):
    """The manifest as text, edited where the writer could not write it (the digest is not what stops these)."""
    edit, pattern = TEXT_CASES[name]
    path = _with_manifest_text(DIGITS, edit(_text(DIGITS)), tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(fmt.ModelFormatError) as info:
        fmt.load(path)
    assert time.perf_counter() - t0 < 2.0
    assert str(path) in str(info.value) and re.search(pattern, str(info.value)), str(info.value)
