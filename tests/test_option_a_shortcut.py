"""He et al.'s option-A shortcut as akamaster/pytorch_resnet_cifar10 writes it, ``F.pad(x[:, :, ::2, ::2], (0, 0,
0, 0, p, p))``: a subsample node and the addition's ``b_offset``, code for code with PyTorch, kept in the file
(written only where not 0), and deciding codes (a model with the offset dropped differs)."""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compiler.agreement import compare
from compiler.format import ModelFormatError, load, save, write_members
from compiler.graph import AddNode, ModelRuleError
from compiler.lower import compile_model
from helpers import images, members, randomize
from lcq_train.plan import quantize_model

sys.path.insert(0, str(Path(__file__).parent / "data"))
import tutorial_models as tm  # noqa: E402

SHAPE = (3, 8, 8)


@pytest.fixture(scope="module")
def resnet8():
    """akamaster's blocks, one a stage (random parameters), and the model compiled from them."""
    torch.manual_seed(2)
    net = randomize(quantize_model(tm.resnet8(), method="lcq", wbits=3, abits=3), seed=2)
    return net, compile_model(net, SHAPE)


def _mismatches(model, net, x) -> int:
    result = compare(model, net, x, np.zeros(len(x), dtype=np.int64))
    return result.disagreements + sum(m for _, m in result.codes.values())


def test_the_shortcut_is_a_subsampling_and_the_additions_offset(resnet8):
    net, model = resnet8
    assert [(n.name, n.stride) for n in model.nodes if n.op == "subsample"] == [
        ("layer2.0.shortcut.subsample", 2), ("layer3.0.shortcut.subsample", 2)]
    adds = [n for n in model.nodes if isinstance(n, AddNode)]
    assert [(n.name, n.b_offset, n.relu) for n in adds] == [
        ("layer1.0.add", 0, True), ("layer2.0.add", 8, True), ("layer3.0.add", 16, False)]   # (the last ReLU: pooled)
    assert adds[1].inputs[1] == "layer2.0.shortcut.subsampled"
    info = model.validate()
    assert info["layer2.0.shortcut.subsampled"].shape == (16, 4, 4) and info["layer2.0.out"].shape == (32, 4, 4)
    x = images(12, SHAPE, seed=4)
    assert _mismatches(model, net, x) == 0
    shifted = copy.deepcopy(model)
    next(n for n in shifted.nodes if getattr(n, "name", "") == "layer2.0.add").b_offset = 0
    assert _mismatches(shifted, net, x) > 0


def test_the_offset_is_kept_in_the_file_and_written_only_where_not_0(resnet8, tmp_path):
    path = tmp_path / "resnet8.lcq"
    save(resnet8[1], path)
    assert [getattr(n, "b_offset", None) for n in load(path).nodes] == \
        [getattr(n, "b_offset", None) for n in resnet8[1].nodes]
    manifest, arrays = members(path)
    adds = [d for d in manifest["nodes"] if d["op"] == "add"]
    assert [d.get("b_offset") for d in adds] == [None, 8, 16]
    for value, says in ((0, "field 'b_offset' = 0; it is written only where not 0"),
                        (17, r"operand shapes \[32, 4, 4\] and \[16, 4, 4\] differ \(b from channel b_offset = 17\)"),
                        ("8", "b_offset")):
        adds[1]["b_offset"] = value
        write_members(tmp_path / "broken.lcq", manifest, arrays)
        with pytest.raises(ModelFormatError, match=says):
            load(tmp_path / "broken.lcq")


def test_an_offset_past_the_sum_breaks_the_models_rule(resnet8):
    model = copy.deepcopy(resnet8[1])
    next(n for n in model.nodes if getattr(n, "name", "") == "layer3.0.add").b_offset = 40
    with pytest.raises(ModelRuleError, match="b adds to channels of a, of the same H x W"):
        model.validate()
