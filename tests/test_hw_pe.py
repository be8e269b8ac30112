"""The LUT-MAC PE variants (hw/pe.py) in Amaranth's simulator, bit-exact against the integer contract."""

import gc
import random
import warnings

import pytest

pytest.importorskip("amaranth", reason="hardware tests need amaranth: pip install -e '.[hw]'")

from amaranth.hdl import UnusedElaboratable  # noqa: E402
from amaranth.sim import Simulator  # noqa: E402

from hw.pe import VARIANTS, PEArray, ProcessingElement, RowDecoder, RowTable  # noqa: E402
from hw.pe_words import ARRAY_PIPELINE  # noqa: E402
from hw.pe_words import A_MAX, W_MAX, digit_bits, level_entry, product_width, row_vector  # noqa: E402

BITS = (2, 3, 4)
ACC_BITS = 24
# Every variant, and the engine's table variant where it multiplies.
CASES = [(name, {}) for name in VARIANTS] + [("row_table", {"multiply": True}),
                                             ("row_table", {"multiply": True, "logic_multiply": True})]
CASE_IDS = [name + "".join(f"_{option}" for option in options) for name, options in CASES]


def random_levels(s: int, top: int, rng: random.Random) -> list[int]:
    """``s + 1`` levels as the compiler makes them: increasing from 0 to ``top``."""
    return [0] + sorted(rng.sample(range(1, top), s - 1)) + [top]


def random_variant(name: str, bits: int, rng: random.Random, **options):
    return VARIANTS[name](random_levels(2 ** (bits - 1) - 1, W_MAX, rng),
                          random_levels(2 ** bits - 1, A_MAX, rng), **options)


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


async def load_edges(ctx, dut, variant):
    """Drive the beats that load the row edges (none for constant ones)."""
    beats = variant.edge_beats()
    for beat in beats:
        for name, value in beat.items():
            ctx.set(getattr(dut, name), value)
        await ctx.tick()
    for name in beats[0] if beats else ():
        ctx.set(getattr(dut, name), 0)


async def stream(ctx, dut, levels, sign, k, rng):
    """Random elements (operands of ``levels``, a variant, with gaps: operand 0 where no element is, as the PE
    asks) and partial sums through a PE loaded with weight ``(sign, k)``; each edge's ``psum_out`` is its
    ``psum_in`` plus the element sampled at the edge before."""
    product = 0
    for _ in range(2 * (levels.s_a + 1)):
        valid, j = rng.random() < 0.8, rng.randrange(levels.s_a + 1)
        operand = levels.operand(j) if valid else 0
        psum = rng.randrange(-(1 << ACC_BITS - 1), 1 << ACC_BITS - 1)
        ctx.set(dut.a_valid, valid)
        ctx.set(dut.a_in, operand)
        ctx.set(dut.psum_in, psum)
        await ctx.tick()
        assert ctx.get(dut.psum_out) == wrap(psum + product)
        assert ctx.get(dut.a_valid_out) == valid
        assert ctx.get(dut.a_out) == operand
        product = valid * (-1) ** sign * levels.lut(k, j)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("name, options", CASES, ids=CASE_IDS)
def test_pe(name, options, bits):
    rng = random.Random(f"pe {name} {options} {bits}")
    variant = random_variant(name, bits, rng, **options)
    dut = ProcessingElement(variant, ACC_BITS)
    weights = [(1, variant.s_w), (0, 0), (1, 0), (0, rng.randrange(1, variant.s_w + 1))]

    async def bench(ctx):
        for sign, k in weights:
            ctx.set(dut.a_valid, 0)     # no product while loading
            ctx.set(dut.a_in, 0)
            await load(ctx, dut, variant.load_beats(sign, k))
            await stream(ctx, dut, variant, sign, k, rng)

    simulate(dut, bench)


@pytest.mark.parametrize("logic_multiply", [False, True])
def test_multiplying_pe_selects_a_lut_layers_products(logic_multiply):
    """A PE that multiplies also runs LUT layers: an entry without the multiply flag is a row vector, and
    the weight word holds ``k``; the PE adds the selected ``L[k][j]`` (in logic, through its first term)."""
    rng = random.Random(f"multiplying pe, lut layer {logic_multiply}")
    lut = random_variant("row_table", 3, rng)
    variant = RowTable(lut.w_levels, lut.a_levels, multiply=True, logic_multiply=logic_multiply)
    dut = ProcessingElement(variant, ACC_BITS)

    async def bench(ctx):
        for sign, k in [(0, lut.s_w), (1, 1), (1, lut.s_w), (0, 0)]:
            ctx.set(dut.a_valid, 0)
            ctx.set(dut.a_in, 0)
            await load(ctx, dut, [{"w_code": variant.weight_word(sign, k)}])
            await stream(ctx, dut, lut, sign, k, rng)

    simulate(dut, bench)


@pytest.mark.parametrize("wbits, product_bits, digit",
                         [(2, 15, 1), (3, 15, 2), (4, 15, 3), (3, 10, 2), (3, 9, 1), (3, 7, 1)])
def test_logic_multiplier_takes_every_weight_level_by_digits(wbits, product_bits, digit):
    """A PE that multiplies in logic cells takes ``W[k]`` in digits of ``wbits - 1`` bits where a multiplying
    layer's entry holds their multiples in ``product_bits`` (else in binary digits); every level 0..127 of
    either sign, times levels up to 255, is exact, also where the LUT layers' products are narrower than a level
    (outer widths 4/4: 7 bits)."""
    assert digit_bits(wbits, product_bits) == digit
    variant = RowTable.sized(wbits, 8, multiply=True, logic_multiply=True, product_bits=product_bits)
    dut = ProcessingElement(variant, ACC_BITS)
    rng = random.Random(f"logic multiplier {wbits} {product_bits}")
    flag = 1 << (variant.operand_bits - 1)

    async def bench(ctx):
        for level in range(W_MAX + 1):
            sign = rng.randrange(2)
            await load(ctx, dut, [{"w_code": variant.weight_word(sign, level)}])
            product = 0
            for a in [A_MAX, rng.randrange(A_MAX), 0]:
                psum = rng.randrange(-(1 << 20), 1 << 20)
                ctx.set(dut.a_valid, 1)
                ctx.set(dut.a_in, level_entry(a, wbits, product_bits) | flag)
                ctx.set(dut.psum_in, psum)
                await ctx.tick()
                assert ctx.get(dut.psum_out) == wrap(psum + product), (sign, level, a)
                product = (-1) ** sign * level * a
            ctx.set(dut.a_valid, 0)
            ctx.set(dut.a_in, 0)

    simulate(dut, bench)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("name, options", CASES, ids=CASE_IDS)
def test_array_columns_sum_rows(name, options, bits):
    rows, cols, length = 2, 3, 10
    rng = random.Random(f"array {name} {options} {bits}")
    variant = random_variant(name, bits, rng, **options)
    dut = PEArray(variant, rows, cols, ACC_BITS)
    weights = [[(rng.randrange(2), rng.randrange(variant.s_w + 1)) for _ in range(cols)] for _ in range(rows)]
    stream = [[(rng.random() < 0.8, rng.randrange(variant.s_a + 1)) for _ in range(length)] for _ in range(rows)]
    psum_in = [[rng.randrange(-1000, 1000) for _ in range(length)] for _ in range(cols)]
    expected = [[psum_in[c][t] + sum(valid * (-1) ** weights[r][c][0] * variant.lut(weights[r][c][1], j)
                                     for r, (valid, j) in enumerate(col[t] for col in stream))
                 for t in range(length)] for c in range(cols)]
    got = [[None] * length for _ in range(cols)]

    async def bench(ctx):
        await load_edges(ctx, dut, variant)
        for r in range(rows):
            for c in range(cols):
                await load(ctx, dut, variant.load_beats(*weights[r][c]), w_pe=r * cols + c)
        for n in range(length + rows + cols + ARRAY_PIPELINE):  # n: clock edges since loading
            for r in range(rows):
                valid, j = stream[r][n - r] if 0 <= n - r < length else (0, 0)
                ctx.set(dut.a_valid[r], valid)
                ctx.set(dut.a_code[r], j)
            for c in range(cols):
                t = n - c - 1 - ARRAY_PIPELINE
                ctx.set(dut.psum_in[c], psum_in[c][t] if 0 <= t < length else 0)
            await ctx.tick()
            for c in range(cols):
                t = n - rows - c - ARRAY_PIPELINE
                if 0 <= t < length:
                    got[c][t] = ctx.get(dut.psum_out[c])

    simulate(dut, bench)
    assert got == expected


@pytest.mark.parametrize("multiply", [False, True])
def test_double_buffered_array_loads_the_next_tile_while_streaming(multiply):
    """Two tiles back to back: the second tile's rows load (a row per beat) while the first
    tile's last elements are in the array; the element with ``a_swap`` starts using them."""
    rows, cols, length = 2, 3, 6
    rng = random.Random(f"double buffered array {multiply}")
    variant = random_variant("row_table", 3, rng, multiply=multiply)
    dut = PEArray(variant, rows, cols, ACC_BITS, double_buffered=True)
    tiles = [[[(rng.randrange(2), rng.randrange(variant.s_w + 1)) for _ in range(cols)] for _ in range(rows)]
             for _ in range(2)]
    codes = [[rng.randrange(variant.s_a + 1) for _ in range(2 * length)] for _ in range(rows)]
    expected = [[sum((-1) ** tiles[t // length][r][c][0] * variant.lut(tiles[t // length][r][c][1], codes[r][t])
                     for r in range(rows)) for t in range(2 * length)] for c in range(cols)]
    got = [[None] * (2 * length) for _ in range(cols)]
    # Row r of tile 1 loads at edge next_load + r: after tile 0's first element has passed
    # PE (r, cols - 1) (edge r + cols + 1), before tile 1's first one reaches PE (r, 0) (edge length + r + 2).
    next_load = length - 1

    def row_word(tile, r):
        words = [variant.load_beats(*tiles[tile][r][c])[0]["w_code"] for c in range(cols)]
        return sum(w << (c * variant.weight_bits) for c, w in enumerate(words))

    async def bench(ctx):
        await load_edges(ctx, dut, variant)
        for r in range(rows):
            ctx.set(dut.w_load, 1 << r)
            ctx.set(dut.w_code[r], row_word(0, r))
            await ctx.tick()
        ctx.set(dut.w_load, 0)
        for n in range(2 * length + rows + cols + ARRAY_PIPELINE):  # n: clock edges since loading
            loading = next_load <= n < next_load + rows
            ctx.set(dut.w_load, 1 << (n - next_load) if loading else 0)
            if loading:
                ctx.set(dut.w_code[n - next_load], row_word(1, n - next_load))
            for r in range(rows):
                t = n - r
                ctx.set(dut.a_valid[r], 0 <= t < 2 * length)
                ctx.set(dut.a_swap[r], t in (0, length))
                ctx.set(dut.a_code[r], codes[r][t] if 0 <= t < 2 * length else 0)
            await ctx.tick()
            for c in range(cols):
                t = n - rows - c - ARRAY_PIPELINE
                if 0 <= t < 2 * length:
                    got[c][t] = ctx.get(dut.psum_out[c])

    simulate(dut, bench)
    assert got == expected


def test_row_table_is_sized_by_widths_and_checks_its_depth():
    variant = RowTable.sized(3, 2, multiply=True, depth=40)
    assert (variant.s_w, variant.abits, variant.weight_bits, variant.depth) == (3, 2, 8, 40)
    # A multiplying layer's entry: A[j] = 3 and its multiples for W3's two-bit digits, 2 A and 3 A, then the flag.
    assert variant.operand_bits == 3 * 15 + 1 and variant.operand(3) == 3 | 6 << 15 | 9 << 30 | 1 << 45
    with pytest.raises(ValueError, match="Table depth must be an integer of at least 4 entries, not 3"):
        RowTable.sized(3, 2, depth=3)


@pytest.mark.parametrize("product_bits", [15, 7])
@pytest.mark.parametrize("logic_multiply", [False, True])
@pytest.mark.parametrize("registered_load", [True, False])
def test_identity_decoder_passes_codes_as_levels_or_reads_its_table(registered_load, logic_multiply, product_bits):
    """With ``table_identity`` the operand is the code as a level to multiply, with the table's latency of
    one cycle, as a table entry holds it (with its multiples where the PEs multiply in logic); without it, the
    table's entry at ``table_base + code`` (the table loaded through a register, as an array of several rows
    has it, or directly, as one row). An 8-bit code stays whole where the LUT layers' products are narrower
    (``product_bits`` 7)."""
    variant = RowTable.sized(3, 8, multiply=True, depth=8, identity=True, registered_load=registered_load,
                             logic_multiply=logic_multiply, product_bits=product_bits)
    flag = 1 << (variant.operand_bits - 1)
    dut = RowDecoder(variant)
    entries = [flag | (7 * j + 3) for j in range(8)]
    # (table_identity, code) per cycle; each operand is checked the cycle after.
    stream = [(1, 200), (0, 5), (1, 0), (1, 255), (0, 2), (0, 7), (1, 9)]
    got = []

    async def bench(ctx):
        for j, entry in enumerate(entries):
            ctx.set(dut.table_load, 1)
            ctx.set(dut.table_addr, j)
            ctx.set(dut.table_data, entry)
            await ctx.tick()
        ctx.set(dut.table_load, 0)
        ctx.set(dut.table_base, 0)
        for identity, code in stream:
            ctx.set(dut.table_identity, identity)
            ctx.set(dut.a_code, code)
            await ctx.tick()
            # Other inputs now: the operand is the registered one's.
            ctx.set(dut.table_identity, 1 - identity)
            ctx.set(dut.a_code, code ^ 0x5A)
            got.append(ctx.get(dut.operand))

    simulate(dut, bench)
    level = (lambda code: level_entry(code, 3, product_bits)) if logic_multiply else (lambda code: code)
    assert got == [level(code) | flag if identity else entries[code] for identity, code in stream]
    with pytest.raises(ValueError, match="only to PEs that multiply"):
        RowTable.sized(3, 8, depth=8, identity=True)


def test_products_are_as_wide_as_the_outer_widths_allow():
    assert [product_width(*w) for w in ((8, 8), (6, 6), (6, 4), (4, 8), (4, 4), (2, 2))] == [15, 11, 9, 11, 7, 2]
    with pytest.raises(ValueError, match="outer width b'_w = 9: the PEs take outer widths of 2..8 bits"):
        product_width(9, 8)
    narrow = RowTable([0, 31, 7, 2], [0, 15, 1, 3], product_bits=9)          # 31 * 15 = 465 < 2^9
    assert narrow.operand_bits == 27 and narrow.operand(1) == 31 * 15 | 7 * 15 << 9 | 2 * 15 << 18
    with pytest.raises(ValueError, match="levels up to 31 x 15 do not fit product_bits=8"):
        RowTable([0, 31, 7, 2], [0, 15, 1, 3], product_bits=8)
    with pytest.raises(ValueError, match="do not fit 8 bits"):
        row_vector([0, 31, 7, 2], 15, 8)


def test_double_buffered_pe_swaps_weights_with_the_first_element_of_a_tile():
    """``w_load`` writes the shadow weight while the current one keeps computing; the element
    with ``a_swap`` is the first computed with the new weight."""
    rng = random.Random("double buffered")
    variant = random_variant("row_vector", 3, rng)
    dut = ProcessingElement(variant, ACC_BITS, double_buffered=True)
    j = variant.s_a

    async def element(ctx, swap, psum=0):
        """The psum_out of this element after an idle cycle that announces its ``swap`` on ``swap_next``
        (its product is added one edge later, with ``psum``)."""
        ctx.set(dut.swap_next, swap)
        await ctx.tick()
        ctx.set(dut.swap_next, 0)
        ctx.set(dut.a_valid, 1)
        ctx.set(dut.a_swap, swap)
        ctx.set(dut.a_in, variant.operand(j))
        assert ctx.get(dut.swap) == swap
        await ctx.tick()
        assert ctx.get(dut.a_swap_out) == swap
        ctx.set(dut.a_valid, 0)
        ctx.set(dut.psum_in, psum)
        await ctx.tick()
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
        ctx.set(dut.w_load, 1)
        ctx.set(dut.w_code, variant.weight_word(0, 2))                    # loaded in the cycle that announces
        assert await element(ctx, swap=1) == variant.lut(2, j)            # tile 3, and used at once: +2
        ctx.set(dut.w_load, 0)
        assert await element(ctx, swap=0) == variant.lut(2, j)

    simulate(dut, bench)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(ValueError, match="variant PeLut has load ports .* cannot be double buffered"):
            ProcessingElement(random_variant("pe_lut", 3, rng), ACC_BITS, double_buffered=True)
        with pytest.raises(ValueError, match="variant PeLut has load ports .* cannot be double buffered"):
            PEArray(random_variant("pe_lut", 3, rng), 2, 2, ACC_BITS, double_buffered=True)
        gc.collect()                                                       # the half-built PE, while ignored
