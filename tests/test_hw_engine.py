"""The layer engine in Amaranth's simulator against the integer reference, its parameter checks,
and the first-mismatch report of the cocotb comparison."""

import dataclasses
import gc
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("amaranth", reason="hw needs amaranth: pip install -e '.[hw]'")

from amaranth import ClockDomain, Module, ResetSignal, Signal  # noqa: E402
from amaranth.hdl import UnusedElaboratable  # noqa: E402
from amaranth.lib import wiring  # noqa: E402
from amaranth.sim import Simulator  # noqa: E402

from compiler import reference  # noqa: E402
from compiler.format import load  # noqa: E402
from hw.engine import EngineSignature, LayerEngine  # noqa: E402
from hw.engine_params import TARGET_BITS, TARGETS, EngineParams  # noqa: E402
from hw.link import LinkBridge  # noqa: E402
from hw.program import Job, act_beats, check_fits, config_values, decode_outputs, layer_beats, output_words  # noqa: E402
from sim.engine_run import compare  # noqa: E402

DIGITS = load(Path(__file__).resolve().parent / "data" / "digits-cnn-lcq-w3a3.lcq")


def compute_cycles(params, node, drain):
    """Computing cycles of layer ``node`` as the engine's module docstring gives them."""
    v = config_values(params, node)
    tiles = v["co_tiles"] * v["kernel"] ** 2 * v["groups"]
    gap = max(0, params.cols + 2 - v["positions"])
    return tiles * (params.rows + v["positions"] + 1 + gap) - gap + drain


def run_engine(params, node, beats, out_words, reset_first=False):
    """Load ``beats``, start, read ``out_words`` words (``out.ready`` every other cycle); check the
    documented timing: load ready while idle, each word offered ``cols + STAGE_LATENCY + 3``
    cycles after computing ends or the previous word is accepted, busy until the last is
    accepted, then no busy and no word for as long as reading back a word takes, twice.
    ``reset_first``: ``sync``'s reset held for two cycles first; returns the words and the cycles after it that
    ``load`` was not ready (0 without)."""
    dut = LayerEngine(params)
    top, rst = Module(), Signal()
    top.domains.sync = ClockDomain()
    top.submodules.engine = dut
    top.d.comb += ResetSignal("sync").eq(rst)
    held = 0
    assert dut.drain == params.rows + params.cols + 6
    word_cycles = params.cols + LayerEngine.stage_latency(None) + 3
    words = []

    async def testbench(ctx):
        nonlocal held
        if reset_first:
            ctx.set(rst, 1)
            await ctx.delay(2e-8)       # two clock periods (a tick in reset raises DomainReset)
            ctx.set(rst, 0)
            while not ctx.get(dut.load.ready):
                held += 1
                await ctx.tick()
        for target, addr, data in beats:
            ctx.set(dut.load.valid, 1)
            ctx.set(dut.load.payload, {"target": target, "addr": addr, "data": data})
            assert ctx.get(dut.load.ready)
            await ctx.tick()
        ctx.set(dut.load.valid, 0)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        cycle, due = 1, compute_cycles(params, node, dut.drain) + word_cycles   # cycle 1: after start's edge
        while len(words) < out_words:
            ready = cycle % 2
            ctx.set(dut.out.ready, ready)
            valid, data = ctx.get(dut.out.valid), ctx.get(dut.out.payload)
            assert ctx.get(dut.busy) and not ctx.get(dut.load.ready), f"cycle {cycle}: idle before the last word"
            assert valid == (cycle >= due), f"cycle {cycle}: word {len(words)} offered={valid}, due at {due}"
            await ctx.tick()
            if valid and ready:
                words.append(data)
                due = cycle + word_cycles
            cycle += 1
            assert cycle < 20_000, "the engine did not finish"
        ctx.set(dut.out.ready, 1)
        for n in range(2 * word_cycles):
            assert not ctx.get(dut.busy) and not ctx.get(dut.out.valid), f"{n} cycles after the last word"
            await ctx.tick()

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return words, held


@pytest.mark.parametrize("ecp5", [False, True])
@pytest.mark.parametrize("layer", [0, 3])          # conv0 (multiply, thresholds), fc (multiply, requantize)
def test_engine_layer_in_amaranth_simulation(layer, ecp5, monkeypatch):
    """A layer's outputs exact; ``ecp5``: the engine as built for the ECP5 (the output stage's block RAM words
    registered, each column's accumulator read registered and the value entering the units a cycle late, data
    registers without reset; simulation builds the other form)."""
    if ecp5:
        from helpers import build_as_for_the_ecp5
        build_as_for_the_ecp5(monkeypatch)
    node = DIGITS.convs[layer]
    images = np.random.default_rng(layer).integers(0, 256, (1, *DIGITS.input.shape), dtype=np.uint8)
    t = reference.run(DIGITS, images)
    params = EngineParams.for_model(DIGITS, 2, 3)
    words, _ = run_engine(params, node, layer_beats(params, node) + act_beats(params, node, t[node.input][0]),
                          output_words(params, node))
    assert (decode_outputs(params, node, words) == t[node.output][0]).all()


@pytest.mark.parametrize("ecp5", [False, True])
def test_after_a_reset_the_engine_takes_beats_once_its_rows_run(ecp5, monkeypatch):
    """In the ECP5's form the PE array's rows leave a reset a cycle after the engine (:mod:`hw.reset_tree`):
    ``load`` is not ready in that cycle (elsewhere it is at once), and the layer's outputs are exact."""
    if ecp5:
        from helpers import build_as_for_the_ecp5
        build_as_for_the_ecp5(monkeypatch)
    node = DIGITS.convs[0]
    images = np.random.default_rng(0).integers(0, 256, (1, *DIGITS.input.shape), dtype=np.uint8)
    t = reference.run(DIGITS, images)
    params = EngineParams.for_model(DIGITS, 2, 3)
    words, held = run_engine(params, node, layer_beats(params, node) + act_beats(params, node, t[node.input][0]),
                             output_words(params, node), reset_first=True)
    assert held == (LayerEngine.RESET_LEVELS if ecp5 else 0)
    assert (decode_outputs(params, node, words) == t[node.output][0]).all()


def test_engine_requantize_stage_with_relu():
    """STAGE_REQUANTIZE_RELU in layer mode: the requantized outputs, negative ones as 0; an engine without the
    ReLU refuses the layer."""
    fc = DIGITS.convs[3]
    node = dataclasses.replace(fc, stage=dataclasses.replace(fc.stage, relu=True))
    images = np.random.default_rng(5).integers(0, 256, (1, *DIGITS.input.shape), dtype=np.uint8)
    t = reference.run(DIGITS, images)
    plain = EngineParams.for_model(DIGITS, 2, 3)
    with pytest.raises(ValueError, match="its requantize stage has a ReLU but the engine's has none"):
        check_fits(plain, node)
    params = dataclasses.replace(plain, requantize=dataclasses.replace(plain.requantize, relu=True))
    words, _ = run_engine(params, node, layer_beats(params, node) + act_beats(params, node, t[node.input][0]),
                          output_words(params, node))
    want = node.stage.apply(t[f"{fc.name}.acc"])[0]
    assert (t[fc.output][0] < 0).any() and (want == np.maximum(t[fc.output][0], 0)).all()
    assert (decode_outputs(params, node, words) == want).all()


def test_engine_signature_is_the_bridge_side_flipped():
    params = EngineParams.for_model(DIGITS, 2, 3)
    signature = EngineSignature.for_params(params)
    assert signature == EngineSignature(params.addr_bits, params.data_bits, 3 * params.out_bits)
    assert TARGET_BITS == 3 and (TARGETS - 1).bit_length() == TARGET_BITS
    assert [(name, member.offset, member.width) for name, member in signature.load_layout] == [
        ("target", 0, TARGET_BITS), ("addr", TARGET_BITS, params.addr_bits),
        ("data", TARGET_BITS + params.addr_bits, params.data_bits)]
    assert sorted(path for path, _ in signature.members.flatten()) == [
        ("busy",), ("load",), ("load", "payload"), ("load", "ready"), ("load", "valid"),
        ("out",), ("out", "payload"), ("out", "ready"), ("out", "valid"), ("start",)]
    with pytest.raises(ValueError, match="Data width must be a positive integer, not 0"):
        EngineSignature(4, 0, 8)
    engine = LayerEngine(params)
    bridge = LinkBridge(params.addr_bits, params.target_bits, 3 * params.out_bits, 2, 3)
    assert bridge.engine.signature == signature.flip()
    m = Module()
    m.submodules.engine, m.submodules.bridge = engine, bridge
    wiring.connect(m, bridge.engine, engine)
    narrow = LinkBridge(params.addr_bits, params.target_bits, 2 * params.out_bits, 2, 2)
    with pytest.raises(wiring.ConnectionError, match="out.payload"):
        wiring.connect(Module(), narrow.engine, engine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        del m, engine, bridge, narrow
        gc.collect()


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


def test_all_zero_thresholds_get_the_two_bit_width_the_units_take():
    """A model whose every threshold is 0 (valid: one sign bit would hold them) gets an engine whose threshold
    units are built (stored thresholds at least 2 bits, as :class:`hw.thresholds.ThresholdUnit` takes them), its
    outputs exact; ``threshold_width`` 1 is refused by the rule its message states."""
    model = load(Path(__file__).resolve().parent / "data" / "digits-cnn-lcq-w3a3.lcq")
    for node in model.convs:
        if node.stage is not None and node.stage.kind == "thresholds":
            node.stage.thresholds = np.zeros_like(node.stage.thresholds)
    model.validate()
    node = model.convs[0]
    params = EngineParams.for_model(model, 2, 3)
    assert params.threshold_bits == 2
    images = np.random.default_rng(0).integers(0, 256, (1, *model.input.shape), dtype=np.uint8)
    t = reference.run(model, images)
    words, _ = run_engine(params, node, layer_beats(params, node) + act_beats(params, node, t[node.input][0]),
                          output_words(params, node))
    assert (decode_outputs(params, node, words) == t[node.output][0]).all()
    for width in (1, True):
        with pytest.raises(ValueError, match=rf"threshold_width must be 0 .acc_bits \+ 1. or 2\.\.\d+, got {width}"):
            dataclasses.replace(params, threshold_width=width)


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


def layer_words(params, node, out):
    """The engine's output words of ``node`` holding ``out`` ``(C_out, Ho, Wo)``: :func:`decode_outputs` inverted."""
    (c_out, ho, wo), cols, bits = node.out_shape, params.cols, params.out_bits
    padded = np.zeros((-(-c_out // cols) * cols, ho, wo), dtype=np.int64)
    padded[:c_out] = out
    fields = padded.reshape(-1, cols, ho * wo).transpose(0, 2, 1).reshape(-1, cols)
    return [sum((int(v) & ((1 << bits) - 1)) << (c * bits) for c, v in enumerate(row)) for row in fields]


@pytest.mark.parametrize("drop", ["an image", "a layer", "every layer"])
def test_results_missing_an_image_or_a_layer_fail_instead_of_comparing_nothing(monkeypatch, tmp_path, drop):
    """Results the testbench left out were never compared: a missing image or layer counted 0 mismatches."""
    import sim.engine_run as engine_run
    from sim.runner import SimulationFailed

    params = EngineParams.for_model(DIGITS, 2, 4)
    images = np.random.default_rng(0).integers(0, 256, (2, *DIGITS.input.shape), dtype=np.uint8)
    convs = [i for i, n in enumerate(DIGITS.nodes) if n in DIGITS.convs]
    t = reference.run(DIGITS, images)
    per_image = [[{"index": i, "cycles": 1, "compute_cycles": 1, "word_cycles": [],
                   "words": layer_words(params, DIGITS.nodes[i], t[DIGITS.nodes[i].output][k])} for i in convs]
                 for k in range(2)]
    results = {"an image": per_image[:1], "a layer": [per_image[0], per_image[1][1:]],
               "every layer": [[], []]}[drop]
    monkeypatch.setattr(engine_run, "_run", lambda *a: results)
    built = types.SimpleNamespace(sim="verilator")                  # (what the report reads of a build)
    with pytest.raises(SimulationFailed, match=r"the testbench returned results for"):
        engine_run.simulate_model(built, params, "digits.lcq", DIGITS, images, tmp_path)
    monkeypatch.setattr(engine_run, "_run", lambda *a: per_image)
    assert engine_run.simulate_model(built, params, "digits.lcq", DIGITS, images, tmp_path).mismatches == 0


def test_job_results_missing_a_layer_fail_instead_of_comparing_fewer(monkeypatch, tmp_path):
    import sim.engine_run as engine_run
    from sim.runner import SimulationFailed

    params = EngineParams.for_model(DIGITS, 2, 4)
    image = np.random.default_rng(1).integers(0, 256, (1, *DIGITS.input.shape), dtype=np.uint8)
    t = reference.run(DIGITS, image)
    jobs = [Job(i, n, [], output_words(params, n)) for i, n in enumerate(DIGITS.nodes) if n in DIGITS.convs]
    expected = [t[job.node.output][0] for job in jobs]
    results = [{"index": job.index, "cycles": 1, "compute_cycles": 1, "word_cycles": [],
                "words": layer_words(params, job.node, want)} for job, want in zip(jobs, expected)]
    built = types.SimpleNamespace(sim="verilator")
    monkeypatch.setattr(engine_run, "_run", lambda *a: [results[:-1]])
    with pytest.raises(SimulationFailed, match=r"the testbench returned results for layers"):
        engine_run.simulate_jobs(built, params, jobs, expected, tmp_path)
    monkeypatch.setattr(engine_run, "_run", lambda *a: [results])
    assert engine_run.simulate_jobs(built, params, jobs, expected, tmp_path).mismatches == 0
