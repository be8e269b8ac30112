"""cocotb testbench for ``hw.network.NetworkCore``, driven by the data file of ``sim.runner``.

The DUT's ports are ``hw.network.NetworkSignature``'s as Amaranth writes them: ``load__valid``,
``load__ready``, ``load__payload`` (the fields of a beat packed), ``image__valid``,
``image__ready``, ``image__payload``, ``start``, ``busy``, ``out__valid``, ``out__ready``,
``out__payload`` and the probe port ``probe__code_en`` .. ``probe__step_done``.

The data (written by :mod:`sim.network_run`) holds ``model`` (the compiled model's path),
``rows`` and ``cols`` (the core is ``NetworkParams.for_model(model, rows, cols)``, recomputed
here: it is deterministic), ``load_fields`` (the bit offset of each field of
``load__payload``), ``images`` (uint8 nested lists), ``stall`` (probability that
``load__valid`` or ``image__valid`` is low in a cycle), ``backpressure`` (probability that
``out__ready`` is low), ``seed``, ``max_cycles`` (per image), ``idle_cycles`` (the most cycles
without any progress: a pixel taken, a memory write, a step done, a logit sent) and
``results`` (the JSON file to write).

The core is loaded once (``hw.network_program.load_beats``); then per image ``start`` is
pulsed, the pixels go in on ``image`` and the logits come out on ``out``; nothing else
passes between the host and the core. Every cycle the probe port is sampled into a
``hw.network_program.MemoryMirror``, and at each ``probe__step_done`` the output tensor of
that step (``network_plan(...).steps`` in order) is read from the mirror.

Per image the results hold ``cycles`` (from the clock edge that samples ``start`` to the first
cycle ``busy`` is low), ``logits`` (the out stream's words, unsigned), ``pixels`` and
``out_beats`` (beats taken on ``image`` and sent on ``out``), ``step_cycles`` (the cycle,
counted the same way, each step ended at) and ``probes`` (``{tensor name: nested lists
(C, H, W)}``). Comparison with the integer reference happens outside the simulator. A run
past its deadline fails naming the step it was in.
"""

from __future__ import annotations

import json
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge

from sim.runner import load_data

PERIOD_NS = 10


def _int(value, what: str) -> int:
    if not value.is_resolvable:
        raise AssertionError(f"{what} holds X or Z: {value}")
    return int(value.to_unsigned())


class Core:
    """The DUT's ports, driven at falling edges (sampled by the next rising edge)."""

    def __init__(self, dut, d: dict):
        self.dut, self.clk = dut, dut.clk
        self.fields = d["load_fields"]
        self.rng = random.Random(d.get("seed", 0))
        self.stall, self.backpressure = d.get("stall", 0.0), d.get("backpressure", 0.0)

    async def reset(self):
        dut = self.dut
        for sig in (dut.load__valid, dut.load__payload, dut.image__valid, dut.image__payload, dut.start,
                    dut.out__ready):
            sig.value = 0
        dut.rst.value = 1
        Clock(self.clk, PERIOD_NS, unit="ns").start(start_high=False)
        for _ in range(2):
            await FallingEdge(self.clk)
        # Icarus evaluates Yosys's ``always @*`` blocks only when an input changes, and the
        # sequencer's state register stays at its initial IDLE through reset: ``load__ready``
        # and ``busy`` (decoded from it) would read X until the first start. One start pulse,
        # then reset again, moves the state and back.
        dut.rst.value, dut.start.value = 0, 1
        await FallingEdge(self.clk)
        dut.rst.value, dut.start.value = 1, 0
        for _ in range(2):
            await FallingEdge(self.clk)
        dut.rst.value = 0
        if not (dut.load__ready.value.is_resolvable and dut.busy.value.is_resolvable):
            raise AssertionError(f"after reset: load__ready={dut.load__ready.value}, busy={dut.busy.value}")

    async def load(self, beats):
        dut = self.dut
        for beat in beats:
            while True:
                valid = self.rng.random() >= self.stall
                dut.load__valid.value = int(valid)
                dut.load__payload.value = sum(value << self.fields[name]
                                              for name, value in zip(("target", "addr", "data"), beat))
                ready = int(dut.load__ready.value)
                await FallingEdge(self.clk)
                if valid and ready:
                    break
        dut.load__valid.value = 0

    async def run(self, image: int, pixels: list[int], classes: int, steps, plan, mirror, max_cycles: int,
                  idle_cycles: int) -> dict:
        dut, rng, stall, backpressure = self.dut, self.rng, self.stall, self.backpressure
        busy, image_ready, image_valid, image_payload = dut.busy, dut.image__ready, dut.image__valid, dut.image__payload
        out_valid, out_ready, out_payload = dut.out__valid, dut.out__ready, dut.out__payload
        code_en, value_en, step_done = dut.probe__code_en, dut.probe__value_en, dut.probe__step_done
        code_addr, code_data = dut.probe__code_addr, dut.probe__code_data
        value_addr, value_data = dut.probe__value_addr, dut.probe__value_data
        dut.start.value = 1
        await FallingEdge(self.clk)
        dut.start.value = 0
        cycle, fed, logits, step, step_cycles, probes, last_progress = 1, 0, [], 0, [], {}, 1
        offered = None

        def where() -> str:
            if step < len(steps):
                s = steps[step]
                return f"in step {step} of {len(steps)} ({s.kind} {s.name})"
            return f"after the last step ({len(steps)} steps done)"

        while int(busy.value):
            if cycle > max_cycles or cycle - last_progress > idle_cycles:
                why = (f"no end after {max_cycles} cycles" if cycle > max_cycles
                       else f"no progress for {idle_cycles} cycles")
                raise AssertionError(f"image {image}: {why}, {where()}: {fed} of {len(pixels)} pixels taken, "
                                     f"{len(logits)} of {classes} logits received")
            offer = fed < len(pixels) and rng.random() >= stall
            if offer != offered:
                image_valid.value = int(offer)
                offered = offer
            if offer:
                image_payload.value = pixels[fed]
            ready = rng.random() >= backpressure
            out_ready.value = int(ready)
            if offer and int(image_ready.value):
                fed += 1
                last_progress = cycle
            if ready and int(out_valid.value):
                if len(logits) == classes:
                    raise AssertionError(f"image {image}: more than the expected {classes} logits")
                logits.append(_int(out_payload.value, f"image {image}: logit {len(logits)} (cycle {cycle})"))
                last_progress = cycle
            codes, values = int(code_en.value), int(value_en.value)
            if codes or values:
                what = f"image {image}: the probe port at cycle {cycle}, {where()}"
                mirror.write(codes, _int(code_addr.value, what) if codes else 0,
                             _int(code_data.value, what) if codes else 0, values,
                             _int(value_addr.value, what) if values else 0,
                             _int(value_data.value, what) if values else 0)
                last_progress = cycle
            if int(step_done.value):
                if step == len(steps):
                    raise AssertionError(f"image {image}: more than the plan's {len(steps)} steps ended")
                name = steps[step].output
                probes[name] = mirror.tensor(plan.tensors[name]).tolist()
                step_cycles.append(cycle)
                step += 1
                last_progress = cycle
            await FallingEdge(self.clk)
            cycle += 1
        image_valid.value = 0
        out_ready.value = 0
        if step != len(steps) or fed != len(pixels) or len(logits) != classes:
            raise AssertionError(f"image {image}: the core went idle after {cycle} cycles with {step} of "
                                 f"{len(steps)} steps done, {fed} of {len(pixels)} pixels taken, {len(logits)} "
                                 f"of {classes} logits received")
        return {"image": image, "cycles": cycle, "logits": logits, "pixels": fed, "out_beats": len(logits),
                "step_cycles": step_cycles, "probes": probes}


@cocotb.test()
async def network_runs(dut):
    import numpy as np

    from compiler.format import load
    from hw.network_params import NetworkParams, network_plan
    from hw.network_program import MemoryMirror, image_pixels, load_beats

    d = load_data()
    model = load(d["model"])
    params = NetworkParams.for_model(model, d["rows"], d["cols"])
    plan = network_plan(model, params)
    core = Core(dut, d)
    await core.reset()
    await core.load(load_beats(model, params))
    mirror = MemoryMirror(params)
    results = []
    for i, image in enumerate(d["images"]):
        pixels = image_pixels(model, np.asarray(image, dtype=np.uint8))
        results.append(await core.run(i, pixels, model.num_classes, plan.steps, plan, mirror, d["max_cycles"],
                                      d["idle_cycles"]))
    with open(d["results"], "w") as f:
        json.dump(results, f)
