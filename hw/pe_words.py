"""The words a PE is fed, computed on the host: pure Python, no Amaranth.

One source for the PE variants (:mod:`hw.pe`), the engine's sizing
(:mod:`hw.engine_params`) and the host's load words (:mod:`hw.program`):

- a weight word is sign-magnitude, the sign in its top bit (:func:`weight_word`);
- a row vector ``P = (L[1][j], ..., L[s_w][j])`` packs the products of activation
  code ``j`` with every weight magnitude, ``P[k]`` in bits ``bits * (k - 1)`` and up
  (:func:`row_vector`), ``bits`` the product width that the outer widths b'_w / b'_a
  allow (:func:`product_width`; ``PRODUCT_BITS`` = 15 at b' = 8).
"""

from __future__ import annotations

from .fabric import ecp5_part

W_MAX = 127  # s'_w for outer weight bits b' = 8
A_MAX = 255  # s'_a for outer activation bits b' = 8
LEVEL_BITS = 8  # sign + 7-bit weight level, or an 8-bit activation level
PRODUCT_BITS = (W_MAX * A_MAX).bit_length()  # 15: the product width at outer widths b'_w = b'_a = 8
# Registers of the PE array beyond one per PE: each row's table read data (out of block RAM) before
# the row's PEs, and each PE's product before its adder (:class:`hw.pe.PEArray`, the engine's timing).
ARRAY_PIPELINE = 2


def logic_multiplies(device: str) -> bool:
    """Whether PEs that multiply levels do it in logic cells on FPGA part ``device`` (``""``: none, a
    simulation): on ECP5 parts (``LFE5U-...``), whose multiplier sites would spread a PE array over the
    die (the ResNet-20 whole-network core did not route in 35 minutes with 64 of them, and did with
    none); not on the iCE40 UltraPlus, whose few PEs fit its multipliers but not the logic."""
    return ecp5_part(device)


def weight_word(sign: int, magnitude: int, weight_bits: int) -> int:
    """The ``weight_bits``-bit word of a weight: ``sign`` (0 or 1) on top of ``magnitude``
    (the index ``k``, or the level ``W[k]`` for a multiplying PE)."""
    if sign not in (0, 1) or not 0 <= magnitude < 1 << (weight_bits - 1):
        raise ValueError(f"weight (sign {sign}, magnitude {magnitude}) does not fit a {weight_bits}-bit word")
    return sign << (weight_bits - 1) | magnitude


def product_width(outer_wbits: int, outer_abits: int) -> int:
    """Width of an unsigned LUT product ``W[k] * A[j]`` at outer widths b'_w, b'_a (2..8): levels
    up to ``2^(b'_w - 1) - 1`` and ``2^b'_a - 1`` (15 bits at 8/8, 9 at 6/4, 7 at 4/4)."""
    for name, bits in (("b'_w", outer_wbits), ("b'_a", outer_abits)):
        if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
            raise ValueError(f"outer width {name} = {bits!r}: the PEs take outer widths of 2..8 bits (levels up to "
                             f"{W_MAX} and {A_MAX}); train with --outer-bits 8 or narrower")
    return ((2 ** (outer_wbits - 1) - 1) * (2 ** outer_abits - 1)).bit_length()


def digit_bits(wbits: int, product_bits: int) -> int:
    """Bits of one digit of a weight level ``W[k]`` (7 bits) in a PE that multiplies in logic cells: ``wbits - 1``,
    the bits of a LUT layer's ``k``, where a multiplying layer's table entry (:func:`level_entry`) can hold the
    multiples ``d * A[j]`` of every digit ``d`` in the places of ``L[1][j] .. L[s_w][j]``; else 1 (binary)."""
    s_w = 2 ** (wbits - 1) - 1
    return wbits - 1 if s_w * A_MAX < 1 << product_bits else 1


def multiple_field_bits(product_bits: int) -> int:
    """Width of each multiple ``d * A[j]`` in a multiplying layer's table entry (:func:`level_entry`):
    ``product_bits``, but at least :data:`LEVEL_BITS`, so that ``A[j]`` up to 255 fits where the LUT layers'
    products are narrower (outer widths 4/4: 7 bits; the entry is then ``A[j]`` alone, binary digits)."""
    return max(product_bits, LEVEL_BITS)


def level_entry(a_level: int, wbits: int, product_bits: int) -> int:
    """A multiplying layer's table entry for activation level ``A[j]`` (without its multiply flag): the
    row vector of the levels ``0, 1, .., 2^d - 1`` (``d`` = :func:`digit_bits`) in fields of
    :func:`multiple_field_bits`, so ``A[j]`` itself is the low bits (a multiplier's 8-bit operand) and a digit
    ``d`` of ``W[k]`` selects ``d * A[j]`` as ``k`` selects ``L[k][j]``."""
    return row_vector(range(2 ** digit_bits(wbits, product_bits)), a_level, multiple_field_bits(product_bits))


def row_vector(w_levels, a_level: int, bits: int = PRODUCT_BITS) -> int:
    """The row vector of an activation level ``A[j]``: ``W[k] * A[j]`` for ``k = 1 .. s_w``,
    each ``bits`` wide, ``k = 1`` lowest; ValueError where a product does not fit ``bits``."""
    products = [int(w) * int(a_level) for w in w_levels[1:]]
    if any(not 0 <= x < 1 << bits for x in products):
        raise ValueError(f"products {products} of activation level {a_level} do not fit {bits} bits")
    return sum(x << bits * k for k, x in enumerate(products))
