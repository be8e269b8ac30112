"""cocotb testbench: the host runtime against the generated Verilog of a board's accelerator.

The DUT is :class:`boards.top.AcceleratorCore` (layer engine + link bridge, the bridge's
byte streams as ports ``rx_*``, ``tx_*``). The unmodified host side, :class:`boards.link_host.LinkHost` and
:class:`boards.runtime.BoardRunner`, runs in a thread (cocotb's ``bridge``) and talks to it
through :class:`SimPort`, whose ``read`` advances the simulation (cocotb's ``resume``). The
data file (``sim.runner``) holds ``model`` (path), ``params`` (``EngineParams``
description), ``resident``, ``images`` (uint8 nested lists), ``corrupt`` (flip a bit of the
nth byte sent, to exercise a NACK and the host's retry; -1 for none) and ``results``
(where the logits and the simulated cycles go).
"""

from __future__ import annotations

import json

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.task import bridge, resume
from cocotb.triggers import FallingEdge

from sim.runner import load_data

PERIOD_NS = 10
READ_TIMEOUT_CYCLES = 200_000


class SimPort:
    """A pyserial-like port into the DUT: ``write`` queues bytes for ``rx``, ``read(n)`` runs the
    simulation until ``n`` bytes came from ``tx`` or the timeout passed (then returns fewer)."""

    def __init__(self, dut, corrupt: int):
        self.dut, self.corrupt = dut, corrupt
        self.to_device: list[int] = []
        self.from_device = bytearray()
        self.sent = self.cycles = 0

    def write(self, data: bytes) -> None:
        self.to_device += list(data)

    def read(self, n: int) -> bytes:
        return resume(self._read)(n)

    async def _read(self, n: int) -> bytes:
        start = self.cycles
        while len(self.from_device) < n and self.cycles - start < READ_TIMEOUT_CYCLES:
            await FallingEdge(self.dut.clk)
        got = bytes(self.from_device[:n])
        del self.from_device[:n]
        return got

    async def pump(self):
        """Every cycle: one byte into ``rx`` if any is queued, and the ``tx`` byte if valid."""
        dut = self.dut
        dut.tx_ready.value = 1
        while True:
            if self.to_device:
                byte = self.to_device.pop(0)
                if self.sent == self.corrupt:
                    byte ^= 0x10
                self.sent += 1
                dut.rx_valid.value, dut.rx_data.value = 1, byte
            else:
                dut.rx_valid.value = 0
            if int(dut.tx_valid.value):
                self.from_device.append(int(dut.tx_data.value))
            await FallingEdge(dut.clk)
            self.cycles += 1


def classify(d: dict, port: SimPort) -> dict:
    """The host side, blocking, in its own thread."""
    from boards.link_host import LinkHost
    from boards.runtime import BoardRunner
    from compiler.format import load
    from hw.engine_params import EngineParams, RequantizeShape

    p = dict(d["params"])
    p["requantize"] = p["requantize"] and RequantizeShape(**p["requantize"])
    runner = BoardRunner(LinkHost(port), load(d["model"]), EngineParams(**p), d["resident"])
    result = runner.classify(np.asarray(d["images"], dtype=np.uint8))
    return {"logits": result.logits.tolist()}


@cocotb.test()
async def host_runtime_classifies(dut):
    d = load_data()
    dut.rx_valid.value = dut.rx_error.value = 0
    dut.rst.value = 1
    Clock(dut.clk, PERIOD_NS, unit="ns").start(start_high=False)
    for _ in range(2):
        await FallingEdge(dut.clk)
    dut.rst.value = 0
    port = SimPort(dut, d.get("corrupt", -1))
    cocotb.start_soon(port.pump())
    out = await bridge(classify)(d, port)
    out["cycles"] = port.cycles
    with open(d["results"], "w") as f:
        json.dump(out, f)
