"""The whole-network core in Amaranth's simulator: image in, logits out, every layer's output
probed in the data memories and compared with the integer reference."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("amaranth", reason="hw needs amaranth: pip install -e '.[hw]'")

from amaranth.sim import Simulator  # noqa: E402

from compiler import reference  # noqa: E402
from compiler.format import load  # noqa: E402
from compiler.graph import ConvNode  # noqa: E402
from hw.network import NetworkCore  # noqa: E402
from hw.network_params import NetworkParams, network_plan  # noqa: E402
from hw.network_program import MemoryMirror, decode_logits, image_beats, load_beats  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
DIGITS = load(DATA / "digits-cnn-lcq-w3a3.lcq")


def simulate_network(model, params, images, *, stall=0.0, backpressure=0.0, seed=0, limit=2_000_000):
    """Run ``images`` through a :class:`NetworkCore` (load beats stalled with probability ``stall``,
    logits back-pressured with ``backpressure``); returns per image the logits, the cycles from
    ``start`` to idle and the probed tensors ``{name: (C, H, W)}`` of every step, each read from the
    data memories when the step that writes it has finished (the input's once the image is loaded)."""
    core = NetworkCore(params)
    plan = network_plan(model, params)
    steps = plan.steps
    rng = np.random.default_rng(seed)
    results = []

    mirror = MemoryMirror(params)
    probe_ports = [core.probe.code_en, core.probe.code_addr, core.probe.code_data, core.probe.value_en,
                   core.probe.value_addr, core.probe.value_data]

    async def load(ctx, beats):
        """Each beat offered until taken (``load.valid`` low with probability ``stall``), the probe sampled."""
        for target, addr, data in beats:
            while True:
                offer = rng.random() >= stall
                ctx.set(core.load.valid, offer)
                ctx.set(core.load.payload, {"target": target, "addr": addr, "data": data})
                taken = offer and ctx.get(core.load.ready)
                mirror.write(*(ctx.get(port) for port in probe_ports))
                await ctx.tick()
                if taken:
                    break
        ctx.set(core.load.valid, 0)
        mirror.write(*(ctx.get(port) for port in probe_ports))     # the last pixel's code is written now
        await ctx.tick()

    async def testbench(ctx):
        await load(ctx, load_beats(model, params))
        for image in images:
            await load(ctx, image_beats(model, params, image))
            probes = {steps[0].output: mirror.tensor(plan.tensors[steps[0].output])}
            ctx.set(core.start, 1)
            await ctx.tick()
            ctx.set(core.start, 0)
            cycles, out, step = 1, [], 1
            while ctx.get(core.busy):
                ready = rng.random() >= backpressure
                ctx.set(core.out.ready, ready)
                sent, value = ctx.get(core.out.valid), ctx.get(core.out.payload)
                mirror.write(*(ctx.get(port) for port in probe_ports))
                if ctx.get(core.probe.step_done):
                    probes[steps[step].output] = mirror.tensor(plan.tensors[steps[step].output])
                    step += 1
                await ctx.tick()
                if sent and ready:
                    out.append(value)
                cycles += 1
                assert cycles < limit, f"the core did not finish within {limit} cycles"
            assert step == len(steps), f"{step} of {len(steps)} steps ran"
            results.append({"logits": decode_logits(params, out, model.num_classes), "cycles": cycles,
                            "probes": probes})

    sim = Simulator(core)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return results


def check_against_reference(model, images, results):
    t = reference.run(model, images)
    for n, result in enumerate(results):
        assert (result["logits"] == t[model.logits][n].reshape(-1)).all(), f"image {n}: logits differ"
        for name, tensor in result["probes"].items():
            expected = t[name][n]
            wrong = np.argwhere(tensor != expected)
            assert not wrong.size, f"image {n}: {name} differs at {wrong[0].tolist()}: {tensor[tuple(wrong[0])]} " \
                                   f"!= {expected[tuple(wrong[0])]}"
        assert set(result["probes"]) == {node.output for node in model.nodes}


@pytest.mark.parametrize("rows, cols, stall, backpressure", [
    pytest.param(4, 4, 0.0, 0.0, marks=pytest.mark.slow), (3, 2, 0.3, 0.5)])
def test_digits_network_on_the_core(rows, cols, stall, backpressure):
    images = np.random.default_rng(rows).integers(0, 256, (1, *DIGITS.input.shape), dtype=np.uint8)
    params = NetworkParams.for_model(DIGITS, rows, cols)
    results = simulate_network(DIGITS, params, images, stall=stall, backpressure=backpressure)
    check_against_reference(DIGITS, images, results)
    macs = sum(node.macs for node in DIGITS.nodes if isinstance(node, ConvNode))
    assert results[0]["cycles"] > macs / (rows * cols)
