"""cocotb testbench for ``hw.network.NetworkCore``, driven by the data file of ``sim.runner``.

The DUT's ports are ``hw.network.NetworkSignature``'s as Amaranth writes them: ``load__valid``,
``load__ready``, ``load__payload`` (the fields of a beat packed), ``start``, ``busy``,
``out__valid``, ``out__ready``, ``out__payload`` and the probe port ``probe__code_en`` ..
``probe__step_done``.

The data (written by :mod:`sim.network_run`) holds ``model`` (the compiled model's path),
``rows``, ``cols``, ``write_pairs`` and ``multiply_cols`` (the core is ``NetworkParams.for_model(model, rows, cols,
write_pairs, multiply_cols)``, recomputed here: it is deterministic), ``load_fields`` (the bit offset of each field of
``load__payload``), ``images`` (uint8 nested lists), ``stall`` (probability that
``load__valid`` is low in a cycle), ``backpressure`` (probability that ``out__ready`` is low in a
cycle the core offers a logit), ``seed``, ``max_cycles`` (per image), ``idle_cycles`` (the most cycles
without any progress: a memory write, a step done, a logit sent) and
``results`` (the JSON file to write).

The core is loaded once (``hw.network_program.load_beats``); then per image its pixels are
loaded (``image_beats``, into the staging buffer), ``start`` is pulsed and the logits come out on
``out``; nothing else passes between the host and the core. The probe port's writes are sampled into
a ``hw.network_program.MemoryMirror`` cycle by cycle while the core writes, offers a logit or ends a
step; across the cycles in which it does none of these the bench waits once (until one of those
signals changes, ``busy`` falls or a deadline passes), so that its time goes to the cycles it has to
look at. At each ``probe__step_done`` the output tensor of the next step (``network_plan(...).steps``
in order, the input first: the staged image copied) is read from it.

Per image the results hold ``cycles`` (from the clock edge that samples ``start`` to the first
cycle ``busy`` is low), ``logits`` (the out stream's words, unsigned), ``pixels`` and
``out_beats`` (image beats loaded, beats sent on ``out``), ``step_cycles`` (the cycle,
counted the same way, each step ended at) and ``probes`` (``{tensor name: nested lists
(C, H, W)}``). Comparison with the integer reference happens outside the simulator. A run
past its deadline fails naming the step it was in.
"""

from __future__ import annotations

import json

import cocotb
from cocotb.simtime import get_sim_time
from cocotb.triggers import FallingEdge, First, Timer

from sim.engine_cocotb import PERIOD_NS, Engine, unsigned
from sim.runner import load_data


def _int(value, what: str) -> int:
    if not value.is_resolvable:
        raise AssertionError(f"{what} holds X or Z: {value}")
    return unsigned(value)        # (a one-bit port: the probe's address into a memory of two words)


class Core(Engine):
    """The DUT's ports, driven at falling edges (sampled by the next rising edge): the layer
    engine's testbench driver (load, start, out) plus the probe port."""

    async def reset(self):
        await super().reset()
        dut = self.dut
        if not (dut.load__ready.value.is_resolvable and dut.busy.value.is_resolvable):
            raise AssertionError(f"after reset: load__ready={dut.load__ready.value}, busy={dut.busy.value}")

    async def load(self, beats, mirror=None):
        """Each beat offered until taken; with a ``mirror``, the probe port sampled into it (the
        last beat's write included)."""
        if mirror is None:
            await super().load(beats)
            return
        await super().load(beats, lambda: self.sample(mirror, "while loading"))
        self.sample(mirror, "while loading")
        await FallingEdge(self.clk)

    def sample(self, mirror, where: str) -> bool:
        """This cycle's writes of the probe port into ``mirror``; whether there were any."""
        dut = self.dut
        codes, values = int(dut.probe__code_en.value), int(dut.probe__value_en.value)
        if codes or values:
            what = f"the probe port {where}"
            mirror.write(codes, _int(dut.probe__code_addr.value, what) if codes else 0,
                         _int(dut.probe__code_data.value, what) if codes else 0, values,
                         _int(dut.probe__value_addr.value, what) if values else 0,
                         _int(dut.probe__value_data.value, what) if values else 0)
        return bool(codes or values)

    async def run(self, image: int, pixels: list, classes: int, steps, plan, mirror, max_cycles: int,
                  idle_cycles: int) -> dict:
        """Load ``pixels`` (the image's beats), start, run to idle; see the module docstring."""
        dut, rng, backpressure = self.dut, self.rng, self.backpressure
        busy, step_done = dut.busy, dut.probe__step_done
        out_valid, out_ready, out_payload = dut.out__valid, dut.out__ready, dut.out__payload
        await self.load(pixels, mirror)
        dut.start.value = 1
        await FallingEdge(self.clk)
        dut.start.value = 0
        cycle, logits, step, step_cycles, last_progress, probes = 1, [], 0, [], 1, {}
        start_ns = get_sim_time("ns")
        events = (out_valid, dut.probe__code_en, dut.probe__value_en, step_done)

        def where() -> str:
            if step < len(steps):
                s = steps[step]
                return f"in step {step} of {len(steps)} ({s.kind} {s.name})"
            return f"after the last step ({len(steps)} steps done)"

        while int(busy.value):
            if cycle > max_cycles or cycle - last_progress > idle_cycles:
                why = (f"no end after {max_cycles} cycles" if cycle > max_cycles
                       else f"no progress for {idle_cycles} cycles")
                raise AssertionError(f"image {image}: {why}, {where()}: {len(logits)} of {classes} logits "
                                     f"received")
            ready = rng.random() >= backpressure
            out_ready.value = int(ready)
            if ready and int(out_valid.value):
                if len(logits) == classes:
                    raise AssertionError(f"image {image}: more than the expected {classes} logits")
                logits.append(_int(out_payload.value, f"image {image}: logit {len(logits)} (cycle {cycle})"))
                last_progress = cycle
            if self.sample(mirror, f"of image {image} at cycle {cycle}, {where()}"):
                last_progress = cycle
            if int(step_done.value):
                if step == len(steps):
                    raise AssertionError(f"image {image}: more than the plan's {len(steps)} steps ended")
                for name in steps[step].outputs:
                    probes[name] = mirror.tensor(plan.tensors[name]).tolist()
                step_cycles.append(cycle)
                step += 1
                last_progress = cycle
            if not any(int(signal.value) for signal in events):     # nothing to sample until one of them changes
                cycles = min(max_cycles + 1 - cycle, idle_cycles + 1 - (cycle - last_progress))
                await First(*(signal.value_change for signal in events), FallingEdge(busy),
                            Timer(cycles * PERIOD_NS, "ns"))
            await FallingEdge(self.clk)
            cycle = 1 + round((get_sim_time("ns") - start_ns) / PERIOD_NS)
        out_ready.value = 0
        if step != len(steps) or len(logits) != classes:
            raise AssertionError(f"image {image}: the core went idle after {cycle} cycles with {step} of "
                                 f"{len(steps)} steps done, {len(logits)} of {classes} logits received")
        return {"image": image, "cycles": cycle, "logits": logits, "pixels": len(pixels), "out_beats": len(logits),
                "step_cycles": step_cycles, "probes": probes}


@cocotb.test()
async def network_runs(dut):
    import numpy as np

    from compiler.format import load
    from hw.network_params import NetworkParams, network_plan
    from hw.network_program import MemoryMirror, image_beats, load_beats

    d = load_data()
    model = load(d["model"])
    params = NetworkParams.for_model(model, d["rows"], d["cols"], write_pairs=d["write_pairs"],
                                     multiply_cols=d["multiply_cols"])
    plan = network_plan(model, params)
    core = Core(dut, d)
    await core.reset()
    await core.load(load_beats(model, params))
    mirror = MemoryMirror(params)
    results = []
    for i, image in enumerate(d["images"]):
        pixels = image_beats(model, params, np.asarray(image, dtype=np.uint8))
        results.append(await core.run(i, pixels, model.num_classes, plan.steps, plan, mirror, d["max_cycles"],
                                      d["idle_cycles"]))
    with open(d["results"], "w") as f:
        json.dump(results, f)
