"""The LUT-MAC PE variants (hw/pe.py) in Amaranth's simulator, bit-exact against the integer contract."""

import gc
import random
import warnings

import pytest

pytest.importorskip("amaranth", reason="hardware tests need amaranth: pip install -e '.[hw]'")

from amaranth.hdl import UnusedElaboratable  # noqa: E402
from amaranth.sim import Simulator  # noqa: E402

from hw.pe import A_MAX, VARIANTS, W_MAX, PEArray, ProcessingElement  # noqa: E402

BITS = (2, 3, 4)
ACC_BITS = 24


def random_levels(s: int, top: int, rng: random.Random) -> list[int]:
    """``s + 1`` levels as the compiler makes them: increasing from 0 to ``top``."""
    return [0] + sorted(rng.sample(range(1, top), s - 1)) + [top]


def random_variant(name: str, bits: int, rng: random.Random):
    return VARIANTS[name](random_levels(2 ** (bits - 1) - 1, W_MAX, rng),
                          random_levels(2 ** bits - 1, A_MAX, rng))


def wrap(x: int) -> int:
    """``x`` as an ``ACC_BITS`` two's-complement value."""
    half = 1 << (ACC_BITS - 1)
    return (x + half) % (2 * half) - half


def simulate(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


async def load(ctx, dut, beats, **select):
    """Drive the ``w_load`` beats of one weight (and ``select`` ports alongside)."""
    ctx.set(dut.w_load, 1)
    for beat in beats:
        for name, value in {**beat, **select}.items():
            ctx.set(getattr(dut, name), value)
        await ctx.tick()
    ctx.set(dut.w_load, 0)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("name", VARIANTS)
def test_pe(name, bits):
    rng = random.Random(f"pe {name} {bits}")
    variant = random_variant(name, bits, rng)
    dut = ProcessingElement(variant, ACC_BITS)
    weights = [(1, variant.s_w), (0, 0), (1, 0), (0, rng.randrange(1, variant.s_w + 1))]

    async def bench(ctx):
        for sign, k in weights:
            await load(ctx, dut, variant.load_beats(sign, k))
            for _ in range(2 * (variant.s_a + 1)):
                valid, j = rng.random() < 0.8, rng.randrange(variant.s_a + 1)
                psum = rng.randrange(-(1 << ACC_BITS - 1), 1 << ACC_BITS - 1)
                ctx.set(dut.a_valid, valid)
                ctx.set(dut.a_in, variant.operand(j))
                ctx.set(dut.psum_in, psum)
                await ctx.tick()
                assert ctx.get(dut.psum_out) == wrap(psum + valid * (-1) ** sign * variant.lut(k, j))
                assert ctx.get(dut.a_valid_out) == valid
                assert ctx.get(dut.a_out) == variant.operand(j)

    simulate(dut, bench)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("name", VARIANTS)
def test_array_columns_sum_rows(name, bits):
    rows, cols, length = 2, 3, 10
    rng = random.Random(f"array {name} {bits}")
    variant = random_variant(name, bits, rng)
    dut = PEArray(variant, rows, cols, ACC_BITS)
    weights = [[(rng.randrange(2), rng.randrange(variant.s_w + 1)) for _ in range(cols)] for _ in range(rows)]
    stream = [[(rng.random() < 0.8, rng.randrange(variant.s_a + 1)) for _ in range(length)] for _ in range(rows)]
    psum_in = [[rng.randrange(-1000, 1000) for _ in range(length)] for _ in range(cols)]
    expected = [[psum_in[c][t] + sum(valid * (-1) ** weights[r][c][0] * variant.lut(weights[r][c][1], j)
                                     for r, (valid, j) in enumerate(col[t] for col in stream))
                 for t in range(length)] for c in range(cols)]
    got = [[None] * length for _ in range(cols)]

    async def bench(ctx):
        for r in range(rows):
            for c in range(cols):
                await load(ctx, dut, variant.load_beats(*weights[r][c]), w_pe=r * cols + c)
        for n in range(length + rows + cols):  # n: clock edges since loading
            for r in range(rows):
                valid, j = stream[r][n - r] if 0 <= n - r < length else (0, 0)
                ctx.set(dut.a_valid[r], valid)
                ctx.set(dut.a_code[r], j)
            for c in range(cols):
                t = n - c - 1
                ctx.set(dut.psum_in[c], psum_in[c][t] if 0 <= t < length else 0)
            await ctx.tick()
            for c in range(cols):
                t = n - rows - c
                if 0 <= t < length:
                    got[c][t] = ctx.get(dut.psum_out[c])

    simulate(dut, bench)
    assert got == expected


def test_double_buffered_pe_swaps_weights_with_the_first_element_of_a_tile():
    """``w_load`` writes the shadow weight while the current one keeps computing; the element
    with ``a_swap`` is the first computed with the new weight."""
    rng = random.Random("double buffered")
    variant = random_variant("row_vector", 3, rng)
    dut = ProcessingElement(variant, ACC_BITS, double_buffered=True)
    j = variant.s_a

    async def element(ctx, swap, psum=0):
        ctx.set(dut.a_valid, 1)
        ctx.set(dut.a_swap, swap)
        ctx.set(dut.a_in, variant.operand(j))
        ctx.set(dut.psum_in, psum)
        await ctx.tick()
        assert ctx.get(dut.a_swap_out) == swap
        return ctx.get(dut.psum_out)

    async def bench(ctx):
        await load(ctx, dut, variant.load_beats(0, 1))
        assert await element(ctx, swap=1) == variant.lut(1, j)            # tile 1 starts: weight +1
        ctx.set(dut.w_load, 1)
        ctx.set(dut.w_code, variant.weight_word(1, variant.s_w))          # tile 2's weight, loaded meanwhile
        assert await element(ctx, swap=0) == variant.lut(1, j)            # tile 1 goes on with +1
        ctx.set(dut.w_load, 0)
        assert await element(ctx, swap=0, psum=5) == 5 + variant.lut(1, j)
        assert await element(ctx, swap=1) == -variant.lut(variant.s_w, j)  # tile 2: -s_w
        assert await element(ctx, swap=0) == -variant.lut(variant.s_w, j)

    simulate(dut, bench)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(ValueError, match="variant PeLut has load ports .* cannot be double buffered"):
            ProcessingElement(random_variant("pe_lut", 3, rng), ACC_BITS, double_buffered=True)
        gc.collect()                                                       # the half-built PE, while ignored
