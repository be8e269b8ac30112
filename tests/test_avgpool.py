"""Average pooling (``AvgPool2d(k, s, p)``, zero padding counted in the divisor) before an activation quantizer:
the compiled node in the file and its rules, and the network core running it bit-exact (the vector unit's AVGPOOL)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler.format import ModelFormatError, load, save, write_members
from compiler.graph import AvgPoolNode
from compiler.lower import compile_model
from lcq_train.plan import quantize_model

from helpers import members, randomize

sys.path.insert(0, str(Path(__file__).parent / "data"))
import compile_models as cm  # noqa: E402


def _compiled(tmp_path_factory, net_class, seed: int, parameter_seed: int):
    """(net, compiled model, its file) of a tests/data/compile_models.py network, LCQ W3/A3 with random
    parameters (from ``parameter_seed``; torch seeded with ``seed``), on 8 x 8 digits."""
    torch.manual_seed(seed)
    net = randomize(quantize_model(net_class(10, 1), method="lcq", wbits=3, abits=3), parameter_seed, act_alpha=0.2)
    model = compile_model(net, (1, 8, 8))
    path = tmp_path_factory.mktemp(net_class.__name__) / "model.lcq"
    save(model, path)
    return net, model, path


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return _compiled(tmp_path_factory, cm.AvgPoolNet, 3, 8)[1:]


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


# ---------------------------------------------------------------- padded windows (count_include_pad=True)


def _pooled_codes(gain, offset, t, x, kernel, stride, padding, cap=np.inf, relu=True):
    """The codes PyTorch's float arithmetic gives: ``min(max(0, gain * x + offset), cap)`` (no ReLU: as it is) per
    channel, averaged over each window of the map padded with zeros (divided by kernel^2), through thresholds
    ``t``; and the distance of each mean from the nearest threshold."""
    y = gain[None, :, None, None] * x + offset[None, :, None, None]
    y = np.minimum(np.maximum(y, 0), cap) if relu else y
    y = np.pad(y, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    from numpy.lib.stride_tricks import sliding_window_view
    mean = sliding_window_view(y, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride].mean(axis=(4, 5))
    return (mean[..., None] >= t).sum(-1), np.abs(mean[..., None] - t).min(-1)


@pytest.mark.parametrize("relu, cap", [(True, np.inf), (True, 1.5), (False, np.inf)])
def test_padded_pooling_constants_give_the_float_codes_for_every_kind_of_channel(relu, cap):
    """Each kind of channel of :func:`compiler.stages.pool_constants` with ``padded``: the kink within the input's
    range (its term outside the map 0), the ReLU always active (the term of a zero; both signs of the gain), a
    constant output (gain 0; at the clip throughout) and a kink so far out that the term would exceed its limit
    (taken as the constant at 0), and the ReLU never active: the reference's codes of an AvgPoolNode from them are
    the float codes wherever a mean is not within rounding of a threshold."""
    from compiler.graph import PAD_HEADROOM_BITS
    from compiler.stages import pool_constants

    bound, frac, k, s, p = 40, 8, 3, 2, 1
    gain = np.array([0.05, 0.03, -0.04, 0.0, 0.02, 1e-9, 0.04, -0.03])
    offset = np.array([0.3, 2.5, 2.2, 0.7, 4.0, 0.9, -3.0, 0.1])
    kinds = ["kink", "always", "always", "constant", "clipped", "far", "never", "kink"]
    if not relu:
        offset[6] = -1.0                                      # (no never-active channel without a ReLU)
    t = np.array([0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75])
    sign, relus, off, stage, caps, outside = pool_constants(gain, offset, t, k * k, frac, bound, 3, cap, relu,
                                                            padded=True)
    node = AvgPoolNode("pool", "x", "pool", sign.astype(np.int64), relus, off, frac, stage, cap=caps, kernel=k,
                       stride=s, padding=p, outside=outside)
    node.check_fields("pool")
    node.check_arrays("pool", (8, 7, 7), bound)
    assert outside[1] < 0 and outside[2] < 0                  # a zero's u: -offset * 2^F / |gain|
    assert (outside[0] == outside[7] == 0) == relu            # (without a ReLU every channel is of that kind)
    assert abs(outside[1]) > bound << frac and abs(outside[5]) <= bound << (frac + PAD_HEADROOM_BITS)
    constant = [3, 5] + ([4] if cap < np.inf else [])       # (a constant K > 0: -P outside the map)
    assert not sign[constant].any() and (outside[constant] == -(bound << frac)).all()
    x = np.random.default_rng(1).integers(-bound, bound + 1, (20, 8, 7, 7))
    got = stage.apply(node.sums(x))
    want, margin = _pooled_codes(gain, offset, t, x, k, s, p, cap, relu)
    exact = margin > 0.02 if relu else margin > 0.02 + np.abs(gain * 2.0**-frac)[None, :, None, None] * 2
    exact[:, 5] = margin[:, 5] > 1e-3                         # (the far channel: its gain * x left out)
    assert exact.mean() > 0.7 and np.array_equal(got[exact], want[exact])
    for n, kind in enumerate(kinds):                            # every kind seen with codes that vary by window
        if kind in ("always", "constant", "clipped", "far") and (relu or kind != "clipped"):
            assert len(np.unique(got[:, n])) > 1, kind


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    return _compiled(tmp_path_factory, cm.PaddedAvgPool, 4, 6)


def test_padded_average_pooling_compiles_exactly_and_round_trips(padded, tmp_path):
    """InceptionV3's pool branch (3 x 3 at stride 1, padding 1) and a strided padded pooling of a join: every code
    PyTorch's on random images; the file keeps the padding and the terms outside the map, and checks them."""
    from compiler.agreement import compare
    from helpers import images

    net, model, path = padded
    pools = [n for n in model.nodes if isinstance(n, AvgPoolNode)]
    assert [(n.kernel, n.stride, n.padding) for n in pools] == [(3, 1, 1), (3, 2, 1), (3, 2, 1)]
    x = images(40, (1, 8, 8), seed=9)
    result = compare(model, net, x, np.zeros(len(x), dtype=np.int64))
    assert result.disagreements == 0 and all(m == 0 for _, m in result.codes.values())
    again = load(path)
    for a, b in zip(pools, [n for n in again.nodes if isinstance(n, AvgPoolNode)]):
        assert (a.padding, a.outside.tolist()) == (b.padding, b.outside.tolist())
    manifest, arrays = members(path)
    node = next(d for d in manifest["nodes"] if d["op"] == "avgpool")
    bad = tmp_path / "bad.lcq"
    for change, pattern in ((dict(padding=2), r"field 'padding' = 2.*0\.\.1"),
                            (dict(padding=0), r"field 'padding' = 0; it is written only where not 0"),
                            (dict(padding=None), r"field 'outside' must be absent where padding is 0")):
        edited = {**node, **change}
        if change["padding"] is None:
            del edited["padding"]
        manifest["nodes"][manifest["nodes"].index(node)] = edited
        write_members(bad, manifest, arrays)
        with pytest.raises(ModelFormatError, match=pattern):
            load(bad)
        manifest["nodes"][manifest["nodes"].index(edited)] = node
    key = node["outside"]["array"]
    too_far = arrays[key].copy()
    too_far[0] = np.iinfo(np.int64).max
    write_members(bad, manifest, {**arrays, key: too_far})
    with pytest.raises(ModelFormatError, match=r"field 'outside' \[0\] = 9223372036854775807 is out of range"):
        load(bad)


@pytest.mark.sim
def test_padded_avgpool_runs_bit_exact_on_the_network_core(padded, tmp_path):
    from hw.vector_params import AVGPOOL
    from test_sim_network import run_exact

    _, model, path = padded
    params, report = run_exact(load(path), path, 2, 2, tmp_path, seed=3)
    assert AVGPOOL in params.vector.ops and params.vector.pool_outside_bits > 0
    assert [s.kind for s in report.steps if "pool" in s.kind] == ["avgpool"] * 3 + ["pool"]


class _AfterPaddedPooling(nn.Module):
    """A padded average pooling of a conv's output as it is, then a BN or a constant factor, a ReLU and the
    quantizer of a conv."""

    def __init__(self, after: str):
        super().__init__()
        self.after = after
        self.conv, self.bn = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.fc = nn.Conv2d(6, 6, 3, padding=1), nn.Linear(6, 10)

    def forward(self, x):
        x = F.avg_pool2d(self.conv(x), 3, 2, 1)
        x = self.conv2(F.relu(self.bn(x) if self.after == "bn" else x * 1.5))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(x), 1), 1))


def test_a_bn_after_a_padded_pooling_is_refused_and_a_factor_folds():
    """A BN's shift after a padded pooling would reach the zeros outside the map, which its fold into what the
    pooling averages cannot give: refused with the fix; a constant factor (no shift) folds and is exact."""
    from compiler.agreement import compare
    from compiler.capture import Unsupported
    from helpers import images

    torch.manual_seed(2)
    net = randomize(quantize_model(_AfterPaddedPooling("bn"), method="lcq", wbits=3, abits=3), 5, act_alpha=0.5)
    with pytest.raises(Unsupported, match=r"shifts an average pooling with padding.*put the BN before the pooling"):
        compile_model(net, (1, 8, 8))
    net = randomize(quantize_model(_AfterPaddedPooling("factor"), method="lcq", wbits=3, abits=3), 5, act_alpha=0.5)
    model = compile_model(net, (1, 8, 8))
    assert [(n.padding, n.relu.all()) for n in model.nodes if isinstance(n, AvgPoolNode)] == [(1, False)]
    x = images(30, (1, 8, 8), seed=4)
    result = compare(model, net, x, np.zeros(len(x), dtype=np.int64))
    assert result.disagreements == 0 and all(m == 0 for _, m in result.codes.values())


class _CodesAveraged(nn.Module):
    """Average poolings of codes, each read by a 1 x 1 conv: of a SiLU's output (2 x 2 at stride 2), and of a join
    with a max-pooled part (3 x 3 at stride 1, padded: InceptionV3's pool branch after a reduction block)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 1)
        self.branch = nn.Conv2d(6, 4, 3, stride=2, padding=1)
        self.pool_conv = nn.Conv2d(10, 4, 1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        y = F.relu(self.conv2(F.avg_pool2d(F.silu(self.bn1(self.conv1(x))), 2)))           # 8x8 -> 4x4
        joined = torch.cat([F.relu(self.branch(y)), F.max_pool2d(y, 3, 2, 1)], 1)            # 4x4 -> 2x2
        y = F.relu(self.pool_conv(F.avg_pool2d(joined, 3, 1, 1)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def test_a_global_average_of_max_pooled_codes_is_read_by_the_classifier():
    """Max pooling, then global average pooling, then the classifier (refused before: the compiler max pools
    codes): the classifier's quantizer stands before the average, and it runs as the 4 x 4 conv over the codes."""
    from compiler.agreement import compare
    from helpers import images

    torch.manual_seed(1)
    net = randomize(quantize_model(cm.WithMaxPool(10, 1), method="lcq", wbits=3, abits=3), 3, act_alpha=0.5)
    model = compile_model(net, (1, 8, 8))
    assert [(n.name, n.kernel) for n in model.convs][-1] == ("fc", 4)
    x = images(30, (1, 8, 8), seed=5)
    result = compare(model, net, x, np.zeros(len(x), dtype=np.int64))
    assert result.disagreements == 0 and all(m == 0 for _, m in result.codes.values())


def test_an_average_of_codes_runs_as_the_conv_that_reads_it():
    """Where the pooled tensor's codes are all there is (an activation no pooling unit applies, a max pooling,
    which pools codes), lcq_train's plan quantizes before the average pooling and the 1 x 1 conv reading it runs
    as one k x k conv over the codes at the pooling's stride and padding, each tap its weights: every code
    PyTorch's, and no pooling step."""
    from compiler.agreement import compare
    from helpers import images

    torch.manual_seed(6)
    net = randomize(quantize_model(_CodesAveraged(), method="lcq", wbits=3, abits=3), 7, act_alpha=0.5)
    pooled = [n for n in net.graph.nodes if n.target is F.avg_pool2d]
    assert [net.get_submodule(n.args[0].target).__class__.__name__ for n in pooled] == ["QAct", "QAct"]
    model = compile_model(net, (1, 8, 8))
    assert not any(isinstance(n, AvgPoolNode) for n in model.nodes)
    convs = {n.name: (n.kernel, n.stride, n.padding, n.out_shape) for n in model.convs}
    assert convs["conv2"] == (2, 2, 0, (6, 4, 4)) and convs["pool_conv"] == (3, 1, 1, (4, 2, 2))
    x = images(30, (1, 8, 8), seed=2)
    result = compare(model, net, x, np.zeros(len(x), dtype=np.int64))
    assert result.disagreements == 0 and all(m == 0 for _, m in result.codes.values())


class _TiledReaders(nn.Module):
    """Averages of codes in windows that tile the map, read by a padded 3 x 3 conv and by a linear layer on the
    flattened map."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 2 * 2, 10)

    def forward(self, x):
        x = self.conv2(F.avg_pool2d(F.silu(self.conv1(x)), 2))                  # 8x8 -> 4x4
        return self.fc(torch.flatten(F.avg_pool2d(torch.tanh(x), 2), 1))        # 4x4 -> 2x2


def test_averages_of_codes_in_tiling_windows_spread_each_tap_of_the_layer_reading_them():
    """A layer reading codes averaged in windows that tile the map takes its geometry on the pooled map, each tap
    spread over its window: the padded 3 x 3 conv as a 6 x 6 one at stride 2, padding 2; the linear layer on the
    flattened 6 x 2 x 2 map as the 4 x 4 conv over the codes (its one position at stride 2). Every code PyTorch's."""
    from compiler.agreement import compare
    from helpers import images

    torch.manual_seed(8)
    net = randomize(quantize_model(_TiledReaders(), method="lcq", wbits=3, abits=3), 9, act_alpha=0.5)
    model = compile_model(net, (1, 8, 8))
    assert [(n.name, n.kernel, n.stride, n.padding, n.out_shape) for n in model.convs] == [
        ("conv1", 3, 1, 1, (6, 8, 8)), ("conv2", 6, 2, 2, (6, 4, 4)), ("fc", 4, 2, 0, (10, 1, 1))]
    x = images(30, (1, 8, 8), seed=3)
    result = compare(model, net, x, np.zeros(len(x), dtype=np.int64))
    assert result.disagreements == 0 and all(m == 0 for _, m in result.codes.values())


class _Uncounted(nn.Module):
    """A padded average pooling (a module or the function) with ``count_include_pad`` as given."""

    def __init__(self, module: bool, counted: bool):
        super().__init__()
        self.module, self.counted = module, counted
        self.conv, self.pool = nn.Conv2d(1, 4, 3, padding=1), nn.AvgPool2d(3, 2, 1, count_include_pad=counted)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        x = F.relu(self.conv(x))
        x = self.pool(x) if self.module else F.avg_pool2d(x, 3, 2, 1, count_include_pad=self.counted)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(x), 1), 1))


@pytest.mark.parametrize("module", [False, True])
def test_an_average_pooling_that_leaves_its_padding_out_of_the_divisor_is_refused(module):
    """``count_include_pad=False`` divides a border window by the positions it covers inside the map; every
    window of the accelerator divides by kernel^2. The trainer refuses it before training, naming the fix, and so
    does the compiler for a traced graph that holds one."""
    from compiler.capture import Unsupported

    with pytest.raises(ValueError, match=r"cannot quantize _Uncounted: .*avg_?pool2d.* averages with "
                                         r"count_include_pad=False, .*use count_include_pad=True"):
        quantize_model(_Uncounted(module, counted=False), method="lcq", wbits=3, abits=3)
    net = randomize(quantize_model(_Uncounted(module, counted=True), method="lcq", wbits=3, abits=3), 0)
    if module:
        net.get_submodule("pool").count_include_pad = False
    else:                                               # (the traced call, given the flag after the trainer's check)
        for node in net.graph.nodes:
            if node.target is F.avg_pool2d and len(node.args) > 3:
                node.kwargs = {**node.kwargs, "count_include_pad": False}
        net.recompile()
    with pytest.raises(Unsupported, match=r"pads with count_include_pad=False, .*use count_include_pad=True"):
        compile_model(net, (1, 8, 8))
