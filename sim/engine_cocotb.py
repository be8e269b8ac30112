"""cocotb testbench for ``hw.engine.LayerEngine``, driven by the data file of ``sim.runner``.

The DUT's ports are ``hw.engine.EngineSignature``'s as Amaranth writes them: ``load__valid``,
``load__ready``, ``load__payload`` (the fields of a beat packed), ``start``, ``busy``,
``out__valid``, ``out__ready``, ``out__payload``.

The data (written by :mod:`sim.engine_run`) holds ``params`` (an ``EngineParams``
description), ``load_fields`` (the bit offset of each field of ``load__payload``),
``stall`` and ``backpressure`` (probabilities that ``load__valid`` is low in a cycle or that
``out__ready`` is low in a cycle an output word is offered), ``seed``, ``results`` (the JSON file to write), and
the work, either

- ``jobs``: ``[{"index", "beats": [[target, addr, data], ...], "out_words"}]``, or
- ``model``: ``{"path", "images" (uint8 nested lists), "on_engine" (node indices or
  null for all), "upto" (last node or null), "resident" (what to load for every
  layer once first: "none", "weights" or "all" constants)}``: the model runs image by image through
  :func:`hw.program.model_jobs`, the engine's outputs feeding the nodes after them.

For every layer run the results hold ``index``, ``cycles`` (from the clock edge that
samples ``start`` to the one that accepts the last output word), ``compute_cycles`` (to
the first cycle an output word is offered: computing, without read-back), ``words`` (the
output words) and ``word_cycles`` (the cycle, counted the same way, each word was
accepted at). Across the cycles in which no word is offered the bench waits once, until ``out__valid``
or ``busy`` changes or the deadline passes.
Comparison with the integer reference happens outside the simulator. A run that does
not finish within ``max_cycles`` fails with the layer, the words received and the state; a
load beat not taken within :data:`LOAD_WAIT_CYCLES` cycles of offering it fails naming the beat.
"""

from __future__ import annotations

import json
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import FallingEdge, First, ReadOnly, Timer
from cocotb.types import Logic

from sim.runner import load_data

PERIOD_NS = 10
LOAD_WAIT_CYCLES = 10_000   # cycles a beat may be offered (load__valid high) without being taken: a hung core


class Engine:
    """The DUT's ports, driven at falling edges (sampled by the next rising edge)."""

    def __init__(self, dut, d: dict):
        self.dut, self.clk = dut, dut.clk
        self.fields = d["load_fields"]
        self.rng = random.Random(d.get("seed", 0))
        self.stall, self.backpressure = d.get("stall", 0.0), d.get("backpressure", 0.0)

    async def reset(self):
        dut = self.dut
        for sig in (dut.load__valid, dut.load__payload, dut.start, dut.out__ready):
            sig.value = 0
        dut.rst.value = 1
        Clock(self.clk, PERIOD_NS, unit="ns").start(start_high=False)
        for _ in range(2):
            await FallingEdge(self.clk)
        dut.rst.value = 0

    async def load(self, beats, each_cycle=None):
        """Each beat offered until taken (``load__valid`` low with probability ``stall``);
        ``each_cycle()`` called in every cycle before its clock edge. A beat not taken in
        :data:`LOAD_WAIT_CYCLES` cycles of offering it fails the run, naming the beat."""
        dut = self.dut
        for i, beat in enumerate(beats):
            offered = 0
            while True:
                if offered == LOAD_WAIT_CYCLES:
                    target, addr, data = beat
                    raise AssertionError(f"load beat {i} of {len(beats)} (target {target}, addr {addr}, data {data}) "
                                         f"offered for {offered} cycles without load__ready "
                                         f"(load__ready={dut.load__ready.value}, busy={dut.busy.value})")
                valid = self.rng.random() >= self.stall
                offered += valid
                dut.load__valid.value = int(valid)
                dut.load__payload.value = sum(value << self.fields[name]
                                              for name, value in zip(("target", "addr", "data"), beat))
                await ReadOnly()            # ready may depend on the beat (the network core's image beats)
                ready = int(dut.load__ready.value)
                if each_cycle is not None:
                    each_cycle()
                await FallingEdge(self.clk)
                if valid and ready:
                    break
        dut.load__valid.value = 0

    async def run(self, index: int, out_words: int, max_cycles: int) -> dict:
        dut = self.dut
        dut.start.value = 1
        await FallingEdge(self.clk)
        dut.start.value = 0
        words, word_cycles, cycle, first_valid = [], [], 1, None
        start_ns = get_sim_time("ns")
        while len(words) < out_words or int(dut.busy.value):
            if cycle > max_cycles:
                raise AssertionError(f"layer {index}: no end after {max_cycles} cycles: {len(words)} of "
                                     f"{out_words} output words received, busy={dut.busy.value}")
            ready = self.rng.random() >= self.backpressure
            dut.out__ready.value = int(ready)
            valid = int(dut.out__valid.value)
            if valid and first_valid is None:
                first_valid = cycle
            if valid and ready:
                if len(words) == out_words:
                    raise AssertionError(f"layer {index}: more than the expected {out_words} output words")
                value = dut.out__payload.value
                if not value.is_resolvable:
                    raise AssertionError(f"layer {index}: output word {len(words)} (cycle {cycle}) holds X or Z: "
                                         f"{value} (column 0 is the lowest field)")
                words.append(unsigned(value))
                word_cycles.append(cycle)
            if not valid:           # nothing to take until a word is offered (or the engine ends)
                await First(dut.out__valid.value_change, dut.busy.value_change,
                            Timer((max_cycles + 1 - cycle) * PERIOD_NS, "ns"))
            await FallingEdge(self.clk)
            cycle = 1 + round((get_sim_time("ns") - start_ns) / PERIOD_NS)
        dut.out__ready.value = 0
        return {"index": index, "cycles": word_cycles[-1] if word_cycles else cycle, "words": words,
                "word_cycles": word_cycles, "compute_cycles": first_valid or cycle}


def unsigned(value) -> int:
    """The unsigned integer of a resolvable port value of any width >= 1 (a one-bit port's value is a ``Logic``,
    which has no ``to_unsigned``)."""
    return int(value) if isinstance(value, Logic) else int(value.to_unsigned())


def max_cycles(beats_out: int, params: dict, backpressure: float, macs: int | None = None) -> int:
    budget = 200 + 4 * (macs or 0) + 50 * beats_out * (params["rows"] + params["cols"])
    return int(budget / max(0.05, 1 - backpressure))


@cocotb.test()
async def engine_runs(dut):
    d = load_data()
    engine = Engine(dut, d)
    await engine.reset()
    results = []
    if "jobs" in d:
        per_image = []
        for job in d["jobs"]:
            await engine.load(job["beats"])
            budget = max_cycles(job["out_words"], d["params"], engine.backpressure, job.get("macs"))
            per_image.append(await engine.run(job["index"], job["out_words"], budget))
        results.append(per_image)
    else:
        from compiler.format import load
        from hw.engine_params import EngineParams
        from hw.program import model_jobs, resident_beats

        spec = d["model"]
        model = load(spec["path"])
        params = EngineParams.from_dict(d["params"])
        on_engine = None if spec["on_engine"] is None else set(spec["on_engine"])
        resident = spec.get("resident", "none")
        await engine.load(resident_beats(model, params, resident))
        for image in spec["images"]:
            steps = model_jobs(model, params, np.asarray(image, dtype=np.uint8), on_engine, spec["upto"], resident)
            per_image = []
            try:
                job = next(steps)
                while True:
                    await engine.load(job.beats)
                    budget = max_cycles(job.out_words, d["params"], engine.backpressure, job.node.macs)
                    result = await engine.run(job.index, job.out_words, budget)
                    per_image.append(result)
                    job = steps.send(result["words"])
            except StopIteration:
                pass
            results.append(per_image)
    with open(d["results"], "w") as f:
        json.dump(results, f)
