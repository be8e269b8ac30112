"""cocotb testbench: :class:`sim.board_cocotb.SimPort` against a device that sends back each byte it receives
(the board core's byte-stream ports, nothing behind them). A byte is written and its echo read, then a byte
that never comes is read: that read returns short once its timeout has passed. The data file (``sim.runner``)
holds ``byte_cycles``, ``read_timeout_cycles`` and ``results`` (the echo, the short read's bytes, and the cycles
and nanoseconds it took).
"""

from __future__ import annotations

import json

import cocotb
from cocotb.task import bridge, resume

from sim.board_cocotb import SimPort, now_ps, start_port
from sim.runner import load_data


def read_past_timeout(port: SimPort) -> dict:
    """The host side of :func:`port_read_times_out`: a byte written and its echo read, then a read of a byte that
    never comes."""
    async def sim_time():
        return now_ps()

    port.write(b"\x5a")
    echo = port.read(1)
    cycles, started = port.cycles, resume(sim_time)()
    short = port.read(1)
    return {"echo": list(echo), "short": list(short), "cycles": port.cycles - cycles,
            "ns": (resume(sim_time)() - started) // 1000}


@cocotb.test()
async def port_read_times_out(dut):
    """The echo, then a read past its timeout."""
    d = load_data()
    port = await start_port(dut, -1, [], d["byte_cycles"], d["read_timeout_cycles"])
    out = await bridge(read_past_timeout)(port)
    with open(d["results"], "w") as f:
        json.dump(out, f)
