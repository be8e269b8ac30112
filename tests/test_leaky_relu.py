"""Leaky ReLUs and PReLUs before signed activation quantizers (Darknet's LeakyReLU(0.1), a PReLU's learned slopes).

``Q(leaky(v)) = Q+(v) - Q+(-slope * v)`` for a slope >= 0: the compiler writes the signed quantizer's two halves
(tests/test_signed_activations.py), the negative one with the gain and offset times ``-slope``, per channel for a
PReLU; the integer reference equals the PyTorch model code for code (with the slopes left out it does not). A max
pooling between (Darknet's blocks) pools the positive half by its maximum and the negative half by its minimum
(``MaxPoolNode.minimum``; a MINPOOL step on the chip, tests/test_hw_vector.py and tests/test_sim_network.py).
What it cannot run is refused with the reason: a negative slope, an average pooling of a leaky ReLU's output (the
average takes its negative values in). The trained networks, tests/data/compile_models.py's ``leaky_net`` and
``tiny_darknet``, run in tests/test_compile_graph.py.
"""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler import reference
from compiler.agreement import compare
from compiler.format import ModelFormatError, load, save, write_members
from compiler.graph import ActivateNode, MaxPoolNode
from compiler.lower import compile_model
from helpers import images, members, randomize
from lcq_train.plan import quantize_model

DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(DATA))
import compile_models as cm  # noqa: E402


def _leaky_net(seed: int, slopes=None) -> nn.Module:
    """LeakyNet quantized LCQ W3/A3 and randomized; its PReLU's slopes ``slopes`` (default: random in [0, 0.5),
    one of them 0); clip values small enough that the leaky ReLUs' negative values reach codes."""
    torch.manual_seed(seed)
    net = randomize(quantize_model(cm.leaky_net(10, 1), method="lcq", wbits=3, abits=3), seed=seed, act_alpha=0.3)
    with torch.no_grad():
        prelu = net.act2.weight
        prelu.copy_(torch.rand(len(prelu)) * 0.5 if slopes is None else torch.as_tensor(slopes, dtype=prelu.dtype))
        if slopes is None:
            prelu[1] = 0.0
    return net


@pytest.mark.parametrize("seed", [0, 1])
def test_the_integer_reference_equals_pytorch_code_for_code(seed):
    net = _leaky_net(seed)
    model = compile_model(net, (1, 8, 8))
    x = images(32, model.input.shape, seed=seed)
    result = compare(model, net, x, np.zeros(len(x), dtype=np.int64))
    assert result.disagreements == 0
    assert set(result.codes) == {"act_conv1", "act_conv2", "act_conv3", "act_fc"}
    assert all(mismatched == 0 for _, mismatched in result.codes.values())
    # the leaky ReLUs' outputs are quantized signed, and their negative halves are not all zero
    signed = {name for name, m in net.named_modules() if getattr(m, "signed", False) and name.startswith("act_")}
    assert signed == {"act_conv2", "act_conv3", "act_fc"}
    tensors = reference.run(model, x)
    assert all(tensors[f"{name}.negative"].any() for name in signed)


def test_the_negative_half_reads_the_values_times_each_channels_slope():
    """The negative half's stage is that of the values times -slope: a slope of 0 leaves that channel's half at
    code 0, and the stage of a model whose slopes are all 1 (the plain signed quantizer) differs."""
    slopes = [0.0] + [0.3] * 15
    net = _leaky_net(2, slopes)
    model = compile_model(net, (1, 8, 8))
    x = images(16, model.input.shape, seed=2)
    assert compare(model, net, x, np.zeros(len(x), dtype=np.int64)).disagreements == 0
    negative = next(n for n in model.nodes if isinstance(n, ActivateNode) and n.name == "act_conv3.negative")
    half = reference.run(model, x)["act_conv3.negative"]
    assert not half[:, 0].any() and half[:, 1:].any()
    plain = compile_model(_leaky_net(2, [1.0] * 16), (1, 8, 8))
    other = next(n for n in plain.nodes if isinstance(n, ActivateNode) and n.name == "act_conv3.negative")
    assert not np.array_equal(negative.stage.thresholds, other.stage.thresholds)


def test_a_negative_slope_is_refused_naming_the_channel():
    net = _leaky_net(0, [0.2] * 5 + [-0.05] + [0.2] * 10)
    with pytest.raises(ValueError, match=r"'act2' \(PReLU\) .*has a negative \(or not finite\) slope: channel 5's "
                                         r"slope is -0.05; .* clamp its weight to >= 0 after each optimizer step"):
        compile_model(net, (1, 8, 8))


class _LeakyPool(nn.Module):
    def __init__(self, pool):
        super().__init__()
        self.conv, self.pool, self.fc = nn.Conv2d(1, 4, 3, padding=1), pool, nn.Linear(4 * 7 * 7, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(F.leaky_relu(self.conv(x), 0.1)), 1))


def test_a_flattened_average_of_overlapping_windows_of_a_leaky_relus_output_is_refused_with_the_reason():
    net = randomize(quantize_model(_LeakyPool(nn.AvgPool2d(2, 1)), method="lcq", wbits=3, abits=3), seed=0)
    with pytest.raises(ValueError, match=r"flattens the average of 2x2 windows of an activation's \(or a max "
                                         r"pooling's\) codes \(its quantizer stands before the pooling, .*\); a linear "
                                         r"layer reads such an average where the windows tile the map .* or a ReLU "
                                         r"before the pooling"):
        compile_model(net, (1, 8, 8))


@pytest.fixture(scope="module")
def darknet():
    """TinyDarknet (conv, BN, LeakyReLU(0.1), max pooling) quantized LCQ W3/A3, randomized with small clips."""
    torch.manual_seed(5)
    net = randomize(quantize_model(cm.tiny_darknet(10, 1), method="lcq", wbits=3, abits=3), seed=5, act_alpha=0.3)
    return net, compile_model(net, (1, 8, 8))


def test_a_max_pooling_before_a_signed_quantizer_pools_the_negative_half_by_its_minimum(darknet):
    """``Q+(-max v) = min Q+(-v)``: the negative half's pooling takes each window's smallest code, and the
    integer reference equals PyTorch code for code (with the maximum there, it does not)."""
    net, model = darknet
    pools = {n.input: n for n in model.nodes if isinstance(n, MaxPoolNode)}
    for name in ("act_features_4", "act_features_8"):
        assert not pools[f"{name}.positive.unpooled"].minimum and pools[f"{name}.negative.unpooled"].minimum
    x = images(32, model.input.shape, seed=5)
    result = compare(model, net, x, np.zeros(len(x), dtype=np.int64))
    assert result.disagreements == 0 and all(mismatched == 0 for _, mismatched in result.codes.values())
    tensors = reference.run(model, x)
    assert all(tensors[f"{name}.negative"].any() for name in ("act_features_4", "act_features_8"))
    broken = copy.deepcopy(model)
    for node in broken.nodes:
        if isinstance(node, MaxPoolNode):
            node.minimum = False
    assert compare(broken, net, x, np.zeros(len(x), dtype=np.int64)).codes["act_features_4"][1] > 0


def test_the_minimum_flag_is_kept_and_written_true_or_left_out(darknet, tmp_path):
    path = tmp_path / "darknet.lcq"
    save(darknet[1], path)
    assert [getattr(n, "minimum", None) for n in load(path).nodes] == \
        [getattr(n, "minimum", None) for n in darknet[1].nodes]
    manifest, arrays = members(path)
    pools = [d for d in manifest["nodes"] if d["op"] == "maxpool"]
    assert [d.get("minimum") for d in pools] == [None, True, None, True]
    pools[1]["minimum"] = False
    write_members(tmp_path / "false.lcq", manifest, arrays)
    with pytest.raises(ModelFormatError, match="field 'minimum' = False; it is written only as true"):
        load(tmp_path / "false.lcq")
