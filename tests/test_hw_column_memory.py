"""A deep memory as columns of block RAM (hw/column_memory.py): the same reads as one Amaranth memory, written a
granule at a time, in as many blocks as hw.memories.column_blocks counts."""

import random

import pytest

pytest.importorskip("amaranth", reason="hardware tests need amaranth: pip install -e '.[hw]'")

from amaranth import Module  # noqa: E402
from amaranth.lib.memory import Memory  # noqa: E402
from amaranth.sim import Simulator  # noqa: E402

from hw.column_memory import column_memory  # noqa: E402
from hw.memories import column_bits, column_blocks  # noqa: E402


def test_columns_are_as_deep_as_the_memory():
    assert [column_bits(d) for d in (300, 512, 513, 4096, 8192, 16384)] == [36, 36, 18, 4, 2, 1]
    assert column_blocks(70, 8192, 35) == 36 and column_blocks(70, 512, 35) == 2 and column_blocks(8, 16384, 8) == 8
    with pytest.raises(ValueError, match="no ecp5 block RAM is 20000 words deep"):
        column_bits(20000)


@pytest.mark.parametrize("width, depth, granularity, registered", [(14, 4096, 7, False), (10, 1024, 10, False),
                                                                   (14, 4096, 7, True), (70, 8192, 35, True)])
def test_column_memory_reads_as_one_memory(width, depth, granularity, registered):
    """The same words as one Amaranth memory; with ``registered`` ports, as one whose read address and write
    ports are registered first (reads and writes a cycle later)."""
    m = Module()
    write, read = column_memory(m, "columns", width, depth, granularity, registered=registered)
    m.submodules.reference = reference = Memory(shape=width, depth=depth, init=[])
    ref_write, ref_read = reference.write_port(granularity=granularity), reference.read_port()
    ports = [(ref_write.en, write.en), (ref_write.addr, write.addr), (ref_write.data, write.data),
             (ref_read.addr, read.addr)]
    domain = m.d.sync if registered else m.d.comb
    domain += [ref.eq(port) for ref, port in ports]
    assert len(m._named_submodules) == column_blocks(width, depth, granularity) + 1
    rng = random.Random(f"{width} {depth} {registered}")
    addrs = [rng.randrange(depth) for _ in range(6)]

    async def bench(ctx):
        for _ in range(300):
            ctx.set(write.en, rng.randrange(1 << (width // granularity)))
            ctx.set(write.addr, rng.choice(addrs))
            ctx.set(write.data, rng.randrange(1 << width))
            ctx.set(read.addr, rng.choice(addrs))
            await ctx.tick()
            assert ctx.get(read.data) == ctx.get(ref_read.data)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
