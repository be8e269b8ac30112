"""ReLU6 (or ``hardtanh(0, max)``) right before a pooling: the pool node's clip (MobileNetV2's head).

The pooling unit averages ``u = min(max(0, u), cap)`` per channel (:class:`compiler.graph.PoolNode` ``cap``,
:func:`compiler.stages.pool_constants`): the integer reference equals PyTorch code for code where the clip
decides codes (without it they differ), the model file keeps the clip and checks it, a unit without clips is
laid out as before, and the network core runs it bit-exact.
"""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from compiler.agreement import compare
from compiler.format import ModelFormatError, load, save, write_members
from compiler.graph import PoolNode
from compiler.lower import compile_model
from helpers import images, members, randomize
from hw.network_params import NetworkParams
from lcq_train.plan import quantize_model

DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(DATA))
import compile_models as cm  # noqa: E402


def clipping_mobilenet_v2(seed: int) -> nn.Module:
    """The MobileNetV2 of compile_models (ReLU6 before its global average pooling), random, its head's BN scaled so
    that the ReLU6 clips often, and the classifier's quantizer clipping at 6, where the clip decides codes."""
    torch.manual_seed(seed)
    net = randomize(quantize_model(cm.mobilenet_v2(10, 1), method="lcq", wbits=3, abits=3), seed=seed)
    head = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)][-1]
    with torch.no_grad():
        head.weight.mul_(4.0)
        head.bias.add_(2.0)
        net.act_fc.alpha.fill_(6.0)
    return net


class AvgPoolReLU6(nn.Module):
    """conv -> BN -> ReLU6 -> 2 x 2 average pooling -> conv -> global pooling -> linear."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = nn.functional.avg_pool2d(nn.functional.relu6(self.bn1(self.conv1(x))), 2)
        return self.fc(nn.functional.relu(self.bn2(self.conv2(x))).mean((2, 3)))


@pytest.mark.parametrize("seed", [1, 2])
def test_the_clip_decides_codes_and_the_reference_follows_pytorch(seed):
    net = clipping_mobilenet_v2(seed)
    model = compile_model(net, (1, 8, 8))
    pool = next(n for n in model.nodes if isinstance(n, PoolNode))
    assert pool.cap is not None and (pool.cap[pool.relu] >= 0).all()
    x = images(64, (1, 8, 8), seed=seed)
    result = compare(model, net, x, np.zeros(len(x), dtype=np.int64))
    assert result.disagreements == 0 and all(m == 0 for _, m in result.codes.values())
    unclipped = copy.deepcopy(model)
    next(n for n in unclipped.nodes if isinstance(n, PoolNode)).cap = None
    assert compare(unclipped, net, x, np.zeros(len(x), dtype=np.int64)).codes["act_fc"][1] > 0


def test_average_pooling_of_a_relu6():
    torch.manual_seed(4)
    net = randomize(quantize_model(AvgPoolReLU6(), method="lcq", wbits=3, abits=3), seed=4, act_alpha=6.0)
    with torch.no_grad():
        net.bn1.weight.mul_(4.0)
    model = compile_model(net, (1, 8, 8))
    assert next(n for n in model.nodes if n.op == "avgpool").cap is not None
    x = images(64, (1, 8, 8), seed=4)
    result = compare(model, net, x, np.zeros(len(x), dtype=np.int64))
    assert result.disagreements == 0 and all(m == 0 for _, m in result.codes.values())


def test_the_file_keeps_the_clip_and_checks_it(tmp_path):
    model = compile_model(clipping_mobilenet_v2(1), (1, 8, 8))
    save(model, tmp_path / "clip.lcq")
    pool = next(n for n in load(tmp_path / "clip.lcq").nodes if isinstance(n, PoolNode))
    assert np.array_equal(pool.cap, next(n for n in model.nodes if isinstance(n, PoolNode)).cap)
    assert next(n for n in load(DATA / "digits-cnn-lcq-w3a3.lcq").nodes if isinstance(n, PoolNode)).cap is None
    bad = next(n for n in model.nodes if isinstance(n, PoolNode))
    n = int(np.flatnonzero(bad.relu & (bad.sign != 0))[0])
    bad.cap[n] = -1
    with pytest.raises(ValueError, match=rf"field 'cap' \[{n}\] = -1: must not be negative where relu is True"):
        save(model, tmp_path / "bad.lcq")
    bad.cap[n] = 0
    zero = int(np.flatnonzero(bad.sign == 0)[0])
    bad.cap[zero] = 5
    with pytest.raises(ValueError, match=rf"field 'cap' \[{zero}\] = 5: must be 0 where sign is 0"):
        save(model, tmp_path / "bad.lcq")


def test_a_damaged_clip_in_the_file_is_refused_naming_it(tmp_path):
    save(compile_model(clipping_mobilenet_v2(1), (1, 8, 8)), tmp_path / "clip.lcq")
    manifest, arrays = members(tmp_path / "clip.lcq")
    i = next(k for k, d in enumerate(manifest["nodes"]) if "cap" in d)
    short = copy.deepcopy(arrays)
    short[f"nodes/{i}/cap"] = short[f"nodes/{i}/cap"][:-1]
    write_members(tmp_path / "short.lcq", manifest, short)
    with pytest.raises(ModelFormatError, match=rf"nodes/{i}/cap"):
        load(tmp_path / "short.lcq")
    manifest["nodes"][i]["cap"] = 7
    write_members(tmp_path / "field.lcq", manifest, arrays)
    with pytest.raises(ModelFormatError, match=rf"node {i} \(pool 'act_fc'\): field 'cap' must be a reference"):
        load(tmp_path / "field.lcq")


def test_a_unit_without_clips_is_laid_out_as_before():
    resnet20 = load(DATA / "cifar10-resnet20-lcq-w3a3.lcq")
    vector = NetworkParams.for_model(resnet20, 8, 16, multiply_cols=4).vector
    assert vector.pool_cap_bits == 0 and vector.pool_base_shift == 3 + vector.pool_offset_bits
    clipped = NetworkParams.for_model(compile_model(clipping_mobilenet_v2(1), (1, 8, 8)), 4, 4).vector
    assert clipped.pool_cap_bits > 0 and clipped.pool_base_shift == clipped.pool_cap_shift + clipped.pool_cap_bits


@pytest.mark.sim
def test_the_network_core_clips_bit_exact(tmp_path):
    """The clip decides codes (without it in the core, the logits differ): every tensor exact on a 4 x 4 core."""
    from test_sim_network import run_exact

    path = tmp_path / "clip.lcq"
    save(compile_model(clipping_mobilenet_v2(2), (1, 8, 8)), path)
    run_exact(load(path), path, 4, 4, tmp_path / "run", seed=2, dense=False)     # (its depthwise convs)
