"""Average pooling (``AvgPool2d(k, s)``, no padding) before an activation quantizer: the compiled node in
the file and its rules, and the network core running it bit-exact (the vector unit's AVGPOOL)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compiler.format import ModelFormatError, load, save, write_members
from compiler.graph import AvgPoolNode
from compiler.lower import compile_model
from lcq_train.plan import quantize_model

from helpers import members, randomize

sys.path.insert(0, str(Path(__file__).parent / "data"))
import compile_models as cm  # noqa: E402


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    torch.manual_seed(3)
    net = randomize(quantize_model(cm.AvgPoolNet(10, 1), method="lcq", wbits=3, abits=3), 8, act_alpha=0.2)
    model = compile_model(net, (1, 8, 8))
    path = tmp_path_factory.mktemp("avgpool") / "avgpool.lcq"
    save(model, path)
    return model, path


def test_avgpool_nodes_round_trip_and_their_window_is_checked(compiled, tmp_path):
    model, path = compiled
    again = load(path)
    pools = [n for n in again.nodes if isinstance(n, AvgPoolNode)]
    assert [(n.kernel, n.stride) for n in pools] == [(2, 2), (3, 1)]
    assert all(np.array_equal(a.stage.thresholds, b.stage.thresholds) for a, b in
               zip(pools, [n for n in model.nodes if isinstance(n, AvgPoolNode)]))
    manifest, arrays = members(path)
    node = next(d for d in manifest["nodes"] if d["op"] == "avgpool" and d["kernel"] == 3)
    bad = tmp_path / "bad.lcq"
    node["kernel"] = 5                       # larger than its 4 x 4 input
    write_members(bad, manifest, arrays)
    with pytest.raises(ModelFormatError, match=r"\(avgpool 'act_conv3'\): field 'kernel' = 5 exceeds the 4x4 input"):
        load(bad)
    node["kernel"] = 0
    write_members(bad, manifest, arrays)
    with pytest.raises(ModelFormatError, match=r"field 'kernel' = 0.*1\.\."):
        load(bad)
    del node["stride"]
    node["kernel"] = 3
    write_members(bad, manifest, arrays)
    with pytest.raises(ModelFormatError, match=r"field 'stride' is missing"):
        load(bad)


@pytest.mark.sim
def test_avgpool_runs_bit_exact_on_the_network_core(compiled, tmp_path):
    from hw.vector_params import AVGPOOL
    from test_sim_network import run_exact

    model, path = compiled
    params, report = run_exact(load(path), path, 2, 2, tmp_path, seed=7)
    assert AVGPOOL in params.vector.ops
    assert [s.kind for s in report.steps if "pool" in s.kind] == ["avgpool", "avgpool", "pool"]
