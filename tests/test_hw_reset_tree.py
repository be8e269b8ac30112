"""hw.reset_tree: a block with a reset copy of its own runs on ``sync``'s clock and takes ``sync``'s reset a
cycle later; without the tree (not an ECP5) it is added as it is; ``settling`` covers the cycles a block some
levels of copies below is still held."""

from types import SimpleNamespace

import pytest

pytest.importorskip("amaranth", reason="hardware tests need amaranth: pip install -e '.[hw]'")

from amaranth import Elaboratable, Module, ResetSignal, Signal  # noqa: E402
from amaranth.hdl import Fragment  # noqa: E402
from amaranth.sim import Simulator  # noqa: E402

from hw.reset_tree import own_reset_submodule, reset_tree, settling  # noqa: E402

ECP5, ICE40 = SimpleNamespace(device="LFE5U-85F"), SimpleNamespace(device="iCE40UP5K")


class Counter(Elaboratable):
    """``count`` + 1 every cycle; ``seen`` the ``x`` of the cycle before."""

    def __init__(self):
        self.count, self.x, self.seen = Signal(8), Signal(8), Signal(8)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += [self.count.eq(self.count + 1), self.seen.eq(self.x)]
        return m


class Top(Elaboratable):
    def __init__(self, platform):
        self.platform, self.count, self.block, self.rst = platform, Signal(8), Counter(), Signal()

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.count.eq(self.count + 1)
        m.d.comb += [ResetSignal("sync").eq(self.rst), self.block.x.eq(self.count)]
        own_reset_submodule(m, "block", self.block, self.platform, "block_sync")
        return m


def run(platform, cycles=8, reset_at=3):
    """(top's count, block's count, block's seen) per cycle, ``sync``'s reset held for cycle ``reset_at``."""
    top, rows = Top(platform), []

    async def bench(ctx):
        for n in range(cycles):
            ctx.set(top.rst, n == reset_at)
            rows.append((ctx.get(top.count), ctx.get(top.block.count), ctx.get(top.block.seen)))
            await ctx.tick()

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return rows


def test_the_tree_is_the_ecp5s():
    assert reset_tree(ECP5) and not reset_tree(ICE40) and not reset_tree(None)


def test_a_block_takes_the_reset_a_cycle_after_sync():
    rows = run(ECP5)
    # Out of configuration both count alike; sync's reset clears the top at once and the block a cycle later.
    assert [r[0] for r in rows] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert [r[1] for r in rows] == [0, 1, 2, 3, 4, 0, 1, 2]
    # The block's registers sample on sync's own edges: what it saw is the top's count of the cycle before.
    assert [r[2] for r in rows[1:4]] == [0, 1, 2]


def test_without_the_tree_the_block_takes_sync_itself():
    rows = run(ICE40)
    assert [r[1] for r in rows] == [r[0] for r in rows] == [0, 1, 2, 3, 0, 1, 2, 3]
    fragment = Fragment.get(Top(ICE40), None)
    assert not any(name == "block_sync" for name in fragment.domains)


class Nested(Elaboratable):
    """A :class:`Counter` two levels of reset copies below the top, and the top's ``settling`` for two levels."""

    def __init__(self, platform):
        self.platform, self.rst, self.held, self.inner = platform, Signal(), Signal(), Counter()

    def elaborate(self, platform):
        m, middle = Module(), Module()
        m.d.comb += [ResetSignal("sync").eq(self.rst), self.held.eq(settling(m, self.platform, 2))]
        own_reset_submodule(middle, "inner", self.inner, self.platform, "inner_sync")
        own_reset_submodule(m, "middle", middle, self.platform, "middle_sync")
        return m


@pytest.mark.parametrize("platform", [ECP5, ICE40], ids=["ecp5", "ice40"])
def test_settling_lasts_until_a_block_two_levels_below_runs(platform):
    top, rows = Nested(platform), []

    async def bench(ctx):
        for n in range(9):
            ctx.set(top.rst, n in (3, 4))
            rows.append((ctx.get(top.held), ctx.get(top.inner.count)))
            await ctx.tick()

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    if platform is ICE40:
        assert [r[0] for r in rows] == [0] * 9 and [r[1] for r in rows] == [0, 1, 2, 3, 0, 0, 1, 2, 3]
        return
    # sync's reset at the edges of cycles 3 and 4; the inner block's at those of 5 and 6: it counts again from the
    # edge of cycle 7, the first at which the top takes input again.
    assert [r[1] for r in rows] == [0, 1, 2, 3, 4, 5, 0, 0, 1]
    assert [r[0] for r in rows] == [0, 0, 0, 0, 1, 1, 1, 0, 0]
