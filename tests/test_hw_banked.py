"""The banked buffer (hw/banked.py): banks one block RAM deep, read data three cycles after the address."""

import random

import pytest

pytest.importorskip("amaranth", reason="hardware tests need amaranth: pip install -e '.[hw]'")

from amaranth import Elaboratable, Module, Signal  # noqa: E402
from amaranth.sim import Simulator  # noqa: E402

from hw.banked import LATENCY, bank_depth, banked_buffer  # noqa: E402


class Buffer(Elaboratable):
    def __init__(self, width, depth, grouped_writes=False):
        self.width, self.depth, self.grouped_writes = width, depth, grouped_writes
        self.write_en, self.write_addr = Signal(), Signal(range(depth))
        self.write_data, self.read_addr = Signal(width), Signal(range(depth))
        self.read_data = Signal(width)

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.read_data.eq(banked_buffer(m, "buffer", self.width, self.depth, self.write_en,
                                                    self.write_addr, self.write_data, self.read_addr,
                                                    grouped_writes=self.grouped_writes))
        return m


def test_banks_are_one_block_deep_and_take_no_more_blocks_than_the_whole():
    assert bank_depth(24) == 2048 and bank_depth(3) == 16384 and bank_depth(64) == 512 and bank_depth(8) == 2048


@pytest.mark.parametrize("width, depth, grouped_writes", [(64, 1300, False), (16, 700, False), (8, 11000, True)])
def test_every_word_reads_back_latency_cycles_after_its_address(width, depth, grouped_writes):
    """Words written at random addresses across three banks (or one; or six, their writes through registers of
    each group of banks) read back in a random order, each ``LATENCY`` cycles after its address, with the reads
    back to back: the first the last word written, read in the cycle after its write (two cycles after it with the
    groups' registers)."""
    rng = random.Random(depth)
    dut = Buffer(width, depth, grouped_writes)
    words = {a: rng.getrandbits(width) for a in rng.sample(range(depth), 200)}

    async def bench(ctx):
        ctx.set(dut.write_en, 1)
        for a, w in words.items():
            ctx.set(dut.write_addr, a)
            ctx.set(dut.write_data, w)
            await ctx.tick()
        ctx.set(dut.write_en, 0)
        if grouped_writes:
            await ctx.tick()
        order = list(words)[:-1]
        rng.shuffle(order)
        order.insert(0, list(words)[-1])
        seen = []
        for n in range(len(order) + LATENCY):
            if n < len(order):
                ctx.set(dut.read_addr, order[n])
            if n >= LATENCY:
                seen.append(ctx.get(dut.read_data))
            await ctx.tick()
        assert seen == [words[a] for a in order]

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
