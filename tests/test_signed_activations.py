"""Signed activations (MobileNetV2's linear bottlenecks): a signed quantizer runs as its two unsigned halves.

``Q(x) = Q+(x) - Q+(-x)``: the compiler writes two activate nodes and joins their codes, and the layer that
reads them weighs the negative half with its weights negated (``ConvNode.signed_input``); the integer
reference equals the PyTorch model code for code, the model file refuses a layer whose halves' weights are not
each other's negation (and, in tests/test_compile_graph.py, one whose bits are not the plan's), and the network
core runs it bit-exact (tests/test_sim_network.py, and trained in tests/test_compile_graph.py).
"""

import copy
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compiler.agreement import compare
from compiler.format import ModelFormatError, load, save, write_members
from compiler.graph import ActivateNode, ConcatNode
from compiler.lower import compile_model
from helpers import images, members, randomize
from lcq_train.plan import quantize_model

DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(DATA))
import compile_models as cm  # noqa: E402


def _mobilenet_v2(seed=3, abits=3):
    torch.manual_seed(seed)
    net = randomize(quantize_model(cm.mobilenet_v2(10, 1), method="lcq", wbits=3, abits=abits), seed=seed)
    return net, compile_model(net, (1, 8, 8))


@pytest.fixture(scope="module")
def mobilenet_v2():
    return _mobilenet_v2()


def test_a_signed_quantizer_is_its_two_halves_joined(mobilenet_v2):
    net, model = mobilenet_v2
    signed = [name for name, m in net.named_modules() if getattr(m, "signed", False) and name.startswith("act_")]
    assert signed == ["act_features_4_conv_0", "act_features_5_conv_0", "act_features_6"]
    nodes = {getattr(n, "name", n.output): n for n in model.nodes}
    for name in signed:
        join = next(n for n in model.nodes if isinstance(n, ConcatNode) and n.output == name)
        positive, negative = (nodes[part] for part in join.inputs)
        assert isinstance(positive, ActivateNode) and isinstance(negative, ActivateNode)
        assert positive.input == negative.input and join.inputs == (f"{name}.positive", f"{name}.negative")
        layer = next(n for n in model.convs if n.input == name)
        c = layer.in_shape[0] // 2
        assert layer.signed_input and (layer.abits, layer.outer_abits) == (2, 7) and len(layer.a_levels) == 4
        assert np.array_equal(layer.weight_codes[:, c:], -layer.weight_codes[:, :c])
    assert sum(n.signed_input for n in model.convs) == 3


def test_the_integer_reference_equals_pytorch_code_for_code(mobilenet_v2):
    """Every activation quantizer's codes, the signed ones as their halves' difference, on random images
    (randomized BN: negative and zero scales, so descending thresholds in both halves)."""
    net, model = mobilenet_v2
    x = images(24, model.input.shape, seed=5)
    result = compare(model, net, x, np.zeros(len(x), dtype=np.int64))
    assert result.disagreements == 0
    assert result.codes and all(mismatched == 0 for _, mismatched in result.codes.values())
    assert {"act_features_4_conv_0", "act_features_6"} <= set(result.codes)


def test_the_model_file_keeps_the_flag_and_checks_the_halves(mobilenet_v2, tmp_path):
    model = copy.deepcopy(mobilenet_v2[1])
    path = tmp_path / "v2.lcq"
    save(model, path)
    assert [n.signed_input for n in load(path).convs] == [n.signed_input for n in model.convs]
    layer = next(n for n in model.convs if n.signed_input)
    c = layer.in_shape[0] // 2
    k = np.argwhere(layer.weight_codes[:, :c] != 0)[0]
    layer.weight_codes[k[0], c + k[1], k[2], k[3]] *= -1          # the negative half no longer the negation
    w = int(layer.weight_codes[k[0], k[1], k[2], k[3]])
    where = f"[{k[0]}, {c + k[1]}, {k[2]}, {k[3]}] = {w}, not {-w}"
    with pytest.raises(ValueError, match=rf"field 'weight_codes' {re.escape(where)}: a layer reading a signed "
                                         r"activation weighs its negative half"):
        save(model, tmp_path / "bad.lcq")


def test_the_flag_is_written_true_or_left_out(mobilenet_v2, tmp_path):
    path = tmp_path / "v2.lcq"
    save(mobilenet_v2[1], path)
    manifest, arrays = members(path)
    flagged = [d for d in manifest["nodes"] if "signed_input" in d]
    assert len(flagged) == 3 and all(d["signed_input"] is True for d in flagged)
    flagged[0]["signed_input"] = False
    write_members(tmp_path / "false.lcq", manifest, arrays)
    with pytest.raises(ModelFormatError, match="field 'signed_input' = False; it is written only as true"):
        load(tmp_path / "false.lcq")


def test_a_signed_2_bit_activation_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"is a signed 2-bit activation quantizer .* give the layers it feeds 3 bits "
                                         r"or more \(--layer-bits NAME=W/3\)"):
        _mobilenet_v2(abits=2)


def test_macs_count_both_halves(mobilenet_v2):
    _, model = mobilenet_v2
    layer = next(n for n in model.convs if n.signed_input)
    c, h, w = layer.out_shape
    assert layer.macs == c * h * w * layer.in_shape[0] * layer.kernel ** 2
