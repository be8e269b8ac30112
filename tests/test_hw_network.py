"""The whole-network core in Amaranth's simulator: image in, logits out, every layer's output
probed in the data memories and compared with the integer reference, and every layer's engine
cycles against the network-mode formula of ``hw/engine.py`` (each channel tile written back while
the next one computes)."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("amaranth", reason="hw needs amaranth: pip install -e '.[hw]'")

from amaranth.hdl import ClockDomain, Module, ResetSignal, Signal  # noqa: E402
from amaranth.sim import Simulator  # noqa: E402

from compiler import reference  # noqa: E402
from compiler.format import load  # noqa: E402
from compiler.graph import ConvNode  # noqa: E402
from hw.bands import band_rows, network_layer_cycles  # noqa: E402
from hw.engine import LayerEngine  # noqa: E402
from hw.network import NetworkCore  # noqa: E402
from hw.network_params import NetworkParams, network_plan  # noqa: E402
from hw.network_program import MemoryMirror, decode_logits, image_beats, load_beats  # noqa: E402
from simulators import ChangedInputs  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
DIGITS = load(DATA / "digits-cnn-lcq-w3a3.lcq")


def simulate_network(model, params, images, *, stall=0.0, backpressure=0.0, seed=0, limit=2_000_000,
                     pipelined=False, reset_first=False):
    """Run ``images`` through a :class:`NetworkCore` (load beats stalled with probability ``stall``,
    logits back-pressured with ``backpressure``); returns per image the logits, the cycles from
    ``start`` to idle, the probed tensors ``{name: (C, H, W)}`` of every step, each read from the
    data memories when the step that writes it has finished (the input's when the staged image has
    been copied), and ``engine_cycles``: the cycles the engine's ``busy`` was high in each of its runs,
    in order. ``pipelined``: each next image's pixels are loaded while the core runs the image before
    (the staging buffer must refuse them while ``starting``). ``reset_first``: ``sync``'s reset held for two
    cycles, and the first beat offered in the cycle after it (as a testbench on the Verilog does)."""
    core = NetworkCore(params)
    top, rst = Module(), Signal()
    top.domains.sync = ClockDomain()
    top.submodules.core = core
    top.d.comb += ResetSignal("sync").eq(rst)
    plan = network_plan(model, params)
    steps = plan.steps
    rng = np.random.default_rng(seed)
    results = []

    mirror = MemoryMirror(params)
    probe_ports = [core.probe.code_en, core.probe.code_addr, core.probe.code_data, core.probe.value_en,
                   core.probe.value_addr, core.probe.value_data]
    # The ports looked up once (a port of a View is made anew at each look-up, and evaluated anew), and an input set
    # only when its value changes (a testbench's each set settles the design).
    busy, engine_busy, starting, step_done = core.busy, core.engine.busy, core.starting, core.probe.step_done
    load_valid, load_ready, load_payload = core.load.valid, core.load.ready, core.load.payload
    out_valid, out_ready, out_payload = core.out.valid, core.out.ready, core.out.payload
    inputs = None       # the testbench's ChangedInputs

    def offer(ctx, beat):
        """Offer ``beat`` (or nothing, with probability ``stall``) this cycle; whether it is taken."""
        shown = rng.random() >= stall
        inputs.set(load_valid, shown)
        inputs.set(load_payload, dict(zip(("target", "addr", "data"), beat)))
        return shown and ctx.get(load_ready)

    async def load(ctx, beats):
        """Each beat offered until taken, the probe sampled."""
        for beat in beats:
            while True:
                taken = offer(ctx, beat)
                mirror.write(*(ctx.get(port) for port in probe_ports))
                await ctx.tick()
                if taken:
                    break
        inputs.set(load_valid, False)
        mirror.write(*(ctx.get(port) for port in probe_ports))
        await ctx.tick()

    async def testbench(ctx):
        nonlocal inputs
        inputs = ChangedInputs(ctx)
        if reset_first:
            ctx.set(rst, 1)
            await ctx.delay(2e-8)       # two clock periods (a tick in reset raises DomainReset)
            ctx.set(rst, 0)
        await load(ctx, load_beats(model, params))
        await load(ctx, image_beats(model, params, images[0]))
        for n in range(len(images)):
            ctx.set(core.start, 1)
            await ctx.tick()
            ctx.set(core.start, 0)
            following = image_beats(model, params, images[n + 1]) if n + 1 < len(images) else []
            cycles, out, step, engine_cycles, run, probes = 1, [], 0, [], 0, {}
            while ctx.get(busy):
                if ctx.get(engine_busy):
                    run += 1
                elif run:
                    engine_cycles.append(run)
                    run = 0
                ready = rng.random() >= backpressure
                inputs.set(out_ready, ready)
                taken = pipelined and following and offer(ctx, following[0])
                assert not (taken and ctx.get(starting)), "an IMAGE beat was taken while copying"
                sent, value = ctx.get(out_valid), ctx.get(out_payload)
                mirror.write(*(ctx.get(port) for port in probe_ports))
                if ctx.get(step_done):
                    probes.update({name: mirror.tensor(plan.tensors[name]) for name in steps[step].outputs})
                    step += 1
                await ctx.tick()
                if taken:
                    following.pop(0)
                if sent and ready:
                    out.append(value)
                cycles += 1
                assert cycles < limit, f"the core did not finish within {limit} cycles"
            inputs.set(load_valid, False)
            assert step == len(steps), f"{step} of {len(steps)} steps ran"
            results.append({"logits": decode_logits(params, out, model.num_classes), "cycles": cycles,
                            "probes": probes, "engine_cycles": engine_cycles, "left_to_load": len(following)})
            await load(ctx, following)

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return results


def check_against_reference(model, images, results, plan=None):
    """Logits and every probed tensor as the integer reference's; the probes are every node's output, or with
    ``plan`` (a network plan that fuses nodes into steps) every step's."""
    t = reference.run(model, images)
    for n, result in enumerate(results):
        assert (result["logits"] == t[model.logits][n].reshape(-1)).all(), f"image {n}: logits differ"
        for name, tensor in result["probes"].items():
            expected = t[name][n]
            wrong = np.argwhere(tensor != expected)
            assert not wrong.size, f"image {n}: {name} differs at {wrong[0].tolist()}: {tensor[tuple(wrong[0])]} " \
                                   f"!= {expected[tuple(wrong[0])]}"
        outputs = ({name for step in plan.steps for name in step.outputs} if plan
                   else {node.output for node in model.nodes})
        assert set(result["probes"]) == outputs


# About a minute each in Amaranth's simulator: slow tests. By default the digits CNN runs through the
# core's Verilog with stalls and back-pressure (tests/test_sim_network.py) and the cycle model is
# checked here on the 2 x 10 band case.
@pytest.mark.parametrize("rows, cols, stall, backpressure", [
    pytest.param(4, 4, 0.0, 0.0, marks=pytest.mark.slow), pytest.param(3, 2, 0.3, 0.5, marks=pytest.mark.slow)])
def test_digits_network_on_the_core(rows, cols, stall, backpressure):
    images = np.random.default_rng(rows).integers(0, 256, (1, *DIGITS.input.shape), dtype=np.uint8)
    params = NetworkParams.for_model(DIGITS, rows, cols)
    # the 8-bit edge layers' weights in the wide buffer, the 3-bit layers' at 3 bits per column
    assert params.engine.wide_depth and params.engine.stored_weight_bits == params.engine.wbits == 3
    results = simulate_network(DIGITS, params, images, stall=stall, backpressure=backpressure)
    check_against_reference(DIGITS, images, results)
    macs = sum(node.macs for node in DIGITS.nodes if isinstance(node, ConvNode))
    assert results[0]["cycles"] > macs / (rows * cols)
    check_layer_cycles(DIGITS, params, results[0])


def test_write_back_overlaps_the_next_band(small_cnn):
    """Network mode on a 2 x 10 array: conv0 (1 -> 20 channels, 8 x 8, two channel tiles) runs in bands
    of 2 rows (``hw.bands``: 8 units of 16 positions, computed in 9 * 17 = 153 cycles, each tile's weights
    read while the one before issues, and written back in 16 * 11 = 176 each), so the layer takes 2 (the
    first tile's weights) + 153 + 8 * 176 plus drain, flush and the start's two cycles: less than
    one channel tile's computation and write-back per tile overlapped (603 + 2 * 704) and far less than
    none overlapped (2 * (603 + 704)); every tensor exact."""
    from compiler.lower import compile_model
    from lcq_train.plan import QuantPlan

    model = compile_model(small_cnn((1, 8, 8), QuantPlan("lcq", 3, 3), seed=3, widths=(20, 4, 4)), (1, 8, 8))
    params = NetworkParams.for_model(model, 2, 10)
    images = np.random.default_rng(3).integers(0, 256, (1, *model.input.shape), dtype=np.uint8)
    (result,) = simulate_network(model, params, images)
    check_against_reference(model, images, [result])
    counts = check_layer_cycles(model, params, result)
    drain, flush = 2 + 10 + 8, LayerEngine.stage_latency(None)     # hw.bands.network_drain
    assert band_rows(params.engine, model.convs[0]) == 2
    assert counts[0] == (2 + 2 + 153 + 8 * 176 + drain + flush, 2 + 2 * (603 + 704) + drain + flush)
    assert counts[0][0] < 2 + 603 + 2 * 704 + drain + flush


@pytest.mark.parametrize("depth", [8, 16])
def test_accumulator_ring_holds_back_a_band_until_it_is_written(small_cnn, depth):
    """The model of the test above with accumulators of ``depth`` words a column: every layer holds one band
    (conv0 in bands of 8 positions, weights loaded between tiles, with 8; conv1 and conv2 in bands of 16 whose
    next weights are read while one issues, with 16), so each band waits for the one before to be written
    back; every tensor exact, the cycles as the model states."""
    from compiler.lower import compile_model
    from lcq_train.plan import QuantPlan

    model = compile_model(small_cnn((1, 8, 8), QuantPlan("lcq", 3, 3), seed=3, widths=(20, 4, 4)), (1, 8, 8))
    params = NetworkParams.for_model(model, 2, 10)
    assert params.engine.out_depth == 32                     # hw.bands.ring_depth: twice conv0's 16-position bands
    params = dataclasses.replace(params, engine=dataclasses.replace(params.engine, out_depth=depth))
    held = [params.engine.out_depth // (band_rows(params.engine, n) * n.out_shape[2]) for n in model.convs[:3]]
    assert held == ([1, 1, 1] if depth == 8 else [2, 1, 1])
    images = np.random.default_rng(3).integers(0, 256, (1, *model.input.shape), dtype=np.uint8)
    (result,) = simulate_network(model, params, images)
    check_against_reference(model, images, [result])
    check_layer_cycles(model, params, result, overlapped=False)     # one band at a time: no overlap to gain


@pytest.mark.parametrize("form", ["simulation", "ecp5"])
def test_bands_at_the_edges_of_the_waits_on_a_wide_array(small_cnn, form, monkeypatch):
    """hw.bands.gap_positions and overlap_positions at their edges on a 2 x 8 array (cols > rows + 3, where the
    width bounds the tile): the first layer's 7 x 7 map in bands of one row, 7 positions (exactly
    overlap_positions: the next tile's weights read while one issues, a tile of cols cycles), the 4 x 4 layers' of
    8, and the FC's one position (gap_positions - 1 cycles of wait: a tile of cols cycles); every tensor exact and,
    in simulation, every layer's cycles the model's, and so in the ECP5's form (the partial sums read a cycle
    early)."""
    from compiler.lower import compile_model
    from helpers import build_as_for_the_ecp5
    from lcq_train.plan import QuantPlan
    from hw.bands import gap_positions, overlap_positions

    if form == "ecp5":
        build_as_for_the_ecp5(monkeypatch)
    model = compile_model(small_cnn((1, 7, 7), QuantPlan("lcq", 3, 3), seed=3, widths=(8, 6, 8)), (1, 7, 7))
    params = NetworkParams.for_model(model, 2, 8)
    params = dataclasses.replace(params, engine=dataclasses.replace(params.engine, out_depth=8))
    engine = params.engine
    assert (gap_positions(engine), overlap_positions(engine)) == (5, 7)
    assert [band_rows(engine, n) * n.out_shape[2] for n in model.convs] == [7, 8, 8, 1]
    images = np.random.default_rng(3).integers(0, 256, (1, *model.input.shape), dtype=np.uint8)
    results = simulate_network(model, params, images)
    check_against_reference(model, images, results)
    if form == "simulation":
        check_layer_cycles(model, params, results[0], overlapped=False)


def test_accumulator_ring_deep_enough_that_no_band_waits(small_cnn):
    """hw.bands.ring_depth on a 4 x 8 array: conv0 (2 -> 16 channels, 8 x 8: two channel tiles of eight bands
    of 8 positions, the next reduction tile's weights read while one issues) computes a band in 9 * 9 = 81 cycles
    and writes it back in 8 * 9 = 72, but from the drain (20 cycles) after its last position on, so in a ring of
    two bands (16 words) a band waits for the write-back of the one two before it (84 cycles in all); the ring is
    32 words, where conv0 takes the cycles it takes with its whole output held. In both rings every tensor is
    exact and every layer's cycles are the model's."""
    from compiler.lower import compile_model
    from lcq_train.plan import QuantPlan

    model = compile_model(small_cnn((2, 8, 8), QuantPlan("lcq", 3, 3), seed=3, widths=(16, 4, 4)), (2, 8, 8))
    params = NetworkParams.for_model(model, 4, 8)
    conv0, engine = model.convs[0], params.engine
    assert band_rows(engine, conv0) * conv0.out_shape[2] == 8 and engine.out_depth == 32
    whole = dataclasses.replace(engine, out_depth=1024)
    cycles = {depth: network_layer_cycles(dataclasses.replace(engine, out_depth=depth), conv0, 1, 0)
              for depth in (16, 32)}
    assert cycles[32] == network_layer_cycles(whole, conv0, band_rows(whole, conv0), 0) == cycles[16] - 84
    images = np.random.default_rng(3).integers(0, 256, (1, *model.input.shape), dtype=np.uint8)
    simulated = {}
    for depth in (16, 32):
        ringed = dataclasses.replace(params, engine=dataclasses.replace(engine, out_depth=depth))
        (result,) = simulate_network(model, ringed, images)
        check_against_reference(model, images, [result])
        check_layer_cycles(model, ringed, result)
        simulated[depth] = result["engine_cycles"][0]
    assert simulated[16] - simulated[32] == cycles[16] - cycles[32]


def test_resnet20_on_16x16_in_a_ring_where_no_band_waits(monkeypatch):
    """ResNet-20 on 16 x 16: every 3 x 3 layer runs in bands of 32 positions (the next reduction tile's weights
    read while one issues, from hw.bands.overlap_positions' 18 on): a 16-channel 32 x 32 layer's band is computed
    in 9 * 33 = 297 cycles and written back in 16 * 18 = 288, which with the drain outlast the next band's
    computation, so in a ring of two bands (64 words) bands waited, 480 cycles a layer (224 in blocks.3.conv1),
    3,104 an image. The ring is 128 words, where every layer takes the cycles it takes with its whole output
    held; it grows no deeper than hw.bands.RING_FREE_DEPTH."""
    import hw.bands

    model = load(DATA / "cifar10-resnet20-lcq-w3a3.lcq")
    engine = NetworkParams.for_model(model, 16, 16).engine
    assert engine.out_depth == 128
    assert {band_rows(engine, n) * n.out_shape[2] for n in model.convs if n.kernel == 3} == {32}
    with monkeypatch.context() as patch:
        patch.setattr(hw.bands, "RING_FREE_DEPTH", 64)
        assert NetworkParams.for_model(model, 16, 16).engine.out_depth == 64

    def fastest(depth):
        ringed = dataclasses.replace(engine, out_depth=depth)
        return {node.name: network_layer_cycles(ringed, node, band_rows(ringed, node), 0) for node in model.convs}

    whole, ring, two_bands = fastest(1 << 16), fastest(128), fastest(64)
    assert ring == whole
    slower = {name: two_bands[name] - ring[name] for name in ring if two_bands[name] != ring[name]}
    assert slower == {"conv1": 480, **{f"blocks.{b}.conv{c}": 480 for b in range(3) for c in (1, 2)},
                      "blocks.3.conv1": 224}


def test_next_image_loads_while_the_core_runs(small_cnn):
    """The staging buffer: each next image's pixels are loaded while the core computes the image before
    (stalled, with the logits back-pressured), never while the staged image is being copied; every
    image's tensors and logits are exact."""
    from compiler.lower import compile_model
    from lcq_train.plan import QuantPlan

    model = compile_model(small_cnn((2, 6, 6), QuantPlan("lcq", 3, 3), seed=5, widths=(6, 4, 4)), (2, 6, 6))
    params = NetworkParams.for_model(model, 4, 4)
    images = np.random.default_rng(5).integers(0, 256, (3, *model.input.shape), dtype=np.uint8)
    results = simulate_network(model, params, images, stall=0.2, backpressure=0.3, seed=5, pipelined=True)
    check_against_reference(model, images, results)
    assert [r["left_to_load"] for r in results] == [0, 0, 0]


def test_multiplying_layers_with_more_weights_than_the_lut_layers(small_cnn):
    """The wide weights buffer deeper than the LUT layers' (the 8-bit first layer, 16 -> 16 channels on a 2 x 2
    array: 1,152 words against 162): its weights are read at their own addresses, and the core is exact."""
    from compiler.lower import compile_model
    from lcq_train.plan import QuantPlan

    model = compile_model(small_cnn((16, 4, 4), QuantPlan("lcq", 3, 3), seed=3, widths=(16, 2, 2)), (16, 4, 4))
    params = NetworkParams.for_model(model, 2, 2)
    assert params.engine.wide_depth > 4 * params.engine.weight_depth
    images = np.random.default_rng(3).integers(0, 256, (1, *model.input.shape), dtype=np.uint8)
    check_against_reference(model, images, simulate_network(model, params, images))


def test_output_stage_registers_of_the_ecp5_keep_results_and_cycles(small_cnn, ecp5_form):
    """The output stage as built for the ECP5 (the threshold word and the requantize constants registered
    out of their block RAM, :func:`hw.memories.slow_block_ram`; each column's accumulator read registered and
    the value entering the units a cycle after its channel; simulation builds the other form), with the
    ECP5's data registers without reset (:func:`hw.delay.reset_less_data`): every tensor exact, the cycles as
    the model states."""
    from compiler.lower import compile_model
    from lcq_train.plan import QuantPlan

    model = compile_model(small_cnn((2, 6, 6), QuantPlan("lcq", 3, 3), seed=5, widths=(6, 4, 4)), (2, 6, 6))
    assert {type(n.stage).__name__ for n in model.convs} >= {"Thresholds", "Requantize"}
    params = NetworkParams.for_model(model, 4, 4)
    images = np.random.default_rng(5).integers(0, 256, (1, *model.input.shape), dtype=np.uint8)
    (result,) = simulate_network(model, params, images)
    check_against_reference(model, images, [result])
    check_layer_cycles(model, params, result)


def test_ecp5_form_on_an_array_of_three_column_groups(small_cnn, ecp5_form):
    """The ECP5's form on a 2 x 10 array, whose columns make three groups of four (each group's own copies of
    the column select and of the wide-weights choice) and whose 8-bit edge layer's weights are in the wide
    buffer: every tensor exact, the cycles as the model states."""
    from compiler.lower import compile_model
    from lcq_train.plan import QuantPlan

    model = compile_model(small_cnn((1, 8, 8), QuantPlan("lcq", 3, 3), seed=3, widths=(20, 4, 4)), (1, 8, 8))
    params = NetworkParams.for_model(model, 2, 10)
    assert params.engine.wide_depth and params.engine.cols > 2 * LayerEngine.WORD_GROUP_COLUMNS
    images = np.random.default_rng(3).integers(0, 256, (1, *model.input.shape), dtype=np.uint8)
    (result,) = simulate_network(model, params, images)
    check_against_reference(model, images, [result])
    check_layer_cycles(model, params, result)


def test_a_reset_loses_no_beat_offered_right_after_it(small_cnn, ecp5_form):
    """The ECP5's form, whose blocks take the reset from copies of their own (the engine and the vector unit a
    cycle after the core, the PE array's rows a cycle after the engine: :mod:`hw.reset_tree`), after a reset
    with the first beats offered at once: the core takes none until every block runs, so that none is lost (at
    7b02bc5 a row's table entry loaded in those cycles was, and 2 of the digits CNN's 1,024 conv0 codes were off
    by one in the board form's Verilog); every tensor exact."""
    from compiler.lower import compile_model
    from lcq_train.plan import QuantPlan

    model = compile_model(small_cnn((1, 6, 6), QuantPlan("lcq", 3, 3), seed=4, widths=(4, 4, 4)), (1, 6, 6))
    params = NetworkParams.for_model(model, 2, 4)
    images = np.random.default_rng(4).integers(0, 256, (1, *model.input.shape), dtype=np.uint8)
    (result,) = simulate_network(model, params, images, reset_first=True)
    check_against_reference(model, images, [result])


@pytest.mark.parametrize("write_pairs", [False, True])
def test_multiplying_in_the_first_columns_only(small_cnn, ecp5_form, write_pairs):
    """The ECP5's form on a 2 x 10 array whose PEs multiply in the first 3 columns only (``multiply_cols``): the
    8-bit edge layers run in channel tiles of 3 channels (conv0's 20 in 7), the 3-bit layers in tiles of 10, the
    other columns' PEs keep only the sign and ``k`` of their weights; every tensor exact, the cycles as the model
    states (a multiplying layer's write-back 4 cycles a position, or 5 a pair)."""
    from compiler.lower import compile_model
    from lcq_train.plan import QuantPlan

    model = compile_model(small_cnn((1, 8, 8), QuantPlan("lcq", 3, 3), seed=3, widths=(20, 4, 4)), (1, 8, 8))
    params = NetworkParams.for_model(model, 2, 10, write_pairs=write_pairs, multiply_cols=3)
    multiplying = [n for n in model.convs if n.mac == "multiply"]
    assert multiplying[0] is model.convs[0] and [params.engine.layer_cols(n) for n in model.convs] == \
        [3 if n.mac == "multiply" else 10 for n in model.convs]
    images = np.random.default_rng(3).integers(0, 256, (1, *model.input.shape), dtype=np.uint8)
    (result,) = simulate_network(model, params, images)
    check_against_reference(model, images, [result])
    check_layer_cycles(model, params, result)


def test_max_pooling_on_the_core():
    """Max pooling after the ReLU (2 x 2) and before it (3 x 3, stride 2, padded), then global average
    pooling, on a 3 x 2 array: each max pooling a vector-unit step that reads the code memory through the
    engine's lent read port, 3 lanes per word (partial last lane groups); every tensor, the logits and
    the layers' cycles exact."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from compiler.lower import compile_model
    from lcq_train.plan import quantize_model
    from helpers import randomize

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
            self.conv2, self.conv3 = nn.Conv2d(4, 5, 3, padding=1), nn.Conv2d(5, 4, 1)
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
            x = F.relu(F.max_pool2d(self.conv2(x), 3, 2, 1))
            return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv3(x)), 1).flatten(1))

    torch.manual_seed(3)
    model = compile_model(randomize(quantize_model(Net(), method="lcq", wbits=3, abits=3), 6, act_alpha=4.0), (1, 8, 8))
    assert [n.op for n in model.nodes] == ["input", "conv", "maxpool", "conv", "maxpool", "conv", "pool", "conv"]
    params = NetworkParams.for_model(model, 3, 2)
    images = np.random.default_rng(7).integers(0, 256, (1, *model.input.shape), dtype=np.uint8)
    (result,) = simulate_network(model, params, images, stall=0.2, backpressure=0.3, seed=7)
    check_against_reference(model, images, [result])
    check_layer_cycles(model, params, result)


def layer_cycles(params, node, overlapped=True):
    """The cycles of layer ``node`` on the engine in network mode (``busy`` high), as ``hw/engine.py``
    states, with the bands the program gives it (``hw.bands.band_rows``): the band of a channel tile
    is a unit (a channel tile: ``cols`` channels, or ``multiply_cols`` for a multiplying layer on an engine that
    multiplies in those columns only); unit ``u``'s accumulators are final after ``c_u = (u + 1) * k * T - gap +
    drain`` cycles; its write-back (``W = band positions * (tile + 1)`` cycles) starts in cycle ``c_u + 1`` or
    when the previous unit's ends, whichever is later; ``STAGE_LATENCY`` cycles follow the last, and
    the two cycles of the twice registered ``start`` precede the first. Bands of at least ``R + C + 3``
    positions read the next tile's weights while a tile issues: ``T`` loses its ``R`` cycles, and
    the first tile's load (``R``) comes first. ``overlapped=False``: one band, the write-back of every
    channel tile after the computation of all, weights loaded between tiles (the engine before the
    overlaps). Where the accumulators hold fewer bands than the layer has (``K = out_depth // positions``), a
    unit issues no earlier than the cycle after the write-back of the unit ``K`` before it ends."""
    R, C = params.engine.rows, params.engine.cols
    tile = params.engine.multiply_cols if params.engine.multiply_cols and node.mac == "multiply" else C
    (c_in, _, _), (c_out, ho, wo) = node.in_shape, node.out_shape
    rows = band_rows(params.engine, node) if overlapped else ho
    positions, units = rows * wo, -(-c_out // tile) * (ho // rows)
    k = node.kernel ** 2 * -(-c_in // R)
    gap = max(0, max(2, C - R - 1) - positions)
    load = 0 if overlapped and positions >= max(R + 2, C - 1) else R     # the next tile's weights read while one issues
    paired = params.engine.write_pairs and positions % 2 == 0    # two positions per tile + 2 cycles
    T, drain = load + positions + 1 + gap, R + C + 8     # 8: the code buffer's read address and data registered
    W = positions // 2 * (tile + 2) if paired else positions * (tile + 1)
    if not overlapped:
        return 2 + units * k * T - gap + drain + units * W + LayerEngine.stage_latency(None, params.engine)
    held = params.engine.out_depth // positions
    ends, issue = [], R - load
    for u in range(units):
        issue = max(issue + k * T if u else issue, ends[u - held] + 1 if u >= held else 0)
        start = max(issue + k * T - gap + drain + 1, ends[-1] + 1 if ends else 0)
        ends.append(start + W - 1)
    cycles = 2 + ends[-1] + LayerEngine.stage_latency(None, params.engine)      # 2: the start registered twice
    if held >= units:
        closed = (2 + R - load + max(k * T + units * W, units * k * T + W) - gap + drain
                  + LayerEngine.stage_latency(None, params.engine))
        assert cycles == closed
    assert cycles == network_layer_cycles(params.engine, node, rows, LayerEngine.stage_latency(None, params.engine))
    return cycles


def check_layer_cycles(model, params, result, overlapped=True):
    """Every layer's engine cycles are as :func:`layer_cycles` states, and (``overlapped``) fewer than without
    the overlap where the layer has more than one channel tile. Returns per layer ``(cycles, serial)``."""
    convs = list(model.convs)
    assert len(result["engine_cycles"]) == len(convs)
    counts = []
    for node, cycles in zip(convs, result["engine_cycles"]):
        serial = layer_cycles(params, node, overlapped=False)
        assert cycles == layer_cycles(params, node), f"{node.name}: {cycles} cycles"
        if overlapped and node.out_shape[0] > params.engine.cols:
            assert cycles < serial, f"{node.name}: {cycles} cycles, the write-back is not overlapped ({serial})"
        counts.append((cycles, serial))
    return counts


def test_write_back_in_pairs(small_cnn):
    """With ``write_pairs``, the 2 x 10 array of the test above writes conv0's bands back two positions at
    a time (8 units of 16 positions: 8 * 12 = 96 cycles each instead of 176), so the layer is bound by
    its computation (8 * 153 cycles) instead of its write-back; every tensor exact, with load stalls and
    output back-pressure, over two images."""
    from compiler.lower import compile_model
    from lcq_train.plan import QuantPlan

    model = compile_model(small_cnn((1, 8, 8), QuantPlan("lcq", 3, 3), seed=3, widths=(20, 4, 4)), (1, 8, 8))
    params = NetworkParams.for_model(model, 2, 10, write_pairs=True)
    assert params.engine.halves == 2 and all(t.base % 2 == 0 for t in network_plan(model, params).tensors.values())
    images = np.random.default_rng(3).integers(0, 256, (2, *model.input.shape), dtype=np.uint8)
    results = simulate_network(model, params, images, stall=0.2, backpressure=0.3)
    check_against_reference(model, images, results)
    counts = check_layer_cycles(model, params, results[0])
    drain, flush = 2 + 10 + 8, LayerEngine.stage_latency(None)     # hw.bands.network_drain
    assert band_rows(params.engine, model.convs[0]) == 2
    assert counts[0][0] == 2 + 2 + 8 * 153 + 96 + drain + flush


def test_verilog_lines_stay_short_with_8_bit_threshold_words():
    """A layer whose thresholds make 8-bit codes (a linear layer before the 8-bit classifier) has a
    load word of 255 thresholds (thousands of bits); the sequencer's register values must not be
    sign-extended across it, which wrote one Verilog line of thousands of tokens that Verilator
    refuses ("Too many preprocessor tokens on a line"; such a model then simulates bit-exactly)."""
    import sys

    import torch
    from amaranth.back import verilog

    from compiler.lower import compile_model
    from lcq_train.plan import quantize_model

    from helpers import randomize

    sys.path.insert(0, str(DATA))
    import compile_models as cm

    torch.manual_seed(1)
    model = compile_model(randomize(quantize_model(cm.StridedVGG(10, 1), method="lcq", wbits=3, abits=3), 4), (1, 8, 8))
    params = NetworkParams.for_model(model, 2, 2)
    # The 8-bit thresholds listed, not searched (hw.progression): 255 a channel in a word.
    params = dataclasses.replace(params, engine=dataclasses.replace(params.engine, progression=None, threshold_width=0))
    assert params.engine.code_bits == 8 and params.engine.data_bits > 6000
    assert max(map(len, verilog.convert(NetworkCore(params), name="top").splitlines())) < 4000


@pytest.mark.parametrize("write_pairs", [False, True])
def test_fused_additions_and_activations_in_the_ecp5_form(write_pairs, ecp5_form):
    """A random narrow pre-activation ResNet (4 and 6 channels: an identity and a strided 1x1 shortcut) on (3, 6, 6)
    as built for the ECP5 (:func:`helpers.build_as_for_the_ecp5`):
    its fused additions read the value memory, its fused activations go through the vector unit's lent thresholds
    (and in pairs the odd positions' copy), whose words are registered and whose values come a cycle after their
    slots; every tensor exact (the fused activations' codes too), the cycles as the model states."""
    import torch
    from torch import nn

    from compiler.lower import compile_model
    from helpers import randomize
    from lcq_train.layers import QAct, QConv2d, QLinear
    from lcq_train.models.resnet import PreActBlock, PreActResNet
    from lcq_train.plan import QuantPlan, apply_plan

    class Narrow(PreActResNet):
        def __init__(self):
            nn.Module.__init__(self)
            self.act_in, self.conv1 = QAct(), QConv2d(3, 4, 3, padding=1)
            self.blocks = nn.Sequential(PreActBlock(4, 4, 1), PreActBlock(4, 6, 2))
            self.bn, self.act_fc, self.fc = nn.BatchNorm2d(6), QAct(), QLinear(6, 10)

    torch.manual_seed(0)
    model = compile_model(randomize(apply_plan(Narrow(), QuantPlan("lcq", 3, 3)), seed=5), (3, 6, 6))
    params = NetworkParams.for_model(model, 4, 4, write_pairs=write_pairs)
    assert params.engine.write_pairs == write_pairs
    plan = network_plan(model, params)
    assert any(s.fused_add for s in plan.steps) and any(s.fused_activate for s in plan.steps)
    images = np.random.default_rng(5).integers(0, 256, (1, *model.input.shape), dtype=np.uint8)
    (result,) = simulate_network(model, params, images, stall=0.2, backpressure=0.3, seed=5)
    check_against_reference(model, images, [result], plan)
    convs = [step for step in plan.steps if step.kind == "conv"]
    assert len(result["engine_cycles"]) == len(convs)
    for step, cycles in zip(convs, result["engine_cycles"]):
        node = model.nodes[step.index]
        latency = LayerEngine.stage_latency(None) + (LayerEngine.FUSED_LATENCY if step.fused_activate else 0)
        assert cycles == network_layer_cycles(params.engine, node, band_rows(params.engine, node), latency), step.name


# The ECP5's form by default; simulation's, which the Verilator runs of tests/test_compile_flatten.py cover but for
# the cycles, with -m slow
@pytest.mark.parametrize("form", ["ecp5", pytest.param("simulation", marks=pytest.mark.slow)])
def test_searched_8_bit_codes_on_the_core(form, request):
    """An MLP on the 8 x 8 image (64 -> 32 -> 24 -> 10): fc2 writes the 8-bit codes fc3 reads through the threshold
    unit's search (hw.progression), fc1 its 3-bit codes through the listed thresholds of the same unit, in
    simulation's form and in the ECP5's (registered words and inputs, the value a cycle after its channel): every
    tensor exact, every layer's cycles as the model states with the search's ``code_bits`` cycles in the stage."""
    import torch

    from compiler.lower import compile_model
    from lcq_train.plan import quantize_model

    from helpers import randomize
    from test_compile_flatten import MLP

    if form == "ecp5":
        request.getfixturevalue("ecp5_form")
    torch.manual_seed(0)
    model = compile_model(randomize(quantize_model(MLP(), method="lcq", wbits=3, abits=3), seed=0), (1, 8, 8))
    params = NetworkParams.for_model(model, 2, 2)
    assert params.engine.progression is not None and params.engine.table_code_bits == 3
    images = np.random.default_rng(7).integers(0, 256, (2, *model.input.shape), dtype=np.uint8)
    results = simulate_network(model, params, images)
    check_against_reference(model, images, results)
    for result in results:
        check_layer_cycles(model, params, result)
