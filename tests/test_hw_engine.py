"""The layer engine in Amaranth's simulator against the integer reference, its parameter checks,
and the first-mismatch report of the cocotb comparison."""

import dataclasses
import gc
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("amaranth", reason="hw needs amaranth: pip install -e '.[hw]'")

from amaranth.hdl import UnusedElaboratable  # noqa: E402
from amaranth.sim import Simulator  # noqa: E402

from compiler import reference  # noqa: E402
from compiler.format import load  # noqa: E402
from hw.engine import LayerEngine  # noqa: E402
from hw.engine_params import EngineParams  # noqa: E402
from hw.program import act_beats, check_fits, decode_outputs, layer_beats, output_words  # noqa: E402
from sim.engine_run import compare  # noqa: E402

DIGITS = load(Path(__file__).resolve().parent / "data" / "digits-cnn-lcq-w3a3.lcq")


def run_engine(params, beats, out_words):
    """Load ``beats``, start, read ``out_words`` words (``out_ready`` every other cycle)."""
    dut = LayerEngine(params)
    words = []

    async def testbench(ctx):
        for target, addr, data in beats:
            ctx.set(dut.load_valid, 1)
            ctx.set(dut.load_target, target)
            ctx.set(dut.load_addr, addr)
            ctx.set(dut.load_data, data)
            await ctx.tick()
        ctx.set(dut.load_valid, 0)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        cycle = 0
        while len(words) < out_words:
            ready = cycle % 2
            ctx.set(dut.out_ready, ready)
            valid, data = ctx.get(dut.out_valid), ctx.get(dut.out_data)
            await ctx.tick()
            if valid and ready:
                words.append(data)
            cycle += 1
            assert cycle < 20_000, "the engine did not finish"
        assert ctx.get(dut.busy) == 0 or len(words) == out_words

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return words


@pytest.mark.parametrize("layer", [0, 3])          # conv0 (multiply, thresholds), fc (multiply, requantize)
def test_engine_layer_in_amaranth_simulation(layer):
    node = DIGITS.convs[layer]
    images = np.random.default_rng(layer).integers(0, 256, (1, *DIGITS.input.shape), dtype=np.uint8)
    t = reference.run(DIGITS, images)
    params = EngineParams.for_model(DIGITS, 2, 3)
    words = run_engine(params, layer_beats(params, node) + act_beats(params, node, t[node.input][0]),
                       output_words(params, node))
    assert (decode_outputs(params, node, words) == t[node.output][0]).all()


def test_engine_params_errors_name_the_value():
    params = EngineParams.for_model(DIGITS, 2, 2)
    for field, value, message in [("rows", 0, "rows must be an integer in 1..256, got 0"),
                                  ("wbits", 5, "wbits must be an integer in 2..4, got 5"),
                                  ("abits", 2, "code_bits=3 exceeds abits=2"),
                                  ("threshold_width", 99, "threshold_width must be 0 .* got 99")]:
        with pytest.raises(ValueError, match=message):
            dataclasses.replace(params, **{field: value})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(TypeError, match="params must be an EngineParams"):
            LayerEngine({"rows": 2})
        gc.collect()                                             # the half-built engine, while ignored
    with pytest.raises(ValueError, match=r"layer 'conv0' does not fit the engine: it multiplies levels .* "
                                         r"no multipliers"):
        check_fits(dataclasses.replace(params, multiply=False), DIGITS.convs[0])


def test_first_mismatch_names_layer_channel_position_and_cycle():
    params = EngineParams.for_model(DIGITS, 2, 4)
    node = DIGITS.convs[3]                                       # fc: 10 channels in 3 words of 4
    expected = np.arange(10).reshape(10, 1, 1)
    bits, mask = params.out_bits, (1 << params.out_bits) - 1
    values = list(range(10)) + [0, 0]
    values[6] = 60                                               # channel 6: tile 1, column 2
    words = [sum((v & mask) << (c * bits) for c, v in enumerate(values[w * 4:(w + 1) * 4])) for w in range(3)]
    wrong, message = compare(params, node, 3, {"words": words, "word_cycles": [40, 52, 64]}, expected, image=1)
    assert wrong == 1
    assert message == ("layer 3 (fc), image 1: 1 of 10 outputs differ; first at channel 6, position (y=0, x=0): "
                       "engine 60, reference 6 (output word 1, read at cycle 52 after start)")
    assert compare(params, node, 3, {"words": words, "word_cycles": [0, 0, 0]},
                   decode_outputs(params, node, words), 0) == (0, None)
