"""The layer engine's generated Verilog in Icarus and Verilator (cocotb), bit-exact against the integer reference.

- Random layers: the convolutions of small CNNs with random parameters compiled at every
  W/A bit-width pair (2, 3, 4 bits, plus their 8-bit multiply edge layers; threshold,
  requantize and raw-accumulator stages), on a 3 x 5 engine, so that channel counts
  leave partial tiles at the array's edges, with random load stalls and output back-pressure.
- A trained digits CNN (W3/A3), the whole model image by image, the engine's outputs
  feeding the next layers.
- Layers of a CIFAR-10 ResNet-20 (W3/A3, trained 12 FP and 3 LCQ epochs on the CPU)
  on an 8 x 8 engine; the whole model is a ``slow`` test.

Builds live in ``build/sim`` (``LCQ_SIM_BUILD`` moves it); Verilator rebuilds only what changed.
"""

import functools
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("amaranth", reason="simulation tests need amaranth: pip install -e '.[hw]'")

from helpers import small_cnn  # noqa: E402

from compiler import reference  # noqa: E402
from compiler.format import load  # noqa: E402
from compiler.graph import CompiledModel  # noqa: E402
from compiler.lower import compile_model  # noqa: E402
from hw.engine_params import EngineParams  # noqa: E402
from hw.program import Job, act_beats, layer_beats, output_words  # noqa: E402
from lcq_train.plan import QuantPlan  # noqa: E402
from sim.engine_run import engine_build, simulate_jobs, simulate_model  # noqa: E402
from simulators import BUILD_ROOT, core_build, require_simulators  # noqa: E402

pytestmark = pytest.mark.sim

DATA = Path(__file__).resolve().parent / "data"
DIGITS, RESNET20 = DATA / "digits-cnn-lcq-w3a3.lcq", DATA / "cifar10-resnet20-lcq-w3a3.lcq"
SIMULATORS = ("icarus", "verilator")
# The whole-model runs take 15-27 s each on Icarus, 7-15 s on Verilator: by default on Verilator only
# (Icarus runs every other test of this file), on both with -m slow.
WHOLE_MODEL_SIMULATORS = (pytest.param("icarus", marks=pytest.mark.slow), "verilator")
BITS = (2, 3, 4)


@functools.lru_cache(maxsize=None)
def random_layers():
    """(model of every layer, [(node, input codes (C, H, W), expected outputs)]) for all bit-width pairs."""
    shape, cases = (1, 6, 6), []
    for wbits in BITS:
        for abits in BITS:
            model = compile_model(small_cnn(shape, QuantPlan("lcq", wbits, abits), seed=10 * wbits + abits,
                                            widths=(4, 6, 7)), shape)
            image = np.random.default_rng(wbits * abits).integers(0, 256, (1, *shape), dtype=np.uint8)
            t = reference.run(model, image)
            cases += [(node, t[node.input][0], t[node.output][0]) for node in model.convs]
    return CompiledModel([node for node, _, _ in cases], "", 10), cases


def assert_exact(report):
    assert report.mismatches == 0, "\n".join(r.first_mismatch for r in report.layers if r.first_mismatch)


@pytest.mark.parametrize("sim", SIMULATORS)
def test_random_layers_of_every_bit_width_with_stalls_and_edge_tiles(sim, tmp_path):
    require_simulators(sim)
    union, cases = random_layers()
    params = EngineParams.for_model(union, rows=3, cols=5)
    jobs = [Job(i, node, layer_beats(params, node) + act_beats(params, node, x), output_words(params, node))
            for i, (node, x, _) in enumerate(cases)]
    built = core_build(sim, params, BUILD_ROOT / f"{sim}-engine-random-3x5")
    report = simulate_jobs(built, params, jobs, [want for _, _, want in cases], tmp_path,
                           stall=0.3, backpressure=0.4, seed=1)
    assert_exact(report)
    kinds = {(n.wbits, n.abits, n.mac, n.stage.kind if n.stage else "none") for n, _, _ in cases}
    assert {(w, a) for w, a, mac, _ in kinds if mac == "lut"} == {(w, a) for w in BITS for a in BITS}
    assert {kind for *_, kind in kinds} == {"thresholds", "requantize", "none"}
    assert len(report.layers) == len(cases) and all(r.cycles > 0 for r in report.layers)


def simulate_digits(sim: str, rows: int, cols: int, n_images: int, seed: int, *, resident: str = "none",
                    stall: float = 0.0, backpressure: float = 0.0):
    """The trained digits CNN, every layer on a ``rows`` x ``cols`` engine, on random images: exact,
    every layer reported, no layer faster than the MACs / (R*C) bound."""
    require_simulators(sim)
    model = load(DIGITS)
    params = EngineParams.for_model(model, rows, cols, resident=resident)
    images = np.random.default_rng(seed).integers(0, 256, (n_images, *model.input.shape), dtype=np.uint8)
    build_dir = BUILD_ROOT / f"{sim}-engine-digits-{rows}x{cols}-{resident}"
    report = simulate_model(engine_build(sim, params, build_dir), params, DIGITS, model, images, build_dir / "run",
                            resident=resident, stall=stall, backpressure=backpressure, seed=seed)
    assert_exact(report)
    assert [r.name for r in report.layers] == [n.name for n in model.convs]
    assert all(r.compute_cycles >= r.macs / (rows * cols) for r in report.layers)


@pytest.mark.parametrize("sim", WHOLE_MODEL_SIMULATORS)
def test_trained_digits_cnn_whole_model_on_the_engine(sim):
    simulate_digits(sim, 4, 4, 1, seed=2, stall=0.2, backpressure=0.2)


@pytest.mark.parametrize("sim", WHOLE_MODEL_SIMULATORS)
def test_digits_cnn_with_resident_constants_two_images(sim):
    """Every layer's constants loaded once, then two images with only configuration and activations."""
    simulate_digits(sim, 2, 8, 2, seed=6, resident="all")


@pytest.mark.parametrize("sim", WHOLE_MODEL_SIMULATORS)
def test_digits_cnn_with_resident_weights_two_images(sim):
    """Every layer's weights loaded once, then two images, each layer bringing its tables and stage constants."""
    simulate_digits(sim, 2, 4, 2, seed=7, resident="weights", stall=0.2)


RESNET20_LAYERS = ("blocks.3.shortcut", "blocks.6.shortcut", "fc")


@pytest.mark.parametrize("sim", WHOLE_MODEL_SIMULATORS)
def test_trained_resnet20_layers_on_an_8x8_engine(sim):
    require_simulators(sim)
    model = load(RESNET20)
    params = EngineParams.for_model(model, rows=8, cols=8)
    images = np.random.default_rng(3).integers(0, 256, (1, *model.input.shape), dtype=np.uint8)
    t = reference.run(model, images)
    jobs, expected = [], []
    for i, node in enumerate(model.convs):
        if node.name in RESNET20_LAYERS:
            x = t[node.input][0]
            jobs.append(Job(i, node, layer_beats(params, node) + act_beats(params, node, x), output_words(params, node)))
            expected.append(t[node.output][0])
    built = engine_build(sim, params, BUILD_ROOT / f"{sim}-engine-resnet20-8x8")
    report = simulate_jobs(built, params, jobs, expected, BUILD_ROOT / f"{sim}-engine-resnet20-8x8" / "layers",
                           stall=0.1, backpressure=0.1, seed=3)
    assert_exact(report)
    assert [r.name for r in report.layers] == list(RESNET20_LAYERS)


@pytest.mark.slow
def test_trained_resnet20_whole_model_on_an_8x8_engine():
    require_simulators("verilator")
    model = load(RESNET20)
    params = EngineParams.for_model(model, rows=8, cols=8)
    images = np.random.default_rng(4).integers(0, 256, (1, *model.input.shape), dtype=np.uint8)
    build_dir = BUILD_ROOT / "verilator-engine-resnet20-8x8"
    report = simulate_model(engine_build("verilator", params, build_dir), params, RESNET20, model, images,
                            build_dir / "model", stall=0.05, backpressure=0.05, seed=4)
    assert_exact(report)
    assert len(report.layers) == len(model.convs) == 22          # conv1, 18 in the blocks, 2 shortcuts, fc


STUCK_ENGINE = """
module engine(input clk, input rst, input load__valid, output load__ready, input [15:0] load__payload,
              input start, output busy, output out__valid, input out__ready, output [15:0] out__payload);
  assign load__ready = 1'b0;
  assign busy = 1'b0;
  assign out__valid = 1'b0;
  assign out__payload = 16'b0;
endmodule
"""


def test_a_beat_the_engine_never_takes_fails_in_simulated_time(tmp_path):
    """An engine that never raises load__ready: the testbench fails within cycles, naming the beat, not at the
    simulator's wall-clock deadline (an hour by default) with no word of where it hung."""
    require_simulators("icarus")
    from sim.runner import SimulationFailed, SimulationTimeout, build, run_test

    (tmp_path / "engine.v").write_text(STUCK_ENGINE)
    built = build("icarus", [tmp_path / "engine.v"], "engine", tmp_path / "build")
    data = {"params": {"rows": 1, "cols": 1}, "load_fields": {"target": 0, "addr": 2, "data": 8},
            "jobs": [{"index": 3, "beats": [[1, 0, 7], [1, 1, 9]], "out_words": 1}], "stall": 0.5, "seed": 0}
    with pytest.raises(SimulationFailed) as failure:
        run_test(built, "sim.engine_cocotb", tmp_path / "run", data=data, timeout=60)
    assert not isinstance(failure.value, SimulationTimeout)
    assert "load beat 0 of 2 (target 1, addr 0, data 7) offered for" in str(failure.value)
