"""Grouped and depthwise convs on the network core: each channel tile runs only the row groups that hold
its nonzero weights (``hw.engine_params.group_span``), bit-exact and in fewer cycles than the dense conv."""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compiler.format import load, save
from compiler.lower import compile_model
from hw.bands import band_rows, network_layer_cycles
from hw.engine_params import group_span
from lcq_train.plan import quantize_model

from helpers import randomize

sys.path.insert(0, str(Path(__file__).parent / "data"))
import compile_models as cm  # noqa: E402


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    torch.manual_seed(2)
    net = randomize(quantize_model(cm.MobileNet(10, 1), method="lcq", wbits=3, abits=3), 5, act_alpha=4.0)
    path = tmp_path_factory.mktemp("groups") / "mobilenet.lcq"
    save(compile_model(net, (1, 8, 8)), path)
    return load(path), path


def _with_codes(node, codes):
    return dataclasses.replace(node, weight_codes=np.asarray(codes, dtype=np.int8))


def test_group_span_of_dense_depthwise_grouped_and_empty_tiles(mobilenet):
    model, _ = mobilenet
    convs = {c.name: c for c in model.convs}
    depthwise, pointwise, grouped = convs["features.3"], convs["features.6"], convs["features.15"]
    assert group_span(depthwise, 4, 4) == (1, 1)            # 8 channels: tile t reads row group t
    assert group_span(depthwise, 2, 4) == (2, 2)            # a tile of 4 channels spans two groups of 2 rows
    assert group_span(depthwise, 8, 8) == (0, 1)            # one tile, one group: nothing to skip
    assert group_span(pointwise, 4, 4) == (0, 2)            # dense
    assert group_span(grouped, 4, 4) == (0, 4)              # 2 groups of 8: tiles 0-1 read groups 0-1, 2-3 read 2-3
    assert group_span(grouped, 8, 8) == (1, 1)
    codes = depthwise.weight_codes.copy()
    codes[4:8] = 0                                          # the second tile has no weight at all
    assert group_span(_with_codes(depthwise, codes), 4, 4) == (0, 1)
    codes = depthwise.weight_codes.copy()
    codes[0, 7] = 1                                         # tile 0 reads group 1 too
    assert group_span(_with_codes(depthwise, codes), 4, 4) == (0, 2)


@pytest.mark.sim
def test_depthwise_convs_skip_the_other_groups_bit_exact_on_the_network_core(mobilenet, tmp_path):
    from hw.engine import LayerEngine
    from test_sim_network import run_exact

    model, path = mobilenet
    params, report = run_exact(model, path, 4, 4, tmp_path, seed=3)
    engine = params.engine
    assert engine.skip_groups
    dense = dataclasses.replace(engine, skip_groups=False)
    overheads, saved = set(), {}
    for s in report.steps:
        if s.kind != "conv":
            continue
        node = model.nodes[s.index]
        latency = LayerEngine.stage_latency(None) + (LayerEngine.FUSED_LATENCY if s.activated else 0)
        cycles = s.cycles // len(report.images)
        overheads.add(cycles - network_layer_cycles(engine, node, band_rows(engine, node), latency))
        saved[node.name] = network_layer_cycles(dense, node, band_rows(dense, node), latency) - \
            network_layer_cycles(engine, node, band_rows(engine, node), latency)
    assert len(overheads) == 1, overheads                   # the engine's cycle model, plus the sequencer's words
    assert {name for name, n in saved.items() if n > 0} == {"features.3", "features.9"}     # the depthwise convs
    assert all(n == 0 for name, n in saved.items() if name not in ("features.3", "features.9"))
