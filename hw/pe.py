"""Weight-stationary LUT-MAC processing elements (PEs) and an array of them.

A PE holds one weight; each cycle it adds ``sgn * L[k][j]`` (``L[k][j] = W[k] * A[j]``,
the integer contract of DESIGN.md) for the activation passing by to the partial sum
coming down its column. The :class:`Variant` subclasses differ only in where the
product comes from:

- :class:`PeLut`: each PE holds the row ``L[k][.]`` of its own weight in a small RAM;
- :class:`RowVector`: a constant ROM at the row's edge turns ``j`` into the vector
  ``P = (L[1][j], ..., L[s_w][j])`` that travels along the row; each PE selects ``P[k]``;
- :class:`Rom`: every PE holds the model's whole LUT as a constant ROM;
- :class:`Multiply` (the baseline): the PE holds the level ``W[k]``, a constant ROM at
  the row's edge turns ``j`` into ``A[j]``, and the PE multiplies.

Weight words (``w_code``) are sign-magnitude: sign in the most significant bit.
"""

from __future__ import annotations

from amaranth import Array, C, Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

W_MAX = 127  # s'_w for outer weight bits b' = 8
A_MAX = 255  # s'_a for outer activation bits b' = 8
LEVEL_BITS = 8  # sign + 7-bit weight level, or an 8-bit activation level
PRODUCT_BITS = (W_MAX * A_MAX).bit_length()  # 15


def rom(m: Module, name: str, table: list[int], width: int, addr):
    """The entry of the constant ``table`` at ``addr``, read combinationally."""
    m.submodules[name] = memory = Memory(shape=width, depth=len(table), init=table)
    port = memory.read_port(domain="comb")
    m.d.comb += port.addr.eq(addr)
    return port.data


class Variant:
    """A way for a PE to get ``L[k][j]``, for one layer's level tables.

    ``w_levels`` (``s_w + 1`` integers, ``W[0] = 0``, up to 127) and ``a_levels``
    (``s_a + 1``, ``A[0] = 0``, up to 255) as :class:`compiler.graph.ConvNode` holds them.
    The base class is the part common to all: the weight word is ``(sign, k)``
    (``wbits`` bits), the activation code ``j`` travels along the row, no extra load
    ports. Subclasses define :meth:`product` and override the rest where they differ.
    """

    name: str

    def __init__(self, w_levels, a_levels):
        self.w_levels = [int(v) for v in w_levels]
        self.a_levels = [int(v) for v in a_levels]
        self.s_w, self.s_a = len(self.w_levels) - 1, len(self.a_levels) - 1
        self.wbits, self.abits = self.s_w.bit_length() + 1, self.s_a.bit_length()
        if self.s_w + 1 != 2 ** (self.wbits - 1) or self.s_a + 1 != 2 ** self.abits:
            raise ValueError(f"level tables need 2^(wbits-1) and 2^abits entries, not "
                             f"{self.s_w + 1} and {self.s_a + 1}")
        for levels, top in ((self.w_levels, W_MAX), (self.a_levels, A_MAX)):
            if levels[0] != 0 or not all(0 <= v <= top for v in levels):
                raise ValueError(f"levels must start at 0 and lie in 0..{top}: {levels}")

    def lut(self, k: int, j: int) -> int:
        """``L[k][j] = W[k] * A[j]``."""
        return self.w_levels[k] * self.a_levels[j]

    # Host side: what the hardware is fed.

    @property
    def weight_bits(self) -> int:
        return self.wbits

    @property
    def operand_bits(self) -> int:
        """Width of what travels along the row."""
        return self.abits

    @property
    def load_signature(self) -> dict:
        """PE inputs, besides ``w_code``, stored on a ``w_load`` beat."""
        return {}

    def weight_word(self, sign: int, magnitude: int) -> int:
        return sign << (self.weight_bits - 1) | magnitude

    def load_beats(self, sign: int, k: int) -> list[dict]:
        """Port values of the ``w_load`` beats that load weight code ``(sign, k)`` into a PE."""
        return [{"w_code": self.weight_word(sign, k)}]

    def operand(self, j: int) -> int:
        """What travels along the row for activation code ``j``."""
        return j

    # Hardware.

    def edge(self, m: Module, code):
        """The operand of activation code ``code`` (combinational, at the row's left edge)."""
        return code

    def product(self, m: Module, pe: ProcessingElement, magnitude, operand):
        """``L[k][j]`` (``PRODUCT_BITS`` unsigned) from the weight's magnitude and the operand."""
        raise NotImplementedError


class PeLut(Variant):
    """Each PE holds the row ``L[k][0..s_a]`` of its own weight in a RAM; ``j`` travels.

    Loading takes one ``w_load`` beat per entry ``j = 1..s_a``, each with the same
    ``w_code``, ``lut_addr = j`` and ``lut_data = L[k][j]``. Entry 0 ignores writes and
    stays 0. The PE uses only the sign of its weight code (the row for k = 0 is zeros).
    """

    name = "pe_lut"

    @property
    def load_signature(self) -> dict:
        return {"lut_addr": In(self.abits), "lut_data": In(PRODUCT_BITS)}

    def load_beats(self, sign: int, k: int) -> list[dict]:
        word = self.weight_word(sign, k)
        return [{"w_code": word, "lut_addr": j, "lut_data": self.lut(k, j)}
                for j in range(1, self.s_a + 1)]

    def product(self, m, pe, magnitude, operand):
        m.submodules.lut = lut = Memory(shape=PRODUCT_BITS, depth=self.s_a + 1, init=[])
        write, read = lut.write_port(), lut.read_port(domain="comb")
        m.d.comb += [
            write.en.eq(pe.w_load & (pe.lut_addr != 0)),
            write.addr.eq(pe.lut_addr),
            write.data.eq(pe.lut_data),
            read.addr.eq(operand),
        ]
        return read.data


class RowVector(Variant):
    """A constant ROM at the row's edge (``s_a + 1`` entries of ``s_w`` products) turns ``j``
    into ``P = (L[1][j], ..., L[s_w][j])``, which travels along the row; each PE selects
    ``P[k]`` (0 for k = 0). ``P[k]`` is bits ``15 (k-1) .. 15 k - 1`` of the operand."""

    name = "row_vector"

    @property
    def operand_bits(self) -> int:
        return self.s_w * PRODUCT_BITS

    def operand(self, j: int) -> int:
        return sum(self.lut(k, j) << PRODUCT_BITS * (k - 1) for k in range(1, self.s_w + 1))

    def edge(self, m, code):
        table = [self.operand(j) for j in range(self.s_a + 1)]
        return rom(m, "vector_rom", table, self.operand_bits, code)

    def product(self, m, pe, magnitude, operand):
        products = [C(0, PRODUCT_BITS)] + [operand.word_select(i, PRODUCT_BITS) for i in range(self.s_w)]
        return Array(products)[magnitude]


class Rom(Variant):
    """Every PE holds the model's whole LUT as a constant ROM, read at ``(k, j)``; ``j`` travels."""

    name = "rom"

    def product(self, m, pe, magnitude, operand):
        table = [self.lut(k, j) for k in range(self.s_w + 1) for j in range(self.s_a + 1)]
        return rom(m, "lut_rom", table, PRODUCT_BITS, Cat(operand, magnitude))


class Multiply(Variant):
    """Baseline: the PE holds its weight level (sign + 7-bit ``W[k]``); a constant ROM at the
    row's edge turns ``j`` into the 8-bit level ``A[j]``, which travels along the row; the PE
    multiplies (7 x 8 -> 15 bits)."""

    name = "multiply"

    @property
    def weight_bits(self) -> int:
        return LEVEL_BITS

    @property
    def operand_bits(self) -> int:
        return LEVEL_BITS

    def load_beats(self, sign: int, k: int) -> list[dict]:
        return [{"w_code": self.weight_word(sign, self.w_levels[k])}]

    def operand(self, j: int) -> int:
        return self.a_levels[j]

    def edge(self, m, code):
        return rom(m, "level_rom", self.a_levels, LEVEL_BITS, code)

    def product(self, m, pe, magnitude, operand):
        return magnitude * operand


VARIANTS = {cls.name: cls for cls in (PeLut, RowVector, Rom, Multiply)}


class ProcessingElement(wiring.Component):
    """One weight-stationary PE of ``variant``; every output is registered (latency 1).

    - ``w_load``: stores ``w_code`` and the variant's load ports (:meth:`Variant.load_beats`).
    - ``a_valid``, ``a_in`` (the row's operand) -> ``a_valid_out``, ``a_out`` for the right
      neighbour.
    - ``psum_out = psum_in + sgn * L[k][j]`` if ``a_valid``, else ``psum_in`` (``acc_bits``
      signed, wrapping).

    ``double_buffered``: ``w_load`` writes a shadow weight instead, and ports ``a_swap`` ->
    ``a_swap_out`` travel with the operand: an element with ``a_valid`` and ``a_swap`` is the
    first of a new tile, computed with the shadow weight, which becomes the PE's weight.
    The next tile's weights can so be loaded while the current tile's last elements are
    still in the array. Only for variants without load ports.
    """

    def __init__(self, variant: Variant, acc_bits: int = 24, double_buffered: bool = False):
        if double_buffered and variant.load_signature:
            raise ValueError(f"variant {type(variant).__name__} has load ports {sorted(variant.load_signature)}: "
                             f"it cannot be double buffered")
        self.variant, self.double_buffered = variant, double_buffered
        swap = {"a_swap": In(1), "a_swap_out": Out(1)} if double_buffered else {}
        super().__init__({
            "w_load": In(1),
            "w_code": In(variant.weight_bits),
            **variant.load_signature,
            "a_valid": In(1),
            "a_in": In(variant.operand_bits),
            **swap,
            "a_valid_out": Out(1),
            "a_out": Out(variant.operand_bits),
            "psum_in": In(signed(acc_bits)),
            "psum_out": Out(signed(acc_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        stored = Signal(self.variant.weight_bits)
        with m.If(self.w_load):
            m.d.sync += stored.eq(self.w_code)
        weight = stored
        if self.double_buffered:
            current = Signal(self.variant.weight_bits)
            swap = self.a_valid & self.a_swap
            weight = Mux(swap, stored, current)
            with m.If(swap):
                m.d.sync += current.eq(stored)
            m.d.sync += self.a_swap_out.eq(self.a_swap)
        product = Mux(self.a_valid, self.variant.product(m, self, weight[:-1], self.a_in), 0)
        sign = weight[-1]
        # psum_in -/+ product as one adder: -p = ~p + 1, the 1 entering as the carry.
        ones_if_negative = Mux(sign, -1, 0)
        m.d.sync += [
            self.a_valid_out.eq(self.a_valid),
            self.a_out.eq(self.a_in),
            self.psum_out.eq(self.psum_in + (product ^ ones_if_negative) + sign),
        ]
        return m


class RowDecoder(wiring.Component):
    """The left edge of a row: ``a_code`` -> the variant's ``operand``, registered with
    ``a_valid`` -> ``valid`` (latency 1)."""

    def __init__(self, variant: Variant):
        self.variant = variant
        super().__init__({
            "a_valid": In(1),
            "a_code": In(variant.abits),
            "valid": Out(1),
            "operand": Out(variant.operand_bits),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.sync += [self.valid.eq(self.a_valid), self.operand.eq(self.variant.edge(m, self.a_code))]
        return m


class PEArray(wiring.Component):
    """``rows x cols`` PEs of one variant, a :class:`RowDecoder` at each row's left edge.

    Operands flow left to right along rows, partial sums top to bottom down columns.
    Loading: ``w_load`` with ``w_pe = r * cols + c`` selects PE (r, c); ``w_code`` and the
    variant's load ports are broadcast. Timing, counting clock edges: element t of row r's
    stream (``a_valid[r]``, ``a_code[r]``) is sampled at edge ``t + r`` (rows skewed by one),
    the matching ``psum_in[c]`` at edge ``t + c + 1``, and ``psum_out[c]`` holds
    ``psum_in[c] + sum over r of sgn[r][c] * L[k[r][c]][j[r]]`` after edge ``t + rows + c``.
    """

    def __init__(self, variant: Variant, rows: int, cols: int, acc_bits: int = 24):
        self.variant, self.rows, self.cols, self.acc_bits = variant, rows, cols, acc_bits
        super().__init__({
            "w_load": In(1),
            "w_pe": In(range(rows * cols)),
            "w_code": In(variant.weight_bits),
            **variant.load_signature,
            "a_valid": In(1).array(rows),
            "a_code": In(variant.abits).array(rows),
            "psum_in": In(signed(acc_bits)).array(cols),
            "psum_out": Out(signed(acc_bits)).array(cols),
        })

    def elaborate(self, platform):
        m = Module()
        psums = list(self.psum_in)
        for r in range(self.rows):
            m.submodules[f"decoder_{r}"] = decoder = RowDecoder(self.variant)
            m.d.comb += [decoder.a_valid.eq(self.a_valid[r]), decoder.a_code.eq(self.a_code[r])]
            valid, operand = decoder.valid, decoder.operand
            for c in range(self.cols):
                m.submodules[f"pe_{r}_{c}"] = pe = ProcessingElement(self.variant, self.acc_bits)
                m.d.comb += [
                    pe.w_load.eq(self.w_load & (self.w_pe == r * self.cols + c)),
                    pe.w_code.eq(self.w_code),
                    *(getattr(pe, name).eq(getattr(self, name)) for name in self.variant.load_signature),
                    pe.a_valid.eq(valid),
                    pe.a_in.eq(operand),
                    pe.psum_in.eq(psums[c]),
                ]
                valid, operand, psums[c] = pe.a_valid_out, pe.a_out, pe.psum_out
        m.d.comb += [out.eq(psum) for out, psum in zip(self.psum_out, psums)]
        return m
