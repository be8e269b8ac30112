"""The whole-network core's generated Verilog in Icarus and Verilator (cocotb): image in, logits out,
the logits and every step's output tensor (probed in the data memories) bit-exact against the
integer reference.

- The trained digits CNN (W3/A3) on both simulators, with load/image stalls and output
  back-pressure; a corrupted expectation is reported as a mismatch.
- A VGG with max pooling (random parameters) on both simulators.
- A small pre-activation ResNet-8 (stages of 8, 12 and 16 channels) with random parameters (identity and strided
  shortcuts, residual additions, pooling) on an (3, 8, 8) input; the same with mixed per-layer bits and
  outer widths (``--layer-bits``).
- Geometry edges (random parameters): maps of one position with more channel tiles than the accumulator
  ring has words (17 channels, 12 classes), a 1 x 1 image with one class, and a network of odd geometries
  (non-square odd image, 7x7 stem, depthwise conv, strided shortcut to a 1 x 1 map, single-conv residual
  branch) on the network core and, conv by conv, on the layer engine.
- A MobileNetV2 (random parameters) whose linear bottlenecks are signed activations, run as their halves.
- akamaster's CIFAR ResNet (option-A shortcuts: SUBSAMPLE and narrow ADD steps), random parameters.
- ``lcq sim MODEL --json`` (network mode is the default) has the network keys.
- The trained CIFAR-10 ResNet-20 (W3/A3), two images on an 8 x 8 array: a ``slow`` test.

Builds live in ``build/sim`` (``LCQ_SIM_BUILD`` moves it); Verilator rebuilds only what changed.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("amaranth", reason="simulation tests need amaranth: pip install -e '.[hw]'")

from compiler import reference  # noqa: E402
from compiler.format import load  # noqa: E402
from hw.bands import band_rows, network_layer_cycles  # noqa: E402
from hw.network_cycles import image_cycles  # noqa: E402
from hw.engine import LayerEngine  # noqa: E402
from hw.engine_params import SPRAM_DEPTH  # noqa: E402
from hw.network_params import NetworkParams, network_plan  # noqa: E402
from sim.network_run import simulate_network  # noqa: E402
from sim.runner import unavailable_reason  # noqa: E402
from simulators import BUILD_ROOT, core_build, require_simulators  # noqa: E402

pytestmark = pytest.mark.sim

DATA = Path(__file__).resolve().parent / "data"
DIGITS, RESNET20 = DATA / "digits-cnn-lcq-w3a3.lcq", DATA / "cifar10-resnet20-lcq-w3a3.lcq"


def first_available(*sims: str) -> str:
    for sim in sims:
        if unavailable_reason(sim) is None:
            return sim
    require_simulators(sims[0])


def run_network(sim, model_path, model, rows, cols, images, test_dir, write_pairs=None, spram=False, multiply_cols=0,
                **options):
    params = NetworkParams.for_model(model, rows, cols, write_pairs=write_pairs, multiply_cols=multiply_cols)
    suffix = (("-pairs" if params.engine.write_pairs else "") + ("-spram" if spram else "")
              + (f"-multiply{multiply_cols}" if multiply_cols else ""))
    built = core_build(sim, params, BUILD_ROOT / f"{sim}-network-{Path(model_path).stem}-{rows}x{cols}{suffix}",
                       spram=spram)
    return params, simulate_network(built, params, model_path, model, images, test_dir, **options)


def run_exact(model, path, rows, cols, test_dir, seed, dense=True, write_pairs=None):
    """``model`` (file ``path``) on a ``rows`` x ``cols`` network core of the first simulator available (writing
    back in pairs or not: ``write_pairs``, None where they pay), two random images with load stalls and output
    back-pressure, every tensor exact (:func:`assert_exact`); returns (params, report)."""
    from helpers import images

    sim = first_available("verilator", "icarus")
    x = images(2, model.input.shape, seed=seed)
    params, report = run_network(sim, path, model, rows, cols, x, test_dir, write_pairs=write_pairs, stall=0.2,
                                 backpressure=0.3, seed=seed)
    assert_exact(model, params, report, len(x), dense)
    return params, report


def assert_exact(model, params, report, n_images, dense=True):
    """Every tensor and logit exact, every step and image accounted for, the cycle model within 1%; with ``dense``
    at least an image's MACs over the PEs in cycles (not where depthwise convs skip their all-zero tiles)."""
    assert report.mismatches == 0, report.first_mismatch()
    plan = network_plan(model, params)
    assert [s.name for s in report.steps] == [s.name for s in plan.steps]
    written = {s.output for s in report.steps} | {s.activated for s in report.steps if s.activated}
    written |= {t.within for t in plan.tensors.values() if t.within}   # (a concatenation: written by its parts)
    assert written == {t.name for t in plan.tensors.values() if t.stored}
    assert len(report.images) == n_images
    macs = sum(node.macs for node in model.convs)
    rc = params.engine.rows * params.engine.cols
    for image in report.images:
        assert (image.cycles >= macs / rc or not dense) and image.out_beats == model.num_classes
        assert image.pixels == int(np.prod(model.input.shape))
    # the input step: the staged image copied, a code per cycle and two more for the last one (registered, written)
    assert report.steps[0].cycles == (params.image_depth + 2) * n_images
    assert all(s.cycles > 0 for s in report.steps[1:])
    assert sum(s.macs for s in report.steps) == macs * n_images
    assert sum(s.cycles for s in report.steps) < sum(im.cycles for im in report.images)
    # the cycle model that picks a board's array (boards.fit.network_for_board) is within 1% of every image's steps
    # and the output stage's latency, which it leaves out (20 cycles a step at most)
    estimate = image_cycles(model, params) * n_images
    assert abs(sum(s.cycles for s in report.steps) - estimate) <= 0.01 * estimate + 20 * len(report.steps)


@pytest.mark.parametrize("sim, rows, cols, n_images, stall, backpressure",
                         [("icarus", 4, 4, 1, 0.3, 0.3), ("verilator", 4, 4, 2, 0.2, 0.5)])
def test_digits_cnn_on_the_network_core(sim, rows, cols, n_images, stall, backpressure, tmp_path):
    require_simulators(sim)
    model = load(DIGITS)
    images = np.random.default_rng(rows).integers(0, 256, (n_images, *model.input.shape), dtype=np.uint8)
    params, report = run_network(sim, DIGITS, model, rows, cols, images, tmp_path, stall=stall,
                                 backpressure=backpressure, seed=rows)
    assert_exact(model, params, report, n_images)
    assert (report.logits == reference.run(model, images)[model.logits].reshape(n_images, -1)).all()


@pytest.mark.parametrize("cols", [pytest.param(2, marks=pytest.mark.slow), 1])    # 1: the iCEBreaker's pick
def test_digits_cnn_with_its_memories_in_spram(tmp_path, cols):
    """The UP5K's choice: the weights buffer and the value memory (the digits CNN adds nothing, so one port
    serves it) in ``SB_SPRAM256KA`` blocks, simulated with Yosys's model: on a 1 x 2 core the wide weights
    buffer too (4 blocks); on a 1 x 1 core the weights two blocks deep (23,040 words), the wide weights in
    block RAM. Exact."""
    sim = first_available("verilator", "icarus")
    model = load(DIGITS)
    images = np.random.default_rng(12).integers(0, 256, (1, *model.input.shape), dtype=np.uint8)
    params, report = run_network(sim, DIGITS, model, 1, cols, images, tmp_path, spram=True, stall=0.2,
                                 backpressure=0.3, seed=12)
    assert params.values_single_port and params.wide_weights_in_spram == (cols == 2)
    assert (params.engine.weight_depth > SPRAM_DEPTH) == (cols == 1)
    assert_exact(model, params, report, 1)
    assert (report.logits == reference.run(model, images)[model.logits].reshape(1, -1)).all()


def test_a_wrong_expectation_is_reported_as_a_mismatch(tmp_path):
    """The comparison can fail: one value of a middle tensor and one logit changed in the expectation."""
    sim = first_available("verilator", "icarus")
    model = load(DIGITS)
    images = np.random.default_rng(9).integers(0, 256, (1, *model.input.shape), dtype=np.uint8)
    expected = {name: t.copy() for name, t in reference.run(model, images).items()}
    middle = network_plan(model, NetworkParams.for_model(model, 4, 4)).steps[2]
    expected[middle.output][0, 1, 2, 3] += 1
    expected[model.logits][0, 7, 0, 0] -= 5
    params, report = run_network(sim, DIGITS, model, 4, 4, images, tmp_path, expected=expected)
    step = next(s for s in report.steps if s.output == middle.output)
    assert step.mismatches == 1 and "channel 1, position (y=2, x=3)" in step.first_mismatch
    assert f"step {middle.index} ({middle.kind} {middle.name})" in step.first_mismatch
    assert report.logit_mismatches == 1 and "logits (out stream), image 0" in report.first_logit_mismatch
    assert "channel 7" in report.first_logit_mismatch
    last = next(s for s in report.steps if s.output == model.logits)
    assert last.mismatches == 1
    assert report.mismatches == 3 and report.images[0].mismatches == 3
    assert report.as_dict()["mismatches"] == 3



@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_max_pooling_vgg_on_both_simulators(sim, tmp_path):
    """The VGG with max pooling (after and before ReLUs, overlapping padded windows) on a 2 x 2 core, every
    tensor exact, in each simulator: the vector unit's comb logic that depends only on its state (the
    max-pooling issue) must settle at time 0 in Icarus too (`lcq sim --simulator icarus` of such a model
    hung in its first max pooling with the vector unit's `busy` at X)."""
    require_simulators(sim)
    import torch
    from helpers import images, randomize

    from compiler.format import save
    from compiler.lower import compile_model
    from lcq_train.plan import quantize_model

    sys.path.insert(0, str(DATA))
    import compile_models as cm

    torch.manual_seed(0)
    net = randomize(quantize_model(cm.maxpool_vgg(10, 1), method="lcq", wbits=3, abits=3), seed=4)
    model = compile_model(net, (1, 8, 8))
    assert [n.op for n in model.nodes].count("maxpool") == 3
    path = tmp_path / "maxpool-vgg.lcq"
    save(model, path)
    params, report = run_network(sim, path, load(path), 2, 2, images(1, model.input.shape, seed=4), tmp_path / "run")
    assert_exact(model, params, report, 1)


def compiled_net(net, shape, path, seed, act_alpha=2.0):
    """``net`` (a plain PyTorch module) quantized LCQ W3/A3, randomized (:func:`helpers.randomize`, clip values
    about ``act_alpha``), compiled for ``shape`` and saved at ``path``; returns the loaded model."""
    import torch
    from helpers import randomize

    from compiler.format import save
    from compiler.lower import compile_model
    from lcq_train.plan import quantize_model

    torch.manual_seed(seed)
    save(compile_model(randomize(quantize_model(net, method="lcq", wbits=3, abits=3), seed=seed, act_alpha=act_alpha),
                       shape), path)
    return load(path)


def test_signed_activations_of_a_mobilenet_v2_on_a_4x4_core(tmp_path):
    """MobileNetV2's linear bottlenecks (random parameters): each signed activation's two halves (activate steps on
    the values, one with descending thresholds) joined into its codes at lane boundaries, read by the next layer
    with its weights and their negation, every tensor exact."""
    sys.path.insert(0, str(DATA))
    import compile_models as cm

    path = tmp_path / "mobilenet-v2.lcq"
    model = compiled_net(cm.mobilenet_v2(10, 1), (1, 8, 8), path, seed=3)
    assert sum(n.signed_input for n in model.convs) == 3
    run_exact(model, path, 4, 4, tmp_path / "run", seed=3, dense=False)     # (its depthwise convs)


def test_min_pooled_negative_halves_of_a_tiny_darknet_on_a_4x4_core(tmp_path):
    """Darknet's conv, BN, LeakyReLU, max pooling (random parameters): each signed activation's halves max and min
    pooled (MINPOOL steps of the vector unit) into their regions of the joined codes, the wide halves before the
    linear layer searched by the vector unit's thresholds, every tensor exact."""
    sys.path.insert(0, str(DATA))
    import compile_models as cm

    import torch
    from helpers import images

    path = tmp_path / "tiny-darknet.lcq"
    torch.manual_seed(5)
    # small clip values, so that the leaky ReLUs' negative values reach codes, and both minima take some
    model = compiled_net(cm.tiny_darknet(10, 1), (1, 8, 8), path, seed=5, act_alpha=0.3)
    least = [n.output for n in model.nodes if getattr(n, "minimum", False)]
    assert len(least) == 2
    tensors = reference.run(model, images(2, (1, 8, 8), seed=5))
    assert all(tensors[name].any() for name in least)
    params, _ = run_exact(model, path, 4, 4, tmp_path / "run", seed=5)
    assert params.vector.minpool
    # the linear layer's 8-bit input: 7-bit halves, searched (one fused into the conv's write-back: its code lent
    # the search's cycles late), the narrow halves' thresholds listed
    assert (params.vector.act_progression.table_code_bits, params.engine.lent_search) == (2, 7)


@pytest.mark.parametrize("write_pairs", [None, True], ids=["one position a write", "pairs"])
def test_option_a_shortcuts_of_akamasters_cifar_resnet_on_a_4x4_core(write_pairs, tmp_path):
    """akamaster's CIFAR ResNet as written (one block a stage; random parameters): each strided block's shortcut
    subsampled in place by the vector unit's SUBSAMPLE step and added to the channels between its zero ones in the
    write-back of the conv that ends the block (read at its own base: the window registers), as the other
    additions are, every tensor exact."""
    sys.path.insert(0, str(DATA))
    import tutorial_models as tm

    path = tmp_path / "akamaster-resnet8.lcq"
    model = compiled_net(tm.resnet8(), (3, 8, 8), path, seed=3)
    assert [n.stride for n in model.nodes if n.op == "subsample"] == [2, 2]
    assert [n.b_offset for n in model.nodes if n.op == "add"] == [0, 8, 16]
    params, _ = run_exact(model, path, 4, 4, tmp_path / "run", seed=3, write_pairs=write_pairs)
    assert params.vector.subsample_bits and params.engine.windowed_adds and not params.vector.adds
    assert params.engine.write_pairs == bool(write_pairs)
    plan = network_plan(model, params)
    assert [s.kind for s in plan.steps].count("subsample") == 2 and sum(bool(s.fused_add) for s in plan.steps) == 3
    assert all(plan.tensors[n.output].in_place == n.input for n in model.nodes if n.op == "subsample")


def test_kuangliu_preact_resnet_averaging_its_residual_stream_on_a_4x4_core(tmp_path):
    """kuangliu's PreActResNet as written (one block a stage, a sixteenth of the channels; random parameters): the
    head averages the last block's sum, no ReLU before it, into the linear layer's signed quantizer: two POOL
    steps (the negative half pooling the negated stream) joined into its codes, every tensor exact."""
    sys.path.insert(0, str(DATA))
    import tutorial_models as tm

    path = tmp_path / "kuangliu-preact-resnet10.lcq"
    model = compiled_net(tm.preact_resnet10(), (3, 32, 32), path, seed=4)
    pools = [n for n in model.nodes if n.op == "pool"]
    assert len(pools) == 2 and not any(n.relu[n.sign != 0].any() for n in pools) and model.convs[-1].signed_input
    run_exact(model, path, 4, 4, tmp_path / "run", seed=4)


def test_kuangliu_densenet_on_a_4x4_core(tmp_path):
    """kuangliu's DenseNet as written (one or two layers a block, growth 4; random parameters): each join's parts
    written by their own layers, each transition's average pooling run as its 1 x 1 conv widened to 2 x 2 at
    stride 2, every tensor exact."""
    sys.path.insert(0, str(DATA))
    import tutorial_models as tm

    path = tmp_path / "kuangliu-densenet-tiny.lcq"
    model = compiled_net(tm.densenet_tiny(), (3, 32, 32), path, seed=6)
    assert [(n.kernel, n.stride) for n in model.convs if n.name.endswith("trans1.conv")] == [(2, 2)]
    assert not any(n.op in ("avgpool", "add") for n in model.nodes)
    run_exact(model, path, 4, 4, tmp_path / "run", seed=6)


@pytest.mark.slow
def test_torchvision_inception_blocks_on_a_2x2_core(tmp_path):
    """torchvision's InceptionV3 blocks as written (a sixteenth of the channels, one block of each kind, two A;
    random parameters) on 16 x 16 images (about 40 s): the second A block's pool branch a padded AVGPOOL step of each part of
    the join (the terms outside the map from the constants), the first's and those after a reduction block (a join
    with a max pooling: codes) run as the 3 x 3 conv over the codes, 1 x 7 and 7 x 1 convs as 7 x 7 ones, every
    tensor exact."""
    sys.path.insert(0, str(DATA))
    import tutorial_models as tm

    path = tmp_path / "mini-inception3.lcq"
    model = compiled_net(tm.MiniInception3(10, 3), (3, 16, 16), path, seed=0)
    pools = [n for n in model.nodes if n.op == "avgpool"]
    assert len(pools) == 4 and all(n.padding == 1 and n.outside is not None for n in pools)
    assert [(n.kernel, n.padding) for n in model.convs if n.name.endswith("branch_pool.conv")] == [
        (3, 1), (1, 0), (3, 1), (3, 1)]
    params, _ = run_exact(model, path, 2, 2, tmp_path / "run", seed=1)     # (parts of odd widths: 2 lanes)
    assert params.vector.pool_outside_bits > 0


def test_an_activations_average_read_by_the_classifier_on_a_4x4_core(tmp_path):
    """EfficientNet's head (1 x 1 conv, BN, SiLU, global average pooling, linear; random parameters): the
    classifier's quantizer stands before the pooling, and the classifier runs as the 8 x 8 conv over its codes,
    every tensor exact."""
    from torch import nn

    from test_dip_activations import _Head

    path = tmp_path / "head.lcq"
    model = compiled_net(_Head(nn.SiLU(), "AdaptiveAvgPool2d(1)"), (1, 8, 8), path, seed=8)
    assert [(n.name, n.kernel) for n in model.convs][-1] == ("fc", 8)
    run_exact(model, path, 4, 4, tmp_path / "run", seed=8)


def test_more_channel_tiles_than_the_accumulator_ring_holds_bands(tmp_path):
    """Every map one position (a 3 x 3 image under a 3 x 3 conv): the accumulator ring is two words deep, but on
    a 4 x 4 core the 17-channel conv has 5 channel tiles and the 12-class linear layer 3. The writer counted
    the channel tiles written in a counter as wide as the ring's depth, which wrapped before the last tile:
    the core hung in the conv (no logit came out). (12 classes, not 100: the 25 tiles of 100 cost a core of
    nearly twice the Verilog, 10 s more to build, and the conv's 5 tiles already pass the counter's wrap.)"""
    from torch import nn

    net = nn.Sequential(nn.Conv2d(3, 17, 3, bias=False), nn.BatchNorm2d(17), nn.ReLU(), nn.Flatten(),
                        nn.Linear(17, 12))
    model = compiled_net(net, (3, 3, 3), tmp_path / "tiles.lcq", seed=7)
    assert [c.out_shape for c in model.convs] == [(17, 1, 1), (12, 1, 1)]
    params, _ = run_exact(model, tmp_path / "tiles.lcq", 4, 4, tmp_path / "run", seed=7)
    assert params.engine.out_depth == 2


def test_a_first_band_longer_than_the_old_progress_deadline_on_a_1x1_core(tmp_path):
    """A 3 x 3 conv of 16 channels over a 16 x 16 map on a 1 x 1 core writes nothing while its first band's 144
    reduction tiles issue (each the whole map's 256 positions: about 36,864 cycles): the testbench's no-progress
    deadline, once 20,000 + 64 cycles per output's MACs (29,216 here; kuangliu's DenseNet on the OrangeCrab's 1 x 2
    core was stopped as hung), now covers the longest layer's cycle model; every tensor exact."""
    import torch
    from torch import nn

    from helpers import images

    path = tmp_path / "long-band.lcq"
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 2, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 10))
    torch.manual_seed(7)
    model = compiled_net(net, (1, 16, 16), path, seed=7)
    params = NetworkParams.for_model(model, 1, 1)
    conv = model.convs[1]
    assert 16 * 9 * band_rows(params.engine, conv) * 16 > 20_000 + 64 * 16 * 9
    sim = first_available("verilator", "icarus")
    params, report = run_network(sim, path, model, 1, 1, images(1, (1, 16, 16), seed=7), tmp_path / "run")
    assert_exact(model, params, report, 1)


def test_a_one_pixel_image_and_one_class(tmp_path):
    """A 1 x 1 image, a 1x1 conv, one class: the code memory is so small that the probe port's address is one bit,
    which cocotb hands over as a ``Logic``, not a ``LogicArray``; the testbench failed on it (``'Logic' object has
    no attribute 'to_unsigned'``) instead of comparing."""
    from torch import nn

    net = nn.Sequential(nn.Conv2d(1, 3, 1, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3, 1))
    model = compiled_net(net, (1, 1, 1), tmp_path / "pixel.lcq", seed=8)
    assert model.num_classes == 1
    run_exact(model, tmp_path / "pixel.lcq", 4, 4, tmp_path / "run", seed=8)


def odd_geometry_net():
    """A network at the geometry edges the compiler accepts: a non-square odd image (3 x 7 x 5), a 7x7 stride-2
    stem, a depthwise conv at 5 channels, a padded overlapping max pooling to 2 x 2, a residual addition with a
    strided 1x1 shortcut down to a 1 x 1 map of 17 channels, a residual whose branch is a single 5x5 conv (padded
    past the map on every side), global pooling of a 1 x 1 map, 100 classes."""
    import torch.nn.functional as F
    from torch import nn

    class OddGeometry(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.bn = nn.Conv2d(3, 5, 7, 2, 3, bias=False), nn.BatchNorm2d(5)
            self.dw, self.bdw = nn.Conv2d(5, 5, 3, 1, 1, groups=5, bias=False), nn.BatchNorm2d(5)
            self.a, self.ba = nn.Conv2d(5, 17, 3, 2, 1, bias=False), nn.BatchNorm2d(17)
            self.sc, self.bs = nn.Conv2d(5, 17, 1, 2, bias=False), nn.BatchNorm2d(17)
            self.b, self.bb = nn.Conv2d(17, 17, 5, 1, 2, bias=False), nn.BatchNorm2d(17)
            self.fc = nn.Linear(17, 100)

        def forward(self, x):                                               # 3 x 7 x 5
            x = F.relu(self.bn(self.stem(x)))                               # 5 x 4 x 3
            x = F.max_pool2d(F.relu(self.bdw(self.dw(x))), 3, 2, 1)         # 5 x 2 x 2
            x = F.relu(self.ba(self.a(x)) + self.bs(self.sc(x)))            # 17 x 1 x 1
            x = F.relu(self.bb(self.b(x)) + x)
            return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    return OddGeometry()


def test_odd_geometries_on_the_engine_and_the_network_core(tmp_path):
    """:func:`odd_geometry_net`, randomized: every conv alone on a 3 x 5 layer engine (channel tiles and
    reductions cut at the array's edges) and the whole network on a 4 x 4 core, both exact, with stalls."""
    from helpers import images

    from compiler.graph import CompiledModel
    from hw.engine_params import EngineParams
    from hw.program import Job, act_beats, layer_beats, output_words
    from sim.engine_run import engine_build, simulate_jobs

    model = compiled_net(odd_geometry_net(), (3, 7, 5), tmp_path / "odd.lcq", seed=9)
    assert [(c.kernel, c.stride, c.padding, c.out_shape) for c in model.convs] == [
        (7, 2, 3, (5, 4, 3)), (3, 1, 1, (5, 4, 3)), (3, 2, 1, (17, 1, 1)), (1, 2, 0, (17, 1, 1)),
        (5, 1, 2, (17, 1, 1)), (1, 1, 0, (100, 1, 1))]
    assert [n.op for n in model.nodes].count("maxpool") == 1 and [n.op for n in model.nodes].count("add") == 2
    run_exact(model, tmp_path / "odd.lcq", 4, 4, tmp_path / "network", seed=9)

    sim = first_available("verilator", "icarus")
    x = images(2, model.input.shape, seed=9)
    t = reference.run(model, x)
    cases = [(node, t[node.input][i], t[node.output][i]) for node in model.convs for i in range(len(x))]
    params = EngineParams.for_model(CompiledModel([node for node, _, _ in cases], "", 100), rows=3, cols=5)
    jobs = [Job(i, node, layer_beats(params, node) + act_beats(params, node, codes), output_words(params, node))
            for i, (node, codes, _) in enumerate(cases)]
    built = engine_build(sim, params, BUILD_ROOT / f"{sim}-engine-odd-geometry-3x5")
    report = simulate_jobs(built, params, jobs, [want for _, _, want in cases], tmp_path / "engine", stall=0.2,
                           backpressure=0.3, seed=9)
    assert report.mismatches == 0, [r.first_mismatch for r in report.layers if r.first_mismatch]
    assert len(report.layers) == 12


def small_resnet8():
    """A pre-activation ResNet-8 (:class:`lcq_train.models.resnet.PreActResNet`'s layers and names: the stem, an
    identity block, two blocks with strided 1x1 shortcuts, the FC) with stages of 8, 12 and 16 channels instead
    of 16, 32 and 64: on a 4 x 4 or 3 x 4 core still 2 to 4 channel tiles a layer and reductions cut at the
    array's edge, in a sixth of the cycles and load beats."""
    from torch import nn

    from lcq_train.layers import QAct, QConv2d, QLinear
    from lcq_train.models.resnet import PreActBlock, PreActResNet

    class SmallResNet8(PreActResNet):
        def __init__(self):
            nn.Module.__init__(self)
            self.act_in, self.conv1 = QAct(), QConv2d(3, 8, 3, padding=1)
            self.blocks = nn.Sequential(PreActBlock(8, 8, 1), PreActBlock(8, 12, 2), PreActBlock(12, 16, 2))
            self.bn, self.act_fc, self.fc = nn.BatchNorm2d(16), QAct(), QLinear(16, 10)

    return SmallResNet8()


@pytest.mark.parametrize("write_pairs, multiply_cols", [pytest.param(False, 0, marks=pytest.mark.slow),
                                                        pytest.param(True, 0, marks=pytest.mark.slow), (True, 1)])
def test_random_resnet_with_shortcuts_and_pooling(write_pairs, multiply_cols, tmp_path):
    """Random pre-activation ResNet-8 (:func:`small_resnet8`) on (3, 8, 8): an identity shortcut, two strided 1x1
    shortcuts, residual additions and the global pool, every tensor exact; also with the write-back in pairs of
    positions (every conv but the FC, with its fused additions and activations), and then with PEs that
    multiply in the first column only (the 8-bit stem and FC in channel tiles of one channel)."""
    sim = first_available("verilator", "icarus")
    import torch
    from helpers import randomize

    from compiler.format import save
    from compiler.lower import compile_model
    from lcq_train.plan import QuantPlan, apply_plan

    torch.manual_seed(0)
    net = randomize(apply_plan(small_resnet8(), QuantPlan("lcq", 3, 3)), seed=5)
    model = compile_model(net, (3, 8, 8))
    ops = [n.op for n in model.nodes]
    assert ops.count("add") == 3 and ops.count("pool") == 1
    assert [c.name for c in model.convs if "shortcut" in c.name] == ["blocks.1.shortcut", "blocks.2.shortcut"]
    assert [c.out_shape[0] for c in model.convs] == [8, 8, 8, 12, 12, 12, 16, 16, 16, 10]     # 2 to 4 channel tiles of 4
    path = tmp_path / "resnet8.lcq"
    save(model, path)
    images = np.random.default_rng(5).integers(0, 256, (1, *model.input.shape), dtype=np.uint8)
    params, report = run_network(sim, path, load(path), 4, 4, images, tmp_path / "run", write_pairs=write_pairs,
                                 multiply_cols=multiply_cols, stall=0.2, backpressure=0.3, seed=5)
    assert params.engine.write_pairs == write_pairs and params.engine.multiply_cols == multiply_cols
    assert_exact(model, params, report, 1)
    # every addition fused into the conv before it (conv2, or the strided shortcut after conv2), and every
    # activation into the conv that writes its values (the stem, a block's last conv): no vector pass but pooling
    assert {s.kind for s in report.steps} == {"input", "conv", "pool"}
    steps = network_plan(model, params).steps
    assert [s.name for s in steps if s.fused_add] == ["blocks.0.conv2", "blocks.1.shortcut", "blocks.2.shortcut"]
    assert [s.name for s in steps if s.fused_activate] == ["conv1", "blocks.0.conv2", "blocks.1.shortcut"]
    # each conv step takes the engine's cycle formula (FUSED_LATENCY more with a fused activation) plus the
    # same sequencer overhead (its register writes)
    overheads = set()
    for s in report.steps:
        if s.kind == "conv":
            node = model.nodes[s.index]
            latency = LayerEngine.stage_latency(None) + (LayerEngine.FUSED_LATENCY if s.activated else 0)
            overheads.add(s.cycles - network_layer_cycles(params.engine, node, band_rows(params.engine, node),
                                                          latency))
    assert len(overheads) == 1, overheads


def test_mixed_precision_resnet_on_the_network_core(tmp_path):
    """Per-layer bits and outer widths (``--layer-bits NAME=W/A:BW/BA``) on a random pre-activation ResNet-8
    (:func:`small_resnet8`): the 8-bit edge layers at 8/8, the inner layers at 3/3 with outer widths 6/6, 2-bit
    (ternary) weights reading 8-bit activations after the 8-bit stem, a 4/4 block whose strided shortcut (2/4,
    outer 2/8) and second conv (3/3, outer 3/3) add tensors of other scales, a 2/2 layer at outer widths 2/2.
    Every tensor and the logits exact on Verilator, as for the uniform models."""
    require_simulators("verilator")
    import torch
    from helpers import randomize

    from compiler.format import save
    from compiler.lower import compile_model
    from lcq_train.plan import QuantPlan, apply_plan

    edge = (8, 8, 8, 8)
    bits = {"conv1": edge, "fc": edge, "blocks.0.conv1": (2, 8, 2, 8), "blocks.1.conv1": (4, 4, 8, 8),
            "blocks.1.shortcut": (2, 4, 2, 8), "blocks.1.conv2": (3, 3, 3, 3), "blocks.2.conv2": (2, 2, 2, 2)}
    torch.manual_seed(0)
    net = randomize(apply_plan(small_resnet8(), QuantPlan("lcq", 3, 3, outer_bits=(6, 6), layer_bits=bits)), seed=6)
    model = compile_model(net, (3, 8, 8))
    got = {c.name: (c.wbits, c.abits, c.outer_wbits, c.outer_abits) for c in model.convs}
    assert got == {**{c.name: (3, 3, 6, 6) for c in model.convs}, **bits}
    path = tmp_path / "resnet8-mixed.lcq"
    save(model, path)
    x = np.random.default_rng(6).integers(0, 256, (1, *model.input.shape), dtype=np.uint8)
    params, report = run_network("verilator", path, load(path), 3, 4, x, tmp_path / "run", stall=0.1,
                                 backpressure=0.3, seed=6)
    assert params.vector.act_code_bits == 8 and params.engine.wbits == 4    # sized for the widest layer
    assert_exact(model, params, report, len(x))
    assert (report.logits == reference.run(model, x)[model.logits].reshape(len(x), -1)).all()


def test_sim_cli_network_json(capsys):
    from lcq.cli import main

    sim = first_available("verilator", "icarus")
    build_dir = BUILD_ROOT / f"{sim}-network-{DIGITS.stem}-4x4"      # the build of the tests above, reused
    assert main(["sim", str(DIGITS), "--simulator", sim, "--rows", "4", "--cols", "4", "--random", "--seed", "3",
                 "--backpressure", "0.2", "--build-dir", str(build_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    model = load(DIGITS)
    assert result["mode"] == "network" and result["simulator"] == sim and result["images"] == 1
    assert result["rows"] == 4 and result["cols"] == 4 and result["mismatches"] == 0
    assert result["write_pairs"] is False                   # pairs do not pay at 4 x 4
    assert result["macs_per_image"] == sum(n.macs for n in model.convs)
    assert result["bytes_in_per_image"] == 64
    value_bits = NetworkParams.for_model(model, 4, 4).value_bits
    assert result["bytes_out_per_image"] == 10 * -(-value_bits // 8)
    (cycles,) = result["cycles_per_image"]
    assert cycles > result["macs_per_image"] / 16
    (image,) = result["per_image"]
    assert image["cycles"] == cycles and image["macs_per_cycle"] == round(result["macs_per_image"] / cycles, 4)
    assert len(result["logits"]["values"][0]) == 10 and result["logits"]["mismatches"] == 0
    assert [s["name"] for s in result["steps"]] == [s.name for s in network_plan(model, NetworkParams.for_model(
        model, 4, 4)).steps]
    assert all(s["mismatches"] == 0 and s["first_mismatch"] is None for s in result["steps"])
    assert sum(s["macs"] for s in result["steps"]) == result["macs_per_image"]


@pytest.mark.slow
def test_trained_resnet20_whole_network_on_an_8x8_array(tmp_path):
    require_simulators("verilator")
    model = load(RESNET20)
    images = np.random.default_rng(4).integers(0, 256, (2, *model.input.shape), dtype=np.uint8)
    params, report = run_network("verilator", RESNET20, model, 8, 8, images, tmp_path, stall=0.05,
                                 backpressure=0.05, seed=4)
    assert_exact(model, params, report, 2)
    assert len(model.convs) == 22      # 19 3x3 convolutions, 2 strided 1x1 shortcuts, the FC layer


@pytest.mark.parametrize("drop", ["an image", "a step"])
def test_results_missing_an_image_or_a_step_fail_instead_of_comparing_fewer(drop):
    """The testbench's results for fewer images, or an image's cycles for fewer steps, were compared as far as
    they went (``enumerate`` and ``zip``) and reported no mismatch for the rest."""
    from sim.network_run import compare
    from sim.runner import SimulationFailed

    model = load(DIGITS)
    params = NetworkParams.for_model(model, 2, 2)
    images = np.zeros((2, *model.input.shape), dtype=np.uint8)
    steps = len(network_plan(model, params).steps)
    results = {"an image": [{"step_cycles": list(range(steps))}],
               "a step": [{"step_cycles": list(range(steps))}, {"step_cycles": list(range(steps - 1))}]}[drop]
    with pytest.raises(SimulationFailed, match=r"the testbench returned"):
        compare(params, model, images, results, "verilator", reference.run(model, images))
