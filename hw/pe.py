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
  the row's edge turns ``j`` into ``A[j]``, and the PE multiplies;
- :class:`RowTable` (the layer engine's): :class:`RowVector` with the table loaded at run
  time, optionally multiplying where an entry says so.

Weight words (``w_code``) are sign-magnitude: sign in the most significant bit.
"""

from __future__ import annotations

from copy import copy

from amaranth import Array, C, Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .delay import delayed, own, reset_less_data
from .reset_tree import own_reset_submodule, reset_tree
from .pe_words import (A_MAX, LEVEL_BITS, PRODUCT_BITS, W_MAX, digit_bits, level_entry, logic_multiplies,
                       multiple_field_bits, row_vector, weight_word)


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
    ``product_bits``: the width of a product ``L[k][j]`` (:func:`hw.pe_words.product_width` of the
    layer's outer widths; 15 at 8/8). The base class is the part common to all: the weight word is
    ``(sign, k)`` (``wbits`` bits), the activation code ``j`` travels along the row, no extra load
    ports. Subclasses define :meth:`product` and override the rest where they differ.
    """

    name: str

    def __init__(self, w_levels, a_levels, product_bits: int = PRODUCT_BITS):
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
        if not isinstance(product_bits, int) or not 1 <= product_bits <= PRODUCT_BITS or \
                max(self.w_levels) * max(self.a_levels) >= 1 << product_bits:
            raise ValueError(f"products of levels up to {max(self.w_levels)} x {max(self.a_levels)} do not fit "
                             f"product_bits={product_bits!r} (1..{PRODUCT_BITS})")
        self.product_bits = product_bits

    def lut(self, k: int, j: int) -> int:
        """``L[k][j] = W[k] * A[j]``."""
        return self.w_levels[k] * self.a_levels[j]

    # Host side: what the hardware is fed.

    @property
    def weight_bits(self) -> int:
        """Width of a weight word ``w_code``: sign on top of ``k``."""
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
        """The ``weight_bits``-bit word of ``(sign, magnitude)`` (:func:`hw.pe_words.weight_word`)."""
        return weight_word(sign, magnitude, self.weight_bits)

    @property
    def stored_bits(self) -> int:
        """Bits of the weight a PE keeps: :attr:`weight_bits`, unless the variant keeps less of its word."""
        return self.weight_bits

    def stored_weight(self, word):
        """What a PE keeps of weight word ``word`` (hardware; sign on top): all of it, unless the variant says."""
        return word

    def load_beats(self, sign: int, k: int) -> list[dict]:
        """Port values of the ``w_load`` beats that load weight code ``(sign, k)`` into a PE."""
        return [{"w_code": self.weight_word(sign, k)}]

    def operand(self, j: int) -> int:
        """What travels along the row for activation code ``j``."""
        return j

    @property
    def edge_signature(self) -> dict:
        """Row decoder inputs that load the row's edge, the same for every row."""
        return {}

    def edge_beats(self) -> list[dict]:
        """Port values of the beats (one per clock) that load the row edges for these levels."""
        return []

    # Hardware.

    def edge(self, m: Module, code):
        """The operand of activation code ``code`` (combinational, at the row's left edge)."""
        return code

    def decode(self, m: Module, decoder: RowDecoder, reset_less: bool = False):
        """Drive ``decoder.operand``: the operand of ``decoder.a_code`` one cycle later; ``reset_less``: its
        data registers ignore the domain's reset (:func:`hw.delay.reset_less_data`).

        The code is registered and the edge (a constant ROM for some variants) reads it after the
        register: the same operand each cycle as registering the edge's output (the code's reset 0
        gives the operand of j = 0, itself 0 as ``A[0] = 0``), but ``abits`` flip-flops, not
        ``operand_bits`` (45 for the W3 row product vector), and the array's register after the
        decoder then takes the ROM's output in the ROM's own logic cells."""
        code = Signal.like(decoder.a_code, name="code", reset_less=reset_less)
        m.d.sync += code.eq(decoder.a_code)
        m.d.comb += decoder.operand.eq(self.edge(m, code))

    def product(self, m: Module, pe: ProcessingElement, magnitude, operand):
        """``L[k][j]`` (``product_bits`` unsigned) from the weight's magnitude and the operand."""
        raise NotImplementedError

    def product_terms(self, m: Module, pe: ProcessingElement, magnitude, operand) -> list:
        """Unsigned values whose sum is ``L[k][j]``: :meth:`product` alone, unless a variant adds up
        partial products (the PE sums them in its two pipeline stages)."""
        return [self.product(m, pe, magnitude, operand)]


class PeLut(Variant):
    """Each PE holds the row ``L[k][0..s_a]`` of its own weight in a RAM; ``j`` travels.

    Loading takes one ``w_load`` beat per entry ``j = 1..s_a``, each with the same
    ``w_code``, ``lut_addr = j`` and ``lut_data = L[k][j]``. Entry 0 ignores writes and
    stays 0. The PE uses only the sign of its weight code (the row for k = 0 is zeros).
    """

    name = "pe_lut"

    @property
    def load_signature(self) -> dict:
        return {"lut_addr": In(self.abits), "lut_data": In(self.product_bits)}

    def load_beats(self, sign: int, k: int) -> list[dict]:
        word = self.weight_word(sign, k)
        return [{"w_code": word, "lut_addr": j, "lut_data": self.lut(k, j)}
                for j in range(1, self.s_a + 1)]

    def product(self, m, pe, magnitude, operand):
        m.submodules.lut = lut = Memory(shape=self.product_bits, depth=self.s_a + 1, init=[])
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
    ``P[k]`` (0 for k = 0). ``P[k]`` is bits ``b (k-1) .. b k - 1`` of the operand, ``b = product_bits``."""

    name = "row_vector"

    @property
    def operand_bits(self) -> int:
        return self.s_w * self.product_bits

    def operand(self, j: int) -> int:
        return row_vector(self.w_levels, self.a_levels[j], self.product_bits)

    def edge(self, m, code):
        table = [self.operand(j) for j in range(self.s_a + 1)]
        return rom(m, "vector_rom", table, self.operand_bits, code)

    def product(self, m, pe, magnitude, operand):
        products = [C(0, self.product_bits)] + [operand.word_select(i, self.product_bits) for i in range(self.s_w)]
        return Array(products)[magnitude]


class Rom(Variant):
    """Every PE holds the model's whole LUT as a constant ROM, read at ``(k, j)``; ``j`` travels."""

    name = "rom"

    def product(self, m, pe, magnitude, operand):
        table = [self.lut(k, j) for k in range(self.s_w + 1) for j in range(self.s_a + 1)]
        return rom(m, "lut_rom", table, self.product_bits, Cat(operand, magnitude))


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


class RowTable(Variant):
    """:class:`RowVector` with a loadable table, the layer engine's PEs: each row's edge holds a
    RAM of ``depth`` entries (default ``s_a + 1``) read at ``table_base + j``. An entry is
    ``P = (L[1][j], ..., L[s_w][j])`` and the PE selects ``P[k]``. With ``multiply`` an entry
    whose top bit is set holds the level ``A[j]`` instead, and the PE multiplies it by its
    weight level ``W[k]`` (weight words are then ``LEVEL_BITS`` wide: sign + ``k`` or ``W[k]``);
    the host side (:meth:`operand`, :meth:`load_beats`) then encodes these levels that way.
    ``logic_multiply``: that product in logic cells, not a hardware multiplier (:func:`multiply_in_logic`
    says where), as one term per digit of ``W[k]`` (:func:`hw.pe_words.digit_bits`: the ``wbits - 1`` bits of
    a LUT layer's ``k``, or 1), summed by the PE. A multiplying layer's entry holds the multiples ``d * A[j]``
    of every digit (:func:`hw.pe_words.level_entry`, ``A[j]`` lowest), so a digit selects its term as ``k``
    selects ``P[k]``, through the same multiplexer: 4 terms for W3's 7-bit levels, not 7 shifted copies.

    Edge ports, broadcast to every row: ``table_load`` writes ``table_data`` at ``table_addr`` at the
    second clock edge (registered in each row where ``registered_load``, as an array of several rows
    needs: the broadcast reached the ResNet-20 core's 8 rows' block RAMs through its worst path; else at
    the first; a write port of its own: no multiplexer from the load's state into the read address, which
    was that core's worst path before); ``table_base`` offsets the
    reads. With ``identity`` (and ``multiply``), ``table_identity`` high makes the operand the code itself
    as a level to multiply, with the table's latency (a layer whose levels are its codes needs no table
    entries). The levels matter only to the host side: :meth:`sized` makes the hardware for any layer up
    to given widths.
    """

    name = "row_table"

    def __init__(self, w_levels, a_levels, *, multiply: bool = False, depth: int | None = None,
                 logic_multiply: bool = False, product_bits: int = PRODUCT_BITS, identity: bool = False,
                 registered_load: bool = True):
        super().__init__(w_levels, a_levels, product_bits)
        self.multiply, self.logic_multiply = bool(multiply), bool(logic_multiply)
        self.registered_load = bool(registered_load)
        if identity and not multiply:
            raise ValueError("codes pass as levels (identity) only to PEs that multiply")
        self.identity = bool(identity)
        self.selects_only = False
        self.depth = self.s_a + 1 if depth is None else depth
        # With identity the widest codes may be those passed as levels: any table holds at least one entry.
        least = 1 if self.identity else self.s_a + 1
        if not isinstance(self.depth, int) or self.depth < least:
            raise ValueError(f"Table depth must be an integer of at least {least} entries, not {depth!r}")

    @classmethod
    def sized(cls, wbits: int, abits: int, *, multiply: bool = False, depth: int | None = None,
              logic_multiply: bool = False, product_bits: int = PRODUCT_BITS, identity: bool = False,
              registered_load: bool = True) -> RowTable:
        """The variant for layers of up to ``wbits``-bit weights and ``abits``-bit codes whose products
        fit ``product_bits``; its levels are placeholders (0, 1, ..., the activation ones capped so
        that their products fit): only the sizes matter to the hardware."""
        cap = ((1 << product_bits) - 1) // (2 ** (wbits - 1) - 1)
        return cls(range(2 ** (wbits - 1)), [min(j, cap) for j in range(2 ** abits)], multiply=multiply,
                   depth=depth, logic_multiply=logic_multiply, product_bits=product_bits, identity=identity,
                   registered_load=registered_load)

    def selecting(self) -> RowTable:
        """This variant for PEs that only select ``P[k]`` (:class:`PEArray`'s columns past ``multiply_cols``): the
        same ports (weight words and operands as wide), but a PE keeps only the sign and ``k`` of its weight word.
        A multiplying layer gives such PEs the weight 0, whose product ``P[0] = 0`` whatever the entry holds."""
        variant = copy(self)
        variant.selects_only = True
        return variant

    @property
    def weight_bits(self) -> int:
        return LEVEL_BITS if self.multiply else self.wbits

    @property
    def stored_bits(self) -> int:
        return self.wbits if self.selects_only else self.weight_bits

    def stored_weight(self, word):
        return Cat(word[:self.wbits - 1], word[-1]) if self.selects_only else word

    @property
    def operand_bits(self) -> int:
        """A table entry: ``s_w`` products, or with ``multiply`` at least a level, and the flag on top."""
        products = self.s_w * self.product_bits
        return max(products, LEVEL_BITS) + 1 if self.multiply else products

    def load_beats(self, sign: int, k: int) -> list[dict]:
        return [{"w_code": self.weight_word(sign, self.w_levels[k] if self.multiply else k)}]

    def operand(self, j: int) -> int:
        if self.multiply:
            return level_entry(self.a_levels[j], self.wbits, self.product_bits) | 1 << (self.operand_bits - 1)
        return row_vector(self.w_levels, self.a_levels[j], self.product_bits)

    @property
    def digit_bits(self) -> int:
        """Bits of a weight level's digit where the PEs multiply in logic (:func:`hw.pe_words.digit_bits`)."""
        return digit_bits(self.wbits, self.product_bits)

    @property
    def edge_signature(self) -> dict:
        identity = {"table_identity": In(1)} if self.identity else {}
        return {"table_load": In(1), "table_addr": In(range(self.depth)), "table_data": In(self.operand_bits),
                "table_base": In(range(self.depth)), **identity}

    def edge_beats(self) -> list[dict]:
        return [{"table_load": 1, "table_addr": j, "table_data": self.operand(j)} for j in range(self.s_a + 1)]

    def decode(self, m, decoder, reset_less=False):
        m.submodules.table = table = Memory(shape=self.operand_bits, depth=self.depth, init=[])
        write, read = table.write_port(), table.read_port()
        # Where registered, the broadcast load port reaches no row's block RAM directly (the ResNet-20 core's
        # worst path ran from it into the 8 rows' tables): each row's own flip-flops (hw.flip_flops.OWN_FLIP_FLOP).
        load = [decoder.table_load, decoder.table_addr, decoder.table_data]
        if self.registered_load:
            load = [delayed(m, load[0], 1, "table_load", own_flip_flops=True, reset_less=reset_less),
                    *(delayed(m, port, 1, name, own_flip_flops=True, reset_less=reset_less)
                      for port, name in zip(load[1:], ("table_addr", "table_data")))]
        m.d.comb += [write.en.eq(load[0]), write.addr.eq(load[1]), write.data.eq(load[2]),
                     read.addr.eq(decoder.table_base + decoder.a_code)]
        if not self.identity:
            m.d.comb += decoder.operand.eq(read.data)
            return
        identity = own(Signal(name="identity", reset_less=reset_less))
        code = Signal(self.abits, name="code", reset_less=reset_less)
        m.d.sync += [identity.eq(decoder.table_identity), code.eq(decoder.a_code)]
        # The code as a level, as a table entry holds it: with its multiples where the PEs take digits, each a sum
        # of shifted codes (a product by a constant would take a DSP block in Yosys's ECP5 flow).
        digits = 2 ** self.digit_bits if self.logic_multiply else 2
        shifted = [[code << i if i else code for i in range(d.bit_length()) if d >> i & 1] for d in range(1, digits)]
        width = multiple_field_bits(self.product_bits)
        multiples = Cat(*(Cat(sum(terms[1:], terms[0]), C(0, width))[:width] for terms in shifted))
        level = Cat(multiples, C(0, self.operand_bits - 1 - len(multiples)), C(1, 1))
        m.d.comb += decoder.operand.eq(Mux(identity, level, read.data))

    def selected(self, magnitude, operand):
        """The product ``P[k]`` of a row vector entry (``P[0] = 0``)."""
        # A shift, not an Array: Yosys writes an Array as an ``always @*`` case, which Icarus
        # leaves at X in a PE whose inputs never change after time 0.
        products = Cat(C(0, self.product_bits), operand[:self.s_w * self.product_bits])
        return products.word_select(magnitude, self.product_bits)

    def product(self, m, pe, magnitude, operand):
        selected = self.selected(magnitude, operand)
        if not self.multiply:
            return selected
        return Mux(operand[-1], magnitude * operand[:LEVEL_BITS], selected)

    def product_terms(self, m, pe, magnitude, operand):
        if self.selects_only:
            return [self.selected(magnitude, operand)]
        if not (self.multiply and self.logic_multiply):
            return [self.product(m, pe, magnitude, operand)]
        width = self.digit_bits
        if width > 1:
            # Digit i of W[k] selects its multiple of A[j], shifted to its place; a LUT layer's k is digit 0 (the
            # others are 0 in its weight words), and above digit 0 only a multiple's own bits are needed.
            multiple_bits = ((2 ** width - 1) * A_MAX).bit_length()
            return [self.selected(magnitude[low:low + width], operand)[:self.product_bits if low == 0 else
                                                                      multiple_bits] << low
                    for low in range(0, len(magnitude), width)]
        # Binary digits (the multiples do not fit the entry): shifted copies of the level, one per bit of W[k];
        # a LUT layer's product rides in the first term, where the level times bit 0 of W[k] would.
        selected = self.selected(magnitude, operand)
        level, multiplies = operand[:LEVEL_BITS], operand[-1]
        terms = [Mux(multiplies & magnitude[i], level << i, 0) for i in range(len(magnitude))]
        terms[0] = Mux(multiplies, terms[0], selected)
        return terms


def multiply_in_logic(platform) -> bool:
    """Whether the multiplying PEs of an engine built for ``platform`` (None: simulation) multiply in
    logic cells: :func:`hw.pe_words.logic_multiplies` of its device."""
    return logic_multiplies(str(getattr(platform, "device", "")))


def add_with_carry(a, b, carry):
    """``a + b + carry`` (``carry`` one bit) as one adder: ``carry`` enters below both operands' lowest
    bits, whose sum carries it up (no second adder for it)."""
    return (((a << 1) | carry) + ((b << 1) | carry)) >> 1


def sum_with_carries(terms: list, carry, count: int) -> list:
    """``terms`` added pairwise, level by level, until ``count`` (or fewer) are left, ``carry`` into each
    adder (:func:`add_with_carry`): their sum is that of ``terms`` plus ``carry`` once per adder."""
    while len(terms) > count:
        terms = [add_with_carry(a, b, carry) for a, b in zip(terms[0::2], terms[1::2])] + terms[len(terms) // 2 * 2:]
    return terms


VARIANTS = {cls.name: cls for cls in (PeLut, RowVector, Rom, Multiply, RowTable)}


def check_double_buffered(variant: Variant) -> None:
    """``ValueError`` unless ``variant``'s PEs can be double buffered (no load ports)."""
    if variant.load_signature:
        raise ValueError(f"variant {type(variant).__name__} has load ports {sorted(variant.load_signature)}: "
                         f"it cannot be double buffered")


class ProcessingElement(wiring.Component):
    """One weight-stationary PE of ``variant``; every output is registered.

    - ``w_load``: stores ``w_code`` and the variant's load ports (:meth:`Variant.load_beats`).
    - ``a_valid``, ``a_in`` (the row's operand; 0 where ``a_valid`` is low) -> ``a_valid_out``, ``a_out`` for the
      right neighbour (latency 1; 0 where ``a_valid`` was low, as ``a_in`` was: no logic cell before the register).
    - ``psum_out = psum_in + sgn * L[k][j]`` if ``a_valid``, else ``psum_in`` (``acc_bits``
      signed, wrapping), the product registered first: the element sampled at edge e adds to
      the ``psum_in`` sampled at edge e + 1. The product's terms (:meth:`Variant.product_terms`) are
      each inverted where the weight is negative (``~t = -t - 1``) and summed with the sign as the carry
      into every adder, at most two adder levels a cycle (a logic multiplier's seven binary terms; W3's four
      digit terms and W4's three take one): n terms take n adders with ``psum_in``, so n carries make the
      negation whole, and no adder of its own negates.
      Every variant's products of the operand 0 are 0 (``A[0] = 0``, ``P[0] = 0``), so the product logic
      takes no valid bit (whose fan-out into every term of the next PE was the ULX3S-85F's worst path at
      7959604, 15.3 ns): where no element is, the operand is 0 and so is its negation.

    ``double_buffered``: ``w_load`` writes a shadow weight instead, and ports ``a_swap`` ->
    ``a_swap_out`` travel with the operand: an element with ``a_valid`` and ``a_swap`` is the
    first of a new tile, computed with the shadow weight, which becomes the PE's weight.
    The next tile's weights can so be loaded while the current tile's last elements are
    still in the array. Only for variants without load ports. ``swap_next`` must be, one
    cycle ahead, what ``a_valid & a_swap`` will be (``swap``, combinational, is the right
    neighbour's): the weight of the next element is registered from it, so that no
    multiplexer from ``a_swap`` lies before the product (the ResNet-20 core's worst path).
    """

    def __init__(self, variant: Variant, acc_bits: int = 24, double_buffered: bool = False):
        if double_buffered:
            check_double_buffered(variant)
        self.variant, self.double_buffered = variant, double_buffered
        swap = {"a_swap": In(1), "a_swap_out": Out(1), "swap_next": In(1), "swap": Out(1)} if double_buffered else {}
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
        # Data registers ignore the domain's reset where hw.delay.reset_less_data says (it would reach every bit
        # of every PE); a product counts only where the valid bit, reset, says so.
        reset_less = reset_less_data(platform)
        kept = self.variant.stored_weight(self.w_code)
        stored = Signal(self.variant.stored_bits, reset_less=reset_less)
        with m.If(self.w_load):
            m.d.sync += stored.eq(kept)
        weight = stored
        if self.double_buffered:
            # weight(t) = stored(t) if a tile starts at t, else weight(t - 1): registered from swap_next
            # at t - 1, with stored(t) = the shadow as this cycle's load leaves it.
            weight = Signal(self.variant.stored_bits, reset_less=reset_less)
            with m.If(self.swap_next):
                m.d.sync += weight.eq(Mux(self.w_load, kept, stored))
            m.d.comb += self.swap.eq(self.a_valid & self.a_swap)
            swap_out = own(Signal(name="swap_out"))
            m.d.sync += swap_out.eq(self.a_swap)
            m.d.comb += self.a_swap_out.eq(swap_out)
        sign = weight[-1]
        ones_if_negative = Mux(sign, -1, 0)
        terms = [term ^ ones_if_negative for term in self.variant.product_terms(m, self, weight[:-1], self.a_in)]
        # Up to two partial sums registered (the first stage), then added to psum_in, which comes last:
        # it arrives latest (the top row's out of the accumulators' block RAM).
        sums = sum_with_carries(terms, sign, 2)
        parts = [Signal(value.shape(), name=f"product_{n}", reset_less=reset_less) for n, value in enumerate(sums)]
        carry = Signal(reset_less=reset_less)
        # The valid bit is its own flip-flop: equal to the engine's tag line and to the PE's on the same
        # diagonal a row down, it would otherwise be merged with them (hw.flip_flops.OWN_FLIP_FLOP).
        valid_out = own(Signal(name="valid_out"))
        operand_out = Signal.like(self.a_out, name="operand_out", reset_less=reset_less)
        psum = Signal.like(self.psum_out, name="psum", reset_less=reset_less)
        m.d.sync += [
            valid_out.eq(self.a_valid),
            operand_out.eq(self.a_in),
            carry.eq(sign),
            *(part.eq(value) for part, value in zip(parts, sums)),
            psum.eq(add_with_carry(sum_with_carries(parts, carry, 1)[0], self.psum_in, carry)),
        ]
        m.d.comb += [self.a_valid_out.eq(valid_out), self.a_out.eq(operand_out), self.psum_out.eq(psum)]
        return m


class RowDecoder(wiring.Component):
    """The left edge of a row: ``a_code`` -> the variant's ``operand``, with ``a_valid`` ->
    ``valid``, latency 1; the variant's edge ports (:attr:`Variant.edge_signature`) load it."""

    def __init__(self, variant: Variant):
        self.variant = variant
        super().__init__({
            "a_valid": In(1),
            "a_code": In(variant.abits),
            **variant.edge_signature,
            "valid": Out(1),
            "operand": Out(variant.operand_bits),
        })

    def elaborate(self, platform):
        m = Module()
        valid = own(Signal(name="valid_out"))   # equal to the engine's tag line's (hw.flip_flops.OWN_FLIP_FLOP)
        m.d.sync += valid.eq(self.a_valid)
        m.d.comb += self.valid.eq(valid)
        self.variant.decode(m, self, reset_less_data(platform))
        return m


class PEArray(wiring.Component):
    """``rows x cols`` PEs of one variant, a :class:`RowDecoder` at each row's left edge.

    Operands flow left to right along rows, partial sums top to bottom down columns.
    Loading: ``w_load`` with ``w_pe = r * cols + c`` selects PE (r, c); ``w_code`` and the
    variant's load ports are broadcast; the variant's edge ports go to every row decoder.
    Timing, counting clock edges, with ``p`` = :data:`hw.pe_words.ARRAY_PIPELINE` (the register after
    each row decoder, each PE's product register): element t of row r's stream (``a_valid[r]``, ``a_code[r]``)
    is sampled at edge ``t + r`` (rows skewed by one), the matching ``psum_in[c]`` at edge
    ``t + c + 1 + p``, and ``psum_out[c]`` holds ``psum_in[c] + sum over r of sgn[r][c] *
    L[k[r][c]][j[r]]`` after edge ``t + rows + c + p`` (the rows where ``a_valid[r]`` is high: a row's
    register after its decoder passes the operand 0 on where it is low, whatever ``a_code[r]``).

    ``double_buffered``: double-buffered PEs (:class:`ProcessingElement`; variants without
    load ports): ``w_load`` is a mask of rows (bit r: row r), and each row it names writes its
    shadow weights from its ``w_code[r]``, ``cols`` weight words, column 0 lowest. The load travels
    along the row as the operands do, a column a cycle: PE (r, c) takes its word ``c`` cycles after
    ``w_load[r]`` (a row spans the die: one register's enable fanned out to a whole row was 16.7 ns on
    the ULX3S-85F), so ``w_code[r]`` must hold for ``cols`` cycles; ``a_swap[r]`` goes with row r's
    stream (sampled with ``a_valid[r]``), so a load keeps its distance to the swap in every column.

    ``multiply_cols`` (a multiplying :class:`RowTable`): 0, every PE multiplies; else those of columns
    ``multiply_cols ..`` only select (:meth:`RowTable.selecting`), and a multiplying layer's weights there must be 0.

    ``RESET_LEVELS``: where :func:`hw.reset_tree.reset_tree` holds, each row takes the reset from a copy of its own,
    a cycle after the array: nothing may reach a row in the cycle after a reset (:func:`hw.reset_tree.settling`).
    """

    RESET_LEVELS = 1

    def __init__(self, variant: Variant, rows: int, cols: int, acc_bits: int = 24, *, double_buffered: bool = False,
                 multiply_cols: int = 0):
        if double_buffered:
            check_double_buffered(variant)
        if multiply_cols and not (isinstance(variant, RowTable) and variant.multiply and 1 <= multiply_cols <= cols):
            raise ValueError(f"multiply_cols={multiply_cols!r}: only the columns of a multiplying RowTable array "
                             f"(1..cols={cols}) can be the only ones that multiply")
        self.variant, self.rows, self.cols, self.acc_bits = variant, rows, cols, acc_bits
        self.double_buffered, self.multiply_cols = double_buffered, multiply_cols
        if double_buffered:
            load = {"w_load": In(rows), "w_code": In(cols * variant.weight_bits).array(rows)}
            swap = {"a_swap": In(1).array(rows)}
        else:
            load = {"w_load": In(1), "w_pe": In(range(rows * cols)), "w_code": In(variant.weight_bits),
                    **variant.load_signature}
            swap = {}
        super().__init__({
            **load,
            **variant.edge_signature,
            "a_valid": In(1).array(rows),
            "a_code": In(variant.abits).array(rows),
            **swap,
            "psum_in": In(signed(acc_bits)).array(cols),
            "psum_out": Out(signed(acc_bits)).array(cols),
        })

    def elaborate(self, platform):
        m = Module()
        psums = list(self.psum_in)
        selecting = self.variant.selecting() if self.multiply_cols else None
        # Where hw.reset_tree says (the ECP5), each row is a block with a copy of the reset of its own, a cycle
        # later: one copy for the whole engine reached every row's registers across the die (the ULX3S-85F
        # ResNet-20's worst path at 73fa289, 13.2 ns from the engine's reset to a row's weight load register).
        tree = reset_tree(platform)
        for r in range(self.rows):
            row = Module() if tree else m
            row.submodules[f"decoder_{r}"] = decoder = RowDecoder(self.variant)
            row.d.comb += [decoder.a_valid.eq(self.a_valid[r]), decoder.a_code.eq(self.a_code[r]),
                           *(getattr(decoder, name).eq(getattr(self, name)) for name in self.variant.edge_signature)]
            # The decoder's outputs registered: a table's read data leaves its block RAM through them.
            valid = delayed(row, decoder.valid, 1, f"valid_{r}", own_flip_flops=True)
            # The operand is 0 where no element is (ProcessingElement: its products are 0).
            operand = delayed(row, Mux(decoder.valid, decoder.operand, 0), 1, f"operand_{r}",
                                reset_less=reset_less_data(platform))
            if self.double_buffered:
                # With the decoder's operand, and one cycle ahead of it for the first PE's swap_next.
                swap_ahead = delayed(row, self.a_swap[r], 1, f"swap_ahead_{r}", own_flip_flops=True)
                swap_next = decoder.valid & swap_ahead
                swap = delayed(row, swap_ahead, 1, f"swap_{r}", own_flip_flops=True)
                load = self.w_load[r]       # the row's load as it reaches column c
            for c in range(self.cols):
                variant = selecting if self.multiply_cols and c >= self.multiply_cols else self.variant
                row.submodules[f"pe_{r}_{c}"] = pe = ProcessingElement(variant, self.acc_bits,
                                                                       double_buffered=self.double_buffered)
                if self.double_buffered:
                    row.d.comb += [pe.w_load.eq(load),
                                   pe.w_code.eq(self.w_code[r].word_select(c, self.variant.weight_bits)),
                                   pe.a_swap.eq(swap), pe.swap_next.eq(swap_next)]
                    swap, swap_next = pe.a_swap_out, pe.swap
                    if c < self.cols - 1:
                        load = delayed(row, load, 1, f"w_load_{r}_{c + 1}")
                else:
                    row.d.comb += [pe.w_load.eq(self.w_load & (self.w_pe == r * self.cols + c)),
                                   pe.w_code.eq(self.w_code),
                                   *(getattr(pe, name).eq(getattr(self, name)) for name in self.variant.load_signature)]
                row.d.comb += [pe.a_valid.eq(valid), pe.a_in.eq(operand), pe.psum_in.eq(psums[c])]
                valid, operand, psums[c] = pe.a_valid_out, pe.a_out, pe.psum_out
            if tree:
                own_reset_submodule(m, f"row_{r}", row, platform, f"array_row_{r}")
        m.d.comb += [out.eq(psum) for out, psum in zip(self.psum_out, psums)]
        return m
