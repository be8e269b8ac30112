"""cocotb testbench for ``hw.spram.SpramBuffer`` on Yosys's ``SB_SPRAM256KA`` model (``cells_sim.v``).

The data (written by ``tests/test_sim_spram.py``; no Amaranth in here) holds ``width``,
``latency`` (``hw.spram.LATENCY``, the contract under test), ``writes`` (``[[addr, word], ...]``,
distinct addresses) and ``check_x`` (whether the simulator has X: Icarus yes, Verilator no).

Inputs change at falling edges and are sampled by the next rising edge; ``read_data`` is read
at falling edges (after the rising edge before them). Checked:

- every word written reads back, in an order unlike the writing order, one word per cycle;
- the latency: the data of an address appears exactly ``latency`` rising edges after it is
  presented, and not before (the output keeps the previous word until that edge);
- a write is not write-through: after a write edge ``read_data`` is X (neither the old
  word nor the new); the next read of that address gives the new word;
- a write changes only its own address.
"""

from __future__ import annotations

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge, Timer

from sim.engine_cocotb import unsigned
from sim.runner import load_data

PERIOD_NS = 10


class Buffer:
    def __init__(self, dut, d: dict):
        self.dut, self.clk, self.d = dut, dut.clk, d
        self.contents: dict[int, int] = {}

    async def start(self):
        self.dut.addr.value, self.dut.write_en.value, self.dut.write_data.value = 0, 0, 0
        Clock(self.clk, PERIOD_NS, unit="ns").start(start_high=False)
        await FallingEdge(self.clk)

    def data(self, what: str) -> int:
        value = self.dut.read_data.value
        assert value.is_resolvable, f"{what}: read_data holds X or Z: {value}"
        return unsigned(value)

    async def write(self, addr: int, word: int):
        dut = self.dut
        dut.addr.value, dut.write_en.value, dut.write_data.value = addr, 1, word
        await FallingEdge(self.clk)
        dut.write_en.value = 0
        self.contents[addr] = word
        if self.d["check_x"]:
            value = dut.read_data.value
            assert not value.is_resolvable, (f"after the write of {word:#x} at {addr}: read_data is {value}, "
                                             f"expected X (SB_SPRAM256KA is not write-through)")

    async def read(self, addr: int) -> int:
        """Present ``addr`` and return its word, checking it arrives exactly ``latency`` edges later."""
        dut, latency = self.dut, self.d["latency"]
        before = dut.read_data.value
        dut.addr.value = addr
        await Timer(PERIOD_NS // 4, unit="ns")            # the address has settled, no edge yet
        assert dut.read_data.value == before, (f"address {addr}: read_data changed to {dut.read_data.value} "
                                               f"before a clock edge (combinational read?)")
        for edge in range(1, latency + 1):
            await RisingEdge(self.clk)
            await FallingEdge(self.clk)
            if edge < latency:
                assert dut.read_data.value == before, f"address {addr}: read_data changed {edge} edge(s) after it"
        return self.data(f"read of address {addr}, {latency} edge(s) after it")


@cocotb.test()
async def spram_reads_back_with_one_cycle_latency(dut):
    d = load_data()
    buf = Buffer(dut, d)
    await buf.start()
    for addr, word in d["writes"]:
        await buf.write(addr, word)

    order = [addr for addr, _ in d["writes"]]
    random.Random(1).shuffle(order)
    previous = None
    for addr in order:
        got = await buf.read(addr)
        assert got == buf.contents[addr], (f"address {addr}: read {got:#x}, wrote {buf.contents[addr]:#x} "
                                           f"(previous address {previous})")
        previous = addr

    # Back to back, one address per cycle: word i is on read_data one cycle after address i.
    dut.addr.value = order[0]
    for i, addr in enumerate(order):
        await FallingEdge(dut.clk)
        dut.addr.value = order[(i + 1) % len(order)]
        got = buf.data(f"back-to-back read {i}")
        assert got == buf.contents[addr], f"back-to-back read {i} (address {addr}): {got:#x}"


@cocotb.test()
async def spram_write_is_not_write_through_and_touches_one_address(dut):
    d = load_data()
    buf = Buffer(dut, d)
    await buf.start()
    (a, old), (b, other) = d["writes"][:2]
    await buf.write(a, old)
    await buf.write(b, other)
    assert await buf.read(a) == old
    new = old ^ ((1 << d["width"]) - 1)
    await buf.write(a, new)                 # read_data after the write edge: X (checked in write)
    got = await buf.read(a)
    assert got == new, f"address {a} after rewriting {new:#x}: {got:#x}"
    got = await buf.read(b)
    assert got == other, f"address {b} after a write at {a}: {got:#x}, expected {other:#x}"
