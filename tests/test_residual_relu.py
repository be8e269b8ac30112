"""ReLUs on a residual stream (post-activation blocks): the compiled model's flags in the file, and the
network core running all three forms bit-exact: a conv's requantize stage with a ReLU, an addition
with a ReLU fused into a conv's write-back, and one on the vector unit (ADD_RELU)."""


import pytest
import torch
from torch import nn

from compiler.format import ModelFormatError, load, save, write_members
from compiler.lower import compile_model
from lcq_train.plan import quantize_model

from helpers import members, randomize


class SumsOfSums(nn.Module):
    """A stem whose ReLU feeds additions; ``s1 = a(x) + x`` (x is read on, so the vector unit adds);
    ``s2 = relu(b(x) + x)`` (fused into conv b, with its ReLU); ``y = relu(s1 + s2)`` (two sums: the
    vector unit, with a ReLU); ``z = c(y) + y``; global pooling of ``relu(z)``, a linear classifier."""

    def __init__(self, width=4):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.a, self.b, self.c = (nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(3))
        self.bn_a, self.bn_b, self.bn_c = (nn.BatchNorm2d(width) for _ in range(3))
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        s1 = self.bn_a(self.a(x)) + x
        s2 = torch.relu(self.bn_b(self.b(x)) + x)
        y = torch.relu(s1 + s2)
        z = self.bn_c(self.c(y)) + y
        return self.fc(torch.relu(z).mean((2, 3)))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    torch.manual_seed(0)
    net = randomize(quantize_model(SumsOfSums(), method="lcq", wbits=3, abits=3), 6)
    model = compile_model(net, (1, 8, 8))
    path = tmp_path_factory.mktemp("relu") / "sums.lcq"
    save(model, path)
    return model, path


def test_the_relus_go_into_the_stem_stage_and_the_additions(compiled):
    model, _ = compiled
    assert [(n.name, n.relu) for n in model.nodes if n.op == "add"] == [
        ("add", False), ("add_1", True), ("add_2", True), ("add_3", False)]
    assert [c.name for c in model.convs if c.stage.kind == "requantize" and c.stage.relu] == ["stem"]


def test_relu_flags_are_written_only_where_set_and_read_back(compiled, tmp_path):
    model, path = compiled
    again = load(path)
    assert [n.relu for n in again.nodes if n.op == "add"] == [n.relu for n in model.nodes if n.op == "add"]
    assert again.convs[0].stage.relu and not again.convs[-1].stage.relu
    manifest, arrays = members(path)
    adds = [d for d in manifest["nodes"] if d["op"] == "add"]
    assert [d.get("relu") for d in adds] == [None, True, True, None]
    assert manifest["nodes"][1]["stage"]["relu"] is True
    assert "relu" not in manifest["nodes"][-1]["stage"]
    adds[0]["relu"] = False
    bad = tmp_path / "false.lcq"
    write_members(bad, manifest, arrays)
    with pytest.raises(ModelFormatError, match=r"node 4 \(add 'add'\): field 'relu' = False; it is written only "
                                               "as true"):
        load(bad)
    adds[0]["relu"] = 1
    write_members(bad, manifest, arrays)
    with pytest.raises(ModelFormatError, match=r"field 'relu' = 1"):
        load(bad)


@pytest.mark.sim
def test_all_three_relu_forms_run_bit_exact_on_the_network_core(compiled, tmp_path):
    from hw.network_params import network_plan
    from hw.vector_params import ADD_RELU
    from test_sim_network import run_exact

    model, path = compiled
    params, _ = run_exact(load(path), path, 2, 2, tmp_path, seed=3)
    steps = network_plan(model, params).steps
    assert [(s.name, s.fused_add) for s in steps if s.kind == "conv" and s.fused_add] == [("b", "add_1"),
                                                                                         ("c", "add_3")]
    assert [s.name for s in steps if s.kind == "add"] == ["add", "add_2"]
    assert params.vector.ops.count(ADD_RELU) == 1
