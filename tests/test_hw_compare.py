"""hw.compare.at_least against Python's >= for every pair of values of small signed and unsigned widths."""

import pytest

pytest.importorskip("amaranth", reason="hardware tests need amaranth: pip install -e '.[hw]'")

from amaranth import Module, Signal, signed, unsigned  # noqa: E402
from amaranth.sim import Simulator  # noqa: E402

from hw.compare import at_least  # noqa: E402

SHAPES = [(signed(7), signed(5)), (unsigned(5), signed(6)), (signed(4), unsigned(6)), (unsigned(6), unsigned(6)),
          (signed(1), signed(3)), (signed(2), unsigned(1))]


def values(shape):
    return range(-(1 << (shape.width - 1)), 1 << (shape.width - 1)) if shape.signed else range(1 << shape.width)


@pytest.mark.parametrize("shape_a, shape_b", SHAPES, ids=str)
def test_at_least_is_greater_or_equal(shape_a, shape_b):
    a, b, out = Signal(shape_a), Signal(shape_b), Signal()
    m = Module()
    m.d.comb += out.eq(at_least(a, b))
    sim = Simulator(m)

    async def bench(ctx):
        for x in values(shape_a):
            for y in values(shape_b):
                ctx.set(a, x)
                ctx.set(b, y)
                assert ctx.get(out) == (x >= y), (x, y)

    sim.add_testbench(bench)
    sim.run()
